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

use std::fs::File;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use gapsync_daemon::alarm::{self, Alarm, AlarmEvent};
use gapsync_daemon::ratelimit::{self, RateLimiter};
use gapsync_protocol::crypto::{ConnectionId, FrameKey};
use tokio::sync::{mpsc, watch};

use self::emitter::{Emitter, Identity};
use self::object::{Object, Sent, Stream};
use crate::pipe::{Pipe, Taken};
use crate::source::SourceEvent;
use crate::source::identity::Identity as Version;

/// Longest idle sleep between looks at the queue.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// Wait before retrying after a socket error or an unresolvable gate address.
const RETRY: Duration = Duration::from_secs(2);

/// Everything the pipe's thread needs.
#[derive(Debug)]
pub struct Setup {
    pub pipe: Pipe,
    pub node: String,
    pub session: u64,
}

struct Driver {
    pipe: Pipe,
    stop: watch::Receiver<bool>,
}

/// Runs the pipe until `stop` turns true (on a blocking thread).
pub fn run(setup: Setup, mut rx: mpsc::Receiver<SourceEvent>, stop: watch::Receiver<bool>) {
    let Setup {
        pipe,
        node,
        session,
    } = setup;
    let mut d = Driver { pipe, stop };
    let Some(dest) = d.resolve() else { return };
    let Some(mut e) = d.emitter(dest, node, session) else {
        return;
    };
    let cfg = &d.pipe.cfg;
    tracing::info!(pipe = %cfg.name, %dest, session, "sending over the udp link (one way; nothing comes back)");
    d.pipe.stats.connected.store(1, Relaxed);
    let mut stream = Stream::default();
    // Nothing confirms arrival on a diode: the alarm is for datagrams that cannot leave this
    // host (socket errors) while files wait.
    let mut alarm = Alarm::new(d.pipe.cfg.alarm_after);
    let limiter = RateLimiter::new(Duration::from_secs(60));
    while !*d.stop.borrow() {
        loop {
            match rx.try_recv() {
                Ok(ev) => d.pipe.on_source(ev),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        d.pipe.housekeeping();
        if !d.pipe.is_running() {
            // Stopped (pipe stop, outside a window), between groups of blocks. The receiver
            // gives up an object that stays silent past its deadline, and a resumed pass
            // would not announce it again: the files in flight go back to the front of the
            // queue and start again, whole, under their ids, when the pipe runs again.
            if stream.len() > 0 {
                d.requeue_all(std::mem::take(&mut stream));
            }
            d.count(&stream);
            d.idle(&mut e);
            continue;
        }
        d.top_up(&mut stream, &e);
        let queued = d.count(&stream);
        report_alarm(alarm.poll(Instant::now(), queued > 0), &d.pipe);
        if stream.len() > 0 {
            match stream.send_group(&mut e) {
                Ok(done) => {
                    report_alarm(alarm.ok(Instant::now(), false), &d.pipe);
                    done.into_iter().for_each(|s| d.sent(s));
                }
                Err(err) => {
                    alarm.failure(d.send_failed(&err, &limiter));
                    d.requeue_all(std::mem::take(&mut stream));
                    std::thread::sleep(RETRY);
                }
            }
            continue;
        }
        d.idle(&mut e);
    }
    if stream.len() > 0 {
        tracing::info!(pipe = %d.pipe.cfg.name, in_flight = stream.len(), "stopped with files in flight; they are sent again under the same ids at the next start");
    }
}

/// Logs what the pipe's alarm says (see [`Alarm`]).
fn report_alarm(ev: Option<AlarmEvent>, pipe: &Pipe) {
    let cfg = &pipe.cfg;
    match ev {
        Some(ev @ AlarmEvent::Raised { .. }) => {
            let what = format!(
                "no datagram could leave this host for alarm_after ({}) while files wait; act on the cause",
                alarm::seconds(cfg.alarm_after)
            );
            pipe.stats.failed(what.clone());
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
    /// Publishes the queue and in-flight counts; returns the objects waiting.
    fn count(&self, stream: &Stream) -> usize {
        let queued = self.pipe.queued() + stream.len();
        self.pipe.stats.queued.store(queued as u64, Relaxed);
        self.pipe
            .stats
            .in_flight
            .store(stream.len() as u64, Relaxed);
        queued
    }

    /// Says (rate-limited) that sending failed; returns the cause for the alarm.
    fn send_failed(&self, err: &std::io::Error, limiter: &RateLimiter) -> String {
        let cause = format!("sending failed (socket or file error): {err}");
        let key = ratelimit::key("send", &ratelimit::without_digits(&cause));
        if let Some(suppressed) = limiter.check(&key, Instant::now()) {
            tracing::warn!(pipe = %self.pipe.cfg.name, error = %err, suppressed, "sending failed (socket or file error); the files in flight are sent again from the start");
        }
        self.pipe.stats.warned(cause.clone());
        cause
    }

    /// Nothing to send now: the controls and heartbeats that are due, then a short sleep.
    fn idle(&self, e: &mut Emitter) {
        if let Err(err) = e.due_controls(Instant::now()) {
            tracing::warn!(pipe = %self.pipe.cfg.name, error = %err, "cannot send a control datagram");
        }
        let wait = e.next_due().saturating_duration_since(Instant::now());
        std::thread::sleep(wait.min(IDLE_POLL));
    }

    fn resolve(&self) -> Option<SocketAddr> {
        let cfg = &self.pipe.cfg;
        loop {
            match cfg.gate.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => return Some(a),
                Ok(None) | Err(_) => {
                    tracing::error!(pipe = %cfg.name, gate = %cfg.gate, "cannot resolve the gate address; retrying (check `gate` in the config and DNS)");
                }
            }
            std::thread::sleep(RETRY);
            if *self.stop.borrow() {
                return None;
            }
        }
    }

    /// The socket and pacing of the link, with the pipe's key if it has one.
    fn emitter(&self, dest: SocketAddr, node: String, session: u64) -> Option<Emitter> {
        let cfg = &self.pipe.cfg;
        let profile = &cfg.profile;
        let Some(udp) = profile.udp.clone() else {
            tracing::error!(pipe = %cfg.name, "internal: the udp link started without udp profile values");
            return None;
        };
        let key = cfg.auth.as_ref().map(|a| {
            let id = ConnectionId {
                node: &node,
                pipe: &cfg.name,
                session,
                connection: 0,
                key_id: a.key.id,
            };
            FrameKey::derive(&a.key.key, id, a.protection)
        });
        let identity = Identity {
            node,
            pipe: cfg.name.clone(),
            profile: profile.name.clone(),
            session,
        };
        let hb = profile.heartbeat_interval;
        match Emitter::open(dest, udp, profile.socket_buffer_bytes, hb, key, identity) {
            Ok(e) => Some(e.with_limiter(self.pipe.limiter.clone())),
            Err(err) => {
                tracing::error!(pipe = %cfg.name, %dest, error = %err, "cannot open the UDP socket; the pipe does not send");
                None
            }
        }
    }

    /// Moves queued objects into the stream while it wants more (one fsync for all of them).
    fn top_up(&mut self, stream: &mut Stream, e: &Emitter) {
        while stream.wants_more(e) {
            let Some(t) = self.pipe.take_next() else {
                break;
            };
            if let Some((obj, file, announce)) = self.prepare(e, t) {
                stream.add(e, obj, file, announce);
            }
        }
        if self.pipe.needs_sync() {
            if let Err(err) = self.pipe.sync() {
                tracing::error!(pipe = %self.pipe.cfg.name, error = %err, "cannot make the in-flight records durable; retrying (check the state folder's disk)");
                std::thread::sleep(RETRY);
            }
        }
    }

    /// The object and announcement of a taken file; `None` (quarantined) if its announcement
    /// does not fit one datagram.
    fn prepare(&mut self, e: &Emitter, t: Taken) -> Option<(Object, File, Vec<u8>)> {
        let obj = Object {
            id: t.id,
            path: t.key,
            size: t.meta.len(),
            mtime_ns: crate::pipe::transfer::mtime_ns(&t.meta),
            ident: Version::of(&t.meta),
            origin: t.origin,
        };
        let announce = object::announce_body(e, &obj);
        let (len, max) = (announce.len(), usize::from(e.profile().symbol_bytes));
        if len > max {
            let reason = format!(
                "its announcement ({len} bytes, mostly the name) does not fit one datagram of this link ({max} bytes); shorten the path"
            );
            self.pipe.quarantine(&obj.path, &reason);
            return None;
        }
        Some((obj, t.file, announce))
    }

    /// Puts every file in flight back at the front of the queue (same ids: the records stay).
    fn requeue_all(&mut self, stream: Stream) {
        for path in stream.paths().into_iter().rev() {
            self.pipe.requeue(path, true);
        }
    }

    fn sent(&mut self, s: Sent) {
        let Sent {
            obj,
            digest,
            datagrams,
            started,
        } = s;
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        let after = (self.pipe).delivered(&obj.path, obj.id, obj.size, obj.mtime_ns, &obj.ident);
        tracing::info!(
            pipe = %self.pipe.cfg.name,
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
}
