//! A pipe's counters, shared with the summary and the status.

use std::sync::atomic::AtomicU64;

/// Counters of one pipe, for the periodic summary.
#[derive(Debug, Default)]
pub struct PipeStats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub reconnects: AtomicU64,
    pub quarantined: AtomicU64,
    pub queued: AtomicU64,
    /// Objects taken and not yet delivered (or sent, on the diode).
    pub in_flight: AtomicU64,
    pub connected: AtomicU64,
    /// Files left in the spool by the `ignore` rule, and their bytes, at the last full scan.
    pub ignored_files: AtomicU64,
    pub ignored_bytes: AtomicU64,
}
