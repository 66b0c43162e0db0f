//! The diode link's receiver logic: checks each datagram (checksum, pipe, key), feeds the
//! object's [`Assembly`], writes decoded blocks to the pipe's sink, lands complete objects,
//! reports passes that could not be decoded, and raises the silence alarm.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use gapsync_daemon::alarm::{self, Alarm, AlarmEvent};
use gapsync_daemon::ratelimit::{self, RateLimiter};
use gapsync_protocol::crypto::{ConnectionId, FLAG_AUTH, FrameKey, Protection};
use gapsync_protocol::udp::datagram::{self, Header, Kind};
use gapsync_protocol::udp::decode_announce;
use gapsync_protocol::udp::fec::BlockPool;
use gapsync_protocol::udp::{Assembly, End, Heartbeat, Limits, PassFailure, UdpProfile};
use gapsync_protocol::{Commit, OpenFile, decode_body};

use crate::config::Config;
use crate::pipe::origin::Admission;
use crate::pipe::status::PeerGuard;
use crate::pipe::{Pipe, Pipes};
use crate::sink::{Applied, Flushed};
use gapsync_protocol::LinkKind;

/// Objects remembered as finished, so repeated copies are ignored without a disk lookup.
const FINISHED_MEMORY: usize = 100_000;
/// Objects being received at once; more announcements wait (their later copies, or the next
/// pass, bring them again). Bounds memory against a flood of announcements.
const MAX_OBJECTS: usize = 4096;
/// Session keys cached per pipe.
const KEYS_PER_PIPE: usize = 8;
/// Datagrams held for objects whose announcement has not arrived yet (reordering puts a
/// symbol or an end before its announcement): at most this many, for at most [`ORPHAN_AGE`].
const MAX_ORPHANS: usize = 4096;
const ORPHAN_AGE: Duration = Duration::from_secs(2);

/// What the worker knows about one pipe's link.
#[derive(Default)]
struct LinkState {
    /// The link's silence alarm (the profile's `silence_alarm`), from the first datagram on.
    silence: Option<Alarm>,
    keys: HashMap<u64, FrameKey>,
    /// Datagrams accepted per sender session, and the sender's count at its last heartbeat.
    session: u64,
    received: u64,
    sent: u64,
    logged_received: u64,
    logged_sent: u64,
    /// The current session's source, listed in the pipe's status row until the link falls
    /// silent.
    listed: Option<PeerGuard>,
}

/// Datagrams dropped before reaching an object, by reason.
#[derive(Debug, Default)]
struct Dropped {
    corrupt: u64,
    refused_address: u64,
    unknown_pipe: u64,
    unauthenticated: u64,
    orphans: u64,
}

type ObjectKey = (u32, u64);

