//! The sending policy of one pipe, in one place: which file goes next, what an acknowledgement
//! or a refusal means for it, when it is delivered, retried or quarantined.
//!
//! The link driver only asks for the next frame and reports what happened on the connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use gapsync_protocol::{FrameInfo, FrameKind, Profile, SenderEvent};

use crate::config::{AfterSend, PipeConfig};
use crate::source::SourceEvent;
use crate::state::{IdSource, InFlight, InFlightStore};
use crate::transfer::{Transfer, mtime_ns};

/// Acknowledged progress is written to the in-flight record (without fsync: it only saves
/// resending after a crash) every this many bytes or this often, whichever comes first.
const PERSIST_EVERY: u64 = 16 << 20;
const PERSIST_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Counters of one pipe, for the periodic summary.
#[derive(Debug, Default)]
pub struct PipeStats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub reconnects: AtomicU64,
    pub quarantined: AtomicU64,
    pub queued: AtomicU64,
    pub connected: AtomicU64,
}

/// One pipe's queue and transfers in flight.
#[derive(Debug)]
pub struct PipeWorker {
    pub cfg: PipeConfig,
    pub profile: Profile,
    ids: Arc<IdSource>,
    store: InFlightStore,
    pending: VecDeque<String>,
    known: HashSet<String>,
    active: VecDeque<Transfer>,
    failures: HashMap<String, u32>,
    /// Transfers that got a FAIL, waiting at the back of the queue with their state.
    parked: HashMap<String, Transfer>,

    pub stats: Arc<PipeStats>,
    /// Connections opened by this pipe in this session (numbered from 1 in each Hello).
    pub connections: u64,
    /// Payload of the frame `next_frame` returned.
    pub buf: Vec<u8>,
}

impl PipeWorker {
    /// Opens the pipe's state; records whose spool file is gone are dropped (delivered before
    /// the crash, or removed by the operator).
    pub fn new(
        cfg: PipeConfig,
        profile: Profile,
        ids: Arc<IdSource>,
        stats: Arc<PipeStats>,
    ) -> anyhow::Result<Self> {
        let mut store = InFlightStore::open(&cfg.state_dir)?;
        for path in store.paths() {
            if !cfg.spool.join(&path).is_file() {
                store.remove(&path)?;
            }
        }
        Ok(Self {
            cfg,
            profile,
            ids,
            store,
            pending: VecDeque::new(),
            known: HashSet::new(),
            active: VecDeque::new(),
            failures: HashMap::new(),
            parked: HashMap::new(),

            stats,
            connections: 0,
            buf: Vec::new(),
        })
    }

    /// Files queued or in flight.
    pub fn depth(&self) -> usize {
        self.pending.len() + self.active.len()
    }

    fn update_depth(&self) {
        self.stats.queued.store(self.depth() as u64, Relaxed);
    }

