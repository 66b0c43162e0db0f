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
//!
//! Each pipe is a unit of its own ([`steer`]): the control socket (`pipes`, `pipe stop|start`,
//! `reload`, SIGHUP) starts, stops and restarts pipes without touching the others, and one
//! running flag per pipe combines the operator's stop and the schedule's windows.

mod config;
mod link;
mod pipe;
// Built standalone (issue 19, sections 3-4); the pipe policy wires it in.
#[allow(dead_code)]
mod process;
mod resend;
mod schedule;
mod source;
mod state;
mod steer;
mod summary;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gapsync_daemon::control;

use crate::config::Config;

/// How often rates are sampled (and the summary checked for being due).
const TICK: Duration = Duration::from_secs(5);

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
            Config::load(path)
                .and_then(|c| {
                    let report = source::postgres::probe::report(&c);
                    for w in &report.warnings {
                        eprintln!("warning: {w}");
                    }
                    report.for_check().map(|()| c)
                })
                .map(|c| {
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
            // Permanent faults stop the start; a database not up yet does not (its pipe
            // starts and keeps trying, saying why in its status).
            let report = source::postgres::probe::report(&config);
            report.for_start()?;
            let settings = config.log_settings();
            let serving = serve(path.into(), config, report);
            gapsync_daemon::cli::start("gapsync-sender", &settings, serving)
        },
    )
}

async fn serve(
    path: std::path::PathBuf,
    config: Config,
    probed: source::postgres::probe::Report,
) -> anyhow::Result<()> {
    let (mut control, requests) = control::serve(&config.control_socket).with_context(|| {
        format!(
            "cannot open the control socket {} (set control_socket in the config)",
            config.control_socket.display()
        )
    })?;
    control.reload_on_hangup()?;
    log_started(&config);
    for problem in &probed.unreachable {
        tracing::warn!(problem = %problem, "postgres source: the database does not answer yet; the pipe starts and keeps trying");
    }
    for warning in &probed.warnings {
        tracing::warn!(warning = %warning, "postgres source");
    }
    let steer = std::cell::RefCell::new(steer::Steer::start(path, config)?);
    tracing::info!(session = steer.borrow().session(), "all pipes started");
    gapsync_daemon::notify_ready();
    let every = steer.borrow().config().summary_interval.min(TICK);
    gapsync_daemon::cli::serve_until_shutdown(
        every,
        || steer.borrow_mut().tick(),
        Some(requests),
        |incoming: control::Incoming| {
            let response = steer.borrow_mut().answer(&incoming.request);
            incoming.answer(response);
        },
    )
    .await?;
    drop(control);
    steer.into_inner().shutdown().await;
    Ok(())
}

/// The `started` line.
fn log_started(config: &Config) {
    let profile = config
        .profile
        .as_ref()
        .map_or("(per pipe)", |p| p.name.as_str());
    tracing::info!(node = %config.node, profile, pipes = config.pipes.len(), state_dir = %config.state_dir.display(), control_socket = %config.control_socket.display(), "started");
}
