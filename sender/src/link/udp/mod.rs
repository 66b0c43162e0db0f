//! The diode link's sender: takes the pipe's spool files one by one and sends each as an
//! object (every pass of the carousel), paced, with nothing coming back.
//!
//! What "sent" means here: every datagram of every pass left this host's socket. Nothing
//! says it arrived; the receiver's log says that. So `after_send` defaults to `move` on this
//! link, and the operator can resend what was sent in a time range (see README).
//!
//! ```text
//!  spool -> queue -> in-flight record (durable id) -> object::send (passes) -> after_send
//!                                                       |
//!                                      Emitter: pace, batch, repeat controls, heartbeats
//! ```

mod emitter;
mod object;

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use gapsync_daemon::alarm::{self, Alarm, AlarmEvent};
use gapsync_daemon::ratelimit::{self, RateLimiter};
use gapsync_protocol::Profile;
use gapsync_protocol::crypto::{ConnectionId, FrameKey};
use tokio::sync::{mpsc, watch};

use self::emitter::{Emitter, Identity};
use self::object::{Object, Sent, Stream};
use crate::config::PipeConfig;
use crate::inflight::{InFlight, InFlightStore};
use crate::pipe::{PipeStats, dispose, quarantine};
use crate::sent_log::{SentEntry, SentLog};
use crate::source::SourceEvent;
use crate::source::spool::after_send::{Disposal, dispose_if_unchanged};
use crate::source::spool::lease;
use crate::state::{IdSource, unix_now};

/// Longest idle sleep between looks at the queue.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// How often sent files older than `keep_sent_for` are looked for.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);
/// Wait before retrying after a socket error or an unresolvable gate address.
const RETRY: Duration = Duration::from_secs(2);

/// Everything the pipe's thread needs.
#[derive(Debug)]
pub struct Setup {
    pub cfg: PipeConfig,
    pub profile: Profile,
    pub node: String,
    pub ids: Arc<IdSource>,
    pub stats: Arc<PipeStats>,
}

struct Driver {
    cfg: PipeConfig,
    ids: Arc<IdSource>,
    stats: Arc<PipeStats>,
    store: InFlightStore,
    sent_log: SentLog,
    last_housekeeping: Option<Instant>,
    queue: VecDeque<String>,
    known: HashSet<String>,
    stop: watch::Receiver<bool>,
}

