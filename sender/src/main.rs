//! # gapsync-sender
//!
//! The inside daemon: takes complete files from spool folders and sends them through the gate,
//! exactly once, resuming after any cut, crash or restart.
//!
//! ```text
//!  spool/ --source--> PipeWorker (queue, in-flight records) --frames--> SenderSession --TCP--> gate
//!                          ^                                                 |
//!                          +------------- one OK/FAIL byte per frame --------+
//! ```

mod config;
mod link;
mod pipe;
mod process;
mod resend;
// Built standalone (issue 19, section 4); the pipe policy wires it in.
#[allow(dead_code)]
mod schedule;
mod source;
mod state;
mod summary;

use std::sync::Arc;

use anyhow::Context as _;

use clap::Parser;

use crate::config::Config;
use crate::pipe::{Pipe, PipeStats};
use crate::state::IdSource;

#[derive(Parser, Debug)]
#[command(
    name = "gapsync-sender",
    version,
    about = "Sends files from spool folders through an isolation gate to a gapsync receiver, exactly once."
)]
struct Cli {
    #[command(subcommand)]
    command: SenderCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SenderCommand {
    #[command(flatten)]
    Daemon(gapsync_daemon::cli::Command),
    /// On the udp (diode) link: put the files sent in a time range back into the spool, from
    /// sent_dir, to be sent again. A file the receiver already landed is not landed twice (it
    /// keeps its transfer id).
    Resend {
        /// The sender's config file.
        #[arg(long, short)]
        config: std::path::PathBuf,
        /// The pipe whose files to resend.
        #[arg(long)]
        pipe: String,
        /// Start of the range, UTC, e.g. "2026-11-21 10:00:00".
        #[arg(long)]
        since: String,
        /// End of the range, UTC (default: now).
        #[arg(long)]
        until: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let command = match Cli::parse().command {
        SenderCommand::Daemon(c) => c,
        SenderCommand::Resend {
            config,
            pipe,
            since,
            until,
        } => return resend::run(&config, &pipe, &since, until.as_deref()),
    };
    gapsync_daemon::cli::dispatch(
        "gapsync-sender",
        command,
        |path| {
            Config::load(path).map(|c| {
                let profiles: Vec<String> = (c.pipes.iter())
                    .map(|p| {
                        format!(
                            "{} ({} over {})",
                            p.name,
                            p.profile.name,
                            link::kind_name(p.profile.link)
                        )
                    })
                    .collect();
                format!(
                    "node {}, {} pipe(s): {}",
                    c.node,
                    c.pipes.len(),
                    profiles.join(", ")
                )
            })
        },
        |path| {
            let config = Config::load(path)?;
            gapsync_daemon::cli::start("gapsync-sender", &config.log_settings(), serve(config))
        },
    )
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let ids = Arc::new(IdSource::open(&config.state_dir)?);
    let session = ids.session();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut summary = summary::Summary::new(config.log_time);
    // What the control socket will serve (status, stop, start); for now read at shutdown.
    let mut handles = Vec::new();
    for pc in &config.pipes {
        let stats = Arc::new(PipeStats::default());
        let source = source::build(pc, stats.clone());
        let mut pipe =
            Pipe::new(pc.clone(), source, ids.clone(), stats.clone()).with_context(|| {
                format!(
                    "pipe {}: cannot open its state in {}",
                    pc.name,
                    pc.state_dir.display()
                )
            })?;
        let rx = pipe
            .start_source()
            .with_context(|| format!("pipe {}: cannot start its source", pc.name))?;
        handles.push(pipe.handle());
        let stop = stop_rx.clone();
        tasks.push(link::start(pipe, &config.node, session, rx, stop));
        summary.add(&pc.name, stats, &pc.state_dir);
    }
    log_started(&config, session);
    gapsync_daemon::notify_ready();
    gapsync_daemon::cli::until_shutdown(config.summary_interval, || {
        tokio::task::block_in_place(|| summary.log());
    })
    .await?;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    summary.log();
    log_stopped(&handles);
    Ok(())
}

/// The `started` line, and one line per pipe with what it runs and what to watch.
fn log_started(config: &Config, session: u64) {
    let profile = config
        .profile
        .as_ref()
        .map_or("(per pipe)", |p| p.name.as_str());
    tracing::info!(node = %config.node, profile, session, pipes = config.pipes.len(), state_dir = %config.state_dir.display(), "started");
    for pc in &config.pipes {
        tracing::info!(pipe = %pc.name, profile = %pc.profile.name, link = %link::kind_name(pc.profile.link), gate = %pc.gate, history = pc.history, realtime = pc.realtime, forward_received = pc.forward_received, "pipe started");
        log_processors(pc);
        if pc.schedule.is_some() {
            tracing::warn!(pipe = %pc.name, "`schedule` is checked but not applied by this build yet: the pipe sends at any time");
        }
        match &pc.auth {
            Some(a) => {
                if let Some(w) = &a.key.warning {
                    tracing::warn!(pipe = %pc.name, key_id = a.key.id, "{w}");
                }
            }
            None => {
                tracing::info!(pipe = %pc.name, "pipe sends without a key: frames are checksummed but not authenticated")
            }
        }
    }
}

/// What the pipe's processors do, in one INFO line (nothing when it has none).
fn log_processors(pc: &config::PipeConfig) {
    let p = &pc.processors;
    if p.steps().is_empty() {
        return;
    }
    let compress = p.compress().map(|c| format!("zstd level {}", c.level));
    let rate = p.rate_limit().map(|r| r.bytes_per_second.get());
    tracing::info!(pipe = %pc.name, filter = p.filter().is_some(), compress = compress.as_deref().unwrap_or("off"), rate_limit_bytes_per_second = rate, limit_counts = if p.limit_after_compress() { "wire bytes" } else { "original bytes" }, "pipe processors");
}

/// One line per pipe at shutdown, from its status.
fn log_stopped(handles: &[pipe::status::PipeHandle]) {
    for h in handles {
        let st = h.status();
        tracing::info!(pipe = %st.name, link = st.link, queued = st.queued_objects, queued_bytes = st.queued_bytes, delivered = st.delivered_objects, quarantined = st.quarantined, filtered = st.filtered, "pipe stopped");
    }
}
