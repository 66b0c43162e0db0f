//! What one run measured, and how it is read off the processes and the receiver's log.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One run of one side of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub secs: f64,
    pub bytes: u64,
    pub files: u64,
    /// CPU seconds of the sending and the receiving side.
    pub cpu: [f64; 2],
    /// Peak resident memory of the sending and the receiving side, KiB.
    pub rss_kib: [u64; 2],
    /// Cores the whole machine kept busy while the run was timed (every process: both
    /// sides, a gate simulator, the harness).
    pub busy_cores: f64,
}

impl Sample {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }

    pub fn files_per_s(&self) -> f64 {
        self.files as f64 / self.secs.max(1e-9)
    }

    /// CPU seconds per GiB moved, sending and receiving side.
    pub fn cpu_per_gib(&self) -> [f64; 2] {
        let gib = (self.bytes as f64 / f64::from(1u32 << 30)).max(1e-9);
        [self.cpu[0] / gib, self.cpu[1] / gib]
    }
}

/// The median of `xs` (the mean of the middle two for an even count); 0 when empty.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The value at quantile `q` (0..=1) of `xs`, nearest rank.
pub fn quantile(mut xs: Vec<f64>, q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return 0.0;
    }
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// The machine's CPU time so far, from the first line of /proc/stat: busy and total ticks.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            // user nice system idle iowait irq softirq steal; guest time (the last two) is
            // already counted in user and nice. Steal counts as busy: the cores were not ours.
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total = ticks.iter().sum();
        // idle and iowait are the 4th and 5th fields.
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Self {
            busy: total - idle,
            total,
        }
    }

    /// Cores kept busy on average since `self` was taken.
    pub fn cores_since(&self) -> f64 {
        let now = Self::now();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = now.total.saturating_sub(self.total).max(1) as f64;
        now.busy.saturating_sub(self.busy) as f64 / total * cores
    }
}

/// User plus system CPU seconds of a live process, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// GNU time's `-f "%e %U %S %M"` output: wall seconds, CPU seconds, peak RSS KiB.
pub fn read_gnu_time(path: &Path) -> anyhow::Result<(f64, f64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.split_whitespace().count() == 4)
        .ok_or_else(|| anyhow::anyhow!("no timing line in {}: {text}", path.display()))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    Ok((v[0], v[1] + v[2], v[3] as u64))
}

/// Follows the `delivered` lines of a receiver's log folder as they are written.
#[derive(Debug)]
pub struct DeliveryLog {
    dir: PathBuf,
    offsets: HashMap<PathBuf, u64>,
    partial: HashMap<PathBuf, String>,
    /// Path -> the time the receiver logged it delivered.
    pub delivered: HashMap<String, SystemTime>,
    pub last: Option<SystemTime>,
}

impl DeliveryLog {
    pub fn new(dir: &Path) -> Self {
        DeliveryLog {
            dir: dir.to_path_buf(),
            offsets: HashMap::new(),
            partial: HashMap::new(),
            delivered: HashMap::new(),
            last: None,
        }
    }

    /// Reads what was appended since the last call.
    pub fn poll(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let off = self.offsets.entry(path.clone()).or_insert(0);
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            if f.seek(SeekFrom::Start(*off)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            let Ok(n) = f.read_to_end(&mut buf) else {
                continue;
            };
            *off += n as u64;
            let mut text = self.partial.remove(&path).unwrap_or_default();
            text.push_str(&String::from_utf8_lossy(&buf));
            let complete = text.rfind('\n').map_or(0, |i| i + 1);
            for line in text[..complete].lines() {
                self.line(line);
            }
            self.partial.insert(path, text[complete..].to_owned());
        }
    }

    fn line(&mut self, line: &str) {
        if !line.contains(" delivered ") && !line.ends_with(" delivered") {
            return;
        }
        let when = line
            .split_whitespace()
            .next()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
        let path = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("path="));
        if let (Some(when), Some(path)) = (when, path) {
            self.delivered.insert(path.to_owned(), when);
            self.last = Some(self.last.map_or(when, |l| l.max(when)));
        }
    }
}
