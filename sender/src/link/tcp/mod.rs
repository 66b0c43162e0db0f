//! The TCP link: connect through the gate, handshake, and keep the window full. One `select!`
//! over the reply bytes, the session's timer, new files from the source and shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

mod write;

use gapsync_daemon::alarm::{self, Alarm, AlarmEvent};
use gapsync_daemon::ratelimit::{self, RateLimiter};
use gapsync_protocol::crypto::{ConnectionId, FrameKey};
use gapsync_protocol::messages::HelloAuth;
use gapsync_protocol::{
    Compression, FrameKind, Hello, PROTOCOL_VERSION, SenderEvent, SenderSession,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use self::write::{Pacer, flush, send};
use crate::pipe::batch::PipeWorker;
use crate::source::SourceEvent;

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// A version-1 connection ended cleanly so that the next one carries origin chains.
    Upgrade,
    /// Failed; `accepted` says whether the handshake had succeeded.
    Failed {
        accepted: bool,
    },
}

/// How a pipe speaks of failures: warnings rate-limited per cause, and its alarm.
struct Trouble {
    limiter: RateLimiter,
    alarm: Alarm,
}

/// Runs a pipe until shutdown: connect, send, and on any failure back off and resume.
pub async fn run(
    mut w: PipeWorker,
    node: String,
    session: u64,
    mut rx: mpsc::Receiver<SourceEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut trouble = Trouble {
        limiter: RateLimiter::new(Duration::from_secs(60)),
        alarm: Alarm::new(w.pipe.cfg.alarm_after),
    };
    let profile = &w.pipe.cfg.profile;
    let (min, max) = (profile.reconnect_backoff_min, profile.reconnect_backoff_max);
    let mut backoff = min;
    loop {
        let connected = tokio::select! {
            c = connect(&w) => c,
            _ = shutdown.changed() => return,
        };
        match connected {
            Ok(stream) => {
                let ended = drive(
                    &mut w,
                    &node,
                    session,
                    stream,
                    &mut rx,
                    &mut shutdown,
                    &mut trouble,
                )
                .await;
                w.pipe.stats.connected.store(0, Relaxed);
                w.on_disconnect();
                match ended {
                    Ended::Shutdown => return,
                    Ended::Upgrade => continue,
                    Ended::Failed { accepted: true } => backoff = min,
                    Ended::Failed { accepted: false } => {}
                }
                w.pipe.stats.reconnects.fetch_add(1, Relaxed);
            }
            Err(e) => trouble.cannot_connect(&w, &e, backoff),
        }
        let until = tokio::time::Instant::now() + backoff;
        if back_off(&mut w, &mut trouble, until, &mut rx, &mut shutdown).await
            == Some(Ended::Shutdown)
        {
            return;
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Waits until `until` before the next connection, taking what the source finds and saying
/// the alarm when it is due; `Some(Shutdown)` when the daemon stops meanwhile.
async fn back_off(
    w: &mut PipeWorker,
    trouble: &mut Trouble,
    until: tokio::time::Instant,
    rx: &mut mpsc::Receiver<SourceEvent>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Ended> {
    loop {
        poll_alarm(&mut trouble.alarm, w);
        let wake = alarm_wake(&trouble.alarm, until);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return None,
            _ = tokio::time::sleep_until(wake), if wake < until => {}
            ev = rx.recv() => match ev {
                Some(ev) => w.on_source(ev),
                None => return Some(Ended::Shutdown),
            },
            _ = shutdown.changed() => return Some(Ended::Shutdown),
        }
    }
}

/// A connection to the gate: plain TCP, or TLS over it.
trait GateStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> GateStream for T {}

async fn connect(w: &PipeWorker) -> anyhow::Result<Box<dyn GateStream>> {
    let stream = connect_tcp(w).await?;
    let Some(tls) = &w.pipe.cfg.tls else {
        return Ok(Box::new(stream));
    };
    let handshake = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), stream);
    match tokio::time::timeout(w.pipe.cfg.profile.handshake_timeout, handshake).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => {
            anyhow::bail!("TLS handshake failed: {e} (check [tls] cert, key and ca on both ends)")
        }
        Err(_) => anyhow::bail!("no TLS handshake within handshake_timeout"),
    }
}

