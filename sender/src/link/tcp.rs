//! The TCP link: connect through the gate, handshake, and keep the window full. One `select!`
//! over the reply bytes, the session's timer, new files from the source and shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use gapsync_daemon::alarm::{self, Alarm, AlarmEvent};
use gapsync_daemon::ratelimit::{self, RateLimiter};
use gapsync_protocol::crypto::{ConnectionId, FrameKey};
use gapsync_protocol::messages::HelloAuth;
use gapsync_protocol::{FrameKind, Hello, PROTOCOL_VERSION, SenderEvent, SenderSession};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::pipe::batch::PipeWorker;
use crate::source::SourceEvent;

/// How a connection ended.
enum Ended {
    Shutdown,
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
    let (min, max) = (
        w.pipe.cfg.profile.reconnect_backoff_min,
        w.pipe.cfg.profile.reconnect_backoff_max,
    );
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
                    Ended::Failed { accepted: true } => backoff = min,
                    Ended::Failed { accepted: false } => {}
                }
                w.pipe.stats.reconnects.fetch_add(1, Relaxed);
            }
            Err(e) => {
                let key = ratelimit::key("connect", &ratelimit::without_digits(&format!("{e:#}")));
                if let Some(suppressed) = trouble.limiter.check(&key, Instant::now()) {
                    tracing::warn!(pipe = %w.pipe.cfg.name, gate = %w.pipe.cfg.gate, error = %format!("{e:#}"), retry_in = %humantime::format_duration(backoff), suppressed, "cannot connect to the gate");
                }
                trouble
                    .alarm
                    .failure(format!("cannot connect to the gate: {e:#}"));
            }
        }
        let until = tokio::time::Instant::now() + backoff;
        loop {
            poll_alarm(&mut trouble.alarm, &w);
            let wake = alarm_wake(&trouble.alarm, until);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = tokio::time::sleep_until(wake), if wake < until => {}
                ev = rx.recv() => match ev {
                    Some(ev) => w.on_source(ev),
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
        backoff = (backoff * 2).min(max);
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

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut PipeWorker,
    node: &str,
    session_id: u64,
    stream: S,
    rx: &mut mpsc::Receiver<SourceEvent>,
    shutdown: &mut watch::Receiver<bool>,
    trouble: &mut Trouble,
) -> Ended {
    let Trouble { limiter, alarm } = trouble;
    w.connections += 1;
    let connection = w.connections;
    let key = w.pipe.cfg.auth.as_ref().map(|a| {
        let id = ConnectionId {
            node,
            pipe: &w.pipe.cfg.name,
            session: session_id,
            connection,
            key_id: a.key.id,
        };
        FrameKey::derive(&a.key.key, id, a.protection)
    });
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node: node.to_owned(),
        pipe: w.pipe.cfg.name.clone(),
        session_id,
        connection,
        profile: w.pipe.cfg.profile.summary(),
        auth: w.pipe.cfg.auth.as_ref().map(|a| HelloAuth {
            key_id: a.key.id,
            protection: a.protection,
        }),
    };
    let mut s = SenderSession::new(&w.pipe.cfg.profile, &hello, Instant::now(), key);
    let write_timeout = w
        .pipe
        .cfg
        .profile
        .ack_timeout
        .max(w.pipe.cfg.profile.handshake_timeout);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut replies = [0u8; 4096];
    let mut accepted = false;
    let mut pacer = Pacer::new(w.pipe.cfg.profile.rate_limit_mbit);
    // A frame built ahead (its payload in `w.buf`), sent as soon as the window allows.
    let mut prepared: Option<(FrameKind, u64, u64)> = None;
    let (pipe, gate) = (w.pipe.cfg.name.clone(), w.pipe.cfg.gate.clone());
    // Logs a failure (different causes each, repeats of one rate-limited) and returns it for
    // the pipe's alarm.
    let warn = |what: &str, detail: String| {
        let key = ratelimit::key(
            &gate,
            &ratelimit::without_digits(&format!("{what}: {detail}")),
        );
        if let Some(suppressed) = limiter.check(&key, Instant::now()) {
            tracing::warn!(pipe = %pipe, gate = %gate, suppressed, "{what}: {detail}; reconnecting");
        }
        format!("{what}: {detail}")
    };
    loop {
        // An answer that opened the window sends the frame built ahead at once; the answer's
        // bookkeeping (the spool file's removal, the `sent` line) then overlaps its trip.
        if s.can_send()
            && let Some((kind, transfer, offset)) = prepared.take()
        {
            let sent = send(
                &mut s,
                &mut wr,
                &mut pacer,
                w,
                (kind, transfer, offset),
                write_timeout,
            )
            .await;
            if let Err(e) = sent {
                alarm.failure(warn("cannot write to the gate", e));
                return Ended::Failed { accepted };
            }
        }
        while let Some(ev) = s.poll_event() {
            match &ev {
                SenderEvent::HandshakeAccepted => {
                    accepted = true;
                    w.pipe.stats.connected.store(1, Relaxed);
                    tracing::info!(pipe = %w.pipe.cfg.name, gate = %w.pipe.cfg.gate, session = session_id, queued = w.depth(), "connected");
                }
                SenderEvent::TimedOut(info) => alarm.failure(warn(
                    "no answer within the ack timeout",
                    format!("{:?} frame {}", info.kind, info.sequence),
                )),
                SenderEvent::Violation(e) => alarm.failure(warn(
                    "the reply stream broke the protocol",
                    e.to_string(),
                )),
                SenderEvent::Acked(info) if info.kind == FrameKind::Batch => {
                    let cleared = alarm.ok(Instant::now(), false);
                    report_alarm(cleared, w, "the pipe delivers again");
                }
                SenderEvent::Failed(_) => alarm.failure(
                    "the receiver answered FAIL to every attempt (its log says why: a refused name, a full disk, a digest mismatch)",
                ),
                _ => {}
            }
            w.on_event(&ev);
        }
        if s.is_closed() {
            return Ended::Failed { accepted };
        }
        poll_alarm(alarm, w);
        // A frame built ahead went out above whenever the window allowed, and handling events
        // does not open the window: from here on frames are built as they are sent.
        // A frame that would not be full waits for the answers while files keep arriving
        // (until `held_until`, when it is looked at again).
        let mut held_until = None;
        while s.can_send() {
            if !w.fills_frame(s.max_payload()) {
                held_until = w.partial_frame_wait(s.in_flight(), Instant::now());
                if held_until.is_some() {
                    break;
                }
            }
            let Some((kind, transfer, offset)) =
                tokio::task::block_in_place(|| w.next_frame(s.max_payload()))
            else {
                break;
            };
            if let Err(e) = send(
                &mut s,
                &mut wr,
                &mut pacer,
                w,
                (kind, transfer, offset),
                write_timeout,
            )
            .await
            {
                alarm.failure(warn("cannot write to the gate", e));
                return Ended::Failed { accepted };
            }
        }
        if let Err(e) = flush(&mut s, &mut wr, write_timeout).await {
            alarm.failure(warn("cannot write to the gate", e));
            return Ended::Failed { accepted };
        }
        // The window is full: the next frame (read, hashed) is built while the answer is on
        // its way, so with a window of 1 the answer and the next frame's reading overlap
        // instead of adding up. Only a full frame is built ahead, as the rule above says.
        if prepared.is_none()
            && accepted
            && !s.can_send()
            && s.in_flight() > 0
            && w.fills_frame(s.max_payload())
        {
            prepared = tokio::task::block_in_place(|| w.next_frame(s.max_payload()));
        }
        let deadline = [s.next_deadline(), held_until, alarm.next_poll()]
            .into_iter()
            .flatten()
            .min()
            .map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
        tokio::select! {
            r = rd.read(&mut replies) => match r {
                Ok(0) if !accepted => {
                    alarm.failure(warn("the receiver closed the connection during the handshake without answering", "its pipe, node, profile, key or allow-list does not accept this sender (the receiver's log says which)".into()));
                    return Ended::Failed { accepted };
                }
                Ok(0) => {
                    alarm.failure(warn("the gate or receiver closed the connection", format!("{} frame(s) unanswered", s.in_flight())));
                    return Ended::Failed { accepted };
                }
                Ok(n) => s.on_bytes(&replies[..n], Instant::now()),
                Err(e) => {
                    alarm.failure(warn("connection lost", e.to_string()));
                    return Ended::Failed { accepted };
                }
            },
            _ = tokio::time::sleep_until(deadline) => s.handle_timeout(Instant::now()),
            ev = rx.recv() => match ev {
                Some(ev) => w.on_source(ev),
                None => return Ended::Shutdown,
            },
            _ = shutdown.changed() => return Ended::Shutdown,
        }
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

/// Sends the frame whose payload `w.buf` holds, paced, and writes it out.
async fn send<W: AsyncWrite + Unpin>(
    s: &mut SenderSession,
    wr: &mut W,
    pacer: &mut Pacer,
    w: &PipeWorker,
    (kind, transfer, offset): (FrameKind, u64, u64),
    limit: Duration,
) -> Result<(), String> {
    // Where the session queued only the frame's header, the payload is written from where it
    // lies, right behind it (no copy of up to a frame's bytes behind the header).
    let payload: &[u8] = match s.send_split(kind, transfer, offset, &w.buf, Instant::now()) {
        Ok((_, true)) => &w.buf,
        Ok((_, false)) => &[],
        Err(e) => {
            tracing::error!(pipe = %w.pipe.cfg.name, error = %e, "internal: a frame did not fit the session");
            return Err(format!("internal: {e}"));
        }
    };
    pacer.wait(s.pending_output().len() + payload.len()).await;
    write_out(s, wr, payload, limit).await
}

async fn flush<W: AsyncWrite + Unpin>(
    s: &mut SenderSession,
    wr: &mut W,
    limit: Duration,
) -> Result<(), String> {
    write_out(s, wr, &[], limit).await
}

/// Writes the session's pending output and then `payload`, in as few writes as the stream
/// takes (vectored where it can), and flushes.
async fn write_out<W: AsyncWrite + Unpin>(
    s: &mut SenderSession,
    wr: &mut W,
    payload: &[u8],
    limit: Duration,
) -> Result<(), String> {
    if s.pending_output().is_empty() && payload.is_empty() {
        return Ok(());
    }
    // TLS keeps records it could not hand to the socket until flushed: without the flush the
    // tail of a frame could wait for the next write, and the receiver never answer it.
    let write = async {
        let (mut head, mut body) = (s.pending_output(), payload);
        while !head.is_empty() || !body.is_empty() {
            let n = if head.is_empty() {
                wr.write(body).await?
            } else {
                let parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
                wr.write_vectored(&parts).await?
            };
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        wr.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => {
            s.clear_output();
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the gate accepted no bytes for {}",
            humantime::format_duration(limit)
        )),
    }
}

/// Paces writes to the profile's `rate_limit_mbit` (a token bucket with one frame of burst).
struct Pacer {
    bytes_per_sec: Option<f64>,
    next_free: tokio::time::Instant,
}

impl Pacer {
    fn new(mbit: Option<u64>) -> Self {
        Self {
            bytes_per_sec: mbit.map(|m| m as f64 * 1e6 / 8.0),
            next_free: tokio::time::Instant::now(),
        }
    }

    /// Waits until `n` more bytes may be written.
    async fn wait(&mut self, n: usize) {
        let Some(rate) = self.bytes_per_sec else {
            return;
        };
        let now = tokio::time::Instant::now();
        let start = self.next_free.max(now);
        self.next_free = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(start).await;
    }
}
