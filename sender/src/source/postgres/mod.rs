//! The `postgres` source: tables of a PostgreSQL database as table objects
//! (`gapsync_protocol::table`), exactly once (README "Tables: the postgres source").
//!
//! ```text
//!  runs thread  (snapshot, partitions; on a RunTrigger) --+
//!                                                          +--> spill file (fsync, rename)
//!  incremental thread (every poll_interval) ---------------+      -> tables.json (atomic)
//!                                                                 -> SourceEvent::Found
//!  pipe: take (open the spill file) -> send -> settle(Sent): delete (diode: keep a while)
//! ```
//!
//! A new mode (logical replication, `cdc`) is one more module beside [`runs`] and
//! [`incremental`] with its loop in [`worker`]; the spill, the state and the object paths
//! stay as they are.

pub mod catalog;
pub mod config;
pub mod incremental;
pub mod objects;
pub mod probe;
pub mod runs;
pub mod spill;
pub mod state;
pub mod worker;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use self::config::{PostgresSettings, TableMode};
use self::objects::{ObjectName, recorded};
use self::state::{StateFile, TablesState};
use self::worker::Ctx;
use super::spool::move_file;
use super::{Disposal, Opened, Outcome, RunTrigger, Source, SourceEvent};
use crate::config::PipeConfig;
use crate::pipe::PipeStats;
use crate::process::history::Present;

/// The `application_name` of the source's sessions: the late-commit wait does not wait for
/// them (they only read).
pub const APPLICATION_NAME: &str = "gapsync-sender";

/// One pipe's postgres source.
#[derive(Debug)]
pub struct PostgresSource {
    pipe: String,
    s: PostgresSettings,
    stats: Arc<PipeStats>,
    trigger: RunTrigger,
    /// Run the snapshot and partitions tables at start (no cron).
    run_at_start: bool,
    quarantine_dir: PathBuf,
}

impl PostgresSource {
    pub fn new(pc: &PipeConfig, s: PostgresSettings, stats: Arc<PipeStats>) -> Self {
        Self {
            pipe: pc.name.clone(),
            run_at_start: pc.schedule.as_ref().and_then(|s| s.cron()).is_none(),
            s,
            stats,
            trigger: RunTrigger::default(),
            quarantine_dir: pc.quarantine_dir.clone(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.s.pipe_state.join("tables")
    }

    fn sent_dir(&self) -> PathBuf {
        self.s.pipe_state.join("tables-sent")
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir().join(key)
    }
}

impl Source for PostgresSource {
    fn start(&mut self, tx: mpsc::Sender<SourceEvent>) -> io::Result<()> {
        // Read now, so that a damaged state file stops the pipe's start with its name.
        StateFile::open(&self.s.pipe_state)?;
        if self.run_at_start {
            self.trigger.fire();
        }
        let job = Job {
            pipe: self.pipe.clone(),
            s: self.s.clone(),
            dir: self.dir(),
            stats: self.stats.clone(),
            trigger: self.trigger.clone(),
        };
        std::thread::Builder::new()
            .name(format!("pg-{}", self.pipe))
            .spawn(move || job.run(tx))
            .map(drop)
    }

    fn exists(&self, key: &str) -> bool {
        self.path(key).is_file()
    }

    fn size(&self, key: &str) -> u64 {
        fs::metadata(self.path(key)).map_or(0, |m| m.len())
    }

    fn settled(&self, _key: &str) -> bool {
        // A spill file never changes once in place.
        true
    }

    fn take(&mut self, key: &str) -> io::Result<Option<Opened>> {
        let path = self.path(key);
        let file = fs::File::open(&path)?;
        let meta = file.metadata()?;
        Ok(Some(Opened {
            file,
            meta,
            reopen: path,
            origin: Default::default(),
            attrs: Default::default(),
        }))
    }

    fn settle(&mut self, key: &str, outcome: Outcome<'_>) -> Disposal {
        let path = self.path(key);
        if !path.is_file() {
            return Disposal::Gone;
        }
        let done = match outcome {
            Outcome::Sent(_) if self.s.diode => {
                move_file(&path, &self.sent_dir().join(key)).map(|()| "kept in tables-sent")
            }
            Outcome::Sent(_) => fs::remove_file(&path).map(|()| "spill file deleted"),
            Outcome::Quarantine(reason) => {
                let dest = self.quarantine_dir.join(key);
                let moved = move_file(&path, &dest);
                tracing::error!(pipe = %self.pipe, path = %key, quarantined_to = %dest.display(), reason, "table object quarantined; the receiver did not apply it (see its log); move it back into tables/ to send it again");
                moved.map(|()| "quarantined")
            }
        };
        match done {
            Ok(words) => Disposal::Done(words),
            Err(e) => Disposal::Failed(e),
        }
    }

    fn reject(&mut self, found: &Path, reason: &str) {
        tracing::error!(pipe = %self.pipe, path = %found.display(), reason, "table object cannot be sent under this name");
    }

    fn retention(&self) -> Option<Duration> {
        self.s.keep_sent_for
    }

    fn drop_kept(&mut self, key: &str) -> bool {
        fs::remove_file(self.sent_dir().join(key)).is_ok()
    }

    fn list(&self) -> io::Result<Vec<Present>> {
        let mut out = Vec::new();
        for (key, meta) in spill_files(&self.dir())? {
            out.push(Present {
                key,
                size: meta.len(),
                mtime: meta.modified()?,
            });
        }
        Ok(out)
    }

    fn run_trigger(&self) -> Option<RunTrigger> {
        let runs = (self.s.tables.iter()).any(|t| !matches!(t.mode, TableMode::Incremental { .. }));
        runs.then(|| self.trigger.clone())
    }
}

/// What the source's main thread needs.
struct Job {
    pipe: String,
    s: PostgresSettings,
    dir: PathBuf,
    stats: Arc<PipeStats>,
    trigger: RunTrigger,
}

impl Job {
    /// Takes the pipe's lock (a pipe restarted by a reload waits until the threads of its
    /// previous source have ended), recovers, reports what was recorded, then runs.
    fn run(self, tx: mpsc::Sender<SourceEvent>) {
        let lock = pipe_lock(&self.s.pipe_state);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (found, state) = match StateFile::open(&self.s.pipe_state)
            .and_then(|state| Ok((recover(&self.pipe, &self.dir, &state.state)?, state)))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(pipe = %self.pipe, error = %e, "postgres source: cannot read its state or spill files; the pipe reads no table until this is fixed and the pipe restarted");
                self.stats.failed(format!("postgres source: {e}"));
                return;
            }
        };
        let ctx = Arc::new(Ctx::new(self.pipe, self.s, self.dir, state, tx, self.stats));
        for ev in found {
            if ctx.tx.blocking_send(ev).is_err() {
                return;
            }
        }
        let tables = &ctx.s.tables;
        let incremental = tables
            .iter()
            .any(|t| matches!(t.mode, TableMode::Incremental { .. }));
        let runs = tables
            .iter()
            .any(|t| !matches!(t.mode, TableMode::Incremental { .. }));
        let incr = incremental.then(|| {
            let c = ctx.clone();
            std::thread::Builder::new()
                .name(format!("pg-incr-{}", ctx.pipe))
                .spawn(move || worker::incremental_loop(&c))
        });
        if runs {
            worker::runs_loop(&ctx, &self.trigger);
        }
        match incr {
            Some(Ok(handle)) => {
                let _ = handle.join();
            }
            Some(Err(e)) => {
                tracing::error!(pipe = %ctx.pipe, error = %e, "cannot start the incremental thread")
            }
            None => {}
        }
    }
}