async fn connect_tcp(w: &PipeWorker) -> anyhow::Result<TcpStream> {
    let p = &w.pipe.cfg.profile;
    let attempt = async {
        let addr = tokio::net::lookup_host(&w.pipe.cfg.gate)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} does not resolve to an address", w.pipe.cfg.gate))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(n) = p.socket_buffer_bytes {
            let _ = socket.set_send_buffer_size(n);
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        anyhow::Ok(stream)
    };
    tokio::time::timeout(p.connect_timeout, attempt)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no connection within connect_timeout ({})",
                humantime::format_duration(p.connect_timeout)
            )
        })?
}

/// One connection's state: the session, the write half, and the frame built ahead.
struct Conn<W> {
    s: SenderSession,
    wr: W,
    pacer: Pacer,
    write_timeout: Duration,
    accepted: bool,
    session_id: u64,
    /// A frame built ahead (its payload in `w.buf`), sent as soon as the window allows.
    prepared: Option<(FrameKind, u64, u64)>,
}

/// Why a connection ends, from inside its loop.
type Step = Result<(), Ended>;

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut PipeWorker,
    node: &str,
    session_id: u64,
    stream: S,
    rx: &mut mpsc::Receiver<SourceEvent>,
    shutdown: &mut watch::Receiver<bool>,
    trouble: &mut Trouble,
) -> Ended {
    let (mut rd, wr) = tokio::io::split(stream);
    let s = open_session(w, node, session_id);
    let profile = &w.pipe.cfg.profile;
    let mut c = Conn {
        s,
        wr,
        pacer: Pacer::new(profile.rate_limit_mbit),
        write_timeout: profile.ack_timeout.max(profile.handshake_timeout),
        accepted: false,
        session_id,
        prepared: None,
    };
    let mut running = w.pipe.running();
    let mut replies = [0u8; 4096];
    loop {
        let held_until = match c.turn(w, trouble).await {
            Ok(held) => held,
            Err(ended) => return ended,
        };
        let deadline = [c.s.next_deadline(), held_until, trouble.alarm.next_poll()]
            .into_iter()
            .flatten()
            .min()
            .map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
        let step = tokio::select! {
            r = rd.read(&mut replies) => c.on_read(w, trouble, r.map(|n| &replies[..n])),
            _ = tokio::time::sleep_until(deadline) => {
                c.s.handle_timeout(Instant::now());
                Ok(())
            }
            ev = rx.recv() => match ev {
                Some(ev) => {
                    w.on_source(ev);
                    Ok(())
                }
                None => Err(Ended::Shutdown),
            },
            _ = running.changed() => Ok(()),
            _ = shutdown.changed() => Err(Ended::Shutdown),
        };
        if let Err(ended) = step {
            return ended;
        }
    }
}

/// The connection's session, with the pipe's key for this connection if it has one.
fn open_session(w: &mut PipeWorker, node: &str, session_id: u64) -> SenderSession {
    w.connections += 1;
    let connection = w.connections;
    let cfg = &w.pipe.cfg;
    let key = cfg.auth.as_ref().map(|a| {
        let id = ConnectionId {
            node,
            pipe: &cfg.name,
            session: session_id,
            connection,
            key_id: a.key.id,
        };
        FrameKey::derive(&a.key.key, id, a.protection)
    });
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node: node.to_owned(),
        pipe: cfg.name.clone(),
        session_id,
        connection,
        profile: cfg.profile.summary(),
        auth: cfg.auth.as_ref().map(|a| HelloAuth {
            key_id: a.key.id,
            protection: a.protection,
        }),
    };
    let s = SenderSession::new(&cfg.profile, &hello, Instant::now(), key);
    // Every connection (a reconnect too) offers the pipe's compression in its Hello.
    let s = match cfg
        .processors
        .compress()
        .map(|c| Compression::zstd(i64::from(c.level)))
    {
        Some(Ok(c)) => s.with_compression(c),
        Some(Err(e)) => {
            tracing::error!(pipe = %cfg.name, error = %e, "internal: the checked compress level was refused; sending uncompressed");
            s
        }
        None => s,
    };
    // Version 1 unless an object with an origin chain is to be sent or the pipe compresses
    // (PROTOCOL.md 4.1), so that receivers of version 1 keep working with pipes that forward
    // nothing.
    let s = if w.wants_chains {
        s.with_origin_chains()
    } else {
        s
    };
    w.chains_on_wire = s.protocol_version() >= 2;
    s
}

