//! The receiver's pipes: each one's profile and link, its sink, its replay state, its current
//! sender session, its counters (today's kept in `<state_dir>/receiver/<from>/<name>/counters`
//! across restarts), its silence alarm and its status row.
//!
//! ```text
//!  tcp/tls listener --Hello(node, pipe)--+
//!                                        +--> Pipe (profile, keys, replay) --> sink --> dest/
//!  udp socket --datagram(pipe tag)-------+        |
//!                                             status row
//! ```

pub mod links;
pub mod origin;
pub mod replay;
pub mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use gapsync_daemon::alarm::{self, Alarm, AlarmEvent};
use gapsync_daemon::config::PipeKey;
use gapsync_daemon::counters::DayCounters;
use gapsync_daemon::logging::LogTime;
use gapsync_protocol::{LinkKind, Profile};

use crate::config::{Config, PipeConfig, link_name};
use crate::sink::directory::{self, DirectorySink};
use crate::sink::postgres::{self, PostgresSink};
use crate::sink::{Delivered, Flushed, Sink, SinkSettings};
use status::{Activity, ReceiverPipeStatus, Severity};

/// Counters of one pipe, for the periodic summary.
#[derive(Debug, Default)]
pub struct PipeStats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub connections: AtomicU64,
    pub refused_frames: AtomicU64,
    /// Objects not landed because their origin chain names this node (a loop).
    pub looped: AtomicU64,
    /// Symlinks not created because their target leaves the destination.
    pub refused_links: AtomicU64,
}

/// One pipe: `from`'s files named `name`, landed by `sink`.
pub struct Pipe {
    pub name: String,
    pub from: String,
    /// The pipe's profile; its link kind decides which listener serves it.
    pub profile: Profile,
    pub sink: Mutex<Box<dyn Sink>>,
    /// The sink's type, as configured.
    pub sink_kind: &'static str,
    /// What the pipe's status row is read from.
    pub activity: Arc<Activity>,
    /// The newest accepted sender session; connections of older sessions are closed.
    pub session: AtomicU64,
    pub stats: PipeStats,
    /// Keys by id; empty for an unauthenticated pipe.
    pub keys: Vec<PipeKey>,
    pub require_auth: bool,
    /// The newest (session, connection) accepted on a keyed connection; durable in
    /// `last_path`, so a recorded connection cannot be replayed, even after a restart.
    last_connection: Mutex<(u64, u64)>,
    last_path: PathBuf,
    /// Today's totals, kept across restarts.
    counters: Mutex<DayCounters>,
    /// `silence_alarm`: nothing delivered and no sender connected for that long.
    silence: Option<(std::time::Duration, Mutex<Alarm>)>,
    /// Looped objects (by path), each counted once.
    looped: origin::Looped,
    /// Link objects refused (target outside dest): acknowledged, never written.
    refused_links: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// The last landing retry's error, said once.
    landing_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe")
            .field("name", &self.name)
            .field("from", &self.from)
            .finish()
    }
}

impl Pipe {
    /// Runs `op` on the sink. The lock is held for one request only.
    pub fn with_sink<T>(&self, op: impl FnOnce(&mut dyn Sink) -> T) -> T {
        let mut guard = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let out = op(guard.as_mut());
        self.activity
            .sink_counts(guard.partials(), guard.unlanded());
        out
    }

    /// The pipe's link kind.
    pub fn link(&self) -> LinkKind {
        self.profile.link
    }

    /// Remembers an ERROR said about the pipe, for its status row.
    pub fn error(&self, message: impl Into<String>) {
        self.activity.problem(Severity::Error, message);
    }

    /// Remembers a WARN said about the pipe, for its status row.
    pub fn warn(&self, message: impl Into<String>) {
        self.activity.problem(Severity::Warn, message);
    }

    /// Counts a file made visible (the status row, the summary, the silence alarm).
    pub fn count_landed(&self, d: &Delivered) {
        self.stats.files.fetch_add(1, Relaxed);
        self.activity.landed(d.size);
        self.heard();
    }

