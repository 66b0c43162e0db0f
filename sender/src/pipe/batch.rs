//! The gate links' side of the pipe policy (tcp, tls): files of the [`Pipe`]'s queue go out
//! as batches of records, and an acknowledgement or a refusal of a frame says what became of
//! each: delivered, resumed, retried or quarantined.
//!
//! The link driver only asks for the next frame and reports what happened on the connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use gapsync_protocol::batch::{RECORD_HEADER_LEN, finish_record};
use gapsync_protocol::{FrameKind, SenderEvent};

use super::inflight::InFlight;
use super::transfer::Transfer;
use super::{Pipe, Take, is_out_of_descriptors};
use crate::source::SourceEvent;

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

/// What [`PipeWorker::next_record`] did, for the loop that fills a frame.
enum Next {
    /// The frame is full (or must end here).
    Stop,
    /// This transfer has nothing more for now: look at the next one.
    Skip,
    /// Look at the same place again (a record was added, or the transfer left).
    Again,
}

/// One record of a frame in flight, to credit its transfer when the frame is answered.
#[derive(Debug, Clone, Copy)]
struct Record {
    kind: FrameKind,
    transfer: u64,
    offset: u64,
    len: u32,
}

/// One pipe's transfers on a gate link.
#[derive(Debug)]
pub struct PipeWorker {
    /// The policy: queue, in-flight records, failures, after-send.
    pub pipe: Pipe,
    active: VecDeque<Transfer>,
    /// Every transfer in `active` before this index is fully sent (waiting for its answer):
    /// where the search for the next record starts, instead of at the front each time.
    first_unsent: usize,
    /// Transfers that got a FAIL, waiting at the back of the queue with their state.
    parked: HashMap<String, Transfer>,
    /// The records of each frame sent and not yet answered, oldest first.
    in_flight: VecDeque<Vec<Record>>,
    /// Transfers that were in a batch the receiver refused: each is sent in frames of its own
    /// until it is delivered or refused alone.
    solo: HashSet<u64>,
    /// Connections opened by this pipe in this session (numbered from 1 in each Hello).
    pub connections: u64,
    /// Payload of the frame `next_frame` returned.
    pub buf: Vec<u8>,
    /// The current connection is version 2, so Opens may carry origin chains.
    pub chains_on_wire: bool,
    /// An object with an origin chain waits to be sent: connections speak version 2 from now
    /// on (a version-1 connection ends once its frames are answered, see `wants_upgrade`).
    pub wants_chains: bool,
}

impl PipeWorker {
    pub fn new(pipe: Pipe) -> Self {
        Self {
            pipe,
            active: VecDeque::new(),
            first_unsent: 0,
            parked: HashMap::new(),
            in_flight: VecDeque::new(),
            solo: HashSet::new(),
            connections: 0,
            buf: Vec::new(),
            chains_on_wire: false,
            wants_chains: false,
        }
    }

    /// Whether a frame that is not full may go out while `in_flight` frames are unanswered;
    /// if not, when to ask again. Like Nagle's algorithm, such a frame waits for the answers
    /// while files keep arriving, so small files that arrive one by one travel together
    /// instead of one per frame, without delaying any file by more than one round trip; once
    /// no file was found for [`PARTIAL_FRAME_QUIET`], nothing more is coming to fill it.
    pub fn partial_frame_wait(&self, in_flight: usize, now: Instant) -> Option<Instant> {
        partial_frame_wait(self.pipe.last_found(), in_flight, now)
    }

    /// True when the files waiting (queued, and active ones not fully sent) would fill a frame
    /// of `max_payload` bytes.
    pub fn fills_frame(&self, max_payload: usize) -> bool {
        // Record headers and Open/Commit bodies of a small file.
        const PER_FILE: u64 = 3 * RECORD_HEADER_LEN as u64 + 160;
        let queued = self.pipe.queued_bytes() + self.pipe.queued() as u64 * PER_FILE;
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
        self.pipe.queued() + self.active.len()
    }

    fn update_depth(&self) {
        (self.pipe.stats.queued).store(self.depth() as u64, Relaxed);
        (self.pipe.stats.in_flight).store(self.active.len() as u64, Relaxed);
    }