impl<W: AsyncWrite + Unpin> Conn<W> {
    /// One turn of the loop before waiting: sends the frame built ahead, handles the session's
    /// events, fills the window, flushes and builds the next frame ahead. Returns until when
    /// a frame that would not be full is held back.
    async fn turn(
        &mut self,
        w: &mut PipeWorker,
        t: &mut Trouble,
    ) -> Result<Option<Instant>, Ended> {
        // An answer that opened the window sends the frame built ahead at once; the answer's
        // bookkeeping (the spool file's removal, the `sent` line) then overlaps its trip.
        if self.s.can_send()
            && let Some(frame) = self.prepared.take()
        {
            self.write(w, t, Some(frame)).await?;
        }
        self.events(w, t);
        if self.s.is_closed() {
            return Err(self.failed());
        }
        poll_alarm(&mut t.alarm, w);
        let held_until = self.fill_window(w, t).await?;
        self.write(w, t, None).await?;
        if w.wants_upgrade() && self.s.in_flight() == 0 && self.prepared.is_none() {
            return Err(Ended::Upgrade);
        }
        self.build_ahead(w);
        Ok(held_until)
    }

    fn failed(&self) -> Ended {
        Ended::Failed {
            accepted: self.accepted,
        }
    }

    /// Handles what the session reported, and passes it on to the pipe.
    fn events(&mut self, w: &mut PipeWorker, t: &mut Trouble) {
        while let Some(ev) = self.s.poll_event() {
            match &ev {
                SenderEvent::HandshakeAccepted => {
                    self.accepted = true;
                    w.pipe.stats.connected.store(1, Relaxed);
                    tracing::info!(pipe = %w.pipe.cfg.name, gate = %w.pipe.cfg.gate, session = self.session_id, queued = w.depth(), "connected");
                }
                SenderEvent::TimedOut(info) => t.fail(
                    w,
                    "no answer within the ack timeout",
                    format!("{:?} frame {}", info.kind, info.sequence),
                ),
                SenderEvent::Violation(e) => {
                    t.fail(w, "the reply stream broke the protocol", e.to_string())
                }
                SenderEvent::Acked(info) if info.kind == FrameKind::Batch => {
                    let cleared = t.alarm.ok(Instant::now(), false);
                    report_alarm(cleared, w, "the pipe delivers again");
                }
                SenderEvent::Failed(_) => t.alarm.failure(
                    "the receiver answered FAIL to every attempt (its log says why: a refused name, a full disk, a digest mismatch)",
                ),
                _ => {}
            }
            w.on_event(&ev);
        }
    }

    /// Sends frames while the window is open and the pipe runs. A frame built ahead went out
    /// already whenever the window allowed, and handling events does not open the window:
    /// from here on frames are built as they are sent. A frame that would not be full waits
    /// for the answers while files keep arriving (until the returned time).
    async fn fill_window(
        &mut self,
        w: &mut PipeWorker,
        t: &mut Trouble,
    ) -> Result<Option<Instant>, Ended> {
        while self.s.can_send() && w.pipe.is_running() {
            if !w.fills_frame(self.s.max_payload()) {
                let held_until = w.partial_frame_wait(self.s.in_flight(), Instant::now());
                if held_until.is_some() {
                    return Ok(held_until);
                }
            }
            let max = self.s.max_payload();
            let Some(frame) = tokio::task::block_in_place(|| w.next_frame(max)) else {
                break;
            };
            self.write(w, t, Some(frame)).await?;
        }
        Ok(None)
    }

    /// The window is full: the next frame (read, hashed) is built while the answer is on its
    /// way, so with a window of 1 the answer and the next frame's reading overlap instead of
    /// adding up. Only a full frame is built ahead, as [`Conn::fill_window`]'s rule says.
    fn build_ahead(&mut self, w: &mut PipeWorker) {
        let max = self.s.max_payload();
        if self.prepared.is_none()
            && self.accepted
            && w.pipe.is_running()
            && !self.s.can_send()
            && self.s.in_flight() > 0
            && w.fills_frame(max)
        {
            self.prepared = tokio::task::block_in_place(|| w.next_frame(max));
        }
    }

