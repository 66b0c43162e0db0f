//! The postgres sink: table objects (PROTOCOL.md section 9) applied to a PostgreSQL database
//! exactly once.
//!
//! ```text
//!  frames -> DirectorySink (staging, digests, done log, resume) -> inbox/<schema.table>/<object>.gst
//!                                                                    | at flush, in order
//!                                                                    v
//!                                     db thread: one transaction per object + its gapsync.applied row
//! ```
//!
//! Received objects land in a private inbox, `<state_dir>/receiver/<from>/<pipe>/tables/inbox`,
//! through an inner directory sink, so staging, digests, the done log and resume are the
//! directory sink's. At each flush the new inbox files are applied in order (by path: a table's
//! batches in batch order), each removed once its transaction committed. An object in the inbox
//! not yet applied counts as unlanded: the frame that committed it is not answered while it
//! waits (a database that is down is a local fault: no reply byte, the sender retries), and the
//! housekeeping's landing retry applies it once the database is back or the operator fixed the
//! target. Nothing is lost: the inbox is durable.

pub mod apply;
mod bounds;
pub mod config;
pub mod db;
pub mod names;
pub mod object;
mod schema;
mod swap;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gapsync_protocol::{Commit, ObjectAttrs, OpenFile, OriginChain};

use super::directory::DirectorySink;
use super::{Applied, Delivered, Flushed, Sink, SinkError};
use crate::pipe::replay::DoneLog;
use apply::{ApplyError, Done, Outcome};
use config::PostgresSettings;
use db::{Db, DbThread};

/// The pipe's table folders, under its state folder.
pub fn tables_dir(state: &Path) -> PathBuf {
    state.join("tables")
}

/// Lands table objects in an inbox and applies them to the target database.
pub struct PostgresSink {
    inner: DirectorySink,
    inbox: PathBuf,
    rejected: PathBuf,
    db: DbThread,
    /// The pipe's name, for logs.
    label: String,
    /// Inbox files not yet applied, by wire path, with their delivery line.
    pending: BTreeMap<String, Delivered>,
    /// Transfers opened, by id: their wire path (an unlanded transfer's re-commit).
    opened: HashMap<u64, String>,
    /// Paths committed (again) in this frame: the flush applies them or fails.
    wanted: Vec<String>,
    /// The last error said at ERROR: the same one is not said again.
    last_error: Option<String>,
    /// Paths the database thread is applying (a run under way), and where it says how each
    /// went (`None`: not tried, its table or the database stopped the run).
    in_flight: HashSet<String>,
    results: mpsc::Receiver<ApplyResult>,
    results_tx: mpsc::Sender<ApplyResult>,
    /// The database could not be reached at start.
    down: Option<String>,
}

type ApplyResult = (String, Option<Result<Outcome, ApplyError>>);

/// How long a frame's reply waits for its objects to be applied. An object that takes longer
/// (a big snapshot) is durable in the inbox already: the frame is answered and the object
/// finishes in the background, so the sender's `ack_timeout` is not hit.
const REPLY_WAIT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("inbox", &self.inbox)
            .finish()
    }
}

impl PostgresSink {
    /// Opens the sink of pipe `name` from `from`, whose state folder is `state`. A database
    /// that refuses the connection for good (wrong password, no such database or role) is an
    /// error; one that is down only warns: objects wait in the inbox until it is back.
    pub fn open(
        settings: &PostgresSettings,
        state: &Path,
        (from, name): (&str, &str),
        done: DoneLog,
        stale_after: Duration,
    ) -> anyhow::Result<Self> {
        let dir = tables_dir(state);
        let (inbox, staging, rejected) =
            (dir.join("inbox"), dir.join("staging"), dir.join("rejected"));
        let inner = DirectorySink::open(&inbox, &staging, done, stale_after)?;
        let db = DbThread::spawn(Db::new(settings.clone(), from, name), name)?;
        let label = name.to_owned();
        let mut down = None;
        match db.run(|db| db.client().map(|_| ()).map_err(|e| (e.refused, e.message))) {
            Some(Err((true, m))) => anyhow::bail!("{m}"),
            Some(Err((false, m))) => {
                down = Some(m.clone());
                tracing::warn!(pipe = %name, from = %from, error = %m, "the target database cannot be reached now; the receiver starts all the same and applies table objects once it is back (they wait in {})", inbox.display());
            }
            _ => {}
        }
        let (results_tx, results) = mpsc::channel();
        let mut sink = Self {
            inner,
            inbox,
            rejected,
            db,
            label,
            pending: BTreeMap::new(),
            opened: HashMap::new(),
            wanted: Vec::new(),
            last_error: None,
            in_flight: HashSet::new(),
            results,
            results_tx,
            down,
        };
        sink.scan_inbox()?;
        Ok(sink)
    }

