//! The TCP link: accept connections from allowed networks and drive one receiver session per
//! connection (socket, idle timer, shutdown in one `select!`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use gapsync_daemon::ratelimit::{self, RateLimiter};
use gapsync_protocol::crypto::{ConnectionId, FrameKey};
use gapsync_protocol::{Hello, PROTOCOL_VERSION, ReceiverSession, Request};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::config::{Config, link_name};
use crate::pipe::origin::Admission;
use crate::pipe::status::PeerGuard;
use crate::pipe::{Pipe, Pipes};
use crate::sink::{Applied, Flushed};
use gapsync_protocol::{LinkKind, Profile};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Shared by every connection.
#[derive(Debug)]
pub struct Server {
    pub config: Arc<Config>,
    pub pipes: Arc<Pipes>,
    /// The profile of every pipe this listener serves (tcp or tls; one per receiver).
    pub profile: Profile,
    pub limiter: RateLimiter,
    /// Connections being served.
    pub active: std::sync::atomic::AtomicUsize,
}

/// Counts a connection as active until dropped.
struct ActiveGuard(Arc<Server>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl Server {
    fn warn_limited(&self, key: &str) -> Option<u64> {
        self.limiter.check(key, Instant::now())
    }
}

/// Binds the TCP listener on `listen`, logs its `listening` line and accepts connections for
/// the tcp-kind pipes until `shutdown` turns true. Returns the task and the bound address.
pub async fn start(
    config: Arc<Config>,
    pipes: Arc<Pipes>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    use anyhow::Context as _;
    let Some(profile) = config.tcp_profile().cloned() else {
        anyhow::bail!("internal: the tcp listener started without a tcp pipe");
    };
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; is another process using it?",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let served = config
        .pipes
        .iter()
        .filter(|c| c.link() != LinkKind::Udp)
        .count();
    tracing::info!(%addr, link = link_name(profile.link), node = %config.node, profile = %profile.name, pipes = served, state_dir = %config.state_dir.display(), "listening");
    let server = Arc::new(Server {
        config,
        pipes,
        profile,
        limiter: RateLimiter::new(std::time::Duration::from_secs(60)),
        active: std::sync::atomic::AtomicUsize::new(0),
    });
    Ok((tokio::spawn(serve(server, listener, shutdown)), addr))
}

/// Accepts connections until `shutdown` turns true.
async fn serve(server: Arc<Server>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if !server.config.allows(peer.ip()) {
            if let Some(suppressed) = server.warn_limited(&format!("refused {}", peer.ip())) {
                tracing::error!(%peer, suppressed, "refused connection: address not in `allow`; add its network to the receiver's allow list if it is a legitimate sender");
            }
            drop(stream);
            continue;
        }
        if server.active.fetch_add(1, Relaxed) >= server.config.max_connections {
            server.active.fetch_sub(1, Relaxed);
            if let Some(suppressed) = server.warn_limited("connection limit") {
                tracing::warn!(%peer, max_connections = server.config.max_connections, suppressed, "connection limit reached; closing new connections until others end (raise max_connections if this is legitimate load)");
            }
            drop(stream);
            continue;
        }
        let guard = ActiveGuard(server.clone());
        let server = server.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("conn", %peer);
        let _ = stream.set_nodelay(true);
        if let Some(n) = server.profile.socket_buffer_bytes {
            let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(n as usize);
        }
        tokio::spawn(
            async move {
                let _guard = guard;
                let Some(tls) = server.config.tls.clone() else {
                    return Connection::new(server, peer).run(stream, shutdown).await;
                };
                let limit = server.profile.handshake_timeout;
                match tokio::time::timeout(limit, tokio_rustls::TlsAcceptor::from(tls).accept(stream)).await {
                    Ok(Ok(tls_stream)) => Connection::new(server, peer).run(tls_stream, shutdown).await,
                    Ok(Err(e)) => {
                        if let Some(suppressed) = server.warn_limited(&format!("tls {}", peer.ip())) {
                            tracing::error!(%peer, error = %e, suppressed, "refused connection: TLS handshake failed (a client certificate signed by [tls] ca is required)");
                        }
                    }
                    Err(_) => {
                        if let Some(suppressed) = server.warn_limited(&format!("tls timeout {}", peer.ip())) {
                            tracing::warn!(%peer, suppressed, "closing a connection that did not finish its TLS handshake within handshake_timeout");
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
}

struct Connection {
    server: Arc<Server>,
    peer: SocketAddr,
    session: ReceiverSession,
    pipe: Option<(Arc<Pipe>, u64)>,
    /// Lists the connection in its pipe's status row while it lasts.
    _listed: Option<PeerGuard>,
}

impl Connection {
    fn new(server: Arc<Server>, peer: SocketAddr) -> Self {
        let session = ReceiverSession::new(&server.profile);
        Self {
            server,
            peer,
            session,
            pipe: None,
            _listed: None,
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut stream: S,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let profile = &self.server.profile;
        let (idle, handshake) = (profile.idle_timeout, profile.handshake_timeout);
        let opened = Instant::now();
        let mut last_read = opened;
        // When the frame now being received began; a frame must arrive within idle_timeout.
        let mut frame_started: Option<Instant> = None;
        loop {
            if self.process() > 0 {
                frame_started = None;
            }
            let out = self.session.pending_output();
            if !out.is_empty() {
                // Flushed: TLS may hold the reply's record until then.
                let written = match stream.write_all(out).await {
                    Ok(()) => stream.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    tracing::warn!(error = %e, "cannot write the reply byte; closing");
                    break;
                }
                self.session.clear_output();
            }
            if self.session.is_closed() {
                break;
            }
            if self.session.decoder_mut().buffered() > 0 {
                frame_started.get_or_insert(Instant::now());
            }
            let (deadline, why) = self.deadline(opened + handshake, idle, frame_started, last_read);
            let established = self.session.is_established();
            let buf = self.session.decoder_mut().buffer_mut();
            buf.reserve(if established { READ_CHUNK } else { 4096 });
            tokio::select! {
                r = stream.read_buf(buf) => match r {
                    Ok(0) => {
                        tracing::debug!("sender closed the connection");
                        break;
                    }
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => {
                        if let Some(suppressed) = self.server.warn_limited(&format!("lost {}", self.peer.ip())) {
                            tracing::warn!(error = %e, suppressed, "connection lost; the sender will reconnect and resume");
                        }
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if let Some(suppressed) = self.server.warn_limited(&format!("{why} {}", self.peer.ip())) {
                        tracing::warn!(suppressed, "closing the connection: {why}");
                    }
                    break;
                }
                _ = shutdown.changed() => break,
            }
        }
    }

    /// When the connection is closed unless bytes arrive, and why: no handshake by
    /// `handshake_by`; then a frame begun must complete, and silence may last, within the
    /// idle_timeout (once the Hello named the pipe, its own profile's).
    fn deadline(
        &self,
        handshake_by: Instant,
        idle: std::time::Duration,
        frame_started: Option<Instant>,
        last_read: Instant,
    ) -> (Instant, &'static str) {
        let idle = self
            .pipe
            .as_ref()
            .map_or(idle, |(p, _)| p.profile.idle_timeout);
        if !self.session.is_established() {
            (
                handshake_by,
                "no handshake within the profile's handshake_timeout",
            )
        } else if let Some(t) = frame_started {
            (
                t + idle,
                "a frame did not complete within the profile's idle_timeout (a stalled gate or a slow-drip peer)",
            )
        } else {
            (
                last_read + idle,
                "silent for longer than the profile's idle_timeout (no frames, not even heartbeats): check the gate",
            )
        }
    }

    /// Applies every whole request in the buffer, answering each; returns how many.
    fn process(&mut self) -> usize {
        let mut n = 0;
        loop {
            match self.session.next_request() {
                Ok(None) => return n,
                Ok(Some(Request::Hello(h))) => self.hello(h),
                Ok(Some(req)) => {
                    let ok = self.apply(req);
                    self.session.answer(ok);
                }
                Err(e) => {
                    // Per peer and cause: different refusals are each said.
                    let cause = format!("bad frame {}", ratelimit::cause_kind(&e));
                    let key = ratelimit::key(self.peer.ip(), &cause);
                    if let Some(suppressed) = self.server.warn_limited(&key) {
                        tracing::error!(error = %e, suppressed, "refused a frame; closing the connection (the sender reconnects and resends)");
                    }
                    if let Some((pipe, _)) = &self.pipe {
                        pipe.stats.refused_frames.fetch_add(1, Relaxed);
                    }
                    return n;
                }
            }
            n += 1;
            if self.session.is_closed() {
                return n;
            }
        }
    }

    fn hello(&mut self, h: Hello) {
        let server = self.server.clone();
        // Rate-limited per peer and cause (the kind of refusal, not its numbers or names).
        let refuse = |cause: &str, why: String| {
            let key = ratelimit::key(self.peer.ip(), &format!("hello {cause}"));
            if let Some(suppressed) = server.warn_limited(&key) {
                // The reason holds the peer's names: a field, quoted and escaped like them.
                tracing::error!(node = %h.node, pipe = %h.pipe, suppressed, reason = %why, "refused handshake, closed without a reply");
            }
        };
        if !gapsync_protocol::speaks_version(h.protocol_version) {
            refuse(
                "version",
                format!(
                    "protocol version {} (this receiver speaks {PROTOCOL_VERSION}); upgrade the older side",
                    h.protocol_version
                ),
            );
            return self.session.reject_hello();
        }
        let Some(pipe) = self.server.pipes.get(&h.node, &h.pipe) else {
            refuse(
                "unknown pipe",
                format!(
                    "unknown pipe {:?} from node {:?}; add a [[pipe]] with that name and from to the receiver config",
                    h.pipe, h.node
                ),
            );
            return self.session.reject_hello();
        };
        let key = match self.pipe_hello(&h, &pipe) {
            Ok(key) => key,
            Err((cause, why)) => {
                // A known pipe: each refusal also counts in its status row.
                pipe.activity.refused_connections.fetch_add(1, Relaxed);
                pipe.error(format!("refused a handshake from {}: {why}", self.peer));
                refuse(cause, why);
                return self.session.reject_hello();
            }
        };
        pipe.stats.connections.fetch_add(1, Relaxed);
        pipe.heard();
        tracing::info!(
            node = %h.node, pipe = %h.pipe, session = h.session_id, connection = h.connection,
            key_id = h.auth.map(|a| a.key_id), protection = %h.auth.map_or("none", |a| a.protection.as_str()),
            "sender connected"
        );
        self._listed = Some(pipe.activity.peer_connected(self.peer));
        self.pipe = Some((pipe, h.session_id));
        self.session.accept_hello(key);
    }

    /// Checks a Hello against its pipe: the link kind, the profile, the key, the session.
    /// Returns the connection key, or the refusal's cause and what the operator reads.
    fn pipe_hello(
        &self,
        h: &Hello,
        pipe: &Pipe,
    ) -> Result<Option<FrameKey>, (&'static str, String)> {
        if pipe.link() == LinkKind::Udp {
            return Err((
                "link",
                format!(
                    "pipe {:?} from {:?} is a udp pipe on this receiver (profile {}): it takes datagrams, not TCP connections; give both ends the same profile",
                    h.pipe, h.node, pipe.profile.name
                ),
            ));
        }
        let diffs = pipe.profile.summary().differences(&h.profile);
        if !diffs.is_empty() {
            return Err((
                "profile",
                format!(
                    "profile mismatch: {}; both ends must use the same profile values",
                    diffs.join(", ")
                ),
            ));
        }
        let key = self.hello_key(h, pipe)?;
        let current = pipe.session.fetch_max(h.session_id, Relaxed);
        if h.session_id < current {
            return Err((
                "stale session",
                format!(
                    "session {} is older than the current session {current} (a stale connection)",
                    h.session_id
                ),
            ));
        }
        Ok(key)
    }

    /// The connection key for a Hello, after checking its tag and that it is no replay.
    /// A refusal is its cause (for the rate limiter) and what the operator reads.
    fn hello_key(
        &self,
        h: &Hello,
        pipe: &Pipe,
    ) -> Result<Option<FrameKey>, (&'static str, String)> {
        let Some(auth) = h.auth else {
            if self.session.hello_is_authenticated() {
                return Err(("tag", "the Hello carries a tag but names no key".into()));
            }
            if pipe.require_auth {
                return Err(("no key", "the pipe requires authentication (require_auth) but the sender presented no key; set key_file on the sender's pipe".into()));
            }
            return Ok(None);
        };
        let Some(psk) = pipe.keys.iter().find(|k| k.id == auth.key_id) else {
            return Err((
                "key id",
                format!(
                    "key id {} is not configured for this pipe; add it to the pipe's keys",
                    auth.key_id
                ),
            ));
        };
        let id = ConnectionId {
            node: &h.node,
            pipe: &h.pipe,
            session: h.session_id,
            connection: h.connection,
            key_id: auth.key_id,
        };
        let key = FrameKey::derive(&psk.key, id, auth.protection);
        if !self.session.verify_hello(&key) {
            return Err((
                "wrong key",
                format!(
                    "wrong key: the Hello does not verify with key id {}; nothing is written",
                    auth.key_id
                ),
            ));
        }
        match tokio::task::block_in_place(|| pipe.accept_connection(h.session_id, h.connection)) {
            Ok(Ok(())) => Ok(Some(key)),
            Ok(Err((s, c))) => Err((
                "replay",
                format!(
                    "replayed or stale connection: session {} connection {} is not newer than session {s} connection {c} accepted before (if the sender's state folder was reset, put a number above {s} in its sender/session file)",
                    h.session_id, h.connection
                ),
            )),
            Err(e) => Err((
                "record",
                format!("cannot record the connection in the staging folder: {e}"),
            )),
        }
    }

    fn apply(&mut self, req: Request) -> bool {
        let Some((pipe, session)) = self.pipe.clone() else {
            return false;
        };
        if pipe.session.load(Relaxed) != session {
            tracing::warn!(pipe = %pipe.name, session, "a newer session of this sender took over; closing this connection");
            self.session.close();
            return false;
        }
        let records = match req {
            Request::Batch(records) => records,
            other => vec![other],
        };
        let node = self.server.config.node.as_str();
        // Every record is applied in order, then every commit among them is made durable as
        // one group; OK is answered only after that. On a refusal nothing staged is landed.
        let result = tokio::task::block_in_place(|| {
            pipe.with_sink(|sink| {
                for r in &records {
                    let applied = apply_record(&pipe, sink, node, r);
                    if let Err(e) = applied {
                        sink.abandon();
                        return Flushed {
                            delivered: Vec::new(),
                            result: Err(e),
                        };
                    }
                }
                sink.flush()
            })
        });
        // Files that became visible are delivered, also when the rest of the frame failed.
        for d in &result.delivered {
            pipe.log_delivered(d);
        }
        match result.result {
            Ok(()) => true,
            Err(e) => {
                pipe.stats.refused_frames.fetch_add(1, Relaxed);
                // Repeats of one cause (whatever the file or the numbers) are logged once a
                // minute per pipe and peer; different causes each get through.
                let cause = format!("sink {} {}", pipe.name, ratelimit::cause_kind(&e));
                let key = ratelimit::key(self.peer.ip(), &cause);
                pipe.error(e.to_string());
                if let Some(suppressed) = self.server.warn_limited(&key) {
                    if e.is_local() {
                        tracing::error!(pipe = %pipe.name, error = %e, suppressed, "could not land data; closed the connection without a reply, so the sender retries later without counting it against the file");
                    } else if e.is_peer_fault() {
                        tracing::error!(pipe = %pipe.name, error = %e, suppressed, "refused a request from the sender; answered FAIL");
                    } else {
                        tracing::error!(pipe = %pipe.name, error = %e, suppressed, "refused the file; answered FAIL, the sender resends it");
                    }
                }
                if e.is_local() {
                    self.session.close();
                }
                false
            }
        }
    }
}

/// Applies one record of a frame to the pipe's sink. A looped object (its chain names this
/// node) is refused at its Open: FAIL, so its sender keeps it (and quarantines it after
/// `max_attempts`) instead of settling the only copy left. A link whose target leaves the
/// destination is acknowledged as done without a write (see `crate::pipe::links`).
fn apply_record(
    pipe: &Pipe,
    sink: &mut dyn crate::sink::Sink,
    node: &str,
    r: &Request,
) -> Result<Applied, crate::sink::SinkError> {
    match r {
        Request::Open {
            transfer,
            open,
            origin,
            attrs,
        } => match pipe.admit(*transfer, &open.path, origin, node) {
            Admission::Land(_)
                if attrs
                    .link
                    .as_ref()
                    .is_some_and(|t| pipe.refuses_link(*transfer, &open.path, t)) =>
            {
                Ok(Applied::AlreadyCommitted)
            }
            Admission::Land(chain) => sink.open_with_origin(*transfer, open, &chain, attrs),
            Admission::Looped => Err(crate::sink::SinkError::Looped {
                path: open.path.clone(),
                origin: origin.to_string(),
            }),
        },
        // A refused link is acknowledged as done from its Open to its Commit, unwritten.
        Request::Data { transfer, .. } | Request::Commit { transfer, .. }
            if pipe.is_refused_link(*transfer) =>
        {
            Ok(Applied::AlreadyCommitted)
        }
        Request::Data {
            transfer,
            offset,
            payload,
        } => sink.write(*transfer, *offset, payload).inspect(|a| {
            if *a == Applied::Done {
                pipe.add_bytes(payload.len() as u64);
            }
        }),
        Request::Commit { transfer, commit } => sink.commit(*transfer, commit),
        Request::Heartbeat | Request::Hello(_) | Request::Batch(_) => Ok(Applied::Done),
    }
}
