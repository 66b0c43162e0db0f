//! The ONE sending policy of a pipe, for every link: the queue of objects its source found,
//! their durable in-flight records (one transfer id per object version, kept across restarts),
//! failures counted towards quarantine, the after-send step through the source, and on the
//! diode the sent log. The links only move bytes:
//!
//! ```text
//!  Source --found--> Pipe (queue, in-flight records, retries, quarantine, after-send)
//!                      |  take_next / delivered           |  next_frame / on_event
//!                      v                                  v
//!                 link::udp (objects, passes)      batch::PipeWorker -> link::tcp (frames, acks)
//! ```
//!
//! The policy knows nothing of spools: it names objects by key and asks its [`Source`] to take,
//! settle or quarantine them.

pub mod admit;
pub mod batch;
mod forward;
pub mod inflight;
pub mod sent_log;
pub mod stats;
pub mod status;
pub mod transfer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, Metadata};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use gapsync_protocol::{LinkKind, OriginChain};
use tokio::sync::{mpsc, watch};

use self::admit::Admission;
use self::inflight::{InFlight, InFlightStore};
use self::sent_log::{SentEntry, SentLog};
pub use self::stats::PipeStats;
use self::status::PipeHandle;
use self::transfer::mtime_ns;
use crate::config::PipeConfig;
use crate::process::rate_limit::RateLimiter;
use crate::schedule::run::CronGate;
use crate::source::identity::Identity;
use crate::source::{Disposal, Outcome, Source, SourceEvent};
use crate::state::{IdSource, unix_now};

/// How often objects kept longer than the source's retention are dropped.
const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// A queued object, opened, with its transfer id (and how much of it the receiver already has).
#[derive(Debug)]
pub struct Taken {
    pub key: String,
    pub file: File,
    pub meta: Metadata,
    pub reopen: PathBuf,
    pub id: u64,
    pub acked: u64,
    /// The hops the object crossed before this pipe's source (empty: it originated here).
    pub origin: OriginChain,
    /// The permission bits and link target the Open carries (version 2 when not empty).
    pub attrs: gapsync_protocol::ObjectAttrs,
}

/// What [`Pipe::take`] did with a queued key.
#[derive(Debug)]
pub enum Take {
    Taken(Box<Taken>),
    /// Not to be sent now (busy, gone, quarantined): go on with the next.
    Skipped,
    /// Nothing can be taken now (descriptors, state folder): the key is queued again.
    Wait,
}

/// One pipe's policy state, shared by its link.
#[derive(Debug)]
pub struct Pipe {
    pub cfg: PipeConfig,
    source: Box<dyn Source>,
    ids: Arc<IdSource>,
    store: InFlightStore,
    /// What the diode sent (a resend keeps its ids); `None` on gate links.
    sent_log: Option<SentLog>,
    last_housekeeping: Option<Instant>,
    /// Queued keys with their size when queued, and the sum of those sizes.
    pending: VecDeque<(String, u64)>,
    pending_bytes: u64,
    /// Keys queued or in flight.
    known: HashSet<String>,
    /// Names objects skipped by `forward_received = false`, within a budget per minute.
    forward_names: forward::Names,
    /// Objects that changed while they were sent, waiting until the source says they settled.
    cooling: Vec<String>,
    failures: HashMap<String, u32>,
    /// The last open failed for lack of descriptors (EMFILE): not said again until one works.
    short_of_descriptors: bool,
    /// When the source last reported a new object.
    last_found: Option<Instant>,
    /// The filter and `history` / `realtime`: which objects the pipe takes.
    admission: Admission,
    /// The pipe's `rate_limit` bucket, shared by everything that sends on it.
    pub limiter: Option<Arc<RateLimiter>>,
    pub stats: Arc<PipeStats>,
    /// A cron pipe's gate (objects found after the last run wait) and when each queued key
    /// was first found; `None` without cron.
    cron: Option<Arc<CronGate>>,
    found_at: HashMap<String, Instant>,
    /// The pipe's "running" flag: false while stopped (see [`PipeHandle::pause`]).
    running: watch::Receiver<bool>,
    running_tx: Arc<watch::Sender<bool>>,
}

