//! The command line and process lifecycle both daemons share: `run`, `check-config`, `keygen`
//! and the control commands (`pipes`, `pipe stop|start`, `reload`), the exit codes, logging and
//! the runtime, and waiting for SIGTERM or Ctrl-C (SIGHUP is logged and otherwise ignored until
//! the daemon reloads on it through `control::ControlHandle::reload_on_hangup`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::control::Request;
use crate::control::commands::PipeAction;
use crate::logging::{LogFormat, LogTime};

/// The subcommands of both daemons.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Run the daemon until SIGTERM or Ctrl-C.
    Run {
        /// Config file (TOML); see examples/ in the source tree.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and its hardware profile, print every problem, exit 2 if any.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a new random pre-shared key (64 hex digits) for a pipe. Copy the same file to the
    /// other side; it is never overwritten. The file is mode 640 and group `gapsync` (the
    /// daemons' group) when that group exists and may be used, otherwise mode 600.
    Keygen {
        /// Where to write the key, e.g. /etc/gapsync/keys/scada-1.key.
        #[arg(long, short)]
        out: PathBuf,
        /// Group that may read the key (mode 640); fails if it cannot be set. Default: gapsync
        /// if that group exists.
        #[arg(long, short)]
        group: Option<String>,
    },
    /// Show the running daemon's pipes, one row each: state, queue, deliveries, last error.
    /// Exit 3 if the daemon is not running.
    Pipes {
        /// The daemon's config file (it names the control socket).
        #[arg(long, short)]
        config: PathBuf,
        /// Print a JSON array of the rows instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop or start one pipe of the running daemon.
    Pipe {
        #[command(subcommand)]
        action: crate::control::commands::PipeAction,
    },
    /// Make the running daemon check its config file again and apply it (what `systemctl
    /// reload` and SIGHUP do); a bad config is refused with its errors and the running one kept.
    Reload {
        /// The daemon's config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs a subcommand. `check` returns the one-line summary of a valid config; `run` runs the
/// daemon. Exit codes: 0 success, 2 invalid config, 1 the daemon stopped on an error; the
/// control commands also exit 3 when the daemon is not running.
pub fn dispatch(
    program: &str,
    command: Command,
    check: impl FnOnce(&Path) -> anyhow::Result<String>,
    run: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> ExitCode {
    match command {
        Command::CheckConfig { config } => match check(&config) {
            Ok(summary) => {
                println!("{}: OK ({summary})", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(2)
            }
        },
        Command::Keygen { out, group } => match crate::keys::keygen(&out, group.as_deref()) {
            Ok(access) => {
                let how = match access {
                    crate::keys::KeyAccess::Group(g) => format!("mode 640, group {g}"),
                    crate::keys::KeyAccess::OwnerOnly { reason } => {
                        format!("mode 600, owner only: {reason}")
                    }
                };
                println!(
                    "wrote a new key to {} ({how}); copy it to the other side's key file",
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Pipes { config, json } => {
            crate::control::commands::run(program, &config, Request::Pipes, json)
        }
        Command::Pipe { action } => {
            let (config, request) = match action {
                PipeAction::Stop { name, config } => (config, Request::Stop { pipe: name }),
                PipeAction::Start { name, config } => (config, Request::Start { pipe: name }),
            };
            crate::control::commands::run(program, &config, request, false)
        }
        Command::Reload { config } => {
            crate::control::commands::run(program, &config, Request::Reload, false)
        }
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{program}: {e:#}");
                tracing::error!("stopped: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Where and how a daemon logs.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: Option<PathBuf>,
    pub format: LogFormat,
    pub time: LogTime,
    pub level: String,
}

/// Starts logging and the multi-threaded runtime, then runs `serve` to completion.
pub fn start<F: Future<Output = anyhow::Result<()>>>(
    program: &str,
    log: &LogSettings,
    serve: F,
) -> anyhow::Result<()> {
    let _guard = crate::logging::init(
        program,
        log.dir.as_deref(),
        log.format,
        log.time,
        &log.level,
    )?;
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let hangups = log_hangups()?;
        let result = serve.await;
        hangups.abort();
        result
    })
}

/// What a daemon logs for each SIGHUP: reload does not exist yet, and SIGHUP's default action
/// (exit 129 without a word) must not stop a daemon that `systemctl reload` or a habit sent it.
pub const HANGUP_MESSAGE: &str = "SIGHUP received; reload is not supported yet, keep running";

/// Set while a daemon reloads on SIGHUP (`control::ControlHandle::reload_on_hangup`).
static HANGUPS_RELOAD: AtomicBool = AtomicBool::new(false);

/// Whether SIGHUP is a reload (the control channel handles it) rather than only a WARN.
pub(crate) fn hangups_reload(on: bool) {
    HANGUPS_RELOAD.store(on, Ordering::SeqCst);
}

/// Replaces SIGHUP's default action for the rest of the process: each one is logged at WARN
/// (the operator asked for something that did not happen) and the daemon goes on, unless the
/// daemon reloads on SIGHUP through its control channel.
fn log_hangups() -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if HANGUPS_RELOAD.load(Ordering::SeqCst) {
                continue;
            }
            tracing::warn!(
                hint = "restart the daemon to apply a changed config",
                "{HANGUP_MESSAGE}"
            );
        }
    }))
}

/// Open files both daemons may need at once: the sender holds up to 4,096 small files being
/// read, the receiver a frame's worth of partials (about 1,000 of 4 KiB in a 4 MiB frame).
const OPEN_FILES_WANTED: u64 = 16_384;

/// Raises the soft limit of open files towards the hard limit (as systemd's units set
/// LimitNOFILE=65536; a shell's soft limit is often 1,024), and says at WARN when even the
/// hard limit is lower than what a busy pipe may hold.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let (soft, hard) = (
        lim.current.unwrap_or(u64::MAX),
        lim.maximum.unwrap_or(u64::MAX),
    );
    if soft < OPEN_FILES_WANTED.min(hard) {
        lim.current = Some(OPEN_FILES_WANTED.min(hard));
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, soft, "cannot raise the limit of open files");
        }
    }
    if hard < OPEN_FILES_WANTED {
        tracing::warn!(
            hard,
            wanted = OPEN_FILES_WANTED,
            "the hard limit of open files is low; with many small files in flight, opens may wait for descriptors (set LimitNOFILE=65536 as the shipped unit does)"
        );
    }
}

/// Calls `tick` every `every` until SIGTERM or Ctrl-C, then tells systemd the daemon stops.
pub async fn until_shutdown(every: Duration, tick: impl FnMut()) -> anyhow::Result<()> {
    serve_until_shutdown(every, tick, None, |_| {}).await
}

/// [`until_shutdown`] that also hands each control request (from
/// [`crate::control::serve`], SIGHUP included once `reload_on_hangup` is on) to `on_request`,
/// which must answer it (or pass it on to a task that will).
pub async fn serve_until_shutdown(
    every: Duration,
    mut tick: impl FnMut(),
    mut requests: Option<tokio::sync::mpsc::Receiver<crate::control::Incoming>>,
    mut on_request: impl FnMut(crate::control::Incoming),
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = interval.tick() => tick(),
            Some(incoming) = next_request(&mut requests) => on_request(incoming),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    crate::notify_stopping();
    tracing::info!("stopping");
    Ok(())
}

/// The next control request; never, without a control channel.
async fn next_request(
    requests: &mut Option<tokio::sync::mpsc::Receiver<crate::control::Incoming>>,
) -> Option<crate::control::Incoming> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