    /// Finds the objects a restart left in the inbox, not yet applied.
    fn scan_inbox(&mut self) -> anyhow::Result<()> {
        let mut stack = vec![self.inbox.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?
            {
                let e = e?;
                let path = e.path();
                let meta = fs::symlink_metadata(&path)?;
                if meta.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.inbox) {
                    let rel = rel.to_string_lossy().into_owned();
                    self.pending.insert(
                        rel.clone(),
                        Delivered {
                            path: rel,
                            size: meta.len(),
                            digest_hex: "-".into(),
                            elapsed: Duration::ZERO,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Starts applying the inbox's objects in order on the database thread, unless a run is
    /// under way. A table whose object fails waits (its later objects too); other tables go
    /// on, unless the database itself cannot be reached. Each object's `applied` line is
    /// logged and its file removed there, as soon as its transaction committed. True when a
    /// run started.
    fn start_applying(&mut self) -> bool {
        if !self.in_flight.is_empty() || self.pending.is_empty() {
            return false;
        }
        let paths: Vec<String> = self.pending.keys().cloned().collect();
        self.in_flight = paths.iter().cloned().collect();
        let (tx, inbox, label) = (
            self.results_tx.clone(),
            self.inbox.clone(),
            self.label.clone(),
        );
        let sent = self.db.submit(move |db| {
            let mut stopped: HashSet<String> = HashSet::new();
            let mut unreachable = false;
            for rel in paths {
                let table = rel.split('/').next().unwrap_or("").to_owned();
                if unreachable || stopped.contains(&table) {
                    let _ = tx.send((rel, None));
                    continue;
                }
                let file = inbox.join(&rel);
                let r = db.apply_file(&file);
                match &r {
                    Ok(outcome) => {
                        log_outcome(&label, &rel, outcome);
                        if let Err(e) = fs::remove_file(&file) {
                            tracing::warn!(file = %file.display(), error = %e, "cannot remove an applied object from the inbox; it is skipped as already applied next time");
                        }
                    }
                    Err(ApplyError::Bad(_) | ApplyError::Refused(_)) => {}
                    Err(e) => {
                        unreachable = matches!(e, ApplyError::Connection(_));
                        stopped.insert(table);
                    }
                }
                let _ = tx.send((rel, Some(r)));
            }
        });
        if !sent {
            self.in_flight.clear();
        }
        sent
    }

    /// Takes the results of the run under way until it ended or `wait` passed. Returns what
    /// was applied, and the first error.
    fn collect(&mut self, wait: Duration) -> (Vec<Delivered>, Option<SinkError>) {
        let deadline = Instant::now() + wait;
        let mut delivered = Vec::new();
        let mut first: Option<SinkError> = None;
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (rel, r) = match self.results.recv_timeout(left) {
                Ok(x) => x,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.in_flight.clear();
                    first.get_or_insert(SinkError::Database {
                        object: "-".into(),
                        message: "the database thread stopped".into(),
                    });
                    break;
                }
            };
            self.in_flight.remove(&rel);
            match r {
                None => {}
                Some(Ok(_)) => {
                    if let Some(d) = self.pending.remove(&rel) {
                        delivered.push(d);
                    }
                    self.opened.retain(|_, p| p != &rel);
                }
                Some(Err(ApplyError::Bad(m))) => {
                    let file = self.inbox.join(&rel);
                    let e = self.reject(&rel, &file, &m, "not a usable table object: moved out of the inbox, never applied; check the sender's version");
                    first.get_or_insert(e);
                }
                Some(Err(ApplyError::Refused(m))) => {
                    let file = self.inbox.join(&rel);
                    let e = self.reject(&rel, &file, &m, "a table object for a table this sink may not write to: moved out of the inbox, never applied; check the sender's tables and the sink's rename and tables");
                    first.get_or_insert(e);
                }
                Some(Err(e)) => {
                    first.get_or_insert(to_sink_error(&rel, e));
                }
            }
        }
        self.say(first.as_ref(), !delivered.is_empty());
        (delivered, first)
    }

    /// Moves a file that is not a usable table object out of the inbox (kept for inspection).
    fn reject(&mut self, rel: &str, file: &Path, why: &str, what: &str) -> SinkError {
        let to = self.rejected.join(rel);
        let moved = to
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::rename(file, &to));
        self.pending.remove(rel);
        tracing::error!(pipe = %self.label, object = %rel, kept_in = %to.display(), moved = moved.is_ok(), error = %why, "{what}");
        SinkError::BadObject {
            path: rel.to_owned(),
            reason: why.to_owned(),
        }
    }

    /// Says an error at ERROR once per distinct message, and that applying resumed.
    fn say(&mut self, err: Option<&SinkError>, progressed: bool) {
        match err {
            Some(e) => {
                let m = e.to_string();
                if self.last_error.as_deref() != Some(&m) {
                    tracing::error!(pipe = %self.label, waiting = self.pending.len(), error = %m, "table objects not applied; they wait in the inbox and are applied again at every retry (the sender's and the receiver's summary_interval) once the cause is fixed");
                    self.last_error = Some(m);
                }
            }
            None if progressed && self.last_error.is_some() => {
                self.last_error = None;
                tracing::info!(pipe = %self.label, waiting = self.pending.len(), "table objects are applied again");
            }
            None => {}
        }
    }

    /// Applies after a flush or a retry, waiting at most [`REPLY_WAIT`]. The result is an
    /// error when one of `must` (paths committed in this frame; for a retry, any) failed, or
    /// is still waiting behind a failure; an object still being applied when the wait ends
    /// is durable in the inbox and finishes in the background.
    fn apply_after(&mut self, mut out: Flushed, must: &[String]) -> Flushed {
        for d in std::mem::take(&mut out.delivered) {
            self.pending.insert(d.path.clone(), d);
        }
        // Results of an earlier run first, then runs over everything waiting (objects that
        // arrived during a run get the next one) until the wait ends or something failed.
        let deadline = Instant::now() + REPLY_WAIT;
        let (mut delivered, mut err) = self.collect(Duration::ZERO);
        loop {
            let started = self.start_applying();
            let (more, e2) = self.collect(deadline.saturating_duration_since(Instant::now()));
            delivered.extend(more);
            err = err.or(e2);
            if !started || err.is_some() || !self.in_flight.is_empty() || Instant::now() >= deadline
            {
                break;
            }
        }
        out.delivered = delivered;
        if out.result.is_ok() {
            if let Some(e) = err {
                let waiting =
                    |p: &String| self.pending.contains_key(p) && !self.in_flight.contains(p);
                if must.is_empty() || must.iter().any(waiting) || !e.is_local() {
                    out.result = Err(e);
                }
            }
        }
        out
    }
}

fn log_outcome(label: &str, rel: &str, o: &Outcome) {
    let (t, obj, kind) = (&o.target, &o.object, o.kind);
    match &o.done {
        Done::Applied { rows, ms } => {
            tracing::info!(table = %t, object = %obj, kind = %kind, rows, ms, pipe = %label, file = %rel, "applied");
        }
        Done::AlreadyApplied => {
            tracing::info!(table = %t, object = %obj, kind = %kind, pipe = %label, file = %rel, "already applied");
        }
        Done::Older { newest } => {
            tracing::info!(table = %t, object = %obj, kind = %kind, newest = %newest, pipe = %label, file = %rel, "older than applied: a version of this table read later at the source was applied; this one is skipped");
        }
    }
}

/// An apply error as the sink reports it.
pub fn to_sink_error(rel: &str, e: ApplyError) -> SinkError {
    match e {
        ApplyError::Bad(reason) | ApplyError::Refused(reason) => SinkError::BadObject {
            path: rel.to_owned(),
            reason,
        },
        ApplyError::Schema { table, problem } => SinkError::Schema { table, problem },
        ApplyError::Database(message)
        | ApplyError::Connection(message)
        | ApplyError::Io(message) => SinkError::Database {
            object: rel.to_owned(),
            message,
        },
    }
}

impl Sink for PostgresSink {
    fn open_with_origin(
        &mut self,
        transfer: u64,
        open: &OpenFile,
        origin: &OriginChain,
        attrs: &ObjectAttrs,
    ) -> Result<Applied, SinkError> {
        let r = self.inner.open_with_origin(transfer, open, origin, attrs)?;
        self.opened.insert(transfer, open.path.clone());
        Ok(r)
    }

    fn write(&mut self, transfer: u64, offset: u64, data: &[u8]) -> Result<Applied, SinkError> {
        self.inner.write(transfer, offset, data)
    }

    fn commit(&mut self, transfer: u64, commit: &Commit) -> Result<Applied, SinkError> {
        if let Some(p) = self
            .opened
            .get(&transfer)
            .filter(|p| self.pending.contains_key(*p))
        {
            // Received and recorded before, not yet applied: this frame's flush applies it.
            self.wanted.push(p.clone());
            return Ok(Applied::Done);
        }
        let r = self.inner.commit(transfer, commit)?;
        if r == Applied::Done {
            if let Some(p) = self.opened.get(&transfer) {
                self.wanted.push(p.clone());
            }
        }
        Ok(r)
    }

    fn flush(&mut self) -> Flushed {
        let out = self.inner.flush();
        let must = std::mem::take(&mut self.wanted);
        if must.is_empty() && out.delivered.is_empty() {
            return out;
        }
        self.apply_after(out, &must)
    }

    fn progress(&mut self) -> Vec<Delivered> {
        // Results of the run under way, then the next run over what arrived meanwhile: a
        // large object being applied when smaller ones arrived no longer leaves them waiting
        // for the next retry (summary_interval), which stalled a pgbench snapshot's last
        // tables by up to a minute (BENCHMARKS.md, tables).
        let (delivered, _) = self.collect(Duration::ZERO);
        if self.in_flight.is_empty() && self.last_error.is_none() {
            self.start_applying();
        }
        delivered
    }

    fn retry_landing(&mut self) -> Flushed {
        let out = if self.inner.unlanded() > 0 {
            self.inner.retry_landing()
        } else {
            Flushed::default()
        };
        self.apply_after(out, &[])
    }

    fn is_unlanded(&self, transfer: u64) -> bool {
        self.inner.is_unlanded(transfer)
            || self
                .opened
                .get(&transfer)
                .is_some_and(|p| self.pending.contains_key(p))
    }

    fn unlanded(&self) -> usize {
        self.inner.unlanded() + self.pending.len()
    }

    fn abandon(&mut self) {
        self.inner.abandon();
        self.wanted.clear();
    }

    fn drop_partial(&mut self, transfer: u64) {
        self.inner.drop_partial(transfer);
        self.opened.remove(&transfer);
    }

    fn partials(&self) -> usize {
        self.inner.partials()
    }

    fn problem_at_open(&self) -> Option<String> {
        self.down.clone()
    }

    fn housekeeping(&mut self, stale_after: Duration) -> std::io::Result<usize> {
        let n = self.inner.housekeeping(stale_after)?;
        // Forget opened transfers that are neither partial nor waiting.
        if self.opened.len() > 4096 {
            let pending = &self.pending;
            self.opened.retain(|_, p| pending.contains_key(p));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
