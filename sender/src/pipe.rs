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
use std::time::Instant;

use gapsync_protocol::batch::{RECORD_HEADER_LEN, finish_record};
use gapsync_protocol::{FrameKind, Profile, SenderEvent};

use crate::config::PipeConfig;
use crate::inflight::{InFlight, InFlightStore};
use crate::source::SourceEvent;
use crate::source::spool::after_send::{Disposal, dispose_if_unchanged};
use crate::source::spool::config::AfterSend;
use crate::source::spool::lease;
use crate::state::IdSource;
use crate::transfer::{Transfer, mtime_ns};

/// Acknowledged progress is written to the in-flight record (without fsync: it only saves
/// resending after a crash) every this many bytes or this often, whichever comes first.
const PERSIST_EVERY: u64 = 16 << 20;
const PERSIST_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Files in flight at once per pipe: four 4 MiB frames of 4 KiB files, so the sender prepares
/// the next frames while the receiver lands one. At 1,024 a pipe had about one frame of small
/// files in flight and the two ends took turns (BENCHMARKS.md, history). A file holds an open
/// descriptor only until it was read (`Transfer`): at most this many, well below the units'
/// LimitNOFILE of 65536.
const MAX_ACTIVE_FILES: usize = 4096;

/// Before an fsync of in-flight records, files are started until this many frames of data
/// wait (each started file holds an open file until delivered).
const LOOKAHEAD_FRAMES: u64 = 16;

/// A frame that would not be full goes out while others are in flight once no new file was
/// found for this long: the files known then are all there is to send for now, and waiting
/// for every answer first would cost the last file of a burst a whole round trip more (on a
/// 50 ms gate with 8 frames in flight, a tenth of a 200 MiB burst's time). Shorter than this,
/// files are still arriving and the frame is left to fill, as before.
const PARTIAL_FRAME_QUIET: std::time::Duration = std::time::Duration::from_millis(5);

/// A Data record is started only with room for this much (or the rest of the file), so a
/// frame's last bytes are not spent on a sliver of a large file.
const MIN_DATA_RECORD: usize = 64 << 10;

/// One record of a frame in flight, to credit its transfer when the frame is answered.
#[derive(Debug, Clone, Copy)]
struct Record {
    kind: FrameKind,
    transfer: u64,
    offset: u64,
    len: u32,
}

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
    /// Files left in the spool by the `ignore` rule, and their bytes, at the last full scan.
    pub ignored_files: AtomicU64,
    pub ignored_bytes: AtomicU64,
}