    /// Takes an object from the source.
    pub fn on_source(&mut self, ev: SourceEvent) {
        self.pipe.on_source(ev);
        self.update_depth();
    }

    /// The next frame to send: a Batch of records of as many transfers as fit in
    /// `max_payload` bytes, its payload in `self.buf`; `None` when nothing is ready.
    pub fn next_frame(&mut self, max_payload: usize) -> Option<(FrameKind, u64, u64)> {
        self.buf.clear();
        let records = self.fill_records(max_payload);
        if records.is_empty() {
            return None;
        }
        if self.pipe.needs_sync() {
            // This fsync is paid anyway: let it carry the records of the next frames' files
            // too, so a file per frame does not mean an fsync per frame.
            self.activate_ahead(LOOKAHEAD_FRAMES * max_payload as u64);
        }
        if let Err(e) = self.pipe.sync() {
            tracing::error!(pipe = %self.pipe.cfg.name, error = %e, "cannot make the in-flight records durable in the state folder; reconnecting and retrying");
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

    /// Puts records of the active transfers (starting new ones while there is room) into
    /// `self.buf` until the frame is full; returns them.
    fn fill_records(&mut self, max_payload: usize) -> Vec<Record> {
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
            match self.next_record(idx, &mut records, max_payload) {
                Next::Stop => break,
                Next::Skip => idx += 1,
                Next::Again => {}
            }
        }
        self.first_unsent = idx;
        records
    }

    /// Adds the next record of active transfer `idx` if it belongs in this frame.
    fn next_record(&mut self, idx: usize, records: &mut Vec<Record>, max_payload: usize) -> Next {
        let t = &self.active[idx];
        // A transfer under suspicion after a refused batch travels alone, so that the
        // receiver's answer names it.
        if !records.is_empty() && self.solo.contains(&t.id) {
            return Next::Stop;
        }
        let Some((kind, body)) = t.next_kind() else {
            return Next::Skip;
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
            self.quarantine(&t.rel, &reason);
            return Next::Again;
        }
        if !fits {
            return Next::Stop;
        }
        if kind == FrameKind::Commit && !t.unchanged() {
            let t = self.remove_active(idx);
            tracing::warn!(pipe = %self.pipe.cfg.name, path = %t.rel, "the file changed while it was sent; sending it again as a new version");
            self.forget_transfer(&t);
            self.pipe.requeue_changed(t.rel);
            self.update_depth();
            return Next::Again;
        }
        self.write_record(idx, room, records)
    }

    /// Reads the next record of active transfer `idx` (at most `room` bytes) into `self.buf`.
    fn write_record(&mut self, idx: usize, room: usize, records: &mut Vec<Record>) -> Next {
        let start = self.buf.len();
        self.buf.resize(start + RECORD_HEADER_LEN, 0);
        let t = &mut self.active[idx];
        match t.next_frame(room, &mut self.buf) {
            Ok(Some((kind, offset))) => {
                let len = finish_record(&mut self.buf, start, kind, t.id, offset)
                    .unwrap_or_else(|| unreachable!("a record within max_payload"));
                if kind == FrameKind::Data {
                    let wire = &self.pipe.stats.wire_bytes;
                    wire.fetch_add(u64::from(len), Relaxed);
                }
                records.push(Record {
                    kind,
                    transfer: t.id,
                    offset,
                    len,
                });
                // Alone in its frame: nothing of another transfer follows.
                if self.solo.contains(&t.id) && t.fully_sent() {
                    return Next::Stop;
                }
                Next::Again
            }
            Ok(None) => {
                self.buf.truncate(start);
                Next::Skip
            }
            Err(e) => {
                self.buf.truncate(start);
                let t = self.remove_active(idx);
                self.read_failed(t, e);
                Next::Again
            }
        }
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

    /// True when this version-1 connection must end (once its frames are answered) so that
    /// the next one, of version 2, carries an object's origin chain.
    pub fn wants_upgrade(&self) -> bool {
        self.wants_chains && !self.chains_on_wire
    }

    /// Starts the next queued file; `None` when nothing is queued (or the next one waits for
    /// a version-2 connection).
    fn activate(&mut self) -> Option<()> {
        if self.wants_upgrade() {
            return None;
        }
        while let Some(rel) = self.pipe.dequeue() {
            if let Some(t) = self.parked.remove(&rel) {
                self.active.push_back(t);
                self.update_depth();
                return Some(());
            }
            match self.pipe.take(rel) {
                Take::Taken(t) => {
                    let needs_v2 = !t.origin.is_empty() || !t.attrs.is_empty();
                    let transfer = Transfer::new(
                        t.id,
                        t.key,
                        t.reopen,
                        t.file,
                        &t.meta,
                        t.acked,
                        (&t.origin, &t.attrs),
                    );
                    if needs_v2 && !self.chains_on_wire {
                        // Its chain needs version 2: it goes first on the next connection.
                        tracing::info!(pipe = %self.pipe.cfg.name, path = %transfer.rel, origin = %t.origin, mode = t.attrs.mode.is_some(), link = t.attrs.link.is_some(), "an object needs protocol version 2 (an origin chain, a mode or a link target in its Open): reconnecting with protocol version 2 once the frames in flight are answered (the receiver must be of this version or newer)");
                        self.wants_chains = true;
                        self.pipe.requeue(transfer.rel.clone(), true);
                        self.parked.insert(transfer.rel.clone(), transfer);
                        return None;
                    }
                    self.active.push_back(transfer);
                    self.update_depth();
                    return Some(());
                }
                Take::Skipped => self.update_depth(),
                Take::Wait => return None,
            }
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
                tracing::warn!(pipe = %self.pipe.cfg.name, kind = ?info.kind, "the receiver refused a frame; reconnecting");
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
        self.pipe.record_progress(r);
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
            tracing::warn!(pipe = %self.pipe.cfg.name, files = ids.len(), "the receiver answered FAIL to a frame holding several files; reconnecting and sending each alone to find the one it refuses (see the receiver's log for the reason)");
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
        let failures = self.pipe.refused(&t.rel);
        tracing::warn!(
            pipe = %self.pipe.cfg.name, path = %t.rel, kind = ?kind, offset,
            attempt = failures, max_attempts = self.pipe.cfg.max_attempts,
            "the receiver answered FAIL; reconnecting and retrying (see the receiver's log for the reason)"
        );
        if failures >= self.pipe.cfg.max_attempts {
            self.forget_transfer(&t);
            let reason = format!(
                "the receiver refused it {failures} times (last: {kind:?} at offset {offset})"
            );
            self.quarantine(&t.rel, &reason);
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
        self.pipe.requeue(rel, false);
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
        self.pipe.drop_record(&t.rel);
    }

    fn delivered(&mut self, t: Transfer) {
        let secs = t.started.elapsed().as_secs_f64().max(1e-6);
        self.solo.remove(&t.id);
        let after = self
            .pipe
            .delivered(&t.rel, t.id, t.size, t.mtime_ns, &t.ident);
        self.update_depth();
        tracing::info!(
            pipe = %self.pipe.cfg.name,
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

    fn read_failed(&mut self, t: Transfer, e: io::Error) {
        self.forget_transfer(&t);
        if is_out_of_descriptors(&e) {
            // A resend reopens a file it had closed: it starts again as a new transfer once
            // descriptors are free.
            self.pipe.out_of_descriptors(&t.rel, &e);
            self.pipe.requeue(t.rel, true);
            return;
        }
        match e.kind() {
            io::ErrorKind::NotFound => {
                tracing::warn!(pipe = %self.pipe.cfg.name, path = %t.rel, "the file was removed from its source before it was sent; skipped");
                self.pipe.forget(&t.rel);
            }
            io::ErrorKind::UnexpectedEof => {
                tracing::warn!(pipe = %self.pipe.cfg.name, path = %t.rel, "the file shrank while it was sent; sending it again as a new version");
                self.pipe.requeue_changed(t.rel);
            }
            _ => self.quarantine(&t.rel, &format!("cannot read it: {e}")),
        }
        self.update_depth();
    }

    /// Sets an object aside through the policy.
    fn quarantine(&mut self, key: &str, reason: &str) {
        self.pipe.quarantine(key, reason);
        self.update_depth();
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
