//! Sinks: where a pipe's transfers land. A new kind of sink (a database table, a record stream)
//! is a new folder implementing [`Sink`] plus one variant of [`SinkConfig`]; the links, the
//! pipe's replay state and its status do not change.

pub mod directory;
pub mod land;
pub mod postgres;

use std::path::Path;

use gapsync_protocol::{Commit, OpenFile, OriginChain, PathError};
use serde::Deserialize;

use self::postgres::config::{PostgresConfig, PostgresSettings};
use directory::config::{DirectoryConfig, DirectorySettings};

/// A pipe's `sink` as written; `type` selects the kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    Directory(DirectoryConfig),
    Postgres(PostgresConfig),
}

/// A checked sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSettings {
    Directory(DirectorySettings),
    Postgres(PostgresSettings),
}

impl SinkConfig {
    /// Parses a pipe's `sink` table, pushing every problem: a missing or unknown `type`, and
    /// each key the type does not take (an internally tagged enum buffers its fields, so the
    /// config loader cannot see those; they are looked for here, in the variant's own struct).
    pub fn parse(p: &mut Vec<String>, label: &str, value: toml::Value) -> Option<Self> {
        let sink = match SinkConfig::deserialize(value.clone()) {
            Ok(s) => s,
            Err(e) => {
                p.push(format!(
                    "{label}: `sink` {}: e.g. sink = {{ type = \"directory\", path = \"/srv/gapsync/inbox\" }}",
                    e.to_string().trim_end()
                ));
                return None;
            }
        };
        let mut rest = match value {
            toml::Value::Table(t) => t,
            _ => return Some(sink),
        };
        rest.remove("type");
        let mut unknown = Vec::new();
        let record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let _ = match &sink {
            SinkConfig::Directory(_) => {
                serde_ignored::deserialize(toml::Value::Table(rest), record)
                    .map(|_: DirectoryConfig| ())
            }
            SinkConfig::Postgres(_) => serde_ignored::deserialize(toml::Value::Table(rest), record)
                .map(|_: PostgresConfig| ()),
        };
        for k in unknown {
            p.push(format!(
                "unknown key `sink.{k}` in {label}: remove it or correct its spelling"
            ));
        }
        Some(sink)
    }

    /// Checks the sink of pipe `name` from `from`.
    pub fn check(
        self,
        p: &mut Vec<String>,
        label: &str,
        base: &Path,
        names: (&str, &str),
    ) -> Option<SinkSettings> {
        match self {
            SinkConfig::Directory(d) => d
                .check(p, label, "sink.path", base, names)
                .map(SinkSettings::Directory),
            SinkConfig::Postgres(c) => c.check(p, label, base).map(SinkSettings::Postgres),
        }
    }
}

impl SinkSettings {
    /// The sink kind, for status rows and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkSettings::Directory(_) => "directory",
            SinkSettings::Postgres(_) => "postgres",
        }
    }
}

/// What a sink did with a request that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Written (or opened) now.
    Done,
    /// The transfer was already committed earlier: nothing was written again.
    AlreadyCommitted,
}

/// Details of a file made durable and visible, for the delivery log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub path: String,
    pub size: u64,
    pub digest_hex: String,
    pub elapsed: std::time::Duration,
}

/// What a flush (or a retried landing) did: the files that became visible, and the error that
/// stopped the rest. Files delivered before an error are delivered all the same: each gets its
/// `delivered` line even when the frame is not answered OK.
#[derive(Debug)]
pub struct Flushed {
    pub delivered: Vec<Delivered>,
    pub result: Result<(), SinkError>,
}

impl Default for Flushed {
    fn default() -> Self {
        Self {
            delivered: Vec::new(),
            result: Ok(()),
        }
    }
}

impl Flushed {
    /// The delivered files, or the error.
    #[cfg(test)]
    pub fn into_result(self) -> Result<Vec<Delivered>, SinkError> {
        self.result.map(|()| self.delivered)
    }
}