/// Runs the pipe until `stop` turns true (on a blocking thread).
pub fn run(setup: Setup, mut rx: mpsc::Receiver<SourceEvent>, stop: watch::Receiver<bool>) {
    let Setup {
        cfg,
        profile,
        node,
        ids,
        stats,
    } = setup;
    let Some(udp) = profile.udp.clone() else {
        tracing::error!(pipe = %cfg.name, "internal: the udp link started without udp profile values");
        return;
    };
    let store = match InFlightStore::open(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(pipe = %cfg.name, error = %e, "cannot open the pipe's state; the pipe does not send");
            return;
        }
    };
    let sent_log = match SentLog::open(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(pipe = %cfg.name, error = %e, "cannot open the pipe's sent log; the pipe does not send");
            return;
        }
    };
    let mut d = Driver {
        sent_log,
        last_housekeeping: None,
        queue: store.paths().into_iter().collect(),
        known: store.paths().into_iter().collect(),
        cfg,
        ids,
        stats,
        store,
        stop,
    };
    let Some(dest) = d.resolve() else { return };
    let session = d.ids.session();
    let key = d.cfg.auth.as_ref().map(|a| {
        let id = ConnectionId {
            node: &node,
            pipe: &d.cfg.name,
            session,
            connection: 0,
            key_id: a.key.id,
        };
        FrameKey::derive(&a.key.key, id, a.protection)
    });
    let identity = Identity {
        node,
        pipe: d.cfg.name.clone(),
        profile: profile.name.clone(),
        session,
    };
    let mut e = match Emitter::open(
        dest,
        udp,
        profile.socket_buffer_bytes,
        profile.heartbeat_interval,
        key,
        identity,
    ) {
        Ok(e) => e,
        Err(err) => {
            tracing::error!(pipe = %d.cfg.name, %dest, error = %err, "cannot open the UDP socket; the pipe does not send");
            return;
        }
    };
    d.stats.connected.store(1, Relaxed);
    tracing::info!(pipe = %d.cfg.name, %dest, session, resumed = d.queue.len(), "sending over the udp link (one way; nothing comes back)");
    let mut stream = Stream::default();
    // Nothing confirms arrival on a diode: the alarm is for datagrams that cannot leave this
    // host (socket errors) while files wait.
    let mut alarm = Alarm::new(d.cfg.alarm_after);
    let limiter = RateLimiter::new(Duration::from_secs(60));
    while !*d.stop.borrow() {
        loop {
            match rx.try_recv() {
                Ok(ev) => d.on_source(ev),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        d.housekeeping();
        d.top_up(&mut stream, &e);
        d.stats
            .queued
            .store((d.queue.len() + stream.len()) as u64, Relaxed);
        let waiting = stream.len() + d.queue.len() > 0;
        report_alarm(alarm.poll(Instant::now(), waiting), &d.cfg);
        if stream.len() > 0 {
            match stream.send_group(&mut e) {
                Ok(done) => {
                    report_alarm(alarm.ok(Instant::now(), false), &d.cfg);
                    done.into_iter().for_each(|s| d.sent(s));
                }
                Err(err) => {
                    let cause = format!("sending failed (socket or file error): {err}");
                    let key = ratelimit::key("send", &ratelimit::without_digits(&cause));
                    if let Some(suppressed) = limiter.check(&key, Instant::now()) {
                        tracing::warn!(pipe = %d.cfg.name, error = %err, suppressed, "sending failed (socket or file error); the files in flight are sent again from the start");
                    }
                    alarm.failure(cause);
                    d.requeue_all(std::mem::take(&mut stream));
                    std::thread::sleep(RETRY);
                }
            }
            continue;
        }
        if let Err(err) = e.due_controls(Instant::now()) {
            tracing::warn!(pipe = %d.cfg.name, error = %err, "cannot send a control datagram");
        }
        let wait = e.next_due().saturating_duration_since(Instant::now());
        std::thread::sleep(wait.min(IDLE_POLL));
    }
    if stream.len() > 0 {
        tracing::info!(pipe = %d.cfg.name, in_flight = stream.len(), "stopped with files in flight; they are sent again under the same ids at the next start");
    }
}

/// Logs what the pipe's alarm says (see [`Alarm`]).
fn report_alarm(ev: Option<AlarmEvent>, cfg: &PipeConfig) {
    match ev {
        Some(ev @ AlarmEvent::Raised { .. }) => {
            let what = format!(
                "no datagram could leave this host for alarm_after ({}) while files wait; act on the cause",
                alarm::seconds(cfg.alarm_after)
            );
            alarm::log_raised("not_sending", &cfg.name, &cfg.gate, &ev, &what);
        }
        Some(ev @ AlarmEvent::Cleared { .. }) => {
            alarm::log_cleared(
                "not_sending",
                &cfg.name,
                &cfg.gate,
                &ev,
                "datagrams leave this host again",
            );
        }
        None => {}
    }
}

impl Driver {
    fn resolve(&self) -> Option<SocketAddr> {
        loop {
            match self.cfg.gate.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => return Some(a),
                Ok(None) | Err(_) => {
                    tracing::error!(pipe = %self.cfg.name, gate = %self.cfg.gate, "cannot resolve the gate address; retrying (check `gate` in the config and DNS)");
                }
            }
            std::thread::sleep(RETRY);
            if *self.stop.borrow() {
                return None;
            }
        }
    }

    fn on_source(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Found { rel, .. } => {
                if self.known.insert(rel.clone()) {
                    self.queue.push_back(rel);
                }
            }
            SourceEvent::BadName { path, reason } => {
                let rel = path
                    .strip_prefix(&self.cfg.spool().path)
                    .unwrap_or(&path)
                    .to_path_buf();
                self.stats.quarantined.fetch_add(1, Relaxed);
                quarantine(&self.cfg, &path, &rel, &reason);
            }
        }
    }

    /// The object for `rel`: its in-flight record's id if the file is the one recorded (a
    /// restart resends under the same id, so the receiver does not land it twice), else a
    /// new id made durable before the first datagram.
    fn object(&mut self, rel: &str, meta: &std::fs::Metadata) -> anyhow::Result<Object> {
        let mtime_ns = crate::transfer::mtime_ns(meta);
        let size = meta.len();
        let recorded = self
            .store
            .get(rel)
            .filter(|r| r.size == size && r.mtime_ns == mtime_ns)
            .map(|r| r.transfer);
        let id = match recorded {
            Some(id) => id,
            None => {
                // A file sent before and moved back unchanged (a resend) keeps its id.
                let id = match self.sent_log.id_of(rel, size, mtime_ns) {
                    Some(id) => id,
                    None => self.ids.next()?,
                };
                self.store.put(InFlight {
                    transfer: id,
                    path: rel.to_owned(),
                    size,
                    mtime_ns,
                    acked: 0,
                })?;
                id
            }
        };
        Ok(Object {
            id,
            path: rel.to_owned(),
            size,
            mtime_ns,
            ident: crate::source::spool::identity::Identity::of(meta),
        })
    }

    /// Moves queued files into the stream while it wants more (one fsync for all of them).
    fn top_up(&mut self, stream: &mut Stream, e: &Emitter) {
        while stream.wants_more(e) {
            let Some(rel) = self.queue.pop_front() else {
                break;
            };
            if let Some((obj, file, announce)) = self.prepare(e, rel) {
                stream.add(e, obj, file, announce);
            }
        }
        if self.store.needs_sync() {
            if let Err(err) = self.store.sync() {
                tracing::error!(pipe = %self.cfg.name, error = %err, "cannot make the in-flight records durable; retrying (check the state folder's disk)");
                std::thread::sleep(RETRY);
            }
        }
    }

    /// Opens a queued file and gives it its object id and announcement; `None` if it is not
    /// to be sent.
    fn prepare(&mut self, e: &Emitter, rel: String) -> Option<(Object, File, Vec<u8>)> {
        let fs_path = self.cfg.spool().path.join(&rel);
        let (file, meta) = match lease::take(&self.cfg.name, &fs_path) {
            Ok(Some(x)) => x,
            Ok(None) => {
                // Still open for writing: found again when it is closed (its close event) or
                // by a later scan.
                tracing::debug!(pipe = %self.cfg.name, path = %rel, "not taken: a process has the file open for writing");
                self.known.remove(&rel);
                return None;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // A scan may report a file again just before it was sent and removed; only a
                // file that was in flight is worth a warning.
                if self.store.get(&rel).is_some() {
                    tracing::warn!(pipe = %self.cfg.name, path = %rel, "the file was removed from the spool before it was sent; skipped");
                }
                self.forget(&rel);
                return None;
            }
            Err(err) => {
                self.quarantine(&fs_path, &rel, &format!("cannot read it: {err}"));
                return None;
            }
        };
        let obj = match self.object(&rel, &meta) {
            Ok(o) => o,
            Err(err) => {
                tracing::error!(pipe = %self.cfg.name, path = %rel, error = %err, "cannot record the transfer in the pipe's state; retrying (check the state folder's disk)");
                self.queue.push_front(rel);
                std::thread::sleep(RETRY);
                return None;
            }
        };
        let announce = object::announce_body(e, &obj);
        let (len, max) = (announce.len(), usize::from(e.profile().symbol_bytes));
        if len > max {
            self.quarantine(
                &fs_path,
                &rel,
                &format!(
                    "its announcement ({len} bytes, mostly the name) does not fit one datagram of this link ({max} bytes); shorten the path"
                ),
            );
            return None;
        }
        Some((obj, file, announce))
    }

    /// Forgets a spool file and moves it to the quarantine folder (ERROR with `reason`).
    fn quarantine(&mut self, fs_path: &Path, rel: &str, reason: &str) {
        self.forget(rel);
        self.stats.quarantined.fetch_add(1, Relaxed);
        quarantine(&self.cfg, fs_path, Path::new(rel), reason);
    }

    /// Puts every file in flight back at the front of the queue (same ids: the records stay).
    fn requeue_all(&mut self, stream: Stream) {
        for path in stream.paths().into_iter().rev() {
            self.queue.push_front(path);
        }
    }

    fn sent(&mut self, s: Sent) {
        let Sent {
            obj,
            digest,
            datagrams,
            started,
        } = s;
        let fs_path = self.cfg.spool().path.join(&obj.path);
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        self.stats.files.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(obj.size, Relaxed);
        let (after, changed) = self.after_sent(&obj, &fs_path);
        // A file that changed after it was sent is not what the receiver got: no entry, so
        // that its new content gets a new id even if its size and mtime look the same (an id
        // the receiver already landed would be ignored there).
        if !changed {
            let entry = SentEntry {
                at: unix_now(),
                id: obj.id,
                size: obj.size,
                mtime_ns: obj.mtime_ns,
                path: obj.path.clone(),
            };
            if let Err(err) = self.sent_log.record(entry) {
                tracing::warn!(pipe = %self.cfg.name, path = %obj.path, error = %err, "cannot append to the sent log; a resend of this file may land it twice");
            }
        }
        self.forget(&obj.path);
        tracing::info!(
            pipe = %self.cfg.name,
            path = %obj.path,
            object = format!("{:016x}", obj.id),
            size = obj.size,
            digest = %blake3::Hash::from_bytes(digest).to_hex(),
            datagrams,
            duration_ms = started.elapsed().as_millis() as u64,
            mb_per_s = format!("{:.1}", obj.size as f64 / secs / 1e6),
            spool_file = after,
            "sent (every pass left this host; arrival shows in the receiver's log)"
        );
    }

    /// Moves (or deletes) a sent spool file if it is still the version sent and nobody has it
    /// open for writing; otherwise keeps it, and a later scan sends it again as a new version
    /// (under a new id: it gets no sent-log entry). Returns the `spool_file` words, and true
    /// when the file changed after it was sent.
    fn after_sent(&mut self, obj: &Object, fs_path: &Path) -> (&'static str, bool) {
        let cfg = &self.cfg;
        let outcome = dispose_if_unchanged(&cfg.name, &obj.path, fs_path, &obj.ident, || {
            dispose(cfg, fs_path, &obj.path)
        });
        let changed = matches!(outcome, Disposal::Changed(_));
        let words = match outcome {
            Disposal::Done(done) => done,
            Disposal::Gone => "already gone",
            Disposal::Changed(what) => {
                tracing::warn!(pipe = %self.cfg.name, path = %obj.path, changed = %what, "the spool file changed after it was sent: not moved; its new content is sent again as a new version once it has settled");
                "kept: changed after it was sent; sent again as a new version"
            }
            Disposal::Busy => {
                tracing::warn!(pipe = %self.cfg.name, path = %obj.path, "a process has the spool file open for writing again after it was sent: not moved; it is sent again once it is closed");
                "kept: open for writing; sent again once closed"
            }
            Disposal::Failed(err) => {
                tracing::error!(pipe = %self.cfg.name, path = %obj.path, error = %err, "sent, but the spool file could not be removed; remove it by hand or it will be sent again");
                "left in spool"
            }
        };
        (words, changed)
    }

    /// Once an hour: drops what was sent longer than `keep_sent_for` ago from the sent log
    /// and from `sent_dir`.
    fn housekeeping(&mut self) {
        if self
            .last_housekeeping
            .is_some_and(|t| t.elapsed() < HOUSEKEEPING_EVERY)
        {
            return;
        }
        self.last_housekeeping = Some(Instant::now());
        let Some(keep) = self.cfg.spool().keep_sent_for else {
            return;
        };
        let before = unix_now().saturating_sub(keep.as_secs());
        match self.sent_log.expire(before) {
            Ok(old) => {
                let mut removed = 0;
                for e in &old {
                    if std::fs::remove_file(self.cfg.spool().sent_dir.join(&e.path)).is_ok() {
                        removed += 1;
                    }
                }
                if removed > 0 {
                    tracing::info!(pipe = %self.cfg.name, removed, keep_sent_for = %humantime::format_duration(keep), "removed sent files older than keep_sent_for from sent_dir");
                }
            }
            Err(err) => {
                tracing::warn!(pipe = %self.cfg.name, error = %err, "cannot compact the sent log");
            }
        }
    }

    fn forget(&mut self, rel: &str) {
        self.known.remove(rel);
        if let Err(err) = self.store.remove(rel) {
            tracing::warn!(pipe = %self.cfg.name, path = %rel, error = %err, "cannot update the in-flight journal");
        }
    }
}
