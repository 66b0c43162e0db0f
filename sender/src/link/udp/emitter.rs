//! The sending half of the diode link: one UDP socket, datagrams batched (UDP GSO where the
//! kernel has it; without a key, symbols go out from where they lie, each behind its header in
//! one vectored send), paced by a token bucket, control messages repeated and spread out, and
//! heartbeats with the sender's counters. Blocking: it runs on the pipe's own thread.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gapsync_protocol::crypto::FrameKey;
use gapsync_protocol::udp::datagram::{self, Header, Kind};
use gapsync_protocol::udp::{Heartbeat, UdpProfile};
use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};

use crate::process::rate_limit::RateLimiter;

/// Most datagrams in one send call (and one burst of the pacer).
const MAX_BATCH: usize = 16;
/// Most bytes one UDP GSO send may carry: the IPv4 length field's 65,535 less the IPv4 and
/// UDP headers. A larger send is refused by the kernel as a whole, and quinn-udp drops such a
/// send without an error, so with 9000-byte datagrams 16 per send would lose every batch.
const MAX_GSO_BYTES: usize = 65_535 - 28;
/// The pacer sleeps only when this far ahead of the rate.
const SLEEP_MIN: Duration = Duration::from_micros(1000);
/// Most credit the pacer keeps for time spent not sending.
const MAX_CREDIT: Duration = Duration::from_millis(4);
/// Shortest gap between two copies of a control message: longer than any burst of loss the
/// profiles are built for, so one burst cannot take every copy.
const MIN_CONTROL_SPACING: Duration = Duration::from_millis(2);
/// Datagrams' worth of time between two copies of a control message at the paced rate.
const CONTROL_SPACING_DATAGRAMS: u64 = 200;

/// One symbol to send: where it belongs, and its bytes where they lie (in the block read from
/// the file, or among the encoder's repair symbols).
#[derive(Debug, Clone, Copy)]
pub struct SymbolOut<'a> {
    pub object: u64,
    pub block: u32,
    pub esi: u32,
    pub pass: u8,
    pub bytes: &'a [u8],
}

/// A control message still to be sent `left` more times.
struct Repeat {
    header: Header,
    body: Vec<u8>,
    left: u8,
    due: Instant,
}

/// Counters for heartbeats and the sender's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub datagrams: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// Who the datagrams are from, for every header.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: String,
    pub pipe: String,
    pub profile: String,
    pub session: u64,
}