impl Pipe {
    /// Opens the pipe's state; records whose object is gone are dropped (delivered before the
    /// crash, or removed by the operator).
    pub fn new(
        cfg: PipeConfig,
        source: Box<dyn Source>,
        ids: Arc<IdSource>,
        stats: Arc<PipeStats>,
    ) -> anyhow::Result<Self> {
        let mut store = InFlightStore::open(&cfg.state_dir)?;
        for key in store.paths() {
            if !source.exists(&key) {
                store.remove(&key)?;
            }
        }
        let sent_log = match cfg.profile.link {
            LinkKind::Udp => Some(SentLog::open(&cfg.state_dir)?),
            LinkKind::Tcp | LinkKind::Tls => None,
        };
        let (running_tx, running) = watch::channel(true);
        let admission = Admission::open(&cfg, || source.list())?;
        let limiter = (cfg.processors.rate_limit()).map(|r| Arc::new(RateLimiter::new(r)));
        Ok(Self {
            cfg,
            source,
            ids,
            store,
            sent_log,
            last_housekeeping: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            known: HashSet::new(),
            forward_names: forward::Names::default(),
            cooling: Vec::new(),
            failures: HashMap::new(),
            short_of_descriptors: false,
            last_found: None,
            admission,
            limiter,
            stats,
            cron: None,
            found_at: HashMap::new(),
            running,
            running_tx: Arc::new(running_tx),
        })
    }

    /// Makes this a cron pipe: it sends only what was found by the last run of `gate`.
    pub fn gate_by_cron(&mut self, gate: Arc<CronGate>) {
        self.cron = Some(gate);
    }

    /// The handle the control socket keeps: status, stop and start.
    pub fn handle(&self) -> PipeHandle {
        PipeHandle::new(&self.cfg, self.stats.clone(), self.running_tx.clone())
    }

    /// The pipe's "running" flag, for a link to wait on.
    pub fn running(&self) -> watch::Receiver<bool> {
        self.running.clone()
    }

    /// Whether the pipe may send (not stopped).
    pub fn is_running(&self) -> bool {
        *self.running.borrow()
    }

    /// Starts the source; what it finds comes on the returned channel.
    pub fn start_source(&mut self) -> io::Result<mpsc::Receiver<SourceEvent>> {
        let (tx, rx) = mpsc::channel(4096);
        self.source.start(tx)?;
        Ok(rx)
    }