/// One lock per pipe state folder in this process.
fn pipe_lock(pipe_state: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = (LOCKS.get_or_init(Default::default).lock()).unwrap_or_else(|e| e.into_inner());
    locks.entry(pipe_state.to_path_buf()).or_default().clone()
}

/// The bytes of the spill files under `dir` (written, not yet sent; 0 when unreadable).
fn pending_bytes(dir: &Path) -> u64 {
    spill_files(dir).map_or(0, |files| {
        (files.iter())
            .filter(|(key, _)| !key.contains("/."))
            .map(|(_, meta)| meta.len())
            .sum()
    })
}

/// A spill file of a snapshot of `table` under `dir` (one not yet sent), by key.
fn queued_snapshot(dir: &Path, table: &str) -> Option<String> {
    let files = fs::read_dir(dir.join(table)).ok()?;
    files.filter_map(Result::ok).find_map(|f| {
        let name = f.file_name().into_string().ok()?;
        (name.starts_with("snapshot-") && name.ends_with(".gst")).then(|| format!("{table}/{name}"))
    })
}

/// The spill files under `dir` (`<table>/<file>.gst`), by key.
fn spill_files(dir: &Path) -> io::Result<Vec<(String, fs::Metadata)>> {
    let mut out = Vec::new();
    let tables = match fs::read_dir(dir) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for table in tables {
        let table = table?;
        if !table.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(table.path())? {
            let file = file?;
            let meta = file.metadata()?;
            if let (Some(t), Some(f), true) = (
                table.file_name().to_str(),
                file.file_name().to_str(),
                meta.is_file(),
            ) {
                out.push((format!("{t}/{f}"), meta));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// At start: removes what a crash left half done (temporary files, spill files the state
/// does not record) and returns the recorded ones, to be reported again in order.
fn recover(pipe: &str, dir: &Path, state: &TablesState) -> io::Result<Vec<SourceEvent>> {
    let mut found = Vec::new();
    for (key, meta) in spill_files(dir)? {
        let keep = ObjectName::parse(&key).is_some_and(|n| recorded(state, &n));
        if !keep && key.contains("/.") {
            fs::remove_file(dir.join(&key))?;
            continue;
        }
        if !keep {
            tracing::info!(pipe = %pipe, path = %key, "removing a spill file the state does not record (a crash came before it was recorded: its rows are read again; or an older version of a partition read again since)");
            fs::remove_file(dir.join(&key))?;
            continue;
        }
        found.push(SourceEvent::Found {
            rel: key,
            size: meta.len(),
            time: meta.modified()?,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::state::TableState;
    use super::*;

    #[test]
    fn recovery_keeps_recorded_spill_files_and_removes_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let t = dir.path().join("public.events");
        fs::create_dir_all(&t).expect("mkdir");
        for f in [
            "incremental-000000000001.gst",
            "incremental-000000000002.gst",
            "incremental-000000000003.gst",
            ".incremental-000000000004.gst.tmp",
        ] {
            fs::write(t.join(f), b"x").expect("write");
        }
        let mut state = TablesState::default();
        state.tables.insert(
            "public.events".into(),
            TableState {
                batch: 2,
                ..TableState::default()
            },
        );
        let found = recover("p", dir.path(), &state).expect("recover");
        let keys: Vec<String> = found
            .into_iter()
            .map(|e| match e {
                SourceEvent::Found { rel, .. } => rel,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "public.events/incremental-000000000001.gst",
                "public.events/incremental-000000000002.gst"
            ]
        );
        let left: Vec<String> = spill_files(dir.path())
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, keys);
    }
}
