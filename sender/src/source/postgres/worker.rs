//! The source's threads (the sync `postgres` client never runs on the tokio runtime): one
//! for the runs of the snapshot and partitions tables (at start without a cron, on `pipe
//! start`, at each cron time: [`crate::source::RunTrigger`]), one polling the incremental
//! tables every `poll_interval`. The incremental one keeps its connection (made again after a
//! failure, closed while the pipe is stopped); the runs one connects for each run.
//!
//! [`Ctx::publish`] is the exactly-once step: the spill file is written, fsynced and
//! renamed into place, THEN the state file records its number (or watermark, or partition
//! fingerprint), THEN it is reported to the pipe.

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use gapsync_protocol::table::TableHeader;
use postgres::{Client, NoTls};
use tokio::sync::mpsc;

use super::config::{PostgresSettings, TableMode};
use super::incremental;
use super::runs::{self, Logged};
use super::spill::{Spilled, spill};
use super::state::{StateFile, TableState};
use crate::pipe::PipeStats;
use crate::source::{RunTrigger, SourceEvent};

/// How long after a failure the source tries again.
const RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two tries of a failed run (doubling from [`RETRY`]).
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What both threads share.
#[derive(Debug)]
pub struct Ctx {
    pub pipe: String,
    pub s: PostgresSettings,
    /// `<pipe state>/tables`: the spill files.
    pub dir: PathBuf,
    pub state: Mutex<StateFile>,
    pub tx: mpsc::Sender<SourceEvent>,
    pub stats: Arc<PipeStats>,
    /// The last error said, so that each is said once.
    said: Mutex<Option<String>>,
}

impl Ctx {
    pub fn new(
        pipe: String,
        s: PostgresSettings,
        dir: PathBuf,
        state: StateFile,
        tx: mpsc::Sender<SourceEvent>,
        stats: Arc<PipeStats>,
    ) -> Self {
        Self {
            pipe,
            s,
            dir,
            state: Mutex::new(state),
            tx,
            stats,
            said: Mutex::new(None),
        }
    }

    /// One table's record now.
    pub fn table_state(&self, name: &str) -> TableState {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .table(name)
    }

    /// The state's epoch (part of every object id: [`super::state::TablesState::epoch`]).
    pub fn epoch(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.epoch().to_owned()
    }

    /// Spills one object, records it with `record`, then reports it.
    pub fn publish(
        &self,
        table: &str,
        key: &str,
        header: &TableHeader,
        rows: &mut dyn Read,
        record: impl FnOnce(&mut TableState, &Spilled),
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let spilled = spill(&self.dir, key, header, rows).with_context(|| {
            format!(
                "cannot write the spill file {}",
                self.dir.join(key).display()
            )
        })?;
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut rec = state.table(table);
            record(&mut rec, &spilled);
            if let Err(e) = state.set(table, rec) {
                // Not recorded: never reported; read again.
                let _ = std::fs::remove_file(self.dir.join(key));
                return Err(e).context("cannot record the object in tables.json");
            }
        }
        let ms = started.elapsed().as_millis();
        tracing::info!(pipe = %self.pipe, table = %header.table, object = %header.id, path = %key, rows = spilled.rows, bytes = spilled.bytes, ms, "table object ready");
        let _ = self.tx.blocking_send(SourceEvent::Found {
            rel: key.to_owned(),
            size: spilled.bytes,
            time: SystemTime::now(),
        });
        Ok(())
    }

    fn connect(&self) -> anyhow::Result<Client> {
        self.s
            .connection
            .connect(NoTls)
            .with_context(|| format!("cannot connect to the database ({})", self.s.shown))
    }

    /// Says a failure at ERROR once per distinct message, and in the pipe's status.
    fn failed(&self, e: &anyhow::Error, retry: Duration) {
        let message = format!("{e:#}");
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.as_deref() != Some(message.as_str()) {
            let retry_s = retry.as_secs();
            tracing::error!(pipe = %self.pipe, error = %message, retry_s, "postgres source: cannot read the tables; trying again");
            self.stats.failed(format!("postgres source: {message}"));
            *said = Some(message);
        }
    }

    fn recovered(&self) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.take().is_some() {
            tracing::info!(pipe = %self.pipe, "postgres source: reading the tables again");
        }
    }

    /// Sleeps `d` in steps, false once the pipe is gone.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.tx.is_closed() {
                return false;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(200)));
        }
        !self.tx.is_closed()
    }
}

