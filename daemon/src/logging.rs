//! Log files are the operator's interface: daily-rotated files in the log folder, human-readable
//! or JSON lines, plus stderr when run in a terminal.
//!
//! Text lines quote and escape field values ([`crate::fields`]); timestamps are UTC or local
//! time ([`LogTime`]); colours only on a terminal, never with `NO_COLOR` set.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fields::QuotedFields;
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

/// Which clock log timestamps (and the summary's day counters) follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTime {
    /// `2026-11-21T10:00:00.123456Z`
    #[default]
    Utc,
    /// `2026-11-21T11:00:00.123456+01:00`: the host's zone (TZ, /etc/localtime), following
    /// daylight saving changes while the daemon runs.
    Local,
}

impl LogTime {
    /// `at` as a log timestamp.
    pub fn format(self, at: std::time::SystemTime) -> String {
        let utc = chrono::DateTime::<chrono::Utc>::from(at);
        match self {
            LogTime::Utc => utc.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            LogTime::Local => utc
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
                .to_string(),
        }
    }

    /// The day `at` falls on, `YYYY-MM-DD`, in this clock.
    pub fn day(self, at: std::time::SystemTime) -> String {
        let utc = chrono::DateTime::<chrono::Utc>::from(at);
        match self {
            LogTime::Utc => utc.format("%Y-%m-%d").to_string(),
            LogTime::Local => utc
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d")
                .to_string(),
        }
    }
}

impl tracing_subscriber::fmt::time::FormatTime for LogTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        w.write_str(&self.format(std::time::SystemTime::now()))
    }
}

/// Whether stderr lines get ANSI colours: only on a terminal, and never when `NO_COLOR` is set
/// to a non-empty value (<https://no-color.org>).
pub fn want_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
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

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Bad configuration or local I/O: `log_dir` cannot be made.
    #[error("cannot create log_dir {dir}: {error}; create it or fix `log_dir`")]
    CreateDir { dir: PathBuf, error: std::io::Error },
    /// Local I/O: no log file can be opened in `log_dir`.
    #[error("cannot open a log file in {dir}: {error}")]
    OpenFile {
        dir: PathBuf,
        error: tracing_appender::rolling::InitError,
    },
    /// Internal bug: logging was started twice in one process.
    #[error("logging already initialised: {0}")]
    AlreadyInitialised(tracing_subscriber::util::TryInitError),
}

/// Starts logging. `program` names the files: `<program>.<YYYY-MM-DD>.log`.
///
/// `RUST_LOG` overrides `level` (e.g. `RUST_LOG=debug`).
pub fn init(
    program: &str,
    log_dir: Option<&Path>,
    format: LogFormat,
    time: LogTime,
    level: &str,
) -> Result<LogGuard, LogError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let mut layers = Vec::new();
    let mut guard = None;
    if let Some(dir) = log_dir {
        std::fs::create_dir_all(dir).map_err(|error| LogError::CreateDir {
            dir: dir.to_path_buf(),
            error,
        })?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(program)
            .filename_suffix("log")
            .max_log_files(KEEP_LOG_FILES)
            .build(dir)
            .map_err(|error| LogError::OpenFile {
                dir: dir.to_path_buf(),
                error,
            })?;
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
            .with_ansi(false)
            .with_timer(time);
        let layer = match format {
            LogFormat::Text => base.fmt_fields(QuotedFields).boxed(),
            LogFormat::Json => base.json().flatten_event(true).boxed(),
        };
        layers.push(layer.with_filter(filter()).boxed());
    }
    let terminal = std::io::stderr().is_terminal();
    if log_dir.is_none() || terminal {
        let no_color = std::env::var_os("NO_COLOR");
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(want_colour(terminal, no_color.as_deref()))
            .with_timer(time)
            .fmt_fields(QuotedFields);
        layers.push(layer.with_filter(filter()).boxed());
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(LogError::AlreadyInitialised)?;
    Ok(LogGuard { _file: guard })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(want_colour(true, None));
        assert!(want_colour(true, Some(OsStr::new(""))));
        assert!(!want_colour(true, Some(OsStr::new("1"))));
        assert!(!want_colour(false, None));
        assert!(!want_colour(false, Some(OsStr::new(""))));
    }

    #[test]
    fn utc_timestamps_and_days() {
        let at = UNIX_EPOCH + Duration::from_micros(1_795_256_400_123_456);
        assert_eq!(LogTime::Utc.format(at), "2026-11-21T10:20:00.123456Z");
        assert_eq!(LogTime::Utc.day(at), "2026-11-21");
        // Local time names its offset, and is the same instant.
        let local = LogTime::Local.format(at);
        let parsed = chrono::DateTime::parse_from_rfc3339(&local).expect("rfc 3339");
        assert_eq!(parsed.timestamp_micros(), 1_795_256_400_123_456, "{local}");
    }
}
