//! The durable record of committed transfers: one line `<transfer id hex> <unix seconds>` per
//! commit, appended and fsynced before the file is renamed into place.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Committed transfer ids of one pipe, kept for a retention period.
#[derive(Debug)]
pub struct DoneLog {
    path: PathBuf,
    file: File,
    done: HashMap<u64, u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DoneLog {
    /// Opens `path`, dropping records older than `retention` (the file is rewritten atomically).
    /// A torn last line from a crash is ignored: that commit was not durable.
    pub fn open(path: &Path, retention: Duration) -> io::Result<Self> {
        let mut done = HashMap::new();
        let mut lines = 0usize;
        if let Ok(f) = File::open(path) {
            let mut reader = BufReader::new(f);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                if reader.read_until(b'\n', &mut raw)? == 0 {
                    break;
                }
                lines += 1;
                // Only whole lines count; a line without its newline was torn by a crash.
                let Some(line) = raw
                    .strip_suffix(b"\n")
                    .and_then(|l| std::str::from_utf8(l).ok())
                else {
                    continue;
                };
                let mut it = line.split(' ');
                if let (Some(id), Some(t), None) = (it.next(), it.next(), it.next()) {
                    if let (Ok(id), Ok(t)) = (u64::from_str_radix(id, 16), t.parse::<u64>()) {
                        done.insert(id, t);
                    }
                }
            }
        }
        let cutoff = unix_now().saturating_sub(retention.as_secs());
        done.retain(|_, t| *t >= cutoff);
        if lines != done.len() {
            let mut text = String::with_capacity(done.len() * 28);
            for (id, t) in &done {
                text.push_str(&format!("{id:016x} {t}\n"));
            }
            gapsync_daemon::durable::write_atomic(path, text.as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    /// True when `id` was committed within the retention period.
    pub fn contains(&self, id: u64) -> bool {
        self.done.contains_key(&id)
    }

    /// Records every id of a group durably, with one write and one fsync.
    pub fn record_all(&mut self, ids: &[u64]) -> io::Result<()> {
        let t = unix_now();
        let mut text = String::with_capacity(ids.len() * 28);
        for id in ids {
            text.push_str(&format!("{id:016x} {t}\n"));
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        for &id in ids {
            self.done.insert(id, t);
        }
        Ok(())
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("done.log");
        let mut log = DoneLog::open(&p, Duration::from_secs(3600)).expect("open");
        log.record_all(&[0xabc]).expect("record");
        drop(log);
        let torn = format!("{:016x} {}", 0xffu64, unix_now());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open")
            .write_all(torn.as_bytes())
            .expect("torn");
        let log = DoneLog::open(&p, Duration::from_secs(3600)).expect("reopen");
        assert!(log.contains(0xabc));
        assert!(
            !log.contains(0xff),
            "a line without its newline was torn and must not count"
        );
    }
}
