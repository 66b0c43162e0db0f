//! The sender's side of one connection: sequence numbers, the window of unacknowledged frames,
//! matching each reply byte to its frame, ack timeouts and idle heartbeats.
//!
//! Fed reply bytes and the current time; returns encoded frames to write and events. Any
//! failure (FAIL byte, unexpected byte, timeout) closes the session: the driver drops the
//! connection, backs off and resumes on a new one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::compress::{BatchCompressor, Compression};
use crate::crypto::{FrameKey, TAG_LEN};
use crate::envelope::Envelope;
use crate::error::ProtocolError;
use crate::frame::{FrameKind, PROTOCOL_VERSION, encode_versioned_frame, raw_versioned_header};
use crate::messages::{Hello, HelloExtension, encode_hello};
use crate::profile::{AckBytes, Profile};

/// What a sent frame was, returned with its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub sequence: u64,
    pub kind: FrameKind,
    pub transfer: u64,
    pub offset: u64,
    pub length: u32,
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver answered OK to the Hello; frames may now be sent.
    HandshakeAccepted,
    /// The receiver verified and applied this frame.
    Acked(FrameInfo),
    /// The receiver refused this frame; the session is closed.
    Failed(FrameInfo),
    /// No answer within the ack timeout; the session is closed.
    TimedOut(FrameInfo),
    /// The reply stream broke the protocol; the session is closed.
    Violation(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Ready,
    Closed,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the window is full or the handshake is not done")]
    NotReady,
    #[error("payload of {0} bytes does not fit in one frame")]
    TooLarge(usize),
}

/// The sender end of one connection.
#[derive(Debug)]
pub struct SenderSession {
    envelope: Envelope,
    ack: AckBytes,
    window: usize,
    max_payload: usize,
    ack_timeout: Duration,
    handshake_timeout: Duration,
    heartbeat: Duration,
    next_seq: u64,
    outstanding: VecDeque<(FrameInfo, Instant)>,
    last_progress: Instant,
    last_sent: Instant,
    state: State,
    out: Vec<u8>,
    events: VecDeque<SenderEvent>,
    key: Option<FrameKey>,
    /// Protocol version of the connection: 1, or 2 once a version-2 feature is asked for.
    version: u8,
    /// The Hello, kept until the handshake so that a builder method can re-encode it.
    hello: Hello,
    ext: HelloExtension,
    compression: Option<Compression>,
    compressor: Option<BatchCompressor>,
    /// Scratch buffer for a compressed batch.
    packed: Vec<u8>,
}

impl SenderSession {
    /// Starts a session: the Hello frame is queued for output at once. With a key, every frame
    /// is sealed with it (see [`crate::crypto`]).
    pub fn new(profile: &Profile, hello: &Hello, now: Instant, key: Option<FrameKey>) -> Self {
        let mut s = Self {
            envelope: profile.envelope,
            ack: profile.ack,
            window: profile.window.get() as usize,
            max_payload: profile.chunk_size() - if key.is_some() { TAG_LEN } else { 0 },
            ack_timeout: profile.ack_timeout,
            handshake_timeout: profile.handshake_timeout,
            heartbeat: profile.heartbeat_interval,
            next_seq: 0,
            outstanding: VecDeque::new(),
            last_progress: now,
            last_sent: now,
            state: State::Handshaking,
            out: Vec::new(),
            events: VecDeque::new(),
            key,
            version: hello
                .protocol_version
                .clamp(PROTOCOL_VERSION, crate::PROTOCOL_VERSION_MAX),
            hello: hello.clone(),
            ext: HelloExtension::default(),
            compression: None,
            compressor: None,
            packed: Vec::new(),
        };
        s.queue_hello(now);
        s
    }

