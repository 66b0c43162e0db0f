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
use gapsync_protocol::{Decoder, Envelope};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

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
            relay(shared, client, server, envelope).await;
        });
    }
}

/// Bytes to deliver at a time; for the forward direction also the number of frames the sender
/// has started once these bytes are delivered (counted on the bytes before any fault).
type Chunk = (Instant, Vec<u8>, u64);

/// Chunks (of at most 64 KiB) the forward direction holds while they wait out the added
/// latency: the bytes in flight on the simulated link. At 64 chunks it held 4 MiB, so a
/// window of 8 frames of 1 MiB at +50 ms waited half in the sender's socket, and its second
/// half reached the receiver a whole one-way trip late (BENCHMARKS.md, scenario 4).
const DELAY_LINE_CHUNKS: usize = 4096;

async fn relay(shared: Arc<Shared>, client: TcpStream, server: TcpStream, envelope: Envelope) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut c_rd, mut c_wr) = client.into_split();
    let (mut s_rd, mut s_wr) = server.into_split();
    let latency = Duration::from_millis(shared.args.latency_ms);
    let frames_delivered = Arc::new(AtomicU64::new(0));
    let (ftx, mut frx) = mpsc::channel::<Chunk>(DELAY_LINE_CHUNKS);
    let (rtx, mut rrx) = mpsc::channel::<Chunk>(64);

    // sender -> gate: faults applied at read time.
    let sh = shared.clone();
    let forward_read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut decoder = Decoder::new(envelope, sh.args.max_frame);
        let mut complete = 0u64;
        // False once the stream could not be decoded (not gapsync frames, e.g. the bench's raw
        // copy): from then on bytes are only relayed, without decoding or a message per chunk.
        let mut counting = true;
        loop {
            let n = match c_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return "sender closed",
                Ok(n) => n,
            };
            let start = sh.position.fetch_add(n as u64, SeqCst);
            let end = start + n as u64;
            let mut data = buf[..n].to_vec();
            if counting {
                decoder.feed(&data);
            }
            while counting {
                let frame = match decoder.decode() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("cannot count frames any more (relaying bytes only): {e}");
                        counting = false;
                        break;
                    }
                };
                complete += 1;
                sh.stats.frames.fetch_add(1, SeqCst);
                let nth = sh.frames_seen.fetch_add(1, SeqCst) + 1;
                if !take_in(&sh.faults.dups, nth, nth + 1).is_empty() {
                    // Insert a copy right after the frame's last byte in this chunk.
                    let mut copy = Vec::new();
                    let h = frame.header;
                    let _ = gapsync_protocol::encode_frame(
                        envelope,
                        h.kind,
                        h.sequence,
                        h.transfer,
                        h.offset,
                        &frame.payload,
                        &mut copy,
                    );
                    let at = data.len() - decoder.buffered();
                    data.splice(at..at, copy.iter().copied());
                    // The copy is a frame the receiver may answer, too.
                    complete += 1;
                    sh.stats.duplicated.fetch_add(1, SeqCst);
                    eprintln!("fault: duplicated frame {nth}");
                }
            }
            // A frame whose first bytes were forwarded may be answered (FAIL) before its end.
            let started = complete + u64::from(decoder.buffered() > 0);
            for at in take_in(&sh.faults.flips, start, end) {
                data[(at - start) as usize] ^= 1;
                sh.stats.flips.fetch_add(1, SeqCst);
                eprintln!("fault: flipped a bit at byte {at}");
            }
            if let Some(&at) = take_in(&sh.faults.cuts, start + 1, end + 1).first() {
                data.truncate((at - start) as usize);
                let _ = ftx.send((Instant::now() + latency, data, started)).await;
                sh.stats.cuts.fetch_add(1, SeqCst);
                eprintln!("fault: cut the connection after byte {at}");
                return "cut";
            }
            if !take_in(&sh.faults.stalls, start, end).is_empty() {
                sh.stats.stalls.fetch_add(1, SeqCst);
                eprintln!("fault: stalling for {} ms", sh.args.stall_ms);
                tokio::time::sleep(Duration::from_millis(sh.args.stall_ms)).await;
            }
            if ftx
                .send((Instant::now() + latency, data, started))
                .await
                .is_err()
            {
                return "receiver side closed";
            }
        }
    };
    // gate -> receiver: latency, rate cap, frame counting.
    let sh = shared.clone();
    let delivered = frames_delivered.clone();
    let forward_write = async move {
        let mut next_free = Instant::now();
        while let Some((due, data, started)) = frx.recv().await {
            tokio::time::sleep_until(due).await;
            if let Some(mbit) = sh.args.rate_mbit {
                let cost = Duration::from_secs_f64(data.len() as f64 * 8.0 / (mbit * 1e6));
                next_free = next_free.max(Instant::now()) + cost;
                tokio::time::sleep_until(next_free).await;
            }
            // Publish the frame count before writing: a reply can only come after the write.
            delivered.fetch_max(started, SeqCst);
            if s_wr.write_all(&data).await.is_err() {
                return "receiver closed";
            }
            sh.stats.forward_bytes.fetch_add(data.len() as u64, SeqCst);
        }
        "forward queue closed"
    };
    // receiver -> gate: the one-byte rule, swallowed acks.
    let sh = shared.clone();
    let delivered = frames_delivered.clone();
    let reverse_read = async move {
        let mut buf = [0u8; 4096];
        let mut replies_here = 0u64;
        loop {
            let n = match s_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return "receiver closed",
                Ok(n) => n,
            };
            let mut out = Vec::with_capacity(n);
            for &b in &buf[..n] {
                replies_here += 1;
                let nth = sh.replies.fetch_add(1, SeqCst) + 1;
                let frames = delivered.load(SeqCst);
                if b != 0x00 && b != 0xFF {
                    violation(&sh, format!("reply byte {b:#04x} is neither 0x00 nor 0xFF"));
                    return "violation";
                }
                if replies_here > frames {
                    violation(
                        &sh,
                        format!(
                            "{replies_here} reply bytes for {frames} forwarded frame(s): a byte nobody asked for"
                        ),
                    );
                    return "violation";
                }
                if !take_in(&sh.faults.delays, nth, nth + 1).is_empty() {
                    sh.stats.delayed_acks.fetch_add(1, SeqCst);
                    eprintln!(
                        "fault: holding reply byte {nth} for {} ms",
                        sh.args.delay_ms
                    );
                    let _ = rtx
                        .send((Instant::now() + latency, std::mem::take(&mut out), 0))
                        .await;
                    tokio::time::sleep(Duration::from_millis(sh.args.delay_ms)).await;
                }
                if !take_in(&sh.faults.drops, nth, nth + 1).is_empty() {
                    sh.stats.dropped_acks.fetch_add(1, SeqCst);
                    eprintln!("fault: swallowed reply byte {nth} and cut the connection");
                    let _ = rtx.send((Instant::now() + latency, out, 0)).await;
                    return "dropped ack";
                }
                out.push(b);
            }
            sh.stats.reverse_bytes.fetch_add(n as u64, SeqCst);
            if rtx.send((Instant::now() + latency, out, 0)).await.is_err() {
                return "sender side closed";
            }
        }
    };
    let reverse_write = async move {
        while let Some((due, data, _)) = rrx.recv().await {
            tokio::time::sleep_until(due).await;
            if c_wr.write_all(&data).await.is_err() {
                return "sender closed";
            }
        }
        "reverse queue closed"
    };
    // The first direction to end ends the connection, after queued bytes are delivered.
    let (fr, fw, rr, rw) = (
        tokio::spawn(forward_read),
        tokio::spawn(forward_write),
        tokio::spawn(reverse_read),
        tokio::spawn(reverse_write),
    );
    let aborts = [
        fr.abort_handle(),
        fw.abort_handle(),
        rr.abort_handle(),
        rw.abort_handle(),
    ];
    tokio::select! {
        _ = fr => {}
        _ = rr => {}
    }
    // Let already-read bytes drain (they were sent before the cut), then close everything.
    tokio::time::sleep(latency + Duration::from_millis(20)).await;
    for a in aborts {
        a.abort();
    }
}

fn violation(sh: &Shared, what: String) {
    sh.stats.violations.fetch_add(1, SeqCst);
    eprintln!("VIOLATION: {what}");
}