    /// Takes a file from the source.
    pub fn on_source(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Found(rel) => {
                if self.known.insert(rel.clone()) {
                    // Files that survived a crash in flight go first.
                    if self.store.get(&rel).is_some() {
                        self.pending.push_front(rel);
                    } else {
                        self.pending.push_back(rel);
                    }
                }
            }
            SourceEvent::BadName { path, reason } => {
                let rel = path
                    .strip_prefix(&self.cfg.spool)
                    .unwrap_or(&path)
                    .to_path_buf();
                self.quarantine_path(&path, &rel, &reason);
            }
        }
        self.update_depth();
    }

    /// The next frame to send, Data payloads at most `chunk` bytes: kind, transfer id, offset;
    /// its payload is in `self.buf`.
    pub fn next_frame(&mut self, chunk: usize) -> Option<(FrameKind, u64, u64)> {
        loop {
            let idx = match self.active.iter().position(|t| !t.fully_sent()) {
                Some(i) => i,
                None if self.active.len() < self.max_active() => {
                    self.activate()?;
                    self.active.len() - 1
                }
                None => return None,
            };
            let t = &mut self.active[idx];
            match t.next_frame(chunk, &mut self.buf) {
                Ok(Some((FrameKind::Commit, _))) if !t.unchanged() => {
                    let t = self.remove_active(idx);
                    tracing::warn!(pipe = %self.cfg.name, path = %t.rel, "the file changed while it was sent; sending it again as a new version");
                    self.forget_transfer(&t);
                    self.requeue_front(t.rel);
                }
                Ok(Some((kind, offset))) => {
                    if kind == FrameKind::Data {
                        self.stats
                            .wire_bytes
                            .fetch_add(self.buf.len() as u64, Relaxed);
                    }
                    return Some((kind, t.id, offset));
                }
                // Not reached (position() picked a transfer with frames left); stop filling
                // rather than spin if that ever changes.
                Ok(None) => return None,
                Err(e) => {
                    let t = self.remove_active(idx);
                    self.read_failed(t, e);
                }
            }
        }
    }

    fn max_active(&self) -> usize {
        self.profile.window.get() as usize
    }

    fn remove_active(&mut self, idx: usize) -> Transfer {
        let t = self
            .active
            .remove(idx)
            .unwrap_or_else(|| unreachable!("index from position()"));
        self.update_depth();
        t
    }

    /// Starts the next queued file; `None` when nothing is queued.
    fn activate(&mut self) -> Option<()> {
        while let Some(rel) = self.pending.pop_front() {
            if let Some(t) = self.parked.remove(&rel) {
                self.active.push_back(t);
                self.update_depth();
                return Some(());
            }
            let fs_path = self.cfg.spool.join(&rel);
            let file = match fs::File::open(&fs_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.known.remove(&rel);
                    let _ = self.store.remove(&rel);
                    continue;
                }
                Err(e) => {
                    self.quarantine_path(
                        &fs_path,
                        Path::new(&rel),
                        &format!("cannot open it: {e}"),
                    );
                    continue;
                }
            };
            let Ok(meta) = file.metadata() else { continue };
            let (size, mtime) = (meta.len(), mtime_ns(&meta));
            let resumed = self
                .store
                .get(&rel)
                .filter(|r| r.size == size && r.mtime_ns == mtime)
                .cloned();
            let (id, acked) = match resumed {
                Some(r) => (r.transfer, r.acked),
                None => match self.ids.next() {
                    Ok(id) => (id, 0),
                    Err(e) => {
                        tracing::error!(pipe = %self.cfg.name, error = %e, "cannot advance the session counter in the state folder; not sending until it can be written");
                        self.pending.push_front(rel);
                        return None;
                    }
                },
            };
            let t = Transfer::new(id, rel.clone(), fs_path, file, &meta, acked);
            let record = InFlight {
                transfer: id,
                path: rel.clone(),
                size,
                mtime_ns: mtime,
                acked,
            };
            if let Err(e) = self.store.put(record, true) {
                tracing::error!(pipe = %self.cfg.name, path = %rel, error = %e, "cannot write the in-flight record to the state folder; not sending until it can be written");
                self.pending.push_front(rel);
                return None;
            }
            if acked > 0 {
                tracing::info!(pipe = %self.cfg.name, path = %rel, transfer = %format!("{id:016x}"), resume_at = acked, "resuming a transfer from before the restart");
            }

            self.active.push_back(t);
            self.update_depth();
            return Some(());
        }
        None
    }

    /// Handles what the connection reported.
    pub fn on_event(&mut self, ev: &SenderEvent) {
        match ev {
            SenderEvent::Acked(info) => self.on_ack(info),
            SenderEvent::Failed(info) => self.on_fail(info),
            SenderEvent::TimedOut(_)
            | SenderEvent::Violation(_)
            | SenderEvent::HandshakeAccepted => {}
        }
    }

    fn find(&self, id: u64) -> Option<usize> {
        self.active.iter().position(|t| t.id == id)
    }

    fn on_ack(&mut self, info: &FrameInfo) {
        let Some(idx) = self.find(info.transfer) else {
            return;
        };
        let t = &mut self.active[idx];
        if !t.on_ack(info.kind, info.offset, info.length) {
            if t.acked >= t.persisted_acked + PERSIST_EVERY
                || (t.acked > t.persisted_acked && t.persisted_at.elapsed() >= PERSIST_PERIOD)
            {
                self.persist(idx);
            }
            return;
        }
        let t = self.remove_active(idx);
        self.delivered(t);
    }

    fn persist(&mut self, idx: usize) {
        let t = &mut self.active[idx];
        let r = InFlight {
            transfer: t.id,
            path: t.rel.clone(),
            size: t.size,
            mtime_ns: t.mtime_ns,
            acked: t.acked,
        };
        t.persisted_acked = t.acked;
        t.persisted_at = std::time::Instant::now();
        if let Err(e) = self.store.put(r, false) {
            tracing::warn!(pipe = %self.cfg.name, error = %e, "cannot record progress in the state folder; a restart would resend more");
        }
    }

    /// A FAIL answer: the receiver refused this file's frame (a bad name, a blocked target, a
    /// digest mismatch). It counts towards quarantine, and the file steps aside (parked at the
    /// back of the queue with its transfer kept) so the other files go on. Local trouble on the
    /// receiver (a full disk) is not a FAIL: the receiver closes without a byte, which costs
    /// the file nothing.
    fn on_fail(&mut self, info: &FrameInfo) {
        let Some(idx) = self.find(info.transfer) else {
            tracing::warn!(pipe = %self.cfg.name, kind = ?info.kind, "the receiver refused a frame; reconnecting");
            return;
        };
        let mut t = self.remove_active(idx);
        let failures = self.failures.entry(t.rel.clone()).or_insert(0);
        *failures += 1;
        let failures = *failures;
        tracing::warn!(
            pipe = %self.cfg.name, path = %t.rel, kind = ?info.kind, offset = info.offset,
            attempt = failures, max_attempts = self.cfg.max_attempts,
            "the receiver answered FAIL; reconnecting and retrying (see the receiver's log for the reason)"
        );
        if failures >= self.cfg.max_attempts {
            self.forget_transfer(&t);
            let reason = format!(
                "the receiver refused it {failures} times (last: {:?} frame at offset {})",
                info.kind, info.offset
            );
            self.quarantine_path(&t.fs_path, Path::new(&t.rel), &reason);
            return;
        }
        let rel = t.rel.clone();
        if info.kind == FrameKind::Commit {
            // Digest mismatch: the receiver discarded its partial. Start over as a new transfer.
            self.forget_transfer(&t);
        } else {
            t.rewind();
            self.parked.insert(rel.clone(), t);
        }
        self.pending.push_back(rel);
        self.update_depth();
    }

    /// The connection ended: every transfer resumes from its acknowledged offset next time.
    pub fn on_disconnect(&mut self) {
        for idx in 0..self.active.len() {
            self.active[idx].rewind();
            if self.active[idx].acked != self.active[idx].persisted_acked {
                self.persist(idx);
            }
        }
    }

    fn forget_transfer(&mut self, t: &Transfer) {
        let _ = self.store.remove(&t.rel);
    }

    fn requeue_front(&mut self, rel: String) {
        self.pending.push_front(rel);
        self.update_depth();
    }

    fn delivered(&mut self, t: Transfer) {
        let secs = t.started.elapsed().as_secs_f64().max(1e-6);
        self.stats.files.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(t.size, Relaxed);
        self.failures.remove(&t.rel);

        let after = if !t.unchanged() {
            "kept: the file changed after it was read; the new version is sent next"
        } else {
            match self.after_send(&t) {
                Ok(()) => match self.cfg.after_send {
                    AfterSend::Delete => "deleted",
                    AfterSend::Move => "moved to sent_dir",
                },
                Err(e) => {
                    tracing::error!(pipe = %self.cfg.name, path = %t.rel, error = %e, "delivered, but the spool file could not be removed; remove it by hand or it will be offered again (the receiver will not land it twice while its transfer id is remembered)");
                    "left in spool"
                }
            }
        };
        let _ = self.store.remove(&t.rel);
        self.known.remove(&t.rel);
        if after.starts_with("kept") {
            self.known.insert(t.rel.clone());
            self.pending.push_back(t.rel.clone());
        }
        tracing::info!(
            pipe = %self.cfg.name,
            path = %t.rel,
            size = t.size,
            digest = %t.digest_hex(),
            duration_ms = t.started.elapsed().as_millis() as u64,
            mb_per_s = format!("{:.1}", t.size as f64 / secs / 1e6),
            resent_bytes = t.bytes_sent.saturating_sub(t.size),
            spool_file = after,
            "sent"
        );
    }

    fn after_send(&self, t: &Transfer) -> io::Result<()> {
        match self.cfg.after_send {
            AfterSend::Delete => fs::remove_file(&t.fs_path),
            AfterSend::Move => move_file(&t.fs_path, &self.cfg.sent_dir.join(&t.rel)),
        }
    }

    fn read_failed(&mut self, t: Transfer, e: io::Error) {
        self.forget_transfer(&t);
        match e.kind() {
            io::ErrorKind::NotFound => {
                tracing::warn!(pipe = %self.cfg.name, path = %t.rel, "the file was removed from the spool before it was sent; skipped");
                self.known.remove(&t.rel);
            }
            io::ErrorKind::UnexpectedEof => {
                tracing::warn!(pipe = %self.cfg.name, path = %t.rel, "the file shrank while it was sent; sending it again as a new version");
                self.requeue_front(t.rel);
            }
            _ => self.quarantine_path(
                &t.fs_path,
                Path::new(&t.rel),
                &format!("cannot read it: {e}"),
            ),
        }
    }

    /// Moves a file out of the spool into the quarantine folder and says so at ERROR.
    fn quarantine_path(&mut self, path: &Path, rel: &Path, reason: &str) {
        let dest = self.cfg.quarantine_dir.join(rel);
        let rel_s = rel.to_string_lossy().into_owned();
        self.known.remove(&rel_s);
        self.failures.remove(&rel_s);
        self.stats.quarantined.fetch_add(1, Relaxed);
        match move_file(path, &dest) {
            Ok(()) => {
                tracing::error!(pipe = %self.cfg.name, path = %rel.display(), quarantined_to = %dest.display(), reason, "file quarantined; fix the cause and move it back into the spool to send it")
            }
            Err(e) => {
                tracing::error!(pipe = %self.cfg.name, path = %rel.display(), reason, error = %e, "file could not be sent nor moved to quarantine; it stays in the spool")
            }
        }
        self.update_depth();
    }
}

/// Moves `from` to `to`, creating folders, copying across filesystems when rename cannot.
pub fn move_file(from: &Path, to: &PathBuf) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            fs::copy(from, to)?;
            fs::File::open(to)?.sync_all()?;
            fs::remove_file(from)
        }
        other => other,
    }
}
