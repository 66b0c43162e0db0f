//! The receiver's pipes: each one's sink, its current sender session and its counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use std::path::PathBuf;

use gapsync_daemon::config::PipeKey;

use crate::config::Config;
use crate::sink::Sink;
use crate::sink::directory::DirectorySink;

/// Counters of one pipe, for the periodic summary.
#[derive(Debug, Default)]
pub struct PipeStats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub connections: AtomicU64,
    pub refused_frames: AtomicU64,
}

/// One pipe: `from`'s files named `name`, landed by `sink`.
pub struct Pipe {
    pub name: String,
    pub from: String,
    pub sink: Mutex<Box<dyn Sink>>,
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
        op(guard.as_mut())
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

    /// Counts written bytes.
    pub fn add_bytes(&self, n: u64) {
        self.stats.bytes.fetch_add(n, Relaxed);
    }
}

/// All pipes, by (sender node, pipe name).
#[derive(Debug, Default)]
pub struct Pipes {
    by_key: HashMap<(String, String), Arc<Pipe>>,
}

impl Pipes {
    /// Opens every configured pipe's sink (repairing interrupted commits).
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let mut by_key = HashMap::new();
        for p in &config.pipes {
            let sink = DirectorySink::open(
                &p.dest,
                &p.staging,
                config.done_retention,
                config.stale_partial_after,
            )
            .map_err(|e| anyhow::anyhow!("pipe {} from {}: {e:#}", p.name, p.from))?;
            let last_path = p.staging.join("last-connection");
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
            let pipe = Pipe {
                name: p.name.clone(),
                from: p.from.clone(),
                sink: Mutex::new(Box::new(sink)),
                session: AtomicU64::new(0),
                stats: PipeStats::default(),
                keys: p.keys.clone(),
                require_auth: p.require_auth,
                last_connection: Mutex::new(last.unwrap_or((0, 0))),
                last_path,
            };
            by_key.insert((p.from.clone(), p.name.clone()), Arc::new(pipe));
        }
        Ok(Self { by_key })
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

    /// Logs one summary line per pipe.
    pub fn log_summary(&self) {
        for p in self.by_key.values() {
            let partials = p.with_sink(|s| s.partials());
            tracing::info!(
                pipe = %p.name,
                from = %p.from,
                files = p.stats.files.load(Relaxed),
                bytes = p.stats.bytes.load(Relaxed),
                partials,
                connections = p.stats.connections.load(Relaxed),
                refused_frames = p.stats.refused_frames.load(Relaxed),
                "summary"
            );
        }
    }
}