    /// Records a keyed connection if it is newer than every one accepted before; false for a
    /// replay (or a sender whose state was reset).
    pub fn accept_connection(
        &self,
        session: u64,
        connection: u64,
    ) -> std::io::Result<Result<(), (u64, u64)>> {
        let mut last = self
            .last_connection
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if (session, connection) <= *last {
            return Ok(Err(*last));
        }
        gapsync_daemon::durable::write_atomic(
            &self.last_path,
            format!("{session} {connection}\n").as_bytes(),
        )?;
        *last = (session, connection);
        Ok(Ok(()))
    }

    /// Counts a file made visible and logs its `delivered` line.
    pub fn log_delivered(&self, d: &Delivered) {
        self.count_landed(d);
        let secs = d.elapsed.as_secs_f64().max(1e-6);
        tracing::info!(
            pipe = %self.name,
            from = %self.from,
            path = %d.path,
            size = d.size,
            digest = %d.digest_hex,
            duration_ms = d.elapsed.as_millis() as u64,
            mb_per_s = format!("{:.1}", d.size as f64 / secs / 1e6),
            "delivered"
        );
    }

    /// Lands the files recorded as done whose landing failed before; logs each that lands and
    /// an ERROR while any cannot.
    pub fn retry_landing(&self) {
        let Flushed { delivered, result } = self.with_sink(|s| {
            if s.unlanded() == 0 {
                Flushed::default()
            } else {
                s.retry_landing()
            }
        });
        for d in &delivered {
            self.log_delivered(d);
        }
        let mut last = lock(&self.landing_error);
        match result {
            Err(e) => {
                let waiting = self.with_sink(|s| s.unlanded());
                let what = match self.sink_kind {
                    "postgres" => "applied to the target database",
                    _ => "renamed into place",
                };
                self.error(format!("{waiting} object(s) received but not {what}: {e}"));
                // Said once per distinct cause (the postgres sink says its own); the status
                // row keeps it current.
                let cause = e.to_string();
                if self.sink_kind != "postgres" && last.as_deref() != Some(cause.as_str()) {
                    tracing::error!(pipe = %self.name, from = %self.from, waiting, error = %e, "objects received and recorded could not be {what}; they stay kept, are not confirmed to the sender, and landing is retried at every summary_interval: fix the cause");
                    *last = Some(cause);
                }
            }
            Ok(()) => *last = None,
        }
    }

    /// Counts written bytes.
    pub fn add_bytes(&self, n: u64) {
        self.stats.bytes.fetch_add(n, Relaxed);
    }

    /// Something arrived (a delivery, a sender connected): the silence alarm counts again from
    /// now, and says so at INFO if it was raised.
    pub fn heard(&self) {
        let Some((_, alarm)) = &self.silence else {
            return;
        };
        let ev = lock(alarm).ok(std::time::Instant::now(), true);
        if let Some(ev) = ev {
            alarm::log_cleared(
                "silence",
                &self.name,
                &self.from,
                &ev,
                "something arrived on the pipe again",
            );
        }
    }

    /// The pipe's status row; `today` is the current day as the logs name it.
    pub fn status(&self, today: &str) -> ReceiverPipeStatus {
        let (files, bytes) = (
            self.stats.files.load(Relaxed),
            self.stats.bytes.load(Relaxed),
        );
        let (today_objects, today_bytes) = lock(&self.counters).update(today, files, bytes);
        let mut row = ReceiverPipeStatus {
            name: self.name.clone(),
            from: self.from.clone(),
            link: link_name(self.link()),
            profile: self.profile.name.clone(),
            sink: self.sink_kind,
            state: status::PipeState::Running,
            peers: Vec::new(),
            landed_objects: 0,
            landed_bytes: 0,
            today_objects,
            today_bytes,
            last_landed: None,
            partials: 0,
            unlanded: 0,
            refused_connections: 0,
            refused_links: self.stats.refused_links.load(Relaxed),
            last_problem: None,
        };
        self.activity.fill(&mut row);
        row
    }

    /// Says the silence alarm at ERROR when it is due (call every second or so).
    pub fn check_silence(&self, now: std::time::Instant) {
        let Some((after, alarm)) = &self.silence else {
            return;
        };
        let ev = lock(alarm).poll(now, true);
        if let Some(ev @ AlarmEvent::Raised { .. }) = ev {
            let what = format!(
                "nothing has arrived on this pipe for silence_alarm ({}): check the sender, its spool, the gate and the network",
                alarm::seconds(*after)
            );
            alarm::log_raised("silence", &self.name, &self.from, &ev, &what);
            self.error(what);
        }
    }
}

