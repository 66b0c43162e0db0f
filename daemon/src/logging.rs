//! Log files are the operator's interface: daily-rotated files in the log folder, human-readable
//! or JSON lines, plus stderr when run in a terminal.

use std::io::IsTerminal as _;
use std::path::Path;

use serde::Deserialize;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-11-21T10:00:00.000Z  INFO delivered pipe=scada path=a.bin ...`
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Lines buffered for the log writer thread before logging waits for it.
const LOG_BUFFER_LINES: usize = 4096;

/// Bytes the log writer thread gathers into one write: it flushes after each run of lines it
/// finds waiting, so lines still reach the file at once, but a burst (a line per small file)
/// costs one system call per run instead of one per line.
const LOG_WRITE_BYTES: usize = 64 << 10;

/// Keeps the log writer thread alive; dropping it flushes every buffered line.
#[derive(Debug)]
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// Days of rotated log files kept.
pub const KEEP_LOG_FILES: usize = 30;

/// Starts logging. `program` names the files: `<program>.<YYYY-MM-DD>.log`.
///
/// `RUST_LOG` overrides `level` (e.g. `RUST_LOG=debug`).
pub fn init(
    program: &str,
    log_dir: Option<&Path>,
    format: LogFormat,
    level: &str,
) -> anyhow::Result<LogGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let mut layers = Vec::new();
    let mut guard = None;
    if let Some(dir) = log_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create log_dir {}: {e}; create it or fix `log_dir`",
                dir.display()
            )
        })?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(program)
            .filename_suffix("log")
            .max_log_files(KEEP_LOG_FILES)
            .build(dir)
            .map_err(|e| anyhow::anyhow!("cannot open a log file in {}: {e}", dir.display()))?;
        // Not lossy: a full buffer slows logging down instead of dropping lines. Bounded to a
        // few thousand lines (the default 128,000 held tens of MiB during a burst of small
        // files).
        let (writer, g) = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(LOG_BUFFER_LINES)
            .finish(std::io::BufWriter::with_capacity(LOG_WRITE_BYTES, appender));
        guard = Some(g);
        let base = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false);
        let layer = match format {
            LogFormat::Text => base.boxed(),
            LogFormat::Json => base.json().flatten_event(true).boxed(),
        };
        layers.push(layer.with_filter(filter()).boxed());
    }
    if log_dir.is_none() || std::io::stderr().is_terminal() {
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        layers.push(layer.with_filter(filter()).boxed());
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))?;
    Ok(LogGuard { _file: guard })
}
