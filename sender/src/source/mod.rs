//! Sources: where a pipe's files come from. A new kind of source (a database table, a record
//! stream) is a new module that sends [`SourceEvent`]s; the link does not change.

pub mod after_send;
pub mod identity;
pub mod ignore;
pub mod lease;
pub mod spool;

use std::path::PathBuf;

/// What a source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A complete file, by its relative path (`/`-separated UTF-8) inside the spool, and its
    /// size when it was found.
    Found { rel: String, size: u64 },
    /// A file whose name cannot be sent as it is; it is quarantined with the reason.
    BadName { path: PathBuf, reason: String },
}