/// The receiving side of every pipe on the diode link.
pub struct Worker {
    pipes: HashMap<u32, Arc<Pipe>>,
    /// Pipes of the tcp kind, by datagram tag: their datagrams are refused with a clear line.
    tcp_pipes: HashMap<u32, Arc<Pipe>>,
    links: HashMap<u32, LinkState>,
    objects: HashMap<ObjectKey, (Arc<Pipe>, Assembly, Instant)>,
    finished: HashSet<ObjectKey>,
    finished_order: VecDeque<ObjectKey>,
    config: Arc<Config>,
    udp: UdpProfile,
    limits: Limits,
    limiter: RateLimiter,
    dropped: Dropped,
    orphans: VecDeque<(Header, Vec<u8>, Instant)>,
    /// Buffers of written blocks, for the next ones.
    blocks: BlockPool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("objects", &self.objects.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for every udp pipe; refuses two pipes whose tags collide.
    pub fn new(config: Arc<Config>, pipes: &Pipes, udp: UdpProfile) -> anyhow::Result<Self> {
        let mut by_tag = HashMap::new();
        let tcp_pipes = pipes
            .all()
            .filter(|p| p.link() != LinkKind::Udp)
            .map(|p| (datagram::pipe_tag(&p.from, &p.name), p.clone()))
            .collect();
        for p in pipes.all().filter(|p| p.link() == LinkKind::Udp) {
            let tag = datagram::pipe_tag(&p.from, &p.name);
            if let Some(other) = by_tag.insert(tag, p.clone()) {
                anyhow::bail!(
                    "pipes {} from {} and {} from {} have the same datagram tag {tag:08x}; rename one of them",
                    p.name,
                    p.from,
                    other.name,
                    other.from
                );
            }
        }
        let limits = Limits {
            symbol_bytes: udp.symbol_bytes,
            max_block_symbols: udp.block_symbols,
            max_decoding: udp.max_decoding(),
            deadline_slack: udp.object_deadline,
        };
        Ok(Self {
            pipes: by_tag,
            tcp_pipes,
            links: HashMap::new(),
            objects: HashMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            config,
            udp,
            limits,
            limiter: RateLimiter::new(Duration::from_secs(60)),
            dropped: Dropped::default(),
            orphans: VecDeque::new(),
            blocks: BlockPool::new(limits.max_decoding),
        })
    }

    fn warn_limited(&self, key: &str) -> Option<u64> {
        self.limiter.check(key, Instant::now())
    }

    /// Handles one datagram from `src`.
    pub fn on_datagram(&mut self, src: SocketAddr, buf: &mut [u8], now: Instant) {
        if !self.config.allows(src.ip()) {
            self.dropped.refused_address += 1;
            if let Some(suppressed) = self.warn_limited(&format!("refused {}", src.ip())) {
                tracing::error!(%src, suppressed, "dropped datagrams from an address not in `allow`; add its network to the receiver's allow list if it is the diode's output");
            }
            return;
        }
        let (h, len) = match datagram::decode(buf) {
            Ok(x) => x,
            Err(e) => {
                self.dropped.corrupt += 1;
                let key =
                    ratelimit::key(src.ip(), &format!("corrupt {}", ratelimit::cause_kind(&e)));
                if let Some(suppressed) = self.warn_limited(&key) {
                    tracing::warn!(%src, error = %e, suppressed, "dropped a datagram that failed its checks (forward error correction makes up for it)");
                }
                return;
            }
        };
        let Some(pipe) = self.pipes.get(&h.pipe_tag).cloned() else {
            self.dropped.unknown_pipe += 1;
            if let Some(pipe) = self.tcp_pipes.get(&h.pipe_tag).cloned() {
                return self.wrong_link(src, &pipe);
            }
            if let Some(suppressed) = self.warn_limited(&ratelimit::key(src.ip(), "unknown pipe")) {
                tracing::warn!(%src, tag = format!("{:08x}", h.pipe_tag), suppressed, "dropped datagrams for a pipe this receiver does not have; check that the sender's node and pipe names match a [[pipe]] here");
            }
            return;
        };
        let Some(range) = self.open(&pipe, &h, buf, len) else {
            self.dropped.unauthenticated += 1;
            return;
        };
        let payload = &buf[range];
        let link = self.links.entry(h.pipe_tag).or_default();
        let silence = link
            .silence
            .get_or_insert_with(|| Alarm::new(self.udp.silence_alarm));
        if let Some(ev) = silence.ok(now, true) {
            alarm::log_cleared(
                "link_silence",
                &pipe.name,
                &pipe.from,
                &ev,
                "the sender is heard again",
            );
        }
        if h.session != link.session {
            if h.session < link.session {
                return;
            }
            *link = LinkState {
                silence: link.silence.take(),
                keys: std::mem::take(&mut link.keys),
                session: h.session,
                listed: Some(pipe.activity.peer_connected(src)),
                ..LinkState::default()
            };
            // A new sender session is the diode's "sender connected".
            pipe.heard();
        }
        link.received += 1;
        match h.kind {
            Kind::Heartbeat => self.on_heartbeat(&pipe, &h, payload),
            Kind::Announce => self.on_announce(pipe, &h, payload, now),
            Kind::End => self.on_end(&pipe, &h, payload, now),
            Kind::Symbol => self.on_symbol(&pipe, &h, payload, now),
        }
    }

    /// Drops a datagram for a pipe this receiver serves over TCP.
    fn wrong_link(&mut self, src: SocketAddr, pipe: &Pipe) {
        if let Some(suppressed) = self.warn_limited(&format!("wrong link {}", pipe.name)) {
            let why = format!(
                "dropped datagrams for pipe {} from {}, which is a {} pipe on this receiver (profile {}): it takes TCP connections, not datagrams; give both ends the same profile",
                pipe.name,
                pipe.from,
                crate::config::link_name(pipe.link()),
                pipe.profile.name
            );
            pipe.activity.refused_connections.fetch_add(1, Relaxed);
            pipe.error(why.clone());
            tracing::error!(%src, suppressed, "{why}");
        }
    }

    /// Checks the datagram's authentication against the pipe's keys (opening it in place);
    /// returns where its payload is in `buf`.
    fn open(
        &mut self,
        pipe: &Pipe,
        h: &Header,
        buf: &mut [u8],
        len: usize,
    ) -> Option<std::ops::Range<usize>> {
        let at = datagram::HEADER_LEN;
        if h.flags & FLAG_AUTH == 0 {
            if pipe.require_auth {
                if let Some(suppressed) = self.warn_limited(&format!("unauth {}", pipe.name)) {
                    tracing::error!(pipe = %pipe.name, from = %pipe.from, suppressed, "dropped unauthenticated datagrams on a pipe that requires a key; give the sender's pipe the same key_file");
                }
                return None;
            }
            return Some(at..at + len);
        }
        let link = self.links.entry(h.pipe_tag).or_default();
        if let Some(key) = link.keys.get(&h.session) {
            if let Ok(p) = datagram::open(h, buf, key) {
                return Some(at..at + p.len());
            }
        } else {
            for k in &pipe.keys {
                let id = ConnectionId {
                    node: &pipe.from,
                    pipe: &pipe.name,
                    session: h.session,
                    connection: 0,
                    key_id: k.id,
                };
                let key = FrameKey::derive(&k.key, id, Protection::Encrypt);
                let mut copy = buf.to_vec();
                if let Ok(p) = datagram::open(h, &mut copy, &key) {
                    let n = p.len();
                    buf.copy_from_slice(&copy);
                    if link.keys.len() >= KEYS_PER_PIPE {
                        link.keys.clear();
                    }
                    link.keys.insert(h.session, key);
                    return Some(at..at + n);
                }
            }
        }
        if let Some(suppressed) = self.warn_limited(&format!("bad tag {}", pipe.name)) {
            tracing::error!(pipe = %pipe.name, from = %pipe.from, session = h.session, suppressed, "dropped datagrams whose authentication failed: the sender uses another key (check both key files) or they are forged; nothing of them is written");
        }
        None
    }

    fn on_heartbeat(&mut self, pipe: &Pipe, h: &Header, payload: &[u8]) {
        let Ok(hb) = decode_body::<Heartbeat>("heartbeat", payload) else {
            return;
        };
        if hb.profile != pipe.profile.name {
            if let Some(suppressed) = self.warn_limited(&format!("profile {}", pipe.name)) {
                pipe.warn(format!(
                    "the sender uses profile {}, this pipe {}",
                    hb.profile, pipe.profile.name
                ));
                tracing::warn!(pipe = %pipe.name, from = %pipe.from, theirs = %hb.profile, ours = %pipe.profile.name, suppressed, "the sender uses another profile; use the same profile on both ends");
            }
        }
        let link = self.links.entry(h.pipe_tag).or_default();
        if link.sent == 0 {
            tracing::info!(pipe = %pipe.name, from = %pipe.from, session = h.session, "sender session heard");
        }
        link.sent = hb.datagrams;
    }

    fn on_announce(&mut self, pipe: Arc<Pipe>, h: &Header, payload: &[u8], now: Instant) {
        let key = (h.pipe_tag, h.object);
        if self.finished.contains(&key) {
            return;
        }
        if let Some((_, asm, _)) = self.objects.get_mut(&key) {
            let failure = asm.on_pass(h.pass, now);
            asm.on_announce_again(h.pass, now);
            self.report(key, failure);
            return;
        }
        if self.objects.len() >= MAX_OBJECTS {
            if let Some(suppressed) = self.warn_limited("too many objects") {
                tracing::warn!(pipe = %pipe.name, max = MAX_OBJECTS, suppressed, "too many objects in progress; an announcement is ignored until some finish (a later copy or pass brings it again)");
            }
            return;
        }
        let (announce, origin) = match decode_announce(payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(pipe = %pipe.name, error = %e, "dropped a malformed announcement");
                return;
            }
        };
        let open = OpenFile {
            path: announce.path.clone(),
            size: announce.size,
            mtime_ns: announce.mtime_ns,
        };
        let asm = match Assembly::new(announce, h.pass, self.limits, now) {
            Ok(a) => a,
            Err(reason) => {
                if let Some(suppressed) = self.warn_limited(&format!("refused {}", h.object)) {
                    tracing::error!(pipe = %pipe.name, path = %open.path, size = open.size, suppressed, "object refused: {reason}");
                }
                return;
            }
        };
        let chain = match pipe.admit(h.object, &open.path, &origin, &self.config.node) {
            Admission::Land(chain) => chain,
            Admission::Looped => {
                if let Some(suppressed) = self.warn_limited(&format!("looped {}", h.object)) {
                    tracing::error!(pipe = %pipe.name, path = %open.path, %origin, suppressed, "not landed: the object came from this node before (its origin chain names it), so it would go round; without a back channel its sender settles it anyway (after_send = move keeps it in its sent_dir). Set forward_received = false on the sending pipe");
                }
                self.finish(key);
                return;
            }
        };
        match pipe.with_sink(|s| s.open_with_origin(h.object, &open, &chain, &Default::default())) {
            Ok(Applied::Done) => {
                tracing::debug!(pipe = %pipe.name, path = %open.path, object = format!("{:016x}", h.object), "object announced");
                self.objects.insert(key, (pipe.clone(), asm, now));
                self.replay_orphans(&pipe, key, now);
            }
            Ok(Applied::AlreadyCommitted) => {
                tracing::debug!(pipe = %pipe.name, path = %open.path, "object already delivered; its repeat is ignored");
                self.finish(key);
            }
            Err(e) => {
                tracing::error!(pipe = %pipe.name, path = %open.path, size = open.size, error = %e, "object refused; nothing of it is written");
                self.finish(key);
            }
        }
    }