/// The runs thread: waits for a trigger, runs every snapshot and partitions table; after a
/// failure tries again, [`RETRY`] later and twice as long each time up to [`RETRY_MAX`], only
/// the tables that failed (a new trigger asks for all of them again).
pub fn runs_loop(ctx: &Ctx, trigger: &RunTrigger) {
    let mut seen = 0;
    let mut pending = false;
    // `None`: every table; else the ones the last run failed on.
    let mut only: Option<HashSet<String>> = None;
    let mut next_try = Instant::now();
    let mut backoff = RETRY;
    let mut logged = Logged::default();
    while !ctx.tx.is_closed() {
        if trigger.wait(&mut seen, Duration::from_millis(500)) {
            pending = true;
            only = None;
        }
        if !pending || Instant::now() < next_try {
            continue;
        }
        // A connection per run: runs are rare, and no idle session stays in the database
        // between them (nor while the pipe is stopped).
        let result = ctx
            .connect()
            .and_then(|mut c| runs::run(ctx, &mut c, &mut logged, only.as_ref()));
        let error = match result {
            Ok(failed) if failed.is_empty() => {
                (pending, only, backoff) = (false, None, RETRY);
                ctx.recovered();
                continue;
            }
            Ok(failed) => {
                let text: Vec<String> = failed.iter().map(|(_, e)| format!("{e:#}")).collect();
                only = Some(failed.into_iter().map(|(name, _)| name).collect());
                anyhow::anyhow!("{}", text.join("; "))
            }
            Err(e) => e,
        };
        next_try = Instant::now() + backoff;
        if !ctx.tx.is_closed() {
            ctx.failed(&error, backoff);
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// The incremental thread: each table polled in turn; at once again while batches are
/// full, else after `poll_interval`. It reads nothing while the pipe is stopped, nor while
/// the spill files not yet sent reach `max_pending` (checked before each round of batches,
/// so they pass it by a round's batches at most).
pub fn incremental_loop(ctx: &Ctx) {
    let mut client: Option<Client> = None;
    let mut held = None;
    let mut resting = Resting::default();
    loop {
        let now = hold(ctx);
        say_hold(ctx, held, now);
        held = now;
        if let Some(why) = now {
            if why == Hold::Stopped {
                // A stopped pipe keeps no session open in the database.
                client = None;
            }
            if !ctx.sleep(ctx.s.poll_interval) {
                return;
            }
            continue;
        }
        let result = poll_all(ctx, &mut client, &mut resting);
        let wait = match result {
            Ok(true) => Duration::ZERO,
            Ok(false) => ctx.s.poll_interval,
            Err(e) => {
                client = None;
                if !ctx.tx.is_closed() {
                    ctx.failed(&e, RETRY);
                }
                RETRY
            }
        };
        if !ctx.sleep(wait) {
            return;
        }
    }
}

/// Why the incremental thread reads no batch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The operator stopped the pipe (`pipe stop`).
    Stopped,
    /// The spill files not yet sent (bytes) reached `max_pending`.
    Pending(u64),
}

fn hold(ctx: &Ctx) -> Option<Hold> {
    if ctx.stats.stopped.load(Relaxed) {
        return Some(Hold::Stopped);
    }
    let pending = super::pending_bytes(&ctx.dir);
    (pending >= ctx.s.max_pending.get()).then_some(Hold::Pending(pending))
}

/// One line when reading pauses (WARN, and in the pipe's status, for `max_pending`; INFO
/// for a stopped pipe) and one INFO line when it resumes.
fn say_hold(ctx: &Ctx, was: Option<Hold>, now: Option<Hold>) {
    let kind = |h: Option<Hold>| h.map(|h| std::mem::discriminant(&h));
    if kind(was) == kind(now) {
        return;
    }
    let max = ctx.s.max_pending.get();
    ctx.stats.set_note(match now {
        Some(Hold::Pending(pending)) => Some(format!("incremental reading paused: {pending} bytes of table objects not yet sent (max_pending {max})")),
        Some(Hold::Stopped) => Some("incremental reading paused: the pipe is stopped".to_owned()),
        None => None,
    });
    match now {
        Some(Hold::Pending(pending)) => {
            tracing::warn!(pipe = %ctx.pipe, pending_bytes = pending, max_pending = max, "incremental reading paused: the table objects not yet sent reached max_pending; it resumes once sending brought them under (no row is lost: the watermark waits)");
            ctx.stats.warned(format!("postgres source: incremental reading paused: {pending} bytes of table objects not yet sent (max_pending {max})"));
        }
        Some(Hold::Stopped) => {
            tracing::info!(pipe = %ctx.pipe, "incremental reading paused: the pipe is stopped (pipe start resumes it)");
        }
        None => {
            tracing::info!(pipe = %ctx.pipe, pending_bytes = super::pending_bytes(&ctx.dir), max_pending = max, "incremental reading resumed");
        }
    }
}

/// Incremental tables that failed, and when each is tried again (5 s, doubling up to 5 min):
/// one failing table (dropped, no longer readable) must not hold back the others.
#[derive(Debug, Default)]
struct Resting(std::collections::HashMap<String, (Instant, Duration)>);

impl Resting {
    fn due(&self, table: &str) -> bool {
        self.0
            .get(table)
            .is_none_or(|(at, _)| Instant::now() >= *at)
    }

    fn failed(&mut self, table: &str) -> Duration {
        let backoff = self
            .0
            .get(table)
            .map_or(RETRY, |(_, b)| (*b * 2).min(RETRY_MAX));
        self.0
            .insert(table.to_owned(), (Instant::now() + backoff, backoff));
        backoff
    }
}

/// One pass over the incremental tables. An error of the connection ends the pass (the
/// caller reconnects); a table's own error rests that table only.
fn poll_all(ctx: &Ctx, client: &mut Option<Client>, resting: &mut Resting) -> anyhow::Result<bool> {
    let c = match client {
        Some(c) => c,
        None => {
            let mut c = ctx.connect()?;
            let incr: Vec<_> = (ctx.s.tables.iter())
                .filter(|t| matches!(t.mode, TableMode::Incremental { .. }))
                .cloned()
                .collect();
            super::probe::incremental_rules(&mut c, &ctx.pipe, &incr)?;
            client.insert(c)
        }
    };
    let mut more = false;
    let mut failed = false;
    for t in &ctx.s.tables {
        let name = t.name();
        if !matches!(t.mode, TableMode::Incremental { .. }) || !resting.due(&name) {
            continue;
        }
        match incremental::poll(ctx, c, t) {
            Ok(m) => {
                resting.0.remove(&name);
                more |= m;
            }
            Err(e) => {
                let e = e.context(format!("table {name}"));
                if c.is_closed() || ctx.tx.is_closed() {
                    return Err(e);
                }
                failed = true;
                let backoff = resting.failed(&name);
                ctx.failed(&e, backoff);
            }
        }
    }
    if !failed && resting.0.is_empty() {
        ctx.recovered();
    }
    Ok(more)
}
