//! The simulator's UDP mode: a data diode between the sender and the receiver. It forwards
//! datagrams one way and can lose (at random or in bursts), reorder, duplicate, corrupt and
//! rate-cap them, all from one seed, so a run is reproducible. Nothing goes back.

use std::collections::VecDeque;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the diode does to the datagrams it forwards.
#[derive(Debug, Clone, clap::Args)]
pub struct UdpFaults {
    /// Drop each datagram with this probability, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub loss_percent: f64,
    /// Every this many datagrams, start a burst of loss.
    #[arg(long)]
    pub burst_every: Option<u64>,
    /// Datagrams lost in each burst.
    #[arg(long, default_value_t = 50)]
    pub burst_len: u64,
    /// Drop the datagrams numbered A to B (1-based, inclusive; repeatable), e.g. 1000-3000.
    #[arg(long, value_parser = parse_range)]
    pub drop_range: Vec<(u64, u64)>,
    /// Hold back each datagram with this probability (percent) and send it after the next few.
    #[arg(long, default_value_t = 0.0)]
    pub reorder_percent: f64,
    /// Send each datagram twice with this probability, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub dup_percent: f64,
    /// Flip one random bit of a datagram with this probability, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub corrupt_percent: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not A-B"))?;
    let a = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    Ok((a, b))
}

#[derive(Debug, Default)]
struct Counts {
    datagrams: u64,
    forwarded: u64,
    lost_random: u64,
    lost_burst: u64,
    lost_range: u64,
    reordered: u64,
    duplicated: u64,
    corrupted: u64,
}

impl Counts {
    fn render(&self) -> String {
        format!(
            "datagrams={}\nforwarded={}\nlost_random={}\nlost_burst={}\nlost_range={}\nreordered={}\nduplicated={}\ncorrupted={}\n",
            self.datagrams,
            self.forwarded,
            self.lost_random,
            self.lost_burst,
            self.lost_range,
            self.reordered,
            self.duplicated,
            self.corrupted
        )
    }
}

/// Datagrams held back for reordering are released after this many others.
const REORDER_DEPTH: usize = 7;

/// Relays datagrams from `listen` to `forward` until killed.
pub fn run(
    listen: &str,
    forward: &str,
    rate_mbit: Option<f64>,
    faults: &UdpFaults,
    stats_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let input = UdpSocket::bind(listen)?;
    let _ = socket2::SockRef::from(&input).set_recv_buffer_size(64 << 20);
    let output = UdpSocket::bind("0.0.0.0:0")?;
    output.connect(forward)?;
    input.set_read_timeout(Some(Duration::from_millis(100)))?;
    eprintln!(
        "gapsync-gate-sim (udp diode) listening on {} forwarding to {forward}",
        input.local_addr()?
    );
    let mut rng = fastrand::Rng::with_seed(faults.seed);
    let mut counts = Counts::default();
    let mut held: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65536];
    let mut next_out = Instant::now();
    let mut last_stats = Instant::now();
    let chance =
        |rng: &mut fastrand::Rng, percent: f64| percent > 0.0 && rng.f64() * 100.0 < percent;
    loop {
        if last_stats.elapsed() >= Duration::from_millis(100) {
            if let Some(path) = &stats_file {
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, counts.render()).is_ok() {
                    let _ = std::fs::rename(&tmp, path);
                }
            }
            last_stats = Instant::now();
        }
        let n = match input.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Idle: release what is held back so nothing waits forever.
                while let Some((_, d)) = held.pop_front() {
                    send(&output, &d, rate_mbit, &mut next_out, &mut counts);
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        counts.datagrams += 1;
        let index = counts.datagrams;
        if faults
            .drop_range
            .iter()
            .any(|&(a, b)| (a..=b).contains(&index))
        {
            counts.lost_range += 1;
            continue;
        }
        if let Some(every) = faults.burst_every.filter(|e| *e > 0) {
            if index > every && index % every < faults.burst_len {
                counts.lost_burst += 1;
                continue;
            }
        }
        if chance(&mut rng, faults.loss_percent) {
            counts.lost_random += 1;
            continue;
        }
        let mut d = buf[..n].to_vec();
        if chance(&mut rng, faults.corrupt_percent) && !d.is_empty() {
            let bit = rng.usize(..d.len() * 8);
            d[bit / 8] ^= 1 << (bit % 8);
            counts.corrupted += 1;
        }
        let copies = if chance(&mut rng, faults.dup_percent) {
            counts.duplicated += 1;
            2
        } else {
            1
        };
        for (h, _) in held.iter_mut() {
            *h += 1;
        }
        if chance(&mut rng, faults.reorder_percent) {
            counts.reordered += 1;
            held.push_back((0, d));
            continue;
        }
        for _ in 0..copies {
            send(&output, &d, rate_mbit, &mut next_out, &mut counts);
        }
        while held.front().is_some_and(|(h, _)| *h >= REORDER_DEPTH) {
            if let Some((_, late)) = held.pop_front() {
                send(&output, &late, rate_mbit, &mut next_out, &mut counts);
            }
        }
    }
}

fn send(
    out: &UdpSocket,
    d: &[u8],
    rate_mbit: Option<f64>,
    next: &mut Instant,
    counts: &mut Counts,
) {
    if let Some(rate) = rate_mbit {
        let now = Instant::now();
        if *next < now {
            *next = now;
        }
        *next += Duration::from_secs_f64(d.len() as f64 * 8.0 / (rate * 1e6));
        if *next > now + Duration::from_micros(200) {
            std::thread::sleep(*next - now);
        }
    }
    if out.send(d).is_ok() {
        counts.forwarded += 1;
    }
}