    /// Writes `frame` (its payload in `w.buf`), or only flushes what the session holds.
    async fn write(
        &mut self,
        w: &PipeWorker,
        t: &mut Trouble,
        frame: Option<(FrameKind, u64, u64)>,
    ) -> Step {
        let limit = self.write_timeout;
        let written = match frame {
            Some(f) => send(&mut self.s, &mut self.wr, &mut self.pacer, w, f, limit).await,
            None => flush(&mut self.s, &mut self.wr, limit).await,
        };
        written.map_err(|e| {
            t.fail(w, "cannot write to the gate", e);
            self.failed()
        })
    }

    /// Feeds reply bytes to the session; a close or an error ends the connection.
    fn on_read(&mut self, w: &PipeWorker, t: &mut Trouble, read: std::io::Result<&[u8]>) -> Step {
        match read {
            Ok([]) if !self.accepted => t.fail(w, "the receiver closed the connection during the handshake without answering", "its pipe, node, profile, key or allow-list does not accept this sender (the receiver's log says which)".into()),
            Ok([]) => t.fail(w, "the gate or receiver closed the connection", format!("{} frame(s) unanswered", self.s.in_flight())),
            Ok(bytes) => {
                self.s.on_bytes(bytes, Instant::now());
                return Ok(());
            }
            Err(e) => t.fail(w, "connection lost", e.to_string()),
        }
        Err(self.failed())
    }
}

impl Trouble {
    /// Says (rate-limited) that the gate cannot be reached, and keeps it for the alarm.
    fn cannot_connect(&mut self, w: &PipeWorker, e: &anyhow::Error, backoff: Duration) {
        let cfg = &w.pipe.cfg;
        let key = ratelimit::key("connect", &ratelimit::without_digits(&format!("{e:#}")));
        if let Some(suppressed) = self.limiter.check(&key, Instant::now()) {
            tracing::warn!(pipe = %cfg.name, gate = %cfg.gate, error = %format!("{e:#}"), retry_in = %humantime::format_duration(backoff), suppressed, "cannot connect to the gate");
        }
        let cause = format!("cannot connect to the gate: {e:#}");
        w.pipe.stats.warned(cause.clone());
        self.alarm.failure(cause);
    }

    /// Logs a failure (different causes each, repeats of one rate-limited), keeps it for the
    /// pipe's status, and gives it to the pipe's alarm.
    fn fail(&mut self, w: &PipeWorker, what: &str, detail: String) {
        let cfg = &w.pipe.cfg;
        let cause = format!("{what}: {detail}");
        let key = ratelimit::key(&cfg.gate, &ratelimit::without_digits(&cause));
        if let Some(suppressed) = self.limiter.check(&key, Instant::now()) {
            tracing::warn!(pipe = %cfg.name, gate = %cfg.gate, suppressed, "{what}: {detail}; reconnecting");
        }
        w.pipe.stats.warned(cause.clone());
        self.alarm.failure(cause);
    }
}

/// Says the pipe's alarm (files waiting, nothing delivered for `alarm_after`) when it is due.
fn poll_alarm(alarm: &mut Alarm, w: &PipeWorker) {
    let ev = alarm.poll(Instant::now(), w.depth() > 0);
    report_alarm(ev, w, "nothing is waiting to be sent any more");
}

/// Logs what the pipe's alarm says; `cleared` is what an INFO line says.
fn report_alarm(ev: Option<AlarmEvent>, w: &PipeWorker, cleared: &str) {
    match ev {
        Some(ev @ AlarmEvent::Raised { .. }) => {
            let what = format!(
                "the pipe has delivered nothing for alarm_after ({}) while {} file(s) wait; act on the cause",
                alarm::seconds(w.pipe.cfg.alarm_after),
                w.depth()
            );
            w.pipe.stats.failed(what.clone());
            alarm::log_raised(
                "not_delivering",
                &w.pipe.cfg.name,
                &w.pipe.cfg.gate,
                &ev,
                &what,
            );
        }
        Some(ev @ AlarmEvent::Cleared { .. }) => {
            alarm::log_cleared(
                "not_delivering",
                &w.pipe.cfg.name,
                &w.pipe.cfg.gate,
                &ev,
                cleared,
            );
        }
        None => {}
    }
}

/// When the backoff wait must wake for the alarm (at `until` at the latest).
fn alarm_wake(alarm: &Alarm, until: tokio::time::Instant) -> tokio::time::Instant {
    alarm
        .next_poll()
        .map_or(until, |t| tokio::time::Instant::from_std(t).min(until))
}
