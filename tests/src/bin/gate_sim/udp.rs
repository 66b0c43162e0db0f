//! The simulator's UDP mode: a data diode between the sender and the receiver. It forwards
//! datagrams one way and can lose (at random or in bursts), reorder, duplicate, corrupt and
//! rate-cap them, all from one seed, so a run is reproducible. Nothing goes back.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;

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

/// Datagrams forwarded in one send (one GSO call where the kernel has it).
const OUT_BATCH: usize = 32;
/// Bytes one GSO send may carry (65,535 less the IPv4 and UDP headers); the kernel refuses a
/// larger one as a whole.
const MAX_GSO_BYTES: usize = 65_535 - 28;

/// The forwarding side: datagrams of one size batched into one send.
struct Out {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    dest: std::net::SocketAddr,
    batch: Vec<u8>,
    segment: usize,
    count: usize,
    max: usize,
    rate_mbit: Option<f64>,
    next: Instant,
}

impl Out {
    fn push(&mut self, d: &[u8], counts: &mut Counts) {
        if self.count > 0
            && (d.len() != self.segment
                || self.count >= self.max
                || self.batch.len() + d.len() > MAX_GSO_BYTES)
        {
            self.flush(counts);
        }
        if self.count == 0 {
            self.segment = d.len();
        }
        self.batch.extend_from_slice(d);
        self.count += 1;
    }

    fn flush(&mut self, counts: &mut Counts) {
        if self.count == 0 {
            return;
        }
        if let Some(rate) = self.rate_mbit {
            let now = Instant::now();
            if self.next < now {
                self.next = now;
            }
            self.next += Duration::from_secs_f64(self.batch.len() as f64 * 8.0 / (rate * 1e6));
            if self.next > now + Duration::from_micros(200) {
                std::thread::sleep(self.next - now);
            }
        }
        let t = Transmit {
            destination: self.dest,
            ecn: None,
            contents: &self.batch,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        };
        // The receiver may be restarting: a refused send is a lost datagram, as on a diode.
        if self.state.send(UdpSockRef::from(&self.socket), &t).is_ok() {
            counts.forwarded += self.count as u64;
        }
        self.batch.clear();
        self.count = 0;
    }
}

/// Relays datagrams from `listen` to `forward` until killed.
pub fn run(
    listen: &str,
    forward: &str,
    rate_mbit: Option<f64>,
    faults: &UdpFaults,
    stats_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let input = std::net::UdpSocket::bind(listen)?;
    let _ = socket2::SockRef::from(&input).set_recv_buffer_size(64 << 20);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&input, 64 << 20);
    input.set_nonblocking(true)?;
    let in_state = UdpSocketState::new(UdpSockRef::from(&input))?;
    let output = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let out_state = UdpSocketState::new(UdpSockRef::from(&output))?;
    let max = out_state.max_gso_segments().clamp(1, OUT_BATCH);
    let mut out = Out {
        socket: output,
        state: out_state,
        dest: forward.parse()?,
        batch: Vec::new(),
        segment: 0,
        count: 0,
        max,
        rate_mbit,
        next: Instant::now(),
    };
    eprintln!(
        "gapsync-gate-sim (udp diode) listening on {} forwarding to {forward}",
        input.local_addr()?
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let input = {
        let _g = rt.enter();
        tokio::net::UdpSocket::from_std(input)?
    };
    let mut rng = fastrand::Rng::with_seed(faults.seed);
    let mut counts = Counts::default();
    let mut held: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
    let mut bufs = vec![vec![0u8; 65536]; 16];
    let mut meta = vec![RecvMeta::default(); 16];
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
        let ready = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), input.readable()).await
        });
        if ready.is_err() {
            // Idle: release what is held back so nothing waits forever.
            while let Some((_, d)) = held.pop_front() {
                out.push(&d, &mut counts);
            }
            out.flush(&mut counts);
            continue;
        }
        let n = {
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match input.try_io(Interest::READABLE, || {
                in_state.recv(UdpSockRef::from(&input), &mut slices, &mut meta)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        for (m, buf) in meta.iter().zip(&bufs).take(n) {
            for d in buf[..m.len].chunks(m.stride.max(1)) {
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
                let mut d = d.to_vec();
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
                    out.push(&d, &mut counts);
                }
                while held.front().is_some_and(|(h, _)| *h >= REORDER_DEPTH) {
                    if let Some((_, late)) = held.pop_front() {
                        out.push(&late, &mut counts);
                    }
                }
            }
        }
        out.flush(&mut counts);
    }
}
