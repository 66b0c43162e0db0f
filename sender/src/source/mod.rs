//! Sources: where a pipe's objects come from. A new kind of source (a database table, a record
//! stream) is a new folder here plus one variant in [`SourceConfig`] and [`SourceSettings`];
//! the pipe policy and the links do not change.

pub mod identity;
pub mod postgres;
pub mod spool;

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use gapsync_protocol::OriginChain;
use serde::Deserialize;
use tokio::sync::mpsc;

use self::identity::Identity;
use self::postgres::PostgresSource;
use self::postgres::config::{PostgresSettings, RawPostgres};
use self::spool::SpoolSource;
use self::spool::config::{RawSpool, SpoolSettings};
use crate::config::PipeConfig;
use crate::pipe::PipeStats;
use crate::process::history::Present;

/// A pipe's source of re-readable objects (a spool file today; a table chunk or a record
/// batch next). The pipe policy ([`crate::pipe::Pipe`]) queues what it reports, takes objects
/// by key to send them, and tells it each outcome; it knows nothing else about the source.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Starts finding objects; each is reported once on `tx` (again after a `Busy` or a
    /// forgotten key), until `tx`'s receiver is dropped.
    fn start(&mut self, tx: mpsc::Sender<SourceEvent>) -> io::Result<()>;
    /// Whether the object `key` is still there (an in-flight record of a gone one is dropped).
    fn exists(&self, key: &str) -> bool;
    /// The object's size now (0 if it cannot be read), for the queue's byte count.
    fn size(&self, key: &str) -> u64;
    /// Whether an object that changed while it was sent has been unchanged long enough to be
    /// sent again.
    fn settled(&self, key: &str) -> bool;
    /// Opens the object to send it; `Ok(None)` while it is still being written.
    fn take(&mut self, key: &str) -> io::Result<Option<Opened>>;
    /// Told what became of an object: sent (delete, move or advance a watermark, if it is
    /// still the version sent) or quarantined (set aside with an ERROR naming `reason`).
    fn settle(&mut self, key: &str, outcome: Outcome<'_>) -> Disposal;
    /// An object found under a name that cannot be sent (`SourceEvent::BadName`).
    fn reject(&mut self, found: &Path, reason: &str);
    /// How long settled objects are kept for a resend (`None`: until removed by hand).
    fn retention(&self) -> Option<Duration>;
    /// Drops the kept copy of a settled object whose retention is over; true if it was there.
    fn drop_kept(&mut self, key: &str) -> bool;
    /// Every object there now, for the pipe's history mark (taken once, when the pipe is
    /// created). A source that cannot list its objects returns an empty list (see
    /// [`crate::process::history`]).
    fn list(&self) -> io::Result<Vec<Present>>;
    /// A source whose objects come from runs (a table snapshot) rather than as they appear:
    /// what starts a run (the cron, `pipe start`). `None`: objects come by themselves, and a
    /// cron holds them back until its run instead.
    fn run_trigger(&self) -> Option<RunTrigger> {
        None
    }
}

/// Asks a source for a run; the source's thread waits on it.
#[derive(Debug, Clone, Default)]
pub struct RunTrigger {
    inner: Arc<(Mutex<u64>, Condvar)>,
}

impl RunTrigger {
    /// Asks for one run (several asked before it starts make one).
    pub fn fire(&self) {
        let (count, cv) = &*self.inner;
        *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        cv.notify_all();
    }

    /// Waits up to `timeout` for a run asked after `seen` (updated); true if one was.
    pub fn wait(&self, seen: &mut u64, timeout: Duration) -> bool {
        let (count, cv) = &*self.inner;
        let guard = count.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |c| *c == *seen)
            .unwrap_or_else(|e| e.into_inner());
        let fired = *guard != *seen;
        *seen = *guard;
        fired
    }
}

/// An object opened to be sent.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub meta: Metadata,
    /// Where the object is read again when a resend needs bytes already read.
    pub reopen: PathBuf,
    /// The gapsync hops the object crossed before it landed in this source (empty: it
    /// originated here).
    pub origin: OriginChain,
    /// The permission bits (`preserve_mode`) and, for a symlink sent as a link, its target.
    pub attrs: gapsync_protocol::ObjectAttrs,
}

/// What the pipe tells its source about an object.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Delivered (gate links) or sent (diode): `Identity` is the version that was read.
    Sent(&'a Identity),
    /// Not sendable: set aside, with this reason.
    Quarantine(&'a str),
}

/// What became of a settled object.
#[derive(Debug)]
pub enum Disposal {
    /// Deleted, moved or set aside: the words for the `sent` line.
    Done(&'static str),
    /// Not there any more (removed or renamed by someone else).
    Gone,
    /// It differs from what was sent: what changed. Kept, to be sent again.
    Changed(String),
    /// A process has it open for writing. Kept; taken again once it is closed.
    Busy,
    /// The action failed.
    Failed(io::Error),
}

/// The source a pipe's config describes.
pub fn build(pc: &PipeConfig, stats: Arc<PipeStats>) -> Box<dyn Source> {
    match &pc.source {
        SourceSettings::Spool(s) => Box::new(SpoolSource::new(pc, s.clone(), stats)),
        SourceSettings::Postgres(s) => Box::new(PostgresSource::new(pc, (**s).clone(), stats)),
    }
}

/// What a source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A complete file, by its relative path (`/`-separated UTF-8) inside the spool, and its
    /// size and time (a file's mtime) when it was found.
    Found {
        rel: String,
        size: u64,
        time: SystemTime,
    },
    /// A file whose name cannot be sent as it is; it is quarantined with the reason.
    BadName { path: PathBuf, reason: String },
}

/// A pipe's `source = { type = "...", ... }` as written.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Spool(RawSpool),
    Postgres(RawPostgres),
}

/// A checked source.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    Spool(SpoolSettings),
    Postgres(Box<PostgresSettings>),
}

impl SourceSettings {
    /// The spool, for a pipe whose source is one (`gapsync-sender resend`).
    pub fn spool(&self) -> Option<&SpoolSettings> {
        match self {
            SourceSettings::Spool(s) => Some(s),
            SourceSettings::Postgres(_) => None,
        }
    }
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
            SourceConfig::Postgres(raw) => raw
                .check(p, label, cx)
                .map(|s| SourceSettings::Postgres(Box::new(s))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_wakes_its_waiter_once_and_runs_asked_together_make_one() {
        let t = RunTrigger::default();
        let mut seen = 0;
        assert!(
            !t.wait(&mut seen, Duration::from_millis(10)),
            "nothing asked"
        );
        t.fire();
        t.fire();
        assert!(t.wait(&mut seen, Duration::from_millis(10)));
        assert!(!t.wait(&mut seen, Duration::from_millis(10)), "both seen");
        let other = t.clone();
        let waiter = std::thread::spawn(move || {
            let mut seen = 2;
            other.wait(&mut seen, Duration::from_secs(10))
        });
        std::thread::sleep(Duration::from_millis(50));
        t.fire();
        assert!(
            waiter.join().expect("joined"),
            "woken by a fire from another thread"
        );
    }
}
