//! The diode link's receiver: one UDP socket read by its own thread, one worker thread that
//! checks, decodes and lands objects. Nothing is ever sent back.
//!
//! ```text
//!  diode --UDP--> socket thread (recvmmsg/GRO) --batches--> worker: check -> Assembly -> sink
//! ```

mod socket;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gapsync_protocol::LinkKind;

use crate::config::Config;
use crate::pipe::Pipes;

/// How often deadlines and the link silence alarm are checked.
const TICK: Duration = Duration::from_millis(100);
/// Batches queued between the socket thread and the worker (each at most 32 reads).
const QUEUE_BATCHES: usize = 16;

/// The running udp link: its two threads, and the flag by which the receiver's one summary
/// loop asks the worker for its link summary.
#[derive(Debug)]
pub struct UdpLink {
    reader: JoinHandle<std::io::Result<()>>,
    work: JoinHandle<()>,
    summary_due: Arc<AtomicBool>,
}

impl UdpLink {
    /// Asks the worker to log its link summary (loss per pipe) at its next turn.
    pub fn summary_due(&self) {
        self.summary_due.store(true, Relaxed);
    }

    /// Waits for both threads once the stop signal was sent; logs a socket failure.
    pub async fn join(self) -> anyhow::Result<()> {
        let (reader, work) = (self.reader, self.work);
        let read_result = tokio::task::spawn_blocking(move || {
            let r = reader.join();
            let _ = work.join();
            r
        })
        .await?;
        if let Ok(Err(e)) = read_result {
            tracing::error!(error = %e, "the udp socket failed");
        }
        Ok(())
    }
}

/// Binds the UDP socket on `listen` (the TCP listener's port number when both run) and starts
/// the reader and worker threads for the udp pipes, until `stop` turns true.
pub fn start(
    config: Arc<Config>,
    pipes: Arc<Pipes>,
    listen: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<UdpLink> {
    let Some(profile) = config.udp_profile().cloned() else {
        anyhow::bail!("internal: the udp link started without a udp pipe");
    };
    let Some(udp) = profile.udp.clone() else {
        anyhow::bail!("internal: the udp link started without udp profile values");
    };
    let want = profile
        .socket_buffer_bytes
        .map_or(socket::DEFAULT_RCVBUF, |b| b as usize);
    let (sock, got) = socket::bind(listen, want)
        .with_context(|| format!("cannot listen on udp {listen}; is another process using it?"))?;
    let addr = sock.local_addr()?;
    if got < want {
        tracing::warn!(
            wanted = want,
            got,
            "the kernel capped the UDP receive buffer, so bursts may be lost; raise it with `sysctl -w net.core.rmem_max={want}` (and in /etc/sysctl.d/ to keep it), see systemd/90-gapsync-udp.conf; a receiver run with CAP_NET_ADMIN raises it itself"
        );
    }
    let served = config
        .pipes
        .iter()
        .filter(|c| c.link() == LinkKind::Udp)
        .count();
    tracing::info!(%addr, link = "udp", node = %config.node, profile = %profile.name, pipes = served, receive_buffer = got, state_dir = %config.state_dir.display(), "listening");
    let worker = worker::Worker::new(config, &pipes, udp)?;
    let (tx, rx) = sync_channel(QUEUE_BATCHES);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel();
    let reader = std::thread::Builder::new()
        .name("udp-read".into())
        .spawn(move || socket::read_loop(sock, tx, spare_rx, stop))?;
    let summary_due = Arc::new(AtomicBool::new(false));
    let due = summary_due.clone();
    let work = std::thread::Builder::new()
        .name("udp-work".into())
        .spawn(move || work_loop(worker, &rx, &spare_tx, &due))?;
    Ok(UdpLink {
        reader,
        work,
        summary_due,
    })
}

/// Feeds the worker the socket's batches and its ticks until the socket thread ends.
fn work_loop(
    mut worker: worker::Worker,
    rx: &Receiver<socket::Batch>,
    spare: &Sender<Vec<u8>>,
    summary_due: &AtomicBool,
) {
    let mut last_tick = Instant::now();
    loop {
        match rx.recv_timeout(TICK) {
            Ok(batch) => {
                let now = Instant::now();
                for mut read in batch {
                    let addr = read.addr;
                    for d in read.datagrams() {
                        worker.on_datagram(addr, d, now);
                    }
                    let _ = spare.send(read.buf);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now - last_tick >= TICK {
            worker.on_tick(now);
            last_tick = now;
        }
        if summary_due.swap(false, Relaxed) {
            worker.log_summary();
        }
    }
    worker.log_summary();
}