impl Pipe {
    /// Opens one pipe.
    fn open(config: &Config, p: &PipeConfig) -> anyhow::Result<Self> {
        let state = pipe_state(config, p);
        let (sink, last_path) = open_sink(config, p, &state)?;
        let last = std::fs::read_to_string(&last_path).ok().and_then(|t| {
            let mut it = t.split_whitespace().map(str::parse::<u64>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        });
        if p.keys.is_empty() {
            tracing::warn!(pipe = %p.name, from = %p.from, "pipe is unauthenticated: anyone who can reach the listen port through the gate can feed it files; give it `keys` and `require_auth = true`");
        }
        for k in &p.keys {
            if let Some(w) = &k.warning {
                tracing::warn!(pipe = %p.name, key_id = k.id, "{w}");
            }
        }
        let today = config.log_time.day(std::time::SystemTime::now());
        let activity = Arc::<Activity>::default();
        if let Some(m) = sink.problem_at_open() {
            activity.problem(Severity::Error, m);
        }
        Ok(Pipe {
            name: p.name.clone(),
            from: p.from.clone(),
            profile: p.profile.clone(),
            sink: Mutex::new(sink),
            sink_kind: p.sink.kind(),
            activity,
            session: AtomicU64::new(0),
            stats: PipeStats::default(),
            keys: p.keys.clone(),
            require_auth: p.require_auth,
            last_connection: Mutex::new(last.unwrap_or((0, 0))),
            last_path,
            counters: Mutex::new(DayCounters::open(&state.join("counters"), &today)),
            silence: p.silence_alarm.map(|after| {
                let mut a = Alarm::new(after);
                a.ok(std::time::Instant::now(), true);
                (after, Mutex::new(a))
            }),
            looped: origin::Looped::default(),
            refused_links: Default::default(),
            landing_error: Mutex::new(None),
        })
    }
}

/// The pipe's state folder: counters and replay state.
fn pipe_state(config: &Config, p: &PipeConfig) -> PathBuf {
    config
        .state_dir
        .join("receiver")
        .join(&p.from)
        .join(&p.name)
}

/// Opens the pipe's sink of its kind, with the pipe's done log (moved out of the staging
/// folder of earlier versions); returns it and where the last keyed connection is recorded.
fn open_sink(
    config: &Config,
    p: &PipeConfig,
    state: &Path,
) -> anyhow::Result<(Box<dyn Sink>, PathBuf)> {
    match &p.sink {
        SinkSettings::Directory(d) => {
            adopt_legacy_staging(config, p, &d.dest, &d.staging)?;
            let done = replay::open_done_log(state, Some(&d.staging), config.done_retention)
                .map_err(|e| {
                    anyhow::anyhow!("cannot open the done log in {}: {e}", state.display())
                })?;
            let sink = DirectorySink::open(&d.dest, &d.staging, done, config.stale_partial_after)?;
            Ok((Box::new(sink), d.staging.join("last-connection")))
        }
        SinkSettings::Postgres(pg) => {
            let tables = postgres::tables_dir(state);
            let done = replay::open_done_log(state, None, config.done_retention).map_err(|e| {
                anyhow::anyhow!("cannot open the done log in {}: {e}", state.display())
            })?;
            let sink = PostgresSink::open(
                pg,
                state,
                (&p.from, &p.name),
                done,
                config.stale_partial_after,
            )?;
            Ok((Box::new(sink), tables.join("last-connection")))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// All pipes, by (sender node, pipe name).
#[derive(Debug, Default)]
pub struct Pipes {
    by_key: HashMap<(String, String), Arc<Pipe>>,
    time: LogTime,
}

impl Pipes {
    /// Opens every configured pipe: its replay state, its sink (repairing interrupted
    /// commits), its counters.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let mut by_key = HashMap::new();
        for p in &config.pipes {
            let pipe = Pipe::open(config, p)
                .map_err(|e| anyhow::anyhow!("pipe {} from {}: {e:#}", p.name, p.from))?;
            // Commits a restart or a failure interrupted land now, with their delivered lines.
            pipe.retry_landing();
            by_key.insert((p.from.clone(), p.name.clone()), Arc::new(pipe));
        }
        Ok(Self {
            by_key,
            time: config.log_time,
        })
    }

    /// Lands, in every pipe, the files whose landing failed before.
    pub fn retry_landing(&self) {
        for p in self.by_key.values() {
            p.retry_landing();
        }
    }

    /// Moves every sink's background work on, without waiting (see [`Sink::progress`]).
    pub fn progress(&self) {
        for p in self.by_key.values() {
            for d in p.with_sink(|s| s.progress()) {
                p.log_delivered(&d);
            }
        }
    }

    /// True when a sink has background work (a postgres sink), so the loop ticks often.
    pub fn any_background(&self) -> bool {
        self.by_key.values().any(|p| p.sink_kind == "postgres")
    }

    /// The pipe `name` from sender `node`.
    pub fn get(&self, node: &str, name: &str) -> Option<Arc<Pipe>> {
        self.by_key
            .get(&(node.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every pipe.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Pipe>> {
        self.by_key.values()
    }

    /// Removes abandoned partials of every pipe.
    pub fn housekeeping(&self, stale_after: std::time::Duration) {
        for p in self.by_key.values() {
            if let Err(e) = p.with_sink(|s| s.housekeeping(stale_after)) {
                tracing::warn!(pipe = %p.name, from = %p.from, error = %e, "cannot scan the staging folder for abandoned partials");
            }
        }
    }

    /// Says every pipe's silence alarm that is due.
    pub fn check_silence(&self, now: std::time::Instant) {
        for p in self.by_key.values() {
            p.check_silence(now);
        }
    }

    /// Every pipe's status row, sorted by sender and name. Reads counters only (no sink lock,
    /// no disk), so it may be called at any time.
    pub fn status(&self) -> Vec<ReceiverPipeStatus> {
        let today = self.time.day(std::time::SystemTime::now());
        let mut rows: Vec<ReceiverPipeStatus> =
            self.by_key.values().map(|p| p.status(&today)).collect();
        rows.sort_by(|a, b| (&a.from, &a.name).cmp(&(&b.from, &b.name)));
        rows
    }

    /// Logs one summary line per pipe (files and bytes since start and today) and keeps
    /// today's counters in the state folder.
    pub fn log_summary(&self) {
        let today = self.time.day(std::time::SystemTime::now());
        for p in self.by_key.values() {
            let row = p.status(&today);
            tracing::info!(
                pipe = %p.name,
                from = %p.from,
                files = p.stats.files.load(Relaxed),
                bytes = p.stats.bytes.load(Relaxed),
                today_files = row.today_objects,
                today_bytes = row.today_bytes,
                day = %lock(&p.counters).day(),
                partials = row.partials,
                unlanded = row.unlanded,
                peers = row.peers.len(),
                connections = p.stats.connections.load(Relaxed),
                refused_connections = row.refused_connections,
                refused_frames = p.stats.refused_frames.load(Relaxed),
                looped = p.stats.looped.load(Relaxed),
                refused_links = p.stats.refused_links.load(Relaxed),
                "summary"
            );
            if let Err(e) = lock(&p.counters).save() {
                tracing::warn!(pipe = %p.name, from = %p.from, error = %e, "cannot keep today's counters in the state folder; after a restart they would start from zero");
            }
        }
    }
}

/// Versions before 0.1 kept a pipe's staging folder, with its done log, under state_dir by
/// default, where the final rename crosses a mount point under systemd. A pipe with the
/// default staging adopts that folder's records before it opens.
fn adopt_legacy_staging(
    config: &Config,
    p: &PipeConfig,
    dest: &Path,
    staging: &Path,
) -> anyhow::Result<()> {
    let legacy = config
        .state_dir
        .join("receiver")
        .join(&p.from)
        .join(&p.name)
        .join("staging");
    if staging != directory::default_staging(dest, &p.from, &p.name) || !legacy.is_dir() {
        return Ok(());
    }
    let moved = directory::adopt_legacy_staging(&legacy, staging)?;
    tracing::info!(pipe = %p.name, from = %p.from, files = moved, from_folder = %legacy.display(), to_folder = %staging.display(), "moved the staging folder of an earlier version into dest");
    Ok(())
}

#[cfg(test)]
mod tests;
