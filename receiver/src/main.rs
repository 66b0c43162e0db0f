//! # gapsync-receiver
//!
//! The outside daemon: listens behind the gate, answers each frame with one byte, and lands
//! files whole and exactly once.
//!
//! ```text
//!  gate --TCP--> [allow-list] -> ReceiverSession -> pipe (node, name) -> DirectorySink -> dest/
//!                                      |                                     |
//!                                 1 byte back                 staging/<id>.part, done.log
//! ```

mod config;
mod link;
mod pipes;
mod sink;

use std::sync::Arc;

use anyhow::Context as _;
use std::time::Duration;

use clap::Parser;

use crate::config::Config;
use crate::link::tcp::Server;

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
    if config.profile.link == gapsync_protocol::LinkKind::Udp {
        return link::udp::serve(config).await;
    }
    let pipes = pipes::Pipes::open(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another process using it?",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        node = %config.node,
        profile = %config.profile.name,
        pipes = config.pipes.len(),
        state_dir = %config.state_dir.display(),
        "listening"
    );
    let summary_every = config.summary_interval;
    let stale_after = config.stale_partial_after;
    let server = Arc::new(Server {
        config,
        pipes,
        limiter: gapsync_daemon::ratelimit::RateLimiter::new(Duration::from_secs(60)),
        active: std::sync::atomic::AtomicUsize::new(0),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let accept = tokio::spawn(link::tcp::serve(server.clone(), listener, stop_rx));
    let alarms = tokio::spawn(check_silence(server.clone()));
    gapsync_daemon::notify_ready();
    let mut last_housekeeping = std::time::Instant::now();
    gapsync_daemon::cli::until_shutdown(summary_every.min(HOUSEKEEPING_EVERY), || {
        server.pipes.log_summary();
        tokio::task::block_in_place(|| server.pipes.retry_landing());
        if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            last_housekeeping = std::time::Instant::now();
            tokio::task::block_in_place(|| server.pipes.housekeeping(stale_after));
        }
    })
    .await?;
    let _ = stop_tx.send(true);
    alarms.abort();
    let _ = accept.await;
    server.pipes.log_summary();
    Ok(())
}

/// Says each pipe's `silence_alarm` when it is due.
async fn check_silence(server: Arc<Server>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        server.pipes.check_silence(std::time::Instant::now());
    }
}
