//! The diode link's receiver: one UDP socket read by its own thread, one worker thread that
//! checks, decodes and lands objects. Nothing is ever sent back.
//!
//! ```text
//!  diode --UDP--> socket thread (recvmmsg/GRO) --batches--> worker: check -> Assembly -> sink
//! ```

mod socket;
mod worker;

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::Config;
use crate::pipes::Pipes;

/// How often deadlines and the silence alarm are checked.
const TICK: Duration = Duration::from_millis(100);
/// Batches queued between the socket thread and the worker (each at most 32 reads).
const QUEUE_BATCHES: usize = 16;

/// Runs the receiver on the udp link until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let Some(udp) = config.profile.udp.clone() else {
        anyhow::bail!("internal: the udp link started without udp profile values");
    };
    let pipes = Arc::new(Pipes::open(&config)?);
    let want = config
        .profile
        .socket_buffer_bytes
        .map_or(socket::DEFAULT_RCVBUF, |b| b as usize);
    let (sock, got) = socket::bind(config.listen, want).with_context(|| {
        format!(
            "cannot listen on udp {}; is another process using it?",
            config.listen
        )
    })?;
    let addr = sock.local_addr()?;
    if got < want {
        tracing::warn!(
            wanted = want,
            got,
            "the kernel capped the UDP receive buffer, so bursts may be lost; raise it with `sysctl -w net.core.rmem_max={want}` (and in /etc/sysctl.d/ to keep it), see systemd/90-gapsync-udp.conf; a receiver run with CAP_NET_ADMIN raises it itself"
        );
    }
    tracing::info!(%addr, link = "udp", node = %config.node, profile = %config.profile.name, pipes = config.pipes.len(), receive_buffer = got, state_dir = %config.state_dir.display(), "listening");
    let config = Arc::new(config);
    let mut worker = worker::Worker::new(config.clone(), &pipes, udp)?;
    let (tx, rx) = sync_channel(QUEUE_BATCHES);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reader = std::thread::Builder::new()
        .name("udp-read".into())
        .spawn(move || socket::read_loop(sock, tx, spare_rx, stop_rx))?;
    let summary_every = config.summary_interval;
    let work = std::thread::Builder::new()
        .name("udp-work".into())
        .spawn(move || {
            let (mut last_tick, mut last_summary) = (Instant::now(), Instant::now());
            loop {
                match rx.recv_timeout(TICK) {
                    Ok(batch) => {
                        let now = Instant::now();
                        for mut read in batch {
                            let addr = read.addr;
                            for d in read.datagrams() {
                                worker.on_datagram(addr, d, now);
                            }
                            let _ = spare_tx.send(read.buf);
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
                if now - last_summary >= summary_every {
                    worker.log_summary();
                    last_summary = now;
                }
            }
            worker.log_summary();
        })?;
    gapsync_daemon::notify_ready();
    let stale_after = config.stale_partial_after;
    let mut last_housekeeping = Instant::now();
    let p = pipes.clone();
    gapsync_daemon::cli::until_shutdown(summary_every.min(crate::HOUSEKEEPING_EVERY), move || {
        p.log_summary();
        tokio::task::block_in_place(|| p.retry_landing());
        if last_housekeeping.elapsed() >= crate::HOUSEKEEPING_EVERY {
            last_housekeeping = Instant::now();
            tokio::task::block_in_place(|| p.housekeeping(stale_after));
        }
    })
    .await?;
    let _ = stop_tx.send(true);
    let read_result = tokio::task::spawn_blocking(move || {
        let r = reader.join();
        let _ = work.join();
        r
    })
    .await?;
    if let Ok(Err(e)) = read_result {
        tracing::error!(error = %e, "the udp socket failed");
    }
    pipes.log_summary();
    Ok(())
}