    /// Keeps a datagram of an object not announced (yet), within bounds.
    fn hold_orphan(&mut self, h: &Header, payload: &[u8], now: Instant) {
        let key = (h.pipe_tag, h.object);
        if self.finished.contains(&key) {
            return;
        }
        while self
            .orphans
            .front()
            .is_some_and(|(_, _, t)| now.duration_since(*t) > ORPHAN_AGE)
            || self.orphans.len() >= MAX_ORPHANS
        {
            self.orphans.pop_front();
            self.dropped.orphans += 1;
        }
        self.orphans.push_back((*h, payload.to_vec(), now));
    }

    /// Feeds the held datagrams of a just-announced object.
    fn replay_orphans(&mut self, pipe: &Pipe, key: ObjectKey, now: Instant) {
        if self.orphans.is_empty() {
            return;
        }
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|(h, _, _)| (h.pipe_tag, h.object) == key);
        self.orphans = rest;
        for (h, payload, _) in mine {
            match h.kind {
                Kind::Symbol => self.on_symbol(pipe, &h, &payload, now),
                Kind::End => self.on_end(pipe, &h, &payload, now),
                Kind::Announce | Kind::Heartbeat => {}
            }
        }
    }

    fn on_end(&mut self, pipe: &Pipe, h: &Header, payload: &[u8], now: Instant) {
        let key = (h.pipe_tag, h.object);
        let Some((_, asm, _)) = self.objects.get_mut(&key) else {
            self.hold_orphan(h, payload, now);
            return;
        };
        match decode_body::<End>("end", payload) {
            Ok(end) => asm.on_end(end),
            Err(e) => {
                tracing::warn!(pipe = %pipe.name, error = %e, "dropped a malformed end message");
                return;
            }
        }
        let failure = asm.on_pass(h.pass, now);
        self.report(key, failure);
        // The End settles blocks that were waiting for spare symbols.
        self.write_and_land(pipe, key);
    }

    fn on_symbol(&mut self, pipe: &Pipe, h: &Header, payload: &[u8], now: Instant) {
        let key = (h.pipe_tag, h.object);
        let Some((_, asm, _)) = self.objects.get_mut(&key) else {
            self.hold_orphan(h, payload, now);
            return;
        };
        let failure = asm.on_pass(h.pass, now);
        let decoded = asm.on_symbol(h.block, h.symbol, payload, &mut self.blocks);
        // Blocks decode on a symbol, or settle when a new pass begins.
        let ready = asm.has_ready();
        self.report(key, failure);
        if let Err(reason) = decoded {
            if let Some(suppressed) = self.warn_limited(&format!("bad symbol {}", pipe.name)) {
                tracing::warn!(pipe = %pipe.name, reason, suppressed, "dropped a symbol that does not fit its object");
            }
        }
        if ready {
            self.write_and_land(pipe, key);
        }
    }

    /// Writes the object's ready blocks, then lands it if that completed it.
    fn write_and_land(&mut self, pipe: &Pipe, key: ObjectKey) {
        if self.write_ready(pipe, key) {
            self.land_if_complete(key);
        }
    }

    /// Writes the object's decoded blocks that are ready, in order; false if a write failed
    /// (the object is then abandoned).
    fn write_ready(&mut self, pipe: &Pipe, key: ObjectKey) -> bool {
        let Some((_, asm, _)) = self.objects.get_mut(&key) else {
            return false;
        };
        while let Some((offset, block)) = asm.next_ready() {
            let written = pipe.with_sink(|s| s.write(key.1, offset, block.bytes()));
            self.blocks.give(block);
            if let Err(e) = written {
                self.abandon(key, &format!("cannot write it: {e}"));
                return false;
            }
        }
        true
    }

    fn land_if_complete(&mut self, key: ObjectKey) {
        let Some((pipe, asm, started)) = self.objects.get(&key) else {
            return;
        };
        let Some(end) = asm.end().filter(|_| asm.complete() && !asm.has_ready()) else {
            return;
        };
        let (pipe, started) = (pipe.clone(), *started);
        let (path, size, pass) = (asm.announce.path.clone(), asm.announce.size, asm.pass());
        let commit = Commit {
            size,
            digest: end.digest,
        };
        let result = pipe.with_sink(|s| {
            let r = s.commit(key.1, &commit).map(|a| (a, s.flush()));
            if !matches!(r, Ok((_, Flushed { result: Ok(()), .. }))) {
                s.abandon();
            }
            r
        });
        self.objects.remove(&key);
        self.finish(key);
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        let result = result.and_then(|(applied, flushed)| {
            // Whatever became visible is delivered, even if a later rename failed.
            for d in &flushed.delivered {
                pipe.count_landed(d);
                pipe.add_bytes(d.size);
                tracing::info!(pipe = %pipe.name, from = %pipe.from, path = %d.path, size = d.size, digest = %d.digest_hex, pass, duration_ms = started.elapsed().as_millis() as u64, mb_per_s = format!("{:.1}", size as f64 / secs / 1e6), "delivered");
            }
            flushed.result.map(|()| applied)
        });
        if let Err(e) = result {
            pipe.error(format!("{path}: {e}"));
            if pipe.with_sink(|s| s.is_unlanded(key.1)) {
                tracing::error!(pipe = %pipe.name, from = %pipe.from, %path, size, error = %e, "object received whole but not renamed into place; it stays staged and landing is retried at every summary_interval");
            } else {
                tracing::error!(pipe = %pipe.name, from = %pipe.from, %path, size, error = %e, "object not landed; nothing of it is visible; resend it from the sender");
            }
        }
    }

    fn report(&mut self, key: ObjectKey, failure: Option<PassFailure>) {
        let Some(f) = failure else { return };
        let Some((pipe, asm, _)) = self.objects.get(&key) else {
            return;
        };
        let (path, size) = (&asm.announce.path, asm.announce.size);
        let loss = format!("{:.1}", f.loss_percent());
        if f.last {
            pipe.error(format!(
                "{path}: abandoned, not decodable after its last pass ({loss}% loss)"
            ));
            tracing::error!(pipe = %pipe.name, from = %pipe.from, %path, size, loss_percent = %loss, received = f.received, sent = f.sent, missing_blocks = f.missing_blocks, blocks = f.blocks, pass = f.pass, passes = f.passes, end_seen = !f.no_end, "object abandoned: not decodable after its last pass; nothing of it is visible; resend it (gapsync-sender resend) and raise repair_percent or passes if the link loses this much");
            let reason = String::new();
            self.abandon(key, &reason);
        } else {
            tracing::error!(pipe = %pipe.name, from = %pipe.from, %path, size, loss_percent = %loss, received = f.received, sent = f.sent, missing_blocks = f.missing_blocks, blocks = f.blocks, pass = f.pass, passes = f.passes, end_seen = !f.no_end, "pass not decodable (loss beyond the repair ratio); kept hidden, the next pass may complete it");
        }
    }

    /// Drops an object's partial data; `reason` (if any) is logged at ERROR.
    fn abandon(&mut self, key: ObjectKey, reason: &str) {
        if let Some((pipe, asm, _)) = self.objects.remove(&key) {
            if !reason.is_empty() {
                pipe.error(format!("{}: abandoned: {reason}", asm.announce.path));
                tracing::error!(pipe = %pipe.name, path = %asm.announce.path, size = asm.announce.size, reason, "object abandoned; nothing of it is visible; resend it from the sender");
            }
            pipe.with_sink(|s| s.drop_partial(key.1));
        }
    }

    fn finish(&mut self, key: ObjectKey) {
        if self.finished.insert(key) {
            self.finished_order.push_back(key);
            if self.finished_order.len() > FINISHED_MEMORY {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
    }

    /// Deadlines and the silence alarm; call a few times a second.
    pub fn on_tick(&mut self, now: Instant) {
        if self.objects.is_empty() {
            self.blocks.release();
        }
        let keys: Vec<ObjectKey> = self.objects.keys().copied().collect();
        for key in keys {
            let Some((pipe, asm, _)) = self.objects.get_mut(&key) else {
                continue;
            };
            // A deadline settles blocks that were waiting for spare symbols.
            let failure = asm.on_tick(now);
            let ready = asm.has_ready().then(|| pipe.clone());
            self.report(key, failure);
            if let Some(pipe) = ready {
                self.write_and_land(&pipe, key);
            }
        }
        for (tag, link) in &mut self.links {
            let (Some(silence), Some(pipe)) = (&mut link.silence, self.pipes.get(tag)) else {
                continue;
            };
            if let Some(ev @ AlarmEvent::Raised { .. }) = silence.poll(now, true) {
                let what = format!(
                    "no datagram from the sender (heartbeats included) for the profile's silence_alarm ({}): the sender, the diode or the network is down",
                    alarm::seconds(self.udp.silence_alarm)
                );
                alarm::log_raised("link_silence", &pipe.name, &pipe.from, &ev, &what);
                pipe.error(what);
                link.listed = None;
            }
        }
    }

    /// Logs the link's loss since the last summary, per pipe.
    pub fn log_summary(&mut self) {
        for (tag, link) in &mut self.links {
            let Some(pipe) = self.pipes.get(tag) else {
                continue;
            };
            let sent = link.sent.saturating_sub(link.logged_sent);
            let received = link.received.saturating_sub(link.logged_received);
            let loss = if sent == 0 {
                0.0
            } else {
                100.0 * sent.saturating_sub(received) as f64 / sent as f64
            };
            tracing::info!(pipe = %pipe.name, from = %pipe.from, session = link.session, sent, received, loss_percent = format!("{loss:.2}"), objects_in_progress = self.objects.len(), corrupt = self.dropped.corrupt, unauthenticated = self.dropped.unauthenticated, unknown_pipe = self.dropped.unknown_pipe, refused_address = self.dropped.refused_address, orphans = self.dropped.orphans, "link summary (datagrams since the last summary, as counted by the sender's heartbeats)");
            link.logged_sent = link.sent;
            link.logged_received = link.received;
        }
    }
}
