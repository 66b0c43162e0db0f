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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::link::tcp::Server;

/// How often abandoned partials are looked for (besides at start).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);

#[derive(Parser, Debug)]
#[command(
    name = "gapsync-receiver",
    version,
    about = "Receives files from a gapsync sender through an isolation gate and lands them whole and exactly once."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the receiver until SIGTERM or Ctrl-C.
    Run {
        /// Receiver config file (TOML); see examples/receiver.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and its hardware profile, print every problem, exit non-zero if any.
    CheckConfig {
        /// Receiver config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: OK (node {}, profile {}, {} pipe(s), listen {})",
                    config.display(),
                    c.node,
                    c.profile.name,
                    c.pipes.len(),
                    c.listen
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                std::process::ExitCode::from(2)
            }
        },
        Command::Run { config } => match run(&config) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gapsync-receiver: {e:#}");
                tracing::error!("stopped: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let _log = gapsync_daemon::logging::init(
        "gapsync-receiver",
        config.log_dir.as_deref(),
        config.log_format,
        &config.log_level,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
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
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let accept = tokio::spawn(link::tcp::serve(server.clone(), listener, stop_rx));
    gapsync_daemon::notify_ready();
    let mut summary = tokio::time::interval(summary_every);
    summary.tick().await;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
    housekeeping.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = summary.tick() => server.pipes.log_summary(),
            _ = housekeeping.tick() => {
                let s = server.clone();
                let _ = tokio::task::spawn_blocking(move || s.pipes.housekeeping(stale_after)).await;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    gapsync_daemon::notify_stopping();
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = accept.await;
    server.pipes.log_summary();
    Ok(())
}