    /// Takes what the source found.
    pub fn on_source(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Found { rel, size, time } => {
                if !self.known.contains(&rel)
                    && !(self.admission).admits(&rel, size, time, &self.stats)
                {
                    return;
                }
                if self.known.insert(rel.clone()) {
                    self.last_found = Some(Instant::now());
                    // Objects that survived a crash in flight go first (and need no cron run).
                    let front = self.store.get(&rel).is_some();
                    if self.cron.is_some() && !front {
                        self.found_at
                            .entry(rel.clone())
                            .or_insert_with(Instant::now);
                    }
                    self.queue(rel, size, front);
                }
            }
            SourceEvent::BadName { path, reason } => {
                self.stats.quarantined.fetch_add(1, Relaxed);
                (self.stats).failed(format!("file quarantined: {reason}"));
                self.source.reject(&path, &reason);
            }
        }
    }

    /// When the source last reported a new object.
    pub fn last_found(&self) -> Option<Instant> {
        self.last_found
    }

    /// Objects queued (not yet taken) and changed ones waiting to settle.
    pub fn queued(&self) -> usize {
        self.pending.len() + self.cooling.len()
    }

    /// Bytes of the queued objects.
    pub fn queued_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Queues `key` of `size` bytes (at the front: it goes next).
    fn queue(&mut self, key: String, size: u64, front: bool) {
        self.pending_bytes += size;
        self.stats.queued_bytes.store(self.pending_bytes, Relaxed);
        if front {
            self.pending.push_front((key, size));
        } else {
            self.pending.push_back((key, size));
        }
    }

    /// Queues a key again (at the front: it goes next), asking the source for its size.
    pub fn requeue(&mut self, key: String, front: bool) {
        let size = self.source.size(&key);
        self.queue(key, size, front);
    }

    /// The next queued key, after queuing (first) the changed objects that have settled.
    pub fn dequeue(&mut self) -> Option<String> {
        self.release_cooled();
        let (key, size) = match &self.cron {
            None => self.pending.pop_front()?,
            Some(gate) => {
                let found = &self.found_at;
                let next = (self.pending.iter())
                    .position(|(k, _)| found.get(k).is_none_or(|t| gate.admits(*t)));
                gate.set_held(next.is_none() && !self.pending.is_empty());
                self.pending.remove(next?)?
            }
        };
        self.pending_bytes -= size;
        self.stats.queued_bytes.store(self.pending_bytes, Relaxed);
        Some(key)
    }

    /// Opens the next queued object that can be sent; `None` when there is none now.
    pub fn take_next(&mut self) -> Option<Taken> {
        while let Some(key) = self.dequeue() {
            match self.take(key) {
                Take::Taken(t) => return Some(*t),
                Take::Skipped => {}
                Take::Wait => return None,
            }
        }
        None
    }

    /// Opens `key` and gives it its transfer id, recorded in flight (made durable by
    /// [`Pipe::sync`]).
    pub fn take(&mut self, key: String) -> Take {
        let opened = match self.source.take(&key) {
            Ok(Some(o)) => {
                self.short_of_descriptors = false;
                o
            }
            Ok(None) => {
                // Still being written: found again when it is closed or by a later scan.
                tracing::debug!(pipe = %self.cfg.name, path = %key, "not taken: a process has the file open for writing");
                self.known.remove(&key);
                return Take::Skipped;
            }
            Err(e) => return self.take_failed(key, &e),
        };
        if !opened.origin.is_empty() && !self.cfg.forward_received {
            return self.skip_forwarded(key, &opened.origin);
        }
        let size = transfer::object_size(&opened.meta, &opened.attrs);
        let mtime = mtime_ns(&opened.meta);
        let Some((id, acked)) = self.transfer_id(&key, size, mtime) else {
            self.requeue(key, true);
            return Take::Wait;
        };
        let record = InFlight {
            transfer: id,
            path: key.clone(),
            size,
            mtime_ns: mtime,
            acked,
        };
        if let Err(e) = self.store.put(record) {
            tracing::error!(pipe = %self.cfg.name, path = %key, error = %e, "cannot write the in-flight record to the state folder; not sending until it can be written");
            (self.stats).failed(format!("cannot write the in-flight record: {e}"));
            self.requeue(key, true);
            return Take::Wait;
        }
        if acked > 0 {
            tracing::info!(pipe = %self.cfg.name, path = %key, transfer = %format!("{id:016x}"), resume_at = acked, "resuming a transfer from before the restart");
        }
        Take::Taken(Box::new(Taken {
            key,
            file: opened.file,
            meta: opened.meta,
            reopen: opened.reopen,
            id,
            acked,
            origin: opened.origin,
            attrs: opened.attrs,
        }))
    }

    /// Why `key` could not be opened, and what that means for it.
    fn take_failed(&mut self, key: String, e: &io::Error) -> Take {
        if is_out_of_descriptors(e) {
            // Not the object's fault: it goes first once transfers in flight closed theirs.
            self.out_of_descriptors(&key, e);
            self.requeue(key, true);
            return Take::Wait;
        }
        if e.kind() == io::ErrorKind::NotFound {
            // A scan may report a file again just before it was sent and removed; only one
            // that was in flight is worth a warning.
            if self.store.get(&key).is_some() {
                tracing::warn!(pipe = %self.cfg.name, path = %key, "the file was removed from its source before it was sent; skipped");
            }
            self.forget(&key);
            return Take::Skipped;
        }
        self.quarantine(&key, &format!("cannot open it: {e}"));
        Take::Skipped
    }

    /// The id of `key`'s version: its in-flight record's (resumed where the receiver got to),
    /// on the diode a resent object's id from the sent log, else a new one.
    fn transfer_id(&mut self, key: &str, size: u64, mtime: i64) -> Option<(u64, u64)> {
        let resumed = self
            .store
            .get(key)
            .filter(|r| r.size == size && r.mtime_ns == mtime);
        if let Some(r) = resumed {
            return Some((r.transfer, r.acked));
        }
        if let Some(id) = (self.sent_log.as_ref()).and_then(|l| l.id_of(key, size, mtime)) {
            return Some((id, 0));
        }
        match self.ids.next() {
            Ok(id) => Some((id, 0)),
            Err(e) => {
                tracing::error!(pipe = %self.cfg.name, error = %e, "cannot advance the session counter in the state folder; not sending until it can be written");
                (self.stats).failed(format!("cannot advance the session counter: {e}"));
                None
            }
        }
    }

    /// Whether in-flight records wait for an fsync.
    pub fn needs_sync(&self) -> bool {
        self.store.needs_sync()
    }

    /// Makes the in-flight records durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.store.sync()
    }

    /// Writes the acknowledged progress of a transfer to its in-flight record.
    pub fn record_progress(&mut self, r: InFlight) {
        if let Err(e) = self.store.update(r) {
            tracing::warn!(pipe = %self.cfg.name, error = %e, "cannot record progress in the state folder; a restart would resend more");
        }
    }

    /// Counts a refusal of `key` by the receiver; returns how many so far.
    pub fn refused(&mut self, key: &str) -> u32 {
        let failures = self.failures.entry(key.to_owned()).or_insert(0);
        *failures += 1;
        *failures
    }

    /// Drops the in-flight record of `key` (its next version gets a new id).
    pub fn drop_record(&mut self, key: &str) {
        let _ = self.store.remove(key);
    }

    /// Forgets `key` entirely: found again, it is queued again.
    pub fn forget(&mut self, key: &str) {
        self.known.remove(key);
        self.found_at.remove(key);
        if let Err(err) = self.store.remove(key) {
            tracing::warn!(pipe = %self.cfg.name, path = %key, error = %err, "cannot update the in-flight journal");
        }
    }

    /// An object that changed while it was sent: it goes again once the source says it has
    /// settled (a producer writing in place may still be at it).
    pub fn requeue_changed(&mut self, key: String) {
        self.cooling.push(key);
    }

    /// Queues (at the front) the changed objects that have now settled.
    fn release_cooled(&mut self) {
        if self.cooling.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<String>, Vec<String>) = std::mem::take(&mut self.cooling)
            .into_iter()
            .partition(|key| self.source.settled(key));
        self.cooling = waiting;
        for key in ready.into_iter().rev() {
            self.requeue(key, true);
        }
    }

    /// Sets an object aside (the source says so at ERROR).
    pub fn quarantine(&mut self, key: &str, reason: &str) {
        self.forget(key);
        self.failures.remove(key);
        self.stats.quarantined.fetch_add(1, Relaxed);
        (self.stats).failed(format!("file quarantined: {key}: {reason}"));
        self.source.settle(key, Outcome::Quarantine(reason));
    }

    /// Says at WARN, once per shortage, that objects wait for descriptors.
    pub fn out_of_descriptors(&mut self, key: &str, e: &io::Error) {
        if !std::mem::replace(&mut self.short_of_descriptors, true) {
            (self.stats).warned(format!("cannot open files for lack of descriptors: {e}"));
            tracing::warn!(pipe = %self.cfg.name, path = %key, error = %e, "cannot open a file for lack of descriptors; files wait in the queue until transfers in flight close theirs (raise LimitNOFILE)");
        }
    }

    /// An object delivered (gate) or sent (diode) as `ident` describes: counted, its source
    /// told (after-send), its record dropped, on the diode logged for a resend. Returns the
    /// `spool_file` words of the `sent` line.
    pub fn delivered(
        &mut self,
        key: &str,
        id: u64,
        size: u64,
        mtime_ns: i64,
        ident: &Identity,
    ) -> &'static str {
        self.stats.delivered(size);
        self.failures.remove(key);
        let (words, changed) = self.after_send(key, ident);
        // A file that changed after it was sent is not what the receiver got: no entry, so
        // that its new content gets a new id even if its size and mtime look the same.
        if let (Some(log), false) = (&mut self.sent_log, changed) {
            let entry = SentEntry {
                at: unix_now(),
                id,
                size,
                mtime_ns,
                path: key.to_owned(),
            };
            if let Err(err) = log.record(entry) {
                tracing::warn!(pipe = %self.cfg.name, path = %key, error = %err, "cannot append to the sent log; a resend of this file may land it twice");
            }
        }
        if let Err(err) = self.store.remove(key) {
            tracing::warn!(pipe = %self.cfg.name, path = %key, error = %err, "cannot update the in-flight journal");
        }
        words
    }

    /// Tells the source; returns the `spool_file` words and whether the object changed.
    fn after_send(&mut self, key: &str, ident: &Identity) -> (&'static str, bool) {
        let name = &self.cfg.name;
        let words = match self.source.settle(key, Outcome::Sent(ident)) {
            Disposal::Done(done) => done,
            Disposal::Gone => "already gone",
            Disposal::Changed(what) => {
                (self.stats).warned(format!("{key} changed after it was sent: {what}"));
                tracing::warn!(pipe = %name, path = %key, changed = %what, "the file changed after it was sent: kept in its source; its new content is sent again as a new version once it has settled");
                self.requeue_changed(key.to_owned());
                return (
                    "kept: changed after it was sent; sent again as a new version",
                    true,
                );
            }
            Disposal::Busy => {
                tracing::warn!(pipe = %name, path = %key, "a process has the file open for writing again after it was sent: kept in its source; it is sent again once it is closed");
                "kept: open for writing; sent again once closed"
            }
            Disposal::Failed(e) => {
                (self.stats).failed(format!("{key}: sent, but not deleted or moved: {e}"));
                tracing::error!(pipe = %name, path = %key, error = %e, "sent, but the source could not delete or move the file; remove it by hand or it will be offered again (the receiver will not land it twice while its transfer id is remembered)");
                "left in spool"
            }
        };
        self.known.remove(key);
        self.found_at.remove(key);
        (words, false)
    }

    /// Once an hour: drops what was sent longer than the source's retention ago from the
    /// sent log and from the source's kept copies.
    pub fn housekeeping(&mut self) {
        if (self.last_housekeeping).is_some_and(|t| t.elapsed() < HOUSEKEEPING_EVERY) {
            return;
        }
        self.last_housekeeping = Some(Instant::now());
        let (Some(keep), Some(log)) = (self.source.retention(), self.sent_log.as_mut()) else {
            return;
        };
        match log.expire(unix_now().saturating_sub(keep.as_secs())) {
            Ok(old) => {
                let removed = old
                    .iter()
                    .filter(|e| self.source.drop_kept(&e.path))
                    .count();
                if removed > 0 {
                    tracing::info!(pipe = %self.cfg.name, removed, keep_sent_for = %humantime::format_duration(keep), "removed sent files older than keep_sent_for from sent_dir");
                }
            }
            Err(err) => {
                tracing::warn!(pipe = %self.cfg.name, error = %err, "cannot compact the sent log");
            }
        }
    }
}

/// The process (EMFILE) or the system (ENFILE) is out of file descriptors: the file is not
/// at fault.
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
