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
mod load;
mod pipe;
mod sink;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gapsync_daemon::control::{self, Request, Response};

use crate::config::Config;
use crate::pipe::Pipes;

/// How often abandoned partials are looked for (besides at start).
pub(crate) const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);

/// How often sinks with background work (postgres) are moved on.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Parser, Debug)]
#[command(
    name = "gapsync-receiver",
    version,
    about = "Receives files from a gapsync sender through an isolation gate and lands them whole and exactly once."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Daemon(gapsync_daemon::cli::Command),
    /// Apply table object files (e.g. landed by a directory sink) to the target database of
    /// pipe NAME's postgres sink, each exactly once; one line per file. Exit 0 when every file
    /// was applied or applied already, 1 otherwise.
    Load {
        /// Config file (TOML) holding the pipe.
        #[arg(long, short)]
        config: PathBuf,
        /// The pipe whose postgres sink settings are used.
        #[arg(long)]
        pipe: String,
        /// The pipe's sender node, when several senders have a pipe of that name.
        #[arg(long)]
        from: Option<String>,
        /// Table object files (`*.gst`), applied in the order given.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let command = match Cli::parse().command {
        Cmd::Daemon(c) => c,
        Cmd::Load {
            config,
            pipe,
            from,
            files,
        } => return load::run(&config, &pipe, from.as_deref(), &files),
    };
    gapsync_daemon::cli::dispatch(
        "gapsync-receiver",
        command,
        |path| {
            Config::load(path).and_then(|c| {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                let problems = load::check_databases(&c);
                if !problems.is_empty() {
                    return Err(gapsync_daemon::config::ConfigError::Problems {
                        path: path.to_path_buf(),
                        problems,
                    }
                    .into());
                }
                Ok(format!(
                    "node {}, profile {}, {} pipe(s), listen {}",
                    c.node,
                    c.profile.name,
                    c.pipes.len(),
                    c.listen
                ))
            })
        },
        |path| {
            let config = Config::load(path)?;
            let path = path.to_path_buf();
            gapsync_daemon::cli::start(
                "gapsync-receiver",
                &config.log_settings(),
                serve(path, config),
            )
        },
    )
}

async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let (mut control, requests) = control::serve(&config.control_socket).with_context(|| {
        format!(
            "cannot open the control socket {} (set control_socket in the config)",
            config.control_socket.display()
        )
    })?;
    control.reload_on_hangup()?;
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
    let steer = Steer {
        started: std::fs::read(&path).unwrap_or_default(),
        path,
        listen: listen.to_string(),
    };
    housekeeping(&config, &pipes, udp.as_ref(), requests, &steer).await?;
    drop(control);
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
    requests: tokio::sync::mpsc::Receiver<control::Incoming>,
    steer: &Steer,
) -> anyhow::Result<()> {
    let stale_after = config.stale_partial_after;
    let mut last_housekeeping = std::time::Instant::now();
    let mut last_summary = std::time::Instant::now();
    let summary_every = config.summary_interval.min(HOUSEKEEPING_EVERY);
    // A postgres sink applies in the background: it is moved on every quarter second.
    let every = if pipes.any_background() {
        summary_every.min(PROGRESS_EVERY)
    } else {
        summary_every
    };
    let answer = |incoming: control::Incoming| {
        let response = steer.answer(&incoming.request, pipes);
        incoming.answer(response);
    };
    gapsync_daemon::cli::serve_until_shutdown(
        every,
        || {
            tokio::task::block_in_place(|| pipes.progress());
            if last_summary.elapsed() + every / 2 < summary_every {
                return;
            }
            last_summary = std::time::Instant::now();
            pipes.log_summary();
            if let Some(udp) = udp {
                udp.summary_due();
            }
            tokio::task::block_in_place(|| pipes.retry_landing());
            if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                last_housekeeping = std::time::Instant::now();
                tokio::task::block_in_place(|| pipes.housekeeping(stale_after));
            }
        },
        Some(requests),
        answer,
    )
    .await
}

/// What the control socket needs besides the pipes: the config file, as it was at start.
struct Steer {
    path: PathBuf,
    started: Vec<u8>,
    /// Where senders connect (the remote of every row).
    listen: String,
}

impl Steer {
    /// Answers one control request.
    fn answer(&self, request: &Request, pipes: &Pipes) -> Response {
        match request {
            Request::Pipes => Response::Pipes {
                rows: pipes.status().iter().map(|r| r.row(&self.listen)).collect(),
            },
            Request::Stop { pipe } | Request::Start { pipe } => Response::failed(format!(
                "a receiver pipe is not stopped or started here: the sender steers pipe {pipe:?} (gapsync-sender pipe stop|start {pipe})"
            )),
            Request::Reload => self.reload(),
        }
    }

    /// Checks the config file again. The receiver applies a changed config only at a restart,
    /// so a valid but changed file is answered with that (and the running config is kept).
    fn reload(&self) -> Response {
        if let Err(e) = Config::load(&self.path) {
            return Response::failed(format!("reload refused, the running config is kept: {e:#}"));
        }
        match std::fs::read(&self.path) {
            Ok(now) if now == self.started => Response::done(format!(
                "{} is unchanged; nothing to do",
                self.path.display()
            )),
            _ => Response::failed(format!(
                "{} is valid, but the receiver applies a changed config only at a restart: run systemctl restart gapsync-receiver (the running config is kept until then)",
                self.path.display()
            )),
        }
    }
}

/// Says each pipe's `silence_alarm` when it is due.
async fn check_silence(pipes: Arc<Pipes>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        pipes.check_silence(std::time::Instant::now());
    }
}
