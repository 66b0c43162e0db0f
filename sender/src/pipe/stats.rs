//! A pipe's counters, shared with the summary and the status.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// Counters of one pipe, for the periodic summary and [`super::status::PipeStatus`].
#[derive(Debug, Default)]
pub struct PipeStats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub reconnects: AtomicU64,
    pub quarantined: AtomicU64,
    /// Objects queued or in flight.
    pub queued: AtomicU64,
    /// Bytes of the objects queued (not yet taken).
    pub queued_bytes: AtomicU64,
    /// Objects taken and not yet delivered (or sent, on the diode).
    pub in_flight: AtomicU64,
    pub connected: AtomicU64,
    /// Files left in the spool by the `ignore` rule, and their bytes, at the last full scan.
    pub ignored_files: AtomicU64,
    pub ignored_bytes: AtomicU64,
    /// Symlinks left in the spool (`symlinks = "skip"`), at the last full scan.
    pub skipped_links: AtomicU64,
    /// Objects left in the source by the filter or by `history` / `realtime` (see
    /// [`super::admit`]).
    pub filtered: AtomicU64,
    /// Objects that arrived through gapsync, left in the source by `forward_received = false`.
    pub forwarded_skipped: AtomicU64,
    /// When the last object was delivered, in milliseconds since the Unix epoch (0: never).
    pub last_delivery_ms: AtomicU64,
    /// Stopped by the operator (`pipe stop`), whatever the windows: a source that reads a
    /// database (postgres incremental) does not while this is set.
    pub stopped: AtomicBool,
    /// What the source holds back now, for the status (`None`: nothing).
    pub note: Mutex<Option<String>>,
    /// The last WARN or ERROR the pipe logged.
    pub last_problem: Mutex<Option<Problem>>,
}

/// A WARN or ERROR line of a pipe, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `WARN` or `ERROR`.
    pub level: &'static str,
    pub message: String,
    pub at: SystemTime,
}

impl PipeStats {
    /// Counts a delivered object of `size` bytes, now.
    pub fn delivered(&self, size: u64) {
        self.files.fetch_add(1, Relaxed);
        self.bytes.fetch_add(size, Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_delivery_ms.store(ms, Relaxed);
    }

    /// Keeps a WARN the pipe logged, for its status.
    pub fn warned(&self, message: impl Into<String>) {
        self.note("WARN", message.into());
    }

    /// Keeps an ERROR the pipe logged, for its status.
    pub fn failed(&self, message: impl Into<String>) {
        self.note("ERROR", message.into());
    }

    /// Sets (or clears) what the source holds back now.
    pub fn set_note(&self, note: Option<String>) {
        if let Ok(mut n) = self.note.lock() {
            *n = note;
        }
    }

    fn note(&self, level: &'static str, message: String) {
        let problem = Problem {
            level,
            message,
            at: SystemTime::now(),
        };
        if let Ok(mut last) = self.last_problem.lock() {
            *last = Some(problem);
        }
    }
}
