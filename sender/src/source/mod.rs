//! Sources: where a pipe's objects come from. A new kind of source (a database table, a record
//! stream) is a new folder here plus one variant in [`SourceConfig`] and [`SourceSettings`];
//! the pipe policy and the links do not change.

pub mod spool;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use self::spool::config::{RawSpool, SpoolSettings};

/// What a source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A complete file, by its relative path (`/`-separated UTF-8) inside the spool, and its
    /// size when it was found.
    Found { rel: String, size: u64 },
    /// A file whose name cannot be sent as it is; it is quarantined with the reason.
    BadName { path: PathBuf, reason: String },
}

/// A pipe's `source = { type = "...", ... }` as written.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Spool(RawSpool),
}

/// A checked source.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    Spool(SpoolSettings),
}

impl SourceConfig {
    /// Checks the source's keys, pushing every problem; `None` when it cannot be built.
    pub fn check(
        self,
        p: &mut Vec<String>,
        label: &str,
        cx: &SourceContext,
    ) -> Option<SourceSettings> {
        match self {
            SourceConfig::Spool(raw) => raw.check(p, label, cx).map(SourceSettings::Spool),
        }
    }
}

/// What a source's check needs from its pipe.
pub struct SourceContext<'a> {
    pub base: &'a Path,
    /// The pipe's state folder (`None` when `state_dir` is unusable).
    pub pipe_state: Option<&'a Path>,
    /// The pipe's link is the diode: nothing confirms arrival.
    pub diode: bool,
}