/// The pipe's socket and everything about sending on it.
pub struct Emitter {
    socket: UdpSocket,
    state: UdpSocketState,
    dest: SocketAddr,
    key: Option<FrameKey>,
    id: Identity,
    pipe_tag: u32,
    profile: UdpProfile,
    sequence: u64,
    batch: Vec<u8>,
    batch_len: usize,
    segment: usize,
    max_batch: usize,
    /// Symbol batches go out as header and symbol slices in one GSO send, without copying
    /// the symbols into `batch` (no key, and the kernel took it so far).
    vectored: bool,
    /// The headers of a vectored batch.
    heads: Vec<[u8; datagram::HEADER_LEN]>,
    dest_addr: nix::sys::socket::SockaddrStorage,
    /// When the pacer allows the next byte out.
    due: Instant,
    repeats: Vec<Repeat>,
    spacing: Duration,
    next_heartbeat: Instant,
    heartbeat_interval: Duration,
    /// The pipe's `rate_limit` processor: every datagram batch pays it as well.
    limiter: Option<Arc<RateLimiter>>,
    pub counters: Counters,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("dest", &self.dest)
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Emitter {
    /// Opens the socket towards `dest` (the diode's input proxy, or the receiver).
    pub fn open(
        dest: SocketAddr,
        profile: UdpProfile,
        socket_buffer: Option<u32>,
        heartbeat_interval: Duration,
        key: Option<FrameKey>,
        id: Identity,
    ) -> io::Result<Self> {
        let bind: SocketAddr = if dest.is_ipv4() {
            "0.0.0.0:0".parse().map_err(io::Error::other)?
        } else {
            "[::]:0".parse().map_err(io::Error::other)?
        };
        let socket = UdpSocket::bind(bind)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        if let Some(want) = socket_buffer {
            let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), want as usize);
            let got = state.send_buffer_size(UdpSockRef::from(&socket))?;
            if got < want as usize {
                tracing::warn!(pipe = %id.pipe, wanted = want, got, "the kernel capped the UDP send buffer; raise it with `sysctl -w net.core.wmem_max={want}` (and in /etc/sysctl.d/ to keep it)");
            }
        }
        let segment = datagram::datagram_len(usize::from(profile.symbol_bytes), key.is_some());
        let spacing = Duration::from_secs_f64(
            (CONTROL_SPACING_DATAGRAMS * segment as u64) as f64 / profile.rate_bytes_per_s() as f64,
        )
        .max(MIN_CONTROL_SPACING);
        let max_batch = state
            .max_gso_segments()
            .clamp(1, MAX_BATCH)
            .min(MAX_GSO_BYTES / segment)
            .max(1);
        let vectored = key.is_none() && max_batch > 1;
        let now = Instant::now();
        Ok(Self {
            socket,
            state,
            dest,
            pipe_tag: datagram::pipe_tag(&id.node, &id.pipe),
            key,
            id,
            profile,
            sequence: 0,
            batch: Vec::with_capacity(segment * max_batch),
            batch_len: 0,
            segment,
            max_batch,
            vectored,
            heads: Vec::with_capacity(max_batch),
            dest_addr: nix::sys::socket::SockaddrStorage::from(dest),
            due: now,
            repeats: Vec::new(),
            spacing,
            next_heartbeat: now,
            heartbeat_interval,
            limiter: None,
            counters: Counters::default(),
        })
    }

    /// Makes every datagram (batch) also wait for the pipe's `rate_limit` bucket.
    pub fn with_limiter(mut self, limiter: Option<Arc<RateLimiter>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Bytes of one symbol datagram.
    pub fn datagram_bytes(&self) -> usize {
        self.segment
    }

    /// The profile this emitter paces by.
    pub fn profile(&self) -> &UdpProfile {
        &self.profile
    }

    fn header(&mut self, kind: Kind, object: u64, block: u32, symbol: u32, pass: u8) -> Header {
        self.sequence += 1;
        Header {
            kind,
            flags: 0,
            pipe_tag: self.pipe_tag,
            session: self.id.session,
            sequence: self.sequence,
            object,
            block,
            symbol,
            pass,
        }
    }

    /// Queues one symbol datagram, copied behind its header; sends the batch when it is full.
    fn symbol(
        &mut self,
        object: u64,
        block: u32,
        esi: u32,
        pass: u8,
        symbol: &[u8],
    ) -> io::Result<()> {
        let h = self.header(Kind::Symbol, object, block, esi, pass);
        datagram::encode(&h, symbol, self.key.as_ref(), &mut self.batch);
        self.batch_len += 1;
        if self.batch_len >= self.max_batch {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends `symbols`, in order: as header and symbol slices in GSO sends of up to a batch
    /// each where possible, else copied into datagrams one by one.
    pub fn symbols(&mut self, symbols: &[SymbolOut<'_>]) -> io::Result<()> {
        let payload = self.segment - datagram::HEADER_LEN;
        let mut rest = symbols;
        while !rest.is_empty() {
            let n = rest.len().min(self.max_batch);
            let (group, tail) = rest.split_at(n);
            rest = tail;
            // GSO cuts the send into datagrams of one size: every symbol must be full-size.
            if self.vectored && group.iter().all(|s| s.bytes.len() == payload) {
                self.flush_batch_only()?;
                if self.send_vectored(group)? {
                    self.due_controls(Instant::now())?;
                    continue;
                }
            }
            for s in group {
                self.symbol(s.object, s.block, s.esi, s.pass, s.bytes)?;
            }
        }
        Ok(())
    }

    /// One GSO send of `group` straight from the symbols' memory; false (and vectored sends
    /// off from now on, with a WARN) when the kernel refuses the form, so the caller copies.
    fn send_vectored(&mut self, group: &[SymbolOut<'_>]) -> io::Result<bool> {
        use nix::errno::Errno;
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        self.pace(self.segment * group.len());
        self.heads.clear();
        for s in group {
            let h = self.header(Kind::Symbol, s.object, s.block, s.esi, s.pass);
            self.heads.push(datagram::unsealed_header(&h, s.bytes));
        }
        let mut iov = Vec::with_capacity(group.len() * 2);
        for (head, s) in self.heads.iter().zip(group) {
            iov.push(IoSlice::new(head));
            iov.push(IoSlice::new(s.bytes));
        }
        let gso = self.segment as u16;
        let cmsg = [ControlMessage::UdpGsoSegments(&gso)];
        let cmsgs: &[ControlMessage<'_>] = if group.len() > 1 { &cmsg } else { &[] };
        loop {
            match sendmsg(
                self.socket.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::empty(),
                Some(&self.dest_addr),
            ) {
                Ok(_) | Err(Errno::ECONNREFUSED) => break,
                Err(Errno::EINTR) => continue,
                // The device or the kernel cannot segment this send (no checksum offload,
                // no UDP_SEGMENT): send this batch and every later one by copying.
                Err(e @ (Errno::EIO | Errno::EINVAL | Errno::EOPNOTSUPP)) => {
                    tracing::warn!(pipe = %self.id.pipe, error = %e, "the kernel refused a vectored UDP GSO send; sending by copy from now on");
                    self.vectored = false;
                    // The copies take these sequence numbers again: no gap the receiver
                    // would count as loss.
                    self.sequence -= group.len() as u64;
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.counters.datagrams += group.len() as u64;
        Ok(true)
    }

    /// Sends the datagrams batched so far, after waiting for the pacer; then any control copy
    /// or heartbeat that is due.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_batch_only()?;
        self.due_controls(Instant::now())
    }

    fn send(&mut self, segment_size: Option<usize>) -> io::Result<()> {
        let transmit = Transmit {
            destination: self.dest,
            ecn: None,
            contents: &self.batch,
            segment_size,
            src_ip: None,
        };
        loop {
            match self.state.send(UdpSockRef::from(&self.socket), &transmit) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Nobody listening yet (loopback reports it): a diode never does; drop and go on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until `bytes` may go out at the paced rate. The pacer keeps the time the next
    /// byte is due (microsecond resolution); it sleeps only when more than [`SLEEP_MIN`] ahead,
    /// because a sleep costs a scheduler round trip, and credit for idle time is capped at
    /// [`MAX_CREDIT`] so a pause is not followed by a line-rate burst.
    fn pace(&mut self, bytes: usize) {
        let now = Instant::now();
        let floor = now.checked_sub(MAX_CREDIT).unwrap_or(now);
        if self.due < floor {
            self.due = floor;
        }
        self.due += Duration::from_secs_f64(bytes as f64 / self.profile.rate_bytes_per_s() as f64);
        let ahead = self.due.saturating_duration_since(now);
        if ahead > SLEEP_MIN {
            std::thread::sleep(ahead);
        }
        if let Some(limiter) = &self.limiter {
            limiter.take_blocking(bytes as u64);
        }
    }

    /// Sends one small datagram on its own (paced like the rest).
    fn single(&mut self, header: &Header, body: &[u8]) -> io::Result<()> {
        self.flush_batch_only()?;
        datagram::encode(header, body, self.key.as_ref(), &mut self.batch);
        self.pace(self.batch.len());
        self.send(None)?;
        self.counters.datagrams += 1;
        self.batch.clear();
        Ok(())
    }

    fn flush_batch_only(&mut self) -> io::Result<()> {
        if self.batch_len == 0 {
            return Ok(());
        }
        let bytes = self.batch.len();
        self.pace(bytes);
        let segment_size = (self.batch_len > 1).then_some(self.segment);
        self.send(segment_size)?;
        self.counters.datagrams += self.batch_len as u64;
        self.batch.clear();
        self.batch_len = 0;
        Ok(())
    }

    /// Sends a control message now and queues its other copies, spread over time.
    pub fn control(&mut self, kind: Kind, object: u64, pass: u8, body: Vec<u8>) -> io::Result<()> {
        let h = self.header(kind, object, 0, 0, pass);
        self.single(&h, &body)?;
        let left = self.profile.control_repeats.saturating_sub(1);
        if left > 0 {
            self.repeats.push(Repeat {
                header: h,
                body,
                left,
                due: Instant::now() + self.spacing,
            });
        }
        Ok(())
    }

    /// Sends the control copies and the heartbeat that are due at `now`.
    pub fn due_controls(&mut self, now: Instant) -> io::Result<()> {
        let mut i = 0;
        while i < self.repeats.len() {
            if self.repeats[i].due > now {
                i += 1;
                continue;
            }
            let r = &self.repeats[i];
            let (kind, object, pass, body) = (
                r.header.kind,
                r.header.object,
                r.header.pass,
                r.body.clone(),
            );
            let h = self.header(kind, object, 0, 0, pass);
            self.single(&h, &body)?;
            let r = &mut self.repeats[i];
            r.left -= 1;
            r.due = now + self.spacing;
            if r.left == 0 {
                self.repeats.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if now >= self.next_heartbeat {
            self.heartbeat(now)?;
        }
        Ok(())
    }

    fn heartbeat(&mut self, now: Instant) -> io::Result<()> {
        let interval = self.heartbeat_interval;
        self.next_heartbeat = now + interval;
        let h = self.header(Kind::Heartbeat, 0, 0, 0, 0);
        let body = gapsync_protocol::encode_body(&Heartbeat {
            node: self.id.node.clone(),
            pipe: self.id.pipe.clone(),
            profile: self.id.profile.clone(),
            objects: self.counters.objects,
            datagrams: self.counters.datagrams + 1,
            interval_ms: interval.as_millis() as u64,
        });
        self.single(&h, &body)
    }

    /// When something is next due (a control copy or the heartbeat).
    pub fn next_due(&self) -> Instant {
        self.repeats
            .iter()
            .map(|r| r.due)
            .min()
            .map_or(self.next_heartbeat, |d| d.min(self.next_heartbeat))
    }
}
