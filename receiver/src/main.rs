//! # gapsync-receiver
//!
//! The outside daemon: listens behind the gate, answers each frame with one byte, and lands
//! files whole and exactly once.
//!
//! ```text
//!  gate  --TCP/TLS--> [allow-list] -> ReceiverSession --+
//!                                                      +-> pipe (node, name) -> sink -> dest/
//!  diode --UDP------> [allow-list] -> worker (FEC) -----+     |                  |
//!                                                        done.log (state)  staging/<id>.part
//! ```
//!
//! Each pipe's profile picks its link; the TCP listener and the UDP socket (same port number)
//! start only when some pipe needs them, and one loop keeps the summaries and housekeeping of
//! both.

mod config;
mod link;
mod pipe;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::config::Config;
use crate::pipe::Pipes;

/// How often abandoned partials are looked for (besides at start).
pub(crate) const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);

#[derive(Parser, Debug)]
#[command(
    name = "gapsync-receiver",
    version,
    about = "Receives files from a gapsync sender through an isolation gate and lands them whole and exactly once."
)]
struct Cli {
    #[command(subcommand)]
    command: gapsync_daemon::cli::Command,
}

fn main() -> std::process::ExitCode {
    gapsync_daemon::cli::dispatch(
        "gapsync-receiver",
        Cli::parse().command,
        |path| {
            Config::load(path).map(|c| {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                format!(
                    "node {}, profile {}, {} pipe(s), listen {}",
                    c.node,
                    c.profile.name,
                    c.pipes.len(),
                    c.listen
                )
            })
        },
        |path| {
            let config = Config::load(path)?;
            gapsync_daemon::cli::start("gapsync-receiver", &config.log_settings(), serve(config))
        },
    )
}

async fn serve(config: Config) -> anyhow::Result<()> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let pipes = Arc::new(Pipes::open(&config)?);
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut listen = config.listen;
    let mut tcp = None;
    if config.tcp_profile().is_some() {
        let (task, addr) = link::tcp::start(config.clone(), pipes.clone(), stop_rx.clone()).await?;
        // The UDP socket takes the same port number (port 0 picked one for TCP).
        listen = addr;
        tcp = Some(task);
    }
    let udp = match config.udp_profile() {
        Some(_) => Some(link::udp::start(
            config.clone(),
            pipes.clone(),
            listen,
            stop_rx,
        )?),
        None => None,
    };
    let alarms = tokio::spawn(check_silence(pipes.clone()));
    gapsync_daemon::notify_ready();
    housekeeping(&config, &pipes, udp.as_ref()).await?;
    let _ = stop_tx.send(true);
    alarms.abort();
    if let Some(task) = tcp {
        let _ = task.await;
    }
    if let Some(udp) = udp {
        udp.join().await?;
    }
    pipes.log_summary();
    Ok(())
}

/// The one summary and housekeeping loop of every pipe and link, until SIGTERM or Ctrl-C:
/// summaries, landing retries, and (hourly) abandoned partials.
async fn housekeeping(
    config: &Config,
    pipes: &Pipes,
    udp: Option<&link::udp::UdpLink>,
) -> anyhow::Result<()> {
    let stale_after = config.stale_partial_after;
    let mut last_housekeeping = std::time::Instant::now();
    gapsync_daemon::cli::until_shutdown(config.summary_interval.min(HOUSEKEEPING_EVERY), || {
        pipes.log_summary();
        if let Some(udp) = udp {
            udp.summary_due();
        }
        tokio::task::block_in_place(|| pipes.retry_landing());
        if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            last_housekeeping = std::time::Instant::now();
            tokio::task::block_in_place(|| pipes.housekeeping(stale_after));
        }
    })
    .await
}

/// Says each pipe's `silence_alarm` when it is due.
async fn check_silence(pipes: Arc<Pipes>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        pipes.check_silence(std::time::Instant::now());
    }
}