    /// Compresses the Data records of every Batch frame with `compression` (PROTOCOL.md
    /// section 4, compression): the connection becomes version 2 and its Hello offers the
    /// codec; a receiver that does not accept it refuses the handshake. Call it right after
    /// [`SenderSession::new`], before anything is written.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compressor = BatchCompressor::new(compression);
        if self.compressor.is_some() {
            self.compression = Some(compression);
            self.ext.compression = Some(compression.into());
            self.upgrade();
        }
        self
    }

    /// Makes the connection version 2 so that its Open bodies may carry origin chains (see
    /// [`crate::messages::encode_open`]). Call it right after [`SenderSession::new`].
    pub fn with_origin_chains(mut self) -> Self {
        self.upgrade();
        self
    }

    /// The connection's protocol version (1, or 2 with compression or origin chains).
    pub fn protocol_version(&self) -> u8 {
        self.version
    }

    /// The compression this session applies, if any.
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// Switches to version 2 and queues the Hello again in place of the one queued by `new`.
    fn upgrade(&mut self) {
        self.version = crate::PROTOCOL_VERSION_MAX;
        self.hello.protocol_version = self.version;
        if self.state == State::Handshaking && self.next_seq == 1 {
            self.out.clear();
            self.outstanding.clear();
            self.next_seq = 0;
            self.queue_hello(self.last_sent);
        }
    }

    fn queue_hello(&mut self, now: Instant) {
        let body = encode_hello(&self.hello, &self.ext);
        self.push(FrameKind::Hello, 0, 0, &body, now);
    }

    /// True once the handshake is accepted and until the session closes.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// True when the session has failed and the connection must be dropped.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True when another frame may be sent now.
    pub fn can_send(&self) -> bool {
        self.state == State::Ready && self.outstanding.len() < self.window
    }

    /// Frames sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Largest payload one frame may carry.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Queues one frame for output.
    pub fn send(
        &mut self,
        kind: FrameKind,
        transfer: u64,
        offset: u64,
        payload: &[u8],
        now: Instant,
    ) -> Result<FrameInfo, SendError> {
        self.may_send(payload)?;
        Ok(self.frame(kind, transfer, offset, payload, now, false).0)
    }

    fn may_send(&self, payload: &[u8]) -> Result<(), SendError> {
        if !self.can_send() {
            return Err(SendError::NotReady);
        }
        if payload.len() > self.max_payload {
            return Err(SendError::TooLarge(payload.len()));
        }
        Ok(())
    }

    /// Like [`SenderSession::send`], but where the frame is `payload` unchanged behind its
    /// header (the raw envelope without a key) only the header is queued, and `true` says
    /// the caller writes `payload` right after [`SenderSession::pending_output`]: a 1 MiB
    /// payload is then not copied behind its header. `false`: the whole frame is queued.
    pub fn send_split(
        &mut self,
        kind: FrameKind,
        transfer: u64,
        offset: u64,
        payload: &[u8],
        now: Instant,
    ) -> Result<(FrameInfo, bool), SendError> {
        self.may_send(payload)?;
        Ok(self.frame(kind, transfer, offset, payload, now, true))
    }

    /// Queues a frame, its Data records compressed if the session compresses (then never
    /// split: the payload written is not the caller's).
    fn frame(
        &mut self,
        kind: FrameKind,
        transfer: u64,
        offset: u64,
        payload: &[u8],
        now: Instant,
        split_ok: bool,
    ) -> (FrameInfo, bool) {
        let mut packed = std::mem::take(&mut self.packed);
        let compressed = kind == FrameKind::Batch
            && self
                .compressor
                .as_mut()
                .is_some_and(|c| c.compress_batch(payload, &mut packed));
        let split = split_ok && !compressed && self.envelope == Envelope::Raw && self.key.is_none();
        let info = if split {
            let seq = self.take_sequence();
            if let Some(head) =
                raw_versioned_header(self.version, kind, seq, transfer, offset, payload)
            {
                self.out.extend_from_slice(&head);
            }
            self.record(seq, kind, transfer, offset, payload.len(), now)
        } else if compressed {
            let info = self.push(kind, transfer, offset, &packed, now);
            // Acknowledgements count original bytes.
            let length = payload.len() as u32;
            if let Some(last) = self.outstanding.back_mut() {
                last.0.length = length;
            }
            FrameInfo { length, ..info }
        } else {
            self.push(kind, transfer, offset, payload, now)
        };
        self.packed = packed;
        (info, split)
    }

    fn push(
        &mut self,
        kind: FrameKind,
        transfer: u64,
        offset: u64,
        payload: &[u8],
        now: Instant,
    ) -> FrameInfo {
        let seq = self.take_sequence();
        // The payload length was bounded by max_payload (< 64 MiB) or is a small body, so
        // encoding cannot fail.
        let _ = encode_versioned_frame(
            self.version,
            self.envelope,
            self.key.as_ref(),
            kind,
            seq,
            transfer,
            offset,
            payload,
            &mut self.out,
        );
        self.record(seq, kind, transfer, offset, payload.len(), now)
    }

    fn take_sequence(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Records a queued frame as in flight. The info carries the plaintext length (no tag):
    /// acknowledged offsets are computed from it.
    fn record(
        &mut self,
        seq: u64,
        kind: FrameKind,
        transfer: u64,
        offset: u64,
        payload_len: usize,
        now: Instant,
    ) -> FrameInfo {
        let length = payload_len as u32;
        let info = FrameInfo {
            sequence: seq,
            kind,
            transfer,
            offset,
            length,
        };
        if self.outstanding.is_empty() {
            self.last_progress = now;
        }
        self.outstanding.push_back((info, now));
        self.last_sent = now;
        info
    }

    /// Encoded bytes waiting to be written to the connection.
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    /// Marks all pending output as written.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// Feeds reply bytes read from the connection.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) {
        for &b in bytes {
            if self.state == State::Closed {
                return;
            }
            let Some((info, _)) = self.outstanding.pop_front() else {
                self.close(SenderEvent::Violation(ProtocolError::UnsolicitedByte(b)));
                return;
            };
            if b == self.ack.ok {
                self.last_progress = now;
                if info.kind == FrameKind::Hello {
                    self.state = State::Ready;
                    self.events.push_back(SenderEvent::HandshakeAccepted);
                } else {
                    self.events.push_back(SenderEvent::Acked(info));
                }
            } else if b == self.ack.fail {
                self.close(SenderEvent::Failed(info));
            } else {
                self.close(SenderEvent::Violation(ProtocolError::UnexpectedByte(b)));
            }
        }
    }

    fn close(&mut self, event: SenderEvent) {
        self.state = State::Closed;
        self.events.push_back(event);
    }

    /// When `handle_timeout` must next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Handshaking => Some(self.last_progress + self.handshake_timeout),
            State::Ready if self.outstanding.is_empty() => Some(self.last_sent + self.heartbeat),
            State::Ready => Some(self.last_progress + self.ack_timeout),
        }
    }

    /// Fires the ack timeout or queues a heartbeat when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.next_deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.outstanding.front() {
            Some(&(info, _)) => self.close(SenderEvent::TimedOut(info)),
            None => {
                self.push(FrameKind::Heartbeat, 0, 0, &[], now);
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::decoder::Decoder;
    use crate::messages::ProfileSummary;
    use crate::profile::{LinkKind, Profile};
    use std::num::NonZeroU32;

    pub(crate) fn profile(window: u32) -> Profile {
        Profile {
            name: "t".into(),
            description: None,
            link: LinkKind::Tcp,
            envelope: Envelope::Raw,
            max_frame_bytes: 4096,
            window: NonZeroU32::new(window).expect("nonzero"),
            ack: AckBytes {
                ok: 0xFF,
                fail: 0x00,
            },
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            reconnect_backoff_min: Duration::from_secs(1),
            reconnect_backoff_max: Duration::from_secs(4),
            socket_buffer_bytes: None,
            rate_limit_mbit: None,
            udp: None,
        }
    }

    fn hello(p: &Profile) -> Hello {
        Hello {
            protocol_version: 1,
            node: "n".into(),
            pipe: "p".into(),
            session_id: 1,
            connection: 1,
            profile: ProfileSummary { ..p.summary() },
            auth: None,
        }
    }

    fn ready(window: u32, t0: Instant) -> SenderSession {
        let p = profile(window);
        let mut s = SenderSession::new(&p, &hello(&p), t0, None);
        s.clear_output();
        s.on_bytes(&[0xFF], t0);
        assert_eq!(s.poll_event(), Some(SenderEvent::HandshakeAccepted));
        s
    }

    #[test]
    fn window_limits_frames_in_flight_and_acks_match_in_order() {
        let t0 = Instant::now();
        let mut s = ready(3, t0);
        for i in 0..3 {
            s.send(FrameKind::Data, 7, i * 10, b"0123456789", t0)
                .expect("room");
        }
        assert!(!s.can_send());
        let mut d = Decoder::new(Envelope::Raw, 4096);
        d.feed(s.pending_output());
        let seqs: Vec<u64> = std::iter::from_fn(|| d.decode().expect("valid"))
            .map(|f| f.header.sequence)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        s.on_bytes(&[0xFF, 0xFF], t0);
        let offsets: Vec<u64> = std::iter::from_fn(|| s.poll_event())
            .map(|e| match e {
                SenderEvent::Acked(i) => i.offset,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(offsets, [0, 10]);
        assert!(s.can_send());
    }

    #[test]
    fn a_split_frame_is_its_queued_header_then_the_payload_as_a_receiver_decodes_it() {
        let t0 = Instant::now();
        let (mut whole, mut split) = (ready(2, t0), ready(2, t0));
        let payload = b"payload written from where it lies";
        let a = whole
            .send(FrameKind::Data, 7, 40, payload, t0)
            .expect("room");
        let (b, payload_follows) = split
            .send_split(FrameKind::Data, 7, 40, payload, t0)
            .expect("room");
        assert!(
            payload_follows,
            "raw envelope, no key: only the header is queued"
        );
        assert_eq!(a, b);
        assert_eq!(split.pending_output().len(), crate::HEADER_LEN);
        let mut wire = split.pending_output().to_vec();
        wire.extend_from_slice(payload);
        assert_eq!(wire, whole.pending_output());
        let mut d = Decoder::new(Envelope::Raw, 4096);
        d.feed(&wire);
        let f = d.decode().expect("valid").expect("a whole frame");
        assert_eq!(
            (f.header.sequence, f.header.offset, &f.payload[..]),
            (1, 40, &payload[..])
        );
    }

    #[test]
    fn fail_unexpected_and_unsolicited_bytes_close_the_session() {
        let t0 = Instant::now();
        for (bytes, closed_by_fail) in [(&[0x00][..], true), (&[0x41][..], false)] {
            let mut s = ready(2, t0);
            s.send(FrameKind::Heartbeat, 0, 0, &[], t0).expect("room");
            s.on_bytes(bytes, t0);
            assert!(s.is_closed());
            assert_eq!(
                matches!(s.poll_event(), Some(SenderEvent::Failed(_))),
                closed_by_fail
            );
        }
        let mut s = ready(2, t0);
        s.on_bytes(&[0xFF], t0);
        assert_eq!(
            s.poll_event(),
            Some(SenderEvent::Violation(ProtocolError::UnsolicitedByte(0xFF)))
        );
    }

    #[test]
    fn ack_timeout_counts_from_the_last_progress_and_heartbeats_fill_idle_time() {
        let t0 = Instant::now();
        let mut s = ready(2, t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
        s.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(s.in_flight(), 1, "heartbeat sent");
        s.on_bytes(&[0xFF], t0 + Duration::from_secs(11));
        s.send(FrameKind::Data, 1, 0, b"x", t0 + Duration::from_secs(11))
            .expect("room");
        s.handle_timeout(t0 + Duration::from_secs(13));
        assert!(!s.is_closed());
        s.handle_timeout(t0 + Duration::from_secs(14));
        assert!(s.is_closed());
        assert!(
            std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, SenderEvent::TimedOut(_)))
        );
    }
}

#[cfg(test)]
mod properties {
    use super::tests::profile;
    use super::*;
    use crate::messages::Hello;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Send,
        Reply(u8),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Send),
            4 => Just(Op::Reply(0xFF)),
            1 => Just(Op::Reply(0x00)),
            1 => any::<u8>().prop_map(Op::Reply),
            1 => (0u64..5_000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Against a model (a queue of sent sequence numbers): acks match frames in order, the
        /// window is never exceeded, and the first non-OK reply or timeout closes the session
        /// with nothing acknowledged after it.
        #[test]
        fn acks_follow_the_model(window in 1u32..8, ops in proptest::collection::vec(op(), 1..200)) {
            let p = profile(window);
            let t0 = Instant::now();
            let mut now = t0;
            let hello = Hello { protocol_version: 1, node: "n".into(), pipe: "p".into(), session_id: 1, connection: 1, profile: p.summary(), auth: None };
            let mut s = SenderSession::new(&p, &hello, now, None);
            s.on_bytes(&[0xFF], now);
            prop_assert_eq!(s.poll_event(), Some(SenderEvent::HandshakeAccepted));
            // What the session must report for each frame in flight, oldest first.
            let mut model: VecDeque<FrameInfo> = VecDeque::new();
            let mut next = 1u64;
            let mut closed = false;
            for op in ops {
                match op {
                    Op::Send => {
                        let r = s.send(FrameKind::Data, 1, next * 10, b"0123456789", now);
                        if closed || model.len() >= window as usize {
                            prop_assert!(r.is_err());
                        } else {
                            prop_assert_eq!(r.map(|i| i.sequence).ok(), Some(next));
                            model.push_back(FrameInfo { sequence: next, kind: FrameKind::Data, transfer: 1, offset: next * 10, length: 10 });
                            next += 1;
                        }
                    }
                    Op::Reply(b) => {
                        s.on_bytes(&[b], now);
                        if closed { continue; }
                        let ev = s.poll_event();
                        match model.pop_front() {
                            None => {
                                prop_assert!(matches!(ev, Some(SenderEvent::Violation(ProtocolError::UnsolicitedByte(_)))));
                                closed = true;
                            }
                            Some(info) if b == 0xFF => prop_assert_eq!(ev.map(|e| match e { SenderEvent::Acked(i) => i.sequence, _ => 0 }), Some(info.sequence)),
                            Some(info) if b == 0x00 => {
                                // The frame refused may be a Data frame or a heartbeat.
                                prop_assert_eq!(ev, Some(SenderEvent::Failed(info)));
                                closed = true;
                            }
                            Some(_) => {
                                prop_assert!(matches!(ev, Some(SenderEvent::Violation(ProtocolError::UnexpectedByte(_)))));
                                closed = true;
                            }
                        }
                    }
                    Op::Wait(ms) => {
                        now += Duration::from_millis(ms);
                        let before = s.in_flight();
                        s.handle_timeout(now);
                        if let Some(SenderEvent::TimedOut(_)) = s.poll_event() {
                            prop_assert!(before > 0);
                            closed = true;
                        } else if !closed && s.in_flight() > before {
                            // A heartbeat was queued into an idle window: track it in the model.
                            prop_assert_eq!(before, 0);
                            model.push_back(FrameInfo { sequence: next, kind: FrameKind::Heartbeat, transfer: 0, offset: 0, length: 0 });
                            next += 1;
                        }
                    }
                }
                prop_assert_eq!(s.is_closed(), closed);
                prop_assert!(s.in_flight() <= window as usize);
                if !closed { prop_assert_eq!(s.in_flight(), model.len()); }
            }
        }
    }
}