/// One pipe's queue and transfers in flight.
#[derive(Debug)]
pub struct PipeWorker {
    pub cfg: PipeConfig,
    pub profile: Profile,
    ids: Arc<IdSource>,
    store: InFlightStore,
    /// Queued files with their size when queued.
    pending: VecDeque<(String, u64)>,
    /// Sum of the sizes in `pending`.
    pending_bytes: u64,
    known: HashSet<String>,
    active: VecDeque<Transfer>,
    /// Every transfer in `active` before this index is fully sent (waiting for its answer):
    /// where the search for the next record starts, instead of at the front each time.
    first_unsent: usize,
    /// The last open failed for lack of descriptors (EMFILE): not said again until one works.
    short_of_descriptors: bool,
    failures: HashMap<String, u32>,
    /// Transfers that got a FAIL, waiting at the back of the queue with their state.
    parked: HashMap<String, Transfer>,
    /// The records of each frame sent and not yet answered, oldest first.
    in_flight: VecDeque<Vec<Record>>,
    /// Files that changed while they were sent, waiting to be unchanged for `settle`.
    cooling: Vec<String>,
    /// Transfers that were in a batch the receiver refused: each is sent in frames of its own
    /// until it is delivered or refused alone.
    solo: HashSet<u64>,
    /// When the source last reported a new file.
    last_found: Option<Instant>,

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
            if !cfg.spool().path.join(&path).is_file() {
                store.remove(&path)?;
            }
        }
        Ok(Self {
            cfg,
            profile,
            ids,
            store,
            pending: VecDeque::new(),
            pending_bytes: 0,
            known: HashSet::new(),
            active: VecDeque::new(),
            first_unsent: 0,
            short_of_descriptors: false,
            failures: HashMap::new(),
            parked: HashMap::new(),
            in_flight: VecDeque::new(),
            cooling: Vec::new(),
            solo: HashSet::new(),
            last_found: None,

            stats,
            connections: 0,
            buf: Vec::new(),
        })
    }

    /// Queues a file again (at the front: it goes next), reading its size.
    fn requeue(&mut self, rel: String, front: bool) {
        let size = fs::metadata(self.cfg.spool().path.join(&rel)).map_or(0, |m| m.len());
        self.queue(rel, size, front);
    }

    /// Queues a file of `size` bytes (at the front: it goes next).
    fn queue(&mut self, rel: String, size: u64, front: bool) {
        self.pending_bytes += size;
        if front {
            self.pending.push_front((rel, size));
        } else {
            self.pending.push_back((rel, size));
        }
    }

    fn dequeue(&mut self) -> Option<String> {
        let (rel, size) = self.pending.pop_front()?;
        self.pending_bytes -= size;
        Some(rel)
    }

    /// Whether a frame that is not full may go out while `in_flight` frames are unanswered;
    /// if not, when to ask again. Like Nagle's algorithm, such a frame waits for the answers
    /// while files keep arriving, so small files that arrive one by one travel together
    /// instead of one per frame, without delaying any file by more than one round trip; once
    /// no file was found for [`PARTIAL_FRAME_QUIET`], nothing more is coming to fill it.
    pub fn partial_frame_wait(&self, in_flight: usize, now: Instant) -> Option<Instant> {
        partial_frame_wait(self.last_found, in_flight, now)
    }

    /// True when the files waiting (queued, and active ones not fully sent) would fill a frame
    /// of `max_payload` bytes.
    pub fn fills_frame(&self, max_payload: usize) -> bool {
        // Record headers and Open/Commit bodies of a small file.
        const PER_FILE: u64 = 3 * RECORD_HEADER_LEN as u64 + 160;
        let queued = self.pending_bytes + self.pending.len() as u64 * PER_FILE;
        if queued >= max_payload as u64 {
            return true;
        }
        let sending = self
            .active
            .range(self.first_unsent..)
            .filter(|t| !t.fully_sent());
        let active: u64 = sending.clone().map(Transfer::unsent).sum();
        queued + active + sending.count() as u64 * PER_FILE >= max_payload as u64
    }

    /// Files queued or in flight.
    pub fn depth(&self) -> usize {
        self.pending.len() + self.active.len() + self.cooling.len()
    }

    fn update_depth(&self) {
        self.stats.queued.store(self.depth() as u64, Relaxed);
    }

    /// Takes a file from the source.
    pub fn on_source(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Found { rel, size } => {
                if self.known.insert(rel.clone()) {
                    self.last_found = Some(Instant::now());
                    // Files that survived a crash in flight go first.
                    let front = self.store.get(&rel).is_some();
                    self.queue(rel, size, front);
                }
            }
            SourceEvent::BadName { path, reason } => {
                let rel = path
                    .strip_prefix(&self.cfg.spool().path)
                    .unwrap_or(&path)
                    .to_path_buf();
                self.quarantine_path(&path, &rel, &reason);
            }
        }
        self.update_depth();
    }

    /// The next frame to send: a Batch of records of as many transfers as fit in
    /// `max_payload` bytes, its payload in `self.buf`; `None` when nothing is ready.
    pub fn next_frame(&mut self, max_payload: usize) -> Option<(FrameKind, u64, u64)> {
        self.buf.clear();
        let mut records = Vec::new();
        // Everything before `idx` is fully sent, at every step of the loop.
        let mut idx = self.first_unsent;
        loop {
            // The next transfer with records left, starting new ones while there is room.
            while idx < self.active.len() && self.active[idx].fully_sent() {
                idx += 1;
            }
            if idx == self.active.len()
                && (self.active.len() >= self.max_active() || self.activate().is_none())
            {
                break;
            }
            let t = &self.active[idx];
            // A transfer under suspicion after a refused batch travels alone, so that the
            // receiver's answer names it.
            if !records.is_empty() && self.solo.contains(&t.id) {
                break;
            }
            let Some((kind, body)) = t.next_kind() else {
                idx += 1;
                continue;
            };
            let room = max_payload.saturating_sub(self.buf.len() + RECORD_HEADER_LEN);
            let fits = match kind {
                // An empty frame takes whatever data fits (profiles with small frames).
                FrameKind::Data => {
                    room >= (MIN_DATA_RECORD as u64).min(t.unsent()) as usize
                        || (records.is_empty() && room > 0)
                }
                _ => room >= body,
            };
            if !fits && records.is_empty() {
                // Not even alone in a frame: the name is too long for this profile's frames.
                let t = self.remove_active(idx);
                self.forget_transfer(&t);
                let reason = format!(
                    "its Open ({body} bytes with the name) does not fit in a frame of this profile (max_frame_bytes {}); shorten the name or use larger frames",
                    max_payload + gapsync_protocol::HEADER_LEN
                );
                self.quarantine_path(&t.fs_path, Path::new(&t.rel), &reason);
                continue;
            }
            if !fits {
                break;
            }
            if kind == FrameKind::Commit && !t.unchanged() {
                let t = self.remove_active(idx);
                tracing::warn!(pipe = %self.cfg.name, path = %t.rel, "the file changed while it was sent; sending it again as a new version");
                self.forget_transfer(&t);
                self.requeue_changed(t.rel);
                continue;
            }
            let start = self.buf.len();
            self.buf.resize(start + RECORD_HEADER_LEN, 0);
            let t = &mut self.active[idx];
            match t.next_frame(room, &mut self.buf) {
                Ok(Some((kind, offset))) => {
                    let len = finish_record(&mut self.buf, start, kind, t.id, offset)
                        .unwrap_or_else(|| unreachable!("a record within max_payload"));
                    if kind == FrameKind::Data {
                        self.stats.wire_bytes.fetch_add(u64::from(len), Relaxed);
                    }
                    records.push(Record {
                        kind,
                        transfer: t.id,
                        offset,
                        len,
                    });
                    if self.solo.contains(&t.id) {
                        // Alone in its frame: nothing of another transfer follows.
                        if t.fully_sent() {
                            break;
                        }
                    }
                }
                Ok(None) => {
                    self.buf.truncate(start);
                    idx += 1;
                }
                Err(e) => {
                    self.buf.truncate(start);
                    let t = self.remove_active(idx);
                    self.read_failed(t, e);
                }
            }
        }
        self.first_unsent = idx;
        if records.is_empty() {
            return None;
        }
        if self.store.needs_sync() {
            // This fsync is paid anyway: let it carry the records of the next frames' files
            // too, so a file per frame does not mean an fsync per frame.
            self.activate_ahead(LOOKAHEAD_FRAMES * max_payload as u64);
        }
        if let Err(e) = self.store.sync() {
            tracing::error!(pipe = %self.cfg.name, error = %e, "cannot make the in-flight records durable in the state folder; reconnecting and retrying");
            self.in_flight.clear();
            self.buf.clear();
            for t in &mut self.active {
                t.rewind();
            }
            self.first_unsent = 0;
            return None;
        }
        self.in_flight.push_back(records);
        Some((FrameKind::Batch, 0, 0))
    }

    fn max_active(&self) -> usize {
        MAX_ACTIVE_FILES
    }

    /// Starts queued files until `bytes` of data wait in the active transfers (or the limit
    /// of open files is reached), so that their in-flight records share one fsync.
    fn activate_ahead(&mut self, bytes: u64) {
        let mut unsent: u64 = self
            .active
            .range(self.first_unsent..)
            .map(Transfer::unsent)
            .sum();
        while unsent < bytes && self.active.len() < self.max_active() {
            if self.activate().is_none() {
                break;
            }
            unsent += self.active.back().map_or(0, Transfer::unsent);
        }
    }

    fn remove_active(&mut self, idx: usize) -> Transfer {
        let t = self
            .active
            .remove(idx)
            .unwrap_or_else(|| unreachable!("index from position()"));
        if idx < self.first_unsent {
            self.first_unsent -= 1;
        }
        self.update_depth();
        t
    }

    /// Starts the next queued file; `None` when nothing is queued.
    fn activate(&mut self) -> Option<()> {
        self.release_cooled();
        while let Some(rel) = self.dequeue() {
            if let Some(t) = self.parked.remove(&rel) {
                self.active.push_back(t);
                self.update_depth();
                return Some(());
            }
            let fs_path = self.cfg.spool().path.join(&rel);
            let (file, meta) = match lease::take(&self.cfg.name, &fs_path) {
                Ok(Some(taken)) => {
                    self.short_of_descriptors = false;
                    taken
                }
                Ok(None) => {
                    // Still open for writing: found again when it is closed (its close event)
                    // or by a later scan.
                    tracing::debug!(pipe = %self.cfg.name, path = %rel, "not taken: a process has the file open for writing");
                    self.known.remove(&rel);
                    continue;
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    // Not the file's fault: it goes first once transfers in flight have
                    // finished and closed theirs.
                    self.out_of_descriptors(&rel, &e);
                    self.requeue(rel, true);
                    return None;
                }
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
                        self.requeue(rel, true);
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
            if let Err(e) = self.store.put(record) {
                tracing::error!(pipe = %self.cfg.name, path = %rel, error = %e, "cannot write the in-flight record to the state folder; not sending until it can be written");
                self.requeue(rel, true);
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
            SenderEvent::Acked(info) if info.kind == FrameKind::Batch => {
                for r in self.in_flight.pop_front().unwrap_or_default() {
                    self.on_ack(r);
                }
            }
            SenderEvent::Failed(info) if info.kind == FrameKind::Batch => {
                let records = self.in_flight.pop_front().unwrap_or_default();
                self.on_fail(&records);
            }
            SenderEvent::Failed(info) => {
                tracing::warn!(pipe = %self.cfg.name, kind = ?info.kind, "the receiver refused a frame; reconnecting");
            }
            SenderEvent::Acked(_)
            | SenderEvent::TimedOut(_)
            | SenderEvent::Violation(_)
            | SenderEvent::HandshakeAccepted => {}
        }
    }

    fn find(&self, id: u64) -> Option<usize> {
        self.active.iter().position(|t| t.id == id)
    }

    fn on_ack(&mut self, r: Record) {
        let Some(idx) = self.find(r.transfer) else {
            return;
        };
        let t = &mut self.active[idx];
        if !t.on_ack(r.kind, r.offset, r.len) {
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
        if let Err(e) = self.store.update(r) {
            tracing::warn!(pipe = %self.cfg.name, error = %e, "cannot record progress in the state folder; a restart would resend more");
        }
    }

    /// A FAIL answer to a frame with `records`. A frame of one transfer: the receiver refused
    /// that file (a bad name, a blocked target, a digest mismatch); it counts towards
    /// quarantine, and the file steps aside (parked at the back of the queue with its transfer
    /// kept) so the other files go on. A frame of several transfers: which one was refused is
    /// unknown, so each of them is sent alone from now on, until the receiver's answer names
    /// it. Local trouble on the receiver (a full disk) is not a FAIL: the receiver closes
    /// without a byte, which costs the file nothing.
    fn on_fail(&mut self, records: &[Record]) {
        let mut ids: Vec<u64> = records.iter().map(|r| r.transfer).collect();
        ids.dedup();
        let [id] = ids[..] else {
            tracing::warn!(pipe = %self.cfg.name, files = ids.len(), "the receiver answered FAIL to a frame holding several files; reconnecting and sending each alone to find the one it refuses (see the receiver's log for the reason)");
            self.solo.extend(ids);
            return;
        };
        let Some(idx) = self.find(id) else {
            return;
        };
        let committed = records.iter().any(|r| r.kind == FrameKind::Commit);
        let (kind, offset) = records
            .iter()
            .find(|r| committed == (r.kind == FrameKind::Commit))
            .map_or((FrameKind::Batch, 0), |r| (r.kind, r.offset));
        let mut t = self.remove_active(idx);
        self.solo.remove(&t.id);
        let failures = self.failures.entry(t.rel.clone()).or_insert(0);
        *failures += 1;
        let failures = *failures;
        tracing::warn!(
            pipe = %self.cfg.name, path = %t.rel, kind = ?kind, offset,
            attempt = failures, max_attempts = self.cfg.max_attempts,
            "the receiver answered FAIL; reconnecting and retrying (see the receiver's log for the reason)"
        );
        if failures >= self.cfg.max_attempts {
            self.forget_transfer(&t);
            let reason = format!(
                "the receiver refused it {failures} times (last: {kind:?} at offset {offset})"
            );
            self.quarantine_path(&t.fs_path, Path::new(&t.rel), &reason);
            return;
        }
        let rel = t.rel.clone();
        if committed {
            // Digest mismatch: the receiver discarded its partial. Start over as a new transfer.
            self.forget_transfer(&t);
        } else {
            t.rewind();
            self.parked.insert(rel.clone(), t);
        }
        self.requeue(rel, false);
        self.update_depth();
    }

    /// The connection ended: every transfer resumes from its acknowledged offset next time.
    pub fn on_disconnect(&mut self) {
        self.in_flight.clear();
        self.first_unsent = 0;
        for idx in 0..self.active.len() {
            self.active[idx].rewind();
            if self.active[idx].acked != self.active[idx].persisted_acked {
                self.persist(idx);
            }
        }
    }

    fn forget_transfer(&mut self, t: &Transfer) {
        self.solo.remove(&t.id);
        let _ = self.store.remove(&t.rel);
    }

    /// A file that changed while it was sent: it goes again once it has been unchanged for
    /// the pipe's `settle` (a producer writing in place may still be at it; sending it at once
    /// could land a half-written version).
    fn requeue_changed(&mut self, rel: String) {
        self.cooling.push(rel);
        self.update_depth();
    }

    /// Queues (at the front) the changed files that have now been unchanged for `settle`.
    fn release_cooled(&mut self) {
        if self.cooling.is_empty() {
            return;
        }
        let settle = self.cfg.spool().settle;
        let now = std::time::SystemTime::now();
        let (ready, waiting): (Vec<String>, Vec<String>) = std::mem::take(&mut self.cooling)
            .into_iter()
            .partition(|rel| {
                fs::metadata(self.cfg.spool().path.join(rel))
                    .and_then(|m| m.modified())
                    .map_or(true, |t| {
                        now.duration_since(t).unwrap_or_default() >= settle
                    })
            });
        self.cooling = waiting;
        for rel in ready.into_iter().rev() {
            self.requeue(rel, true);
        }
    }

    fn delivered(&mut self, t: Transfer) {
        let secs = t.started.elapsed().as_secs_f64().max(1e-6);
        self.stats.files.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(t.size, Relaxed);
        self.failures.remove(&t.rel);
        self.solo.remove(&t.id);

        let after = self.after_delivery(&t);
        let _ = self.store.remove(&t.rel);
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

    /// Deletes or moves a delivered spool file if it is still the version sent and nobody has
    /// it open for writing; otherwise keeps it to send again. Returns the `spool_file` words.
    fn after_delivery(&mut self, t: &Transfer) -> &'static str {
        let cfg = &self.cfg;
        let outcome = dispose_if_unchanged(&cfg.name, &t.rel, &t.fs_path, &t.ident, || {
            dispose(cfg, &t.fs_path, &t.rel)
        });
        match outcome {
            Disposal::Done(done) => {
                self.known.remove(&t.rel);
                done
            }
            Disposal::Gone => {
                self.known.remove(&t.rel);
                "already gone"
            }
            Disposal::Changed(what) => {
                tracing::warn!(pipe = %self.cfg.name, path = %t.rel, changed = %what, "the spool file changed after it was sent: not removed; its new content is sent again as a new version once it has settled");
                self.requeue_changed(t.rel.clone());
                "kept: changed after it was sent; sent again as a new version"
            }
            Disposal::Busy => {
                tracing::warn!(pipe = %self.cfg.name, path = %t.rel, "a process has the spool file open for writing again after it was sent: not removed; it is sent again once it is closed");
                self.known.remove(&t.rel);
                "kept: open for writing; sent again once closed"
            }
            Disposal::Failed(e) => {
                tracing::error!(pipe = %self.cfg.name, path = %t.rel, error = %e, "delivered, but the spool file could not be removed; remove it by hand or it will be offered again (the receiver will not land it twice while its transfer id is remembered)");
                self.known.remove(&t.rel);
                "left in spool"
            }
        }
    }

    fn read_failed(&mut self, t: Transfer, e: io::Error) {
        self.forget_transfer(&t);
        if is_out_of_descriptors(&e) {
            // A resend reopens a file it had closed: it starts again as a new transfer once
            // descriptors are free.
            self.out_of_descriptors(&t.rel, &e);
            self.requeue(t.rel, true);
            return;
        }
        match e.kind() {
            io::ErrorKind::NotFound => {
                tracing::warn!(pipe = %self.cfg.name, path = %t.rel, "the file was removed from the spool before it was sent; skipped");
                self.known.remove(&t.rel);
            }
            io::ErrorKind::UnexpectedEof => {
                tracing::warn!(pipe = %self.cfg.name, path = %t.rel, "the file shrank while it was sent; sending it again as a new version");
                self.requeue_changed(t.rel);
            }
            _ => self.quarantine_path(
                &t.fs_path,
                Path::new(&t.rel),
                &format!("cannot read it: {e}"),
            ),
        }
    }

    /// Says at WARN, once per shortage, that files wait for descriptors.
    fn out_of_descriptors(&mut self, rel: &str, e: &io::Error) {
        if !std::mem::replace(&mut self.short_of_descriptors, true) {
            tracing::warn!(pipe = %self.cfg.name, path = %rel, error = %e, "cannot open a file for lack of descriptors; files wait in the queue until transfers in flight close theirs (raise LimitNOFILE)");
        }
    }

    /// Moves a file out of the spool into the quarantine folder and says so at ERROR.
    fn quarantine_path(&mut self, path: &Path, rel: &Path, reason: &str) {
        let rel_s = rel.to_string_lossy().into_owned();
        self.known.remove(&rel_s);
        self.failures.remove(&rel_s);
        self.stats.quarantined.fetch_add(1, Relaxed);
        quarantine(&self.cfg, path, rel, reason);
        self.update_depth();
    }
}

/// The process (EMFILE) or the system (ENFILE) is out of file descriptors: the file is not
/// at fault.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Moves a file of `cfg`'s spool into its quarantine folder and says so at ERROR.
pub fn quarantine(cfg: &PipeConfig, path: &Path, rel: &Path, reason: &str) {
    let dest = cfg.quarantine_dir.join(rel);
    match move_file(path, &dest) {
        Ok(()) => {
            tracing::error!(pipe = %cfg.name, path = %rel.display(), quarantined_to = %dest.display(), reason, "file quarantined; fix the cause and move it back into the spool to send it")
        }
        Err(e) => {
            tracing::error!(pipe = %cfg.name, path = %rel.display(), reason, error = %e, "file could not be sent nor moved to quarantine; it stays in the spool")
        }
    }
}

/// What `after_send` does with a sent spool file: deletes it or moves it to `sent_dir`.
/// Returns what was done, for the `sent` log line.
pub fn dispose(cfg: &PipeConfig, fs_path: &Path, rel: &str) -> io::Result<&'static str> {
    match cfg.spool().after_send {
        AfterSend::Delete => fs::remove_file(fs_path).map(|()| "deleted"),
        AfterSend::Move => {
            move_file(fs_path, &cfg.spool().sent_dir.join(rel)).map(|()| "moved to sent_dir")
        }
    }
}

/// [`PipeWorker::partial_frame_wait`] for a source that last found a new file at `last_found`.
fn partial_frame_wait(
    last_found: Option<Instant>,
    in_flight: usize,
    now: Instant,
) -> Option<Instant> {
    let quiet_from = last_found? + PARTIAL_FRAME_QUIET;
    (in_flight > 0 && now < quiet_from).then_some(quiet_from)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_that_is_not_full_waits_for_answers_only_while_files_keep_arriving() {
        let t0 = Instant::now();
        let quiet = t0 + PARTIAL_FRAME_QUIET;
        // Nothing in flight: it goes at once, however recent the last file.
        assert_eq!(partial_frame_wait(Some(t0), 0, t0), None);
        // Frames in flight and a file just found: it waits, and is looked at again when the
        // source has been quiet long enough.
        assert_eq!(partial_frame_wait(Some(t0), 3, t0), Some(quiet));
        let later = t0 + PARTIAL_FRAME_QUIET / 2;
        assert_eq!(partial_frame_wait(Some(t0), 3, later), Some(quiet));
        // Quiet since: nothing more is coming to fill it, so it goes without the answers.
        assert_eq!(partial_frame_wait(Some(t0), 3, quiet), None);
        assert_eq!(partial_frame_wait(None, 3, t0), None);
    }
}
