//! gapsync-gate-sim: a forward isolation gate on one machine, for tests and rehearsals (with
//! `--udp`, a data diode instead: see `udp.rs`).
//!
//! It relays the sender's bytes to the receiver and checks that the reverse direction carries
//! exactly one byte, 0x00 or 0xFF, per forwarded frame and nothing else. Any violation is
//! printed as `VIOLATION: ...`, counted in the stats file, and the connection is cut. Faults
//! (cuts, bit flips, stalls, swallowed acks) are placed at absolute byte counts summed over
//! all connections, so a run is reproducible.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use gapsync_protocol::Envelope;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "gapsync-gate-sim",
    about = "Simulates a forward isolation gate between a gapsync sender and receiver: relays TCP, \
             checks that only one 0x00/0xFF byte per frame comes back, and injects faults.",
    after_help = "Byte positions count the sender's bytes over all connections since start; each \
                  fault fires once. Example rehearsal:\n  gapsync-gate-sim --listen 127.0.0.1:28101 \
                  --forward 127.0.0.1:28102 --latency-ms 50 --rate-mbit 100 --cut-after-bytes 5000000"
)]
struct Args {
    /// Address the sender connects to.
    #[arg(long)]
    listen: String,
    /// Address of the receiver.
    #[arg(long)]
    forward: String,
    /// Added one-way latency in each direction, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Bandwidth cap of the forward direction in Mbit/s.
    #[arg(long)]
    rate_mbit: Option<f64>,
    /// Cut the connection after this many forwarded bytes (repeatable).
    #[arg(long)]
    cut_after_bytes: Vec<u64>,
    /// Flip the lowest bit of the byte at this position (repeatable).
    #[arg(long)]
    flip_bit_at_byte: Vec<u64>,
    /// Swallow the Nth reply byte (1-based, over all connections) and cut the connection instead
    /// of forwarding it (repeatable).
    #[arg(long)]
    drop_ack: Vec<u64>,
    /// Forward the Nth frame (1-based, over all connections) twice (repeatable).
    #[arg(long)]
    dup_frame: Vec<u64>,
    /// Hold the Nth reply byte (1-based, over all connections) for --delay-ms (repeatable).
    #[arg(long)]
    delay_ack: Vec<u64>,
    /// How long a delayed reply is held, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Hold the forward direction for --stall-ms when this byte position is reached (repeatable).
    #[arg(long)]
    stall_at_byte: Vec<u64>,
    /// Length of each stall in milliseconds.
    #[arg(long, default_value_t = 0)]
    stall_ms: u64,
    /// Envelope of the frames, to count them: raw or e-language.
    #[arg(long, default_value = "raw")]
    envelope: String,
    /// Largest frame to expect (bytes), to count frames.
    #[arg(long, default_value_t = 64 << 20)]
    max_frame: u32,
    /// Write counters here (key=value lines), refreshed every 100 ms.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Be a data diode instead: relay UDP datagrams one way (with the faults below).
    #[arg(long)]
    udp: bool,
    #[command(flatten)]
    udp_faults: udp::UdpFaults,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    forward_bytes: AtomicU64,
    reverse_bytes: AtomicU64,
    frames: AtomicU64,
    violations: AtomicU64,
    cuts: AtomicU64,
    flips: AtomicU64,
    dropped_acks: AtomicU64,
    stalls: AtomicU64,
    duplicated: AtomicU64,
    delayed_acks: AtomicU64,
}

impl Stats {
    fn render(&self) -> String {
        let f = |a: &AtomicU64| a.load(SeqCst);
        format!(
            "connections={}\nforward_bytes={}\nreverse_bytes={}\nframes={}\nviolations={}\ncuts={}\nflips={}\ndropped_acks={}\nstalls={}\n",
            f(&self.connections),
            f(&self.forward_bytes),
            f(&self.reverse_bytes),
            f(&self.frames),
            f(&self.violations),
            f(&self.cuts),
            f(&self.flips),
            f(&self.dropped_acks),
            f(&self.stalls)
        )
    }
}

/// Fault points not yet fired.
#[derive(Debug)]
struct Faults {
    cuts: Mutex<BTreeSet<u64>>,
    flips: Mutex<BTreeSet<u64>>,
    stalls: Mutex<BTreeSet<u64>>,
    drops: Mutex<BTreeSet<u64>>,
    dups: Mutex<BTreeSet<u64>>,
    delays: Mutex<BTreeSet<u64>>,
}

/// Removes and returns the fault points in `lo..hi`.
fn take_in(set: &Mutex<BTreeSet<u64>>, lo: u64, hi: u64) -> Vec<u64> {
    let mut s = set.lock().unwrap_or_else(|p| p.into_inner());
    let hit: Vec<u64> = s.range(lo..hi).copied().collect();
    for h in &hit {
        s.remove(h);
    }
    hit
}

struct Shared {
    args: Args,
    stats: Stats,
    faults: Faults,
    /// Sender bytes read so far, over all connections.
    position: AtomicU64,
    replies: AtomicU64,
    frames_seen: AtomicU64,
}

mod tcp;
mod udp;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.udp {
        let a = args.clone();
        return tokio::task::spawn_blocking(move || {
            udp::run(
                &a.listen,
                &a.forward,
                a.rate_mbit,
                &a.udp_faults,
                a.stats_file.clone(),
            )
        })
        .await?;
    }
    let envelope = match args.envelope.as_str() {
        "raw" => Envelope::Raw,
        "e-language" => Envelope::ELanguage,
        other => anyhow::bail!("--envelope {other:?} must be raw or e-language"),
    };
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!(
        "gapsync-gate-sim listening on {} forwarding to {}",
        listener.local_addr()?,
        args.forward
    );
    let set = |v: &Vec<u64>| Mutex::new(v.iter().copied().collect());
    let shared = Arc::new(Shared {
        faults: Faults {
            cuts: set(&args.cut_after_bytes),
            flips: set(&args.flip_bit_at_byte),
            stalls: set(&args.stall_at_byte),
            drops: set(&args.drop_ack),
            dups: set(&args.dup_frame),
            delays: set(&args.delay_ack),
        },
        args,
        stats: Stats::default(),
        position: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        frames_seen: AtomicU64::new(0),
    });
    if let Some(path) = shared.args.stats_file.clone() {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let now = s.stats.render();
                if now != last {
                    let tmp = path.with_extension("tmp");
                    if std::fs::write(&tmp, &now)
                        .and_then(|_| std::fs::rename(&tmp, &path))
                        .is_ok()
                    {
                        last = now;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    loop {
        let (client, peer) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&shared.args.forward).await else {
                eprintln!(
                    "cannot reach the receiver at {}; closing {peer}",
                    shared.args.forward
                );
                return;
            };
            shared.stats.connections.fetch_add(1, SeqCst);
            tcp::relay(shared, client, server, envelope).await;
        });
    }
}