/// Why a request was refused (answered FAIL), sorted by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("name {name:?} refused: {source}")]
    BadName { name: String, source: PathError },
    #[error("name {0:?} would leave the destination folder through a symlink or a non-folder")]
    Escape(String),
    #[error("name {0:?} lies in the receiver's staging folder inside the destination")]
    Reserved(String),
    #[error("transfer {0:016x} was not opened in this connection")]
    NotOpen(u64),
    #[error(
        "transfer {transfer:016x} was reopened as {new_path:?}, {new_size} bytes; it was {old_path:?}, {old_size} bytes"
    )]
    Reopened {
        transfer: u64,
        old_path: String,
        old_size: u64,
        new_path: String,
        new_size: u64,
    },
    #[error("data at offset {offset} + {len} bytes is past the announced size {size}")]
    OutOfRange { offset: u64, len: usize, size: u64 },
    #[error(
        "size mismatch at commit: announced {announced}, committed {committed}, staged {staged}"
    )]
    SizeMismatch {
        announced: u64,
        committed: u64,
        staged: u64,
    },
    #[error(
        "digest mismatch at commit of {path:?}: the partial was lost or the source changed; the sender will resend from the start"
    )]
    DigestMismatch { path: String },
    #[error(
        "not enough free space to stage {path:?}: {needed} bytes needed, {free} free in {folder}; free space there (the sender keeps retrying)"
    )]
    NoSpace {
        path: String,
        needed: u64,
        free: u64,
        folder: String,
    },
    #[error(
        "{path:?} came from this node before (origin chain {origin}): refused so that it does not go round; the sender keeps it (retries, then quarantines it). Set forward_received = false on the sending pipe to leave such objects in place"
    )]
    Looped { path: String, origin: String },
    #[error("table object {object}: not applied to the target database: {message}")]
    Database { object: String, message: String },
    #[error("target table {table}: {problem}")]
    Schema { table: String, problem: String },
    #[error("{path:?} is not a usable table object: {reason}")]
    BadObject { path: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl SinkError {
    /// True for trouble on this host that says nothing about the file (a full disk, an I/O
    /// error): the connection is closed without a byte, so the sender retries later without
    /// counting it against the file. Everything else is answered FAIL.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            SinkError::Io { .. }
                | SinkError::NoSpace { .. }
                | SinkError::Database { .. }
                | SinkError::Schema { .. }
        )
    }

    /// True when the sender is at fault (bad names, protocol misuse) rather than this host.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            SinkError::Io { .. }
                | SinkError::DigestMismatch { .. }
                | SinkError::NoSpace { .. }
                | SinkError::Database { .. }
                | SinkError::Schema { .. }
        )
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// A landing place for one pipe's transfers. Calls for one pipe are serialised by the caller.
pub trait Sink: Send {
    /// Opens (or reopens after a reconnect or restart) transfer `transfer`, whose object
    /// crossed the hops of `origin` (this connection's included; empty: not recorded). The
    /// sink keeps the chain with the landed object where a later sender reads it.
    /// `attrs` carry the sender's permission bits (applied masked, see the directory sink)
    /// and, for a link object, its target (already checked to stay inside the destination).
    fn open_with_origin(
        &mut self,
        transfer: u64,
        open: &OpenFile,
        origin: &OriginChain,
        attrs: &gapsync_protocol::ObjectAttrs,
    ) -> Result<Applied, SinkError>;
    /// Opens transfer `transfer` without recording an origin chain (tests).
    #[cfg(test)]
    fn open(&mut self, transfer: u64, open: &OpenFile) -> Result<Applied, SinkError> {
        self.open_with_origin(transfer, open, &OriginChain::default(), &Default::default())
    }
    /// Writes `data` at `offset`. Writing the same chunk twice is harmless.
    fn write(&mut self, transfer: u64, offset: u64, data: &[u8]) -> Result<Applied, SinkError>;
    /// Verifies the size and digest and stages the transfer for the next [`Sink::flush`]; a
    /// commit of a transfer already done (or staged) is `AlreadyCommitted`.
    fn commit(&mut self, transfer: u64, commit: &Commit) -> Result<Applied, SinkError>;
    /// Makes every staged commit durable and visible and records it as done, as one group
    /// (the caller answers OK only when the result is `Ok`: every file committed in this
    /// frame is then visible under its final name). Returns what was delivered, also when an
    /// error stopped the rest.
    fn flush(&mut self) -> Flushed;
    /// Lands again the transfers recorded as done whose landing failed (after a restart, or
    /// a rename refused earlier). Each failure is in `result`; they stay staged.
    fn retry_landing(&mut self) -> Flushed;
    /// Moves background work on without waiting: takes what finished and starts what is due.
    /// Returns what became visible meanwhile. Called often (a fraction of a second) by the
    /// receiver's loop; the directory sink has no background work.
    fn progress(&mut self) -> Vec<Delivered> {
        Vec::new()
    }
    /// True when `transfer` is recorded as done but not yet visible (waiting for a retry).
    fn is_unlanded(&self, transfer: u64) -> bool;
    /// How many transfers are recorded as done but not yet visible.
    fn unlanded(&self) -> usize;
    /// Forgets the staged commits after a refused request: nothing of them becomes visible;
    /// their partials stay for a resend.
    fn abandon(&mut self);
    /// Removes the partial data of `transfer` (an object that cannot be completed).
    fn drop_partial(&mut self, transfer: u64);
    /// Transfers open but not committed.
    fn partials(&self) -> usize;
    /// Removes partial transfers untouched for longer than `stale_after`; returns how many.
    fn housekeeping(&mut self, stale_after: std::time::Duration) -> std::io::Result<usize>;
    /// A problem found when the sink opened that does not stop the daemon (a target database
    /// that is down), for the pipe's status row.
    fn problem_at_open(&self) -> Option<String> {
        None
    }
}
