//! The receiver's side of one connection: frame order, the handshake, and exactly one reply
//! byte per frame.
//!
//! The session hands out one request at a time; the driver applies it and answers with
//! [`ReceiverSession::answer`] before the next request is released. The session never produces
//! a byte that was not asked for: a rejected Hello is closed without a reply, and after a FAIL
//! the session is closed.

use bytes::Bytes;

use crate::batch::parse_records;
use crate::compress::{Codec, Compression, Decompressor};
use crate::crypto::{AAD_LEN, FLAG_AUTH, FrameKey, TAG_LEN};
use crate::decoder::{Decoder, Frame};
use crate::error::{DecodeError, ProtocolError};
use crate::frame::{FrameKind, HEADER_LEN, PROTOCOL_VERSION};
use crate::messages::{
    Commit, Hello, HelloExtension, OpenFile, decode_body, decode_hello, decode_open,
};
use crate::origin::OriginChain;
use crate::profile::{AckBytes, Profile};

/// Largest frame accepted before the handshake: a Hello (header, body, tag).
pub const MAX_HELLO_FRAME: u32 =
    (crate::frame::HEADER_LEN + crate::messages::MAX_BODY + TAG_LEN) as u32;

/// One frame, decoded, for the driver to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Open {
        transfer: u64,
        open: OpenFile,
        /// The hops the object crossed before this connection, oldest first (empty for an
        /// object that originated at the sender). The receiver records it with
        /// `origin.with_hop(Hop::new(&hello.node, &hello.pipe))`.
        origin: OriginChain,
        /// The file's permission bits and, for a link, its target (empty: a plain file).
        attrs: crate::attrs::ObjectAttrs,
    },
    Data {
        transfer: u64,
        offset: u64,
        payload: Bytes,
    },
    Commit {
        transfer: u64,
        commit: Commit,
    },
    Heartbeat,
    /// The records of a Batch frame, in order: only Open, Data and Commit. The driver applies
    /// them in order and answers once for all.
    Batch(Vec<Request>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    HelloPending,
    Ready,
    Closed,
}

/// The receiver end of one connection.
#[derive(Debug)]
pub struct ReceiverSession {
    decoder: Decoder,
    ack: AckBytes,
    expected_seq: u64,
    state: State,
    unanswered: bool,
    out: Vec<u8>,
    max_frame: u32,
    key: Option<FrameKey>,
    /// The Hello as received, until it is accepted or refused (its tag is checked then).
    hello: Option<Frame>,
    /// The connection's protocol version, from its Hello.
    version: u8,
    accept_compression: bool,
    compression: Option<Compression>,
    decompressor: Option<Decompressor>,
}

impl ReceiverSession {
    /// A session using the receiver's own profile for limits and reply bytes.
    pub fn new(profile: &Profile) -> Self {
        Self {
            // Until the handshake is accepted only a Hello-sized frame is buffered, so an
            // unauthenticated peer cannot make the receiver hold a whole data frame.
            decoder: Decoder::new(
                profile.envelope,
                profile.max_frame_bytes.min(MAX_HELLO_FRAME),
            ),
            max_frame: profile.max_frame_bytes,
            ack: profile.ack,
            expected_seq: 0,
            state: State::AwaitHello,
            unanswered: false,
            out: Vec::new(),
            key: None,
            hello: None,
            version: PROTOCOL_VERSION,
            accept_compression: true,
            compression: None,
            decompressor: None,
        }
    }

    /// Whether a Hello that offers compression is accepted (the default) or refused with
    /// [`ProtocolError::CompressionRefused`] (closed without a byte, like any refused Hello).
    pub fn with_compression(mut self, accept: bool) -> Self {
        self.accept_compression = accept;
        self
    }

    /// The compression the sender applies on this connection, once its Hello was read.
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// The connection's protocol version, once its Hello was read.
    pub fn protocol_version(&self) -> u8 {
        self.version
    }

    /// The decoder, to read socket bytes into its buffer.
    pub fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    /// True once the connection must be closed (after a FAIL, a rejection or corrupt input).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True once the handshake was accepted.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    /// The next request, `Ok(None)` if more bytes are needed.
    ///
    /// On `Err` the session is closed; if the handshake had been accepted, one FAIL byte for
    /// the broken frame is queued first.
    pub fn next_request(&mut self) -> Result<Option<Request>, ProtocolError> {
        if self.state == State::Closed {
            return Ok(None);
        }
        if self.unanswered {
            return Err(ProtocolError::Unanswered);
        }
        match self
            .decoder
            .decode()
            .map_err(ProtocolError::from)
            .and_then(|f| match f {
                Some(frame) => self.interpret(frame).map(Some),
                None => Ok(None),
            }) {
            Ok(Some(req)) => {
                self.unanswered = true;
                self.expected_seq += 1;
                Ok(Some(req))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                if self.state == State::Ready {
                    self.out.push(self.ack.fail);
                }
                self.state = State::Closed;
                Err(e)
            }
        }
    }

    fn interpret(&mut self, frame: Frame) -> Result<Request, ProtocolError> {
        let h = frame.header;
        if h.sequence != self.expected_seq {
            return Err(ProtocolError::Sequence {
                expected: self.expected_seq,
                got: h.sequence,
            });
        }
        if h.kind == FrameKind::Hello && self.state == State::AwaitHello {
            let body_len = match h.flags {
                0 => frame.payload.len(),
                FLAG_AUTH => frame
                    .payload
                    .len()
                    .checked_sub(TAG_LEN)
                    .ok_or(ProtocolError::Unauthenticated(0))?,
                _ => return Err(ProtocolError::Unauthenticated(0)),
            };
            let (hello, ext) = decode_hello(frame.payload.get(..body_len).unwrap_or_default())?;
            if hello.protocol_version != h.version {
                return Err(ProtocolError::VersionChanged {
                    sequence: 0,
                    expected: hello.protocol_version,
                    got: h.version,
                });
            }
            self.version = h.version;
            self.compression = self.negotiate(&hello, &ext)?;
            self.state = State::HelloPending;
            self.hello = Some(frame);
            return Ok(Request::Hello(hello));
        }
        if h.version != self.version && self.state != State::AwaitHello {
            return Err(ProtocolError::VersionChanged {
                sequence: h.sequence,
                expected: self.version,
                got: h.version,
            });
        }
        let payload = self.unseal(frame)?;
        let v = self.version;
        match (self.state, h.kind) {
            (State::AwaitHello, kind) => Err(ProtocolError::NoHello(kind)),
            (_, FrameKind::Hello) => Err(ProtocolError::SecondHello),
            (_, FrameKind::Heartbeat) => Ok(Request::Heartbeat),
            (_, FrameKind::Batch) => Ok(Request::Batch(
                self.batch_records(h.sequence, &payload)?
                    .into_iter()
                    .map(|r| file_request(v, r.kind, r.transfer, r.offset, r.body))
                    .collect::<Result<_, _>>()?,
            )),
            (_, kind) => Ok(file_request(v, kind, h.transfer, h.offset, payload)?),
        }
    }

    /// The compression a Hello offers, if this session accepts it.
    fn negotiate(
        &self,
        hello: &Hello,
        ext: &HelloExtension,
    ) -> Result<Option<Compression>, ProtocolError> {
        let Some(offer) = ext.compression else {
            return Ok(None);
        };
        let refuse = |offer: String, why| ProtocolError::CompressionRefused {
            node: hello.node.clone(),
            pipe: hello.pipe.clone(),
            offer,
            why,
        };
        let Some(codec) = Codec::from_wire(offer.codec) else {
            return Err(refuse(
                format!("codec {}", offer.codec),
                "unknown codec (this receiver knows 1, zstd); upgrade the receiver or change the pipe's compress processor",
            ));
        };
        let name = format!("{codec} level {}", offer.level);
        let c = Compression::zstd(i64::from(offer.level))
            .map_err(|_| refuse(name.clone(), "the level is out of range 1-19"))?;
        if !self.accept_compression {
            return Err(refuse(
                name,
                "compression is turned off on this receiver; remove the compress processor from the sender's pipe",
            ));
        }
        Ok(Some(c))
    }

    /// The records of a Batch frame, compressed ones restored to their original bytes.
    fn batch_records(
        &mut self,
        sequence: u64,
        payload: &Bytes,
    ) -> Result<Vec<crate::batch::Record>, DecodeError> {
        let mut records = parse_records(payload, self.compression.is_some())?;
        if records.iter().any(|r| r.compressed) {
            if self.decompressor.is_none() {
                self.decompressor = Decompressor::new();
            }
            let budget = (self.max_frame as usize).saturating_sub(HEADER_LEN);
            let d = self
                .decompressor
                .as_mut()
                .ok_or(DecodeError::BadCompressed {
                    sequence,
                    reason: "no memory for a zstd context".into(),
                })?;
            d.restore(sequence, &mut records, budget)?;
        }
        Ok(records)
    }

    /// Verifies and opens a frame after the Hello, with the connection's key if it has one
    /// (in place: the decoder's buffer is decrypted, not copied).
    fn unseal(&self, frame: Frame) -> Result<Bytes, ProtocolError> {
        let h = frame.header;
        let mut payload = frame.payload;
        match &self.key {
            None if h.flags != 0 => Err(ProtocolError::UnexpectedAuth(h.sequence)),
            None => Ok(payload.freeze()),
            Some(key) => {
                if h.flags != key.flags(false) {
                    return Err(ProtocolError::Unauthenticated(h.sequence));
                }
                let head = h.to_bytes();
                let aad: &[u8; AAD_LEN] = head
                    .first_chunk()
                    .ok_or(ProtocolError::Unauthenticated(h.sequence))?;
                let n = key
                    .open(h.sequence, h.flags, aad, &mut payload)
                    .map_err(|e| ProtocolError::BadTag(h.sequence, e))?;
                payload.truncate(n);
                Ok(payload.freeze())
            }
        }
    }

    /// True when the pending Hello carries an authentication tag.
    pub fn hello_is_authenticated(&self) -> bool {
        self.hello
            .as_ref()
            .is_some_and(|f| f.header.flags == FLAG_AUTH)
    }

    /// True when the pending Hello's tag verifies with `key`.
    pub fn verify_hello(&self, key: &FrameKey) -> bool {
        let Some(frame) = &self.hello else {
            return false;
        };
        if frame.header.flags != FLAG_AUTH {
            return false;
        }
        let head = frame.header.to_bytes();
        let Some(aad) = head.first_chunk::<AAD_LEN>() else {
            return false;
        };
        let mut buf = frame.payload.to_vec();
        key.open(0, FLAG_AUTH, aad, &mut buf).is_ok()
    }

    /// Accepts the handshake: queues the OK byte. With a key (whose Hello tag the caller has
    /// verified), every later frame must be sealed with it.
    pub fn accept_hello(&mut self, key: Option<FrameKey>) {
        if self.state == State::HelloPending {
            self.state = State::Ready;
            self.unanswered = false;
            self.hello = None;
            self.key = key;
            self.decoder.set_max_frame(self.max_frame);
            self.out.push(self.ack.ok);
        }
    }

    /// Rejects the handshake: no reply at all, the session is closed.
    pub fn reject_hello(&mut self) {
        self.state = State::Closed;
        self.unanswered = false;
    }

    /// Answers the pending request: OK once it is verified and applied, FAIL otherwise
    /// (which closes the session).
    pub fn answer(&mut self, ok: bool) {
        if self.state != State::Ready || !self.unanswered {
            return;
        }
        self.unanswered = false;
        if ok {
            self.out.push(self.ack.ok);
        } else {
            self.out.push(self.ack.fail);
            self.state = State::Closed;
        }
    }

    /// Closes the session without a reply (e.g. the sender was superseded).
    pub fn close(&mut self) {
        self.state = State::Closed;
    }

    /// Reply bytes waiting to be written.
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    /// Marks all pending output as written.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }
}

/// The request for an Open, Data or Commit frame or batch record of a connection of
/// `version`.
fn file_request(
    version: u8,
    kind: FrameKind,
    transfer: u64,
    offset: u64,
    body: Bytes,
) -> Result<Request, DecodeError> {
    match kind {
        FrameKind::Open => {
            let (open, origin, attrs) = decode_open(&body, version)?;
            Ok(Request::Open {
                transfer,
                open,
                origin,
                attrs,
            })
        }
        FrameKind::Data => Ok(Request::Data {
            transfer,
            offset,
            payload: body,
        }),
        FrameKind::Commit => Ok(Request::Commit {
            transfer,
            commit: decode_body("commit", &body)?,
        }),
        _ => Err(DecodeError::BadBatch(
            "only Open, Data and Commit are file requests",
        )),
    }
}

/// Fuzz body: a receiver session fed arbitrary bytes, accepting every request.
pub fn fuzz_receiver(profile: &Profile, data: &[u8]) {
    let mut s = ReceiverSession::new(profile);
    s.decoder_mut().feed(data);
    while let Ok(Some(req)) = s.next_request() {
        match req {
            Request::Hello(_) => s.accept_hello(None),
            _ => s.answer(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::frame::{HEADER_LEN, encode_frame};
    use crate::messages::encode_body;
    use crate::sender_session::{SenderEvent, SenderSession};
    use std::time::Instant;

    fn profile() -> Profile {
        crate::sender_session::tests::profile(4)
    }

    fn hello(p: &Profile) -> Hello {
        Hello {
            protocol_version: 1,
            node: "n".into(),
            pipe: "p".into(),
            session_id: 1,
            connection: 1,
            profile: p.summary(),
            auth: None,
        }
    }

    #[test]
    fn sender_and_receiver_sessions_talk_one_byte_per_frame() {
        let p = profile();
        let t = Instant::now();
        let mut tx = SenderSession::new(&p, &hello(&p), t, None);
        let mut rx = ReceiverSession::new(&p);
        rx.decoder_mut().feed(tx.pending_output());
        tx.clear_output();
        assert!(matches!(rx.next_request(), Ok(Some(Request::Hello(_)))));
        rx.accept_hello(None);
        tx.on_bytes(rx.pending_output(), t);
        rx.clear_output();
        assert_eq!(tx.poll_event(), Some(SenderEvent::HandshakeAccepted));
        let open = encode_body(&OpenFile {
            path: "a".into(),
            size: 3,
            mtime_ns: 0,
        });
        tx.send(FrameKind::Open, 9, 0, &open, t).expect("room");
        tx.send(FrameKind::Data, 9, 0, b"abc", t).expect("room");
        rx.decoder_mut().feed(tx.pending_output());
        let mut answered = 0;
        while let Some(req) = rx.next_request().expect("valid") {
            assert!(matches!(
                req,
                Request::Open { transfer: 9, .. } | Request::Data { transfer: 9, .. }
            ));
            rx.answer(true);
            answered += 1;
        }
        assert_eq!(answered, 2);
        assert_eq!(rx.pending_output(), &[0xFF, 0xFF]);
    }

    #[test]
    fn a_request_before_the_hello_is_closed_without_a_reply() {
        let p = profile();
        let mut rx = ReceiverSession::new(&p);
        let mut wire = Vec::new();
        encode_frame(Envelope::Raw, FrameKind::Data, 0, 1, 0, b"x", &mut wire).expect("small");
        rx.decoder_mut().feed(&wire);
        assert!(rx.next_request().is_err());
        assert!(rx.pending_output().is_empty());
        assert!(rx.is_closed());
    }

    #[test]
    fn a_rejected_hello_gets_no_byte_and_a_corrupt_frame_gets_one_fail() {
        let p = profile();
        let mut wire = Vec::new();
        encode_frame(
            Envelope::Raw,
            FrameKind::Hello,
            0,
            0,
            0,
            &encode_body(&hello(&p)),
            &mut wire,
        )
        .expect("small");
        let mut rx = ReceiverSession::new(&p);
        rx.decoder_mut().feed(&wire);
        assert!(matches!(rx.next_request(), Ok(Some(Request::Hello(_)))));
        rx.reject_hello();
        assert!(rx.pending_output().is_empty() && rx.is_closed());

        let mut rx = ReceiverSession::new(&p);
        rx.decoder_mut().feed(&wire);
        rx.next_request().expect("hello");
        rx.accept_hello(None);
        let mut data = Vec::new();
        encode_frame(
            Envelope::Raw,
            FrameKind::Data,
            1,
            1,
            0,
            b"payload",
            &mut data,
        )
        .expect("small");
        let last = data.len() - 1;
        data[last] ^= 4;
        rx.decoder_mut().feed(&data);
        assert!(matches!(
            rx.next_request(),
            Err(ProtocolError::Decode(DecodeError::PayloadCrc {
                sequence: 1
            }))
        ));
        assert_eq!(
            rx.pending_output(),
            &[0xFF, 0x00],
            "OK for the hello, one FAIL for the corrupt frame"
        );
        assert!(rx.is_closed());
    }

    #[test]
    fn out_of_order_sequence_is_refused() {
        let p = profile();
        let mut wire = Vec::new();
        encode_frame(
            Envelope::Raw,
            FrameKind::Hello,
            0,
            0,
            0,
            &encode_body(&hello(&p)),
            &mut wire,
        )
        .expect("small");
        encode_frame(Envelope::Raw, FrameKind::Heartbeat, 5, 0, 0, &[], &mut wire).expect("small");
        let mut rx = ReceiverSession::new(&p);
        rx.decoder_mut().feed(&wire);
        rx.next_request().expect("hello");
        rx.accept_hello(None);
        assert_eq!(
            rx.next_request(),
            Err(ProtocolError::Sequence {
                expected: 1,
                got: 5
            })
        );
        fuzz_receiver(&p, &wire);
    }

    #[test]
    fn a_keyed_connection_verifies_every_frame_and_refuses_tampering_and_downgrades() {
        use crate::crypto::{ConnectionId, FrameKey, PreSharedKey, Protection};
        let p = profile();
        let psk = PreSharedKey::parse(&[9u8; 32]).expect("key");
        let id = ConnectionId {
            node: "n",
            pipe: "p",
            session: 1,
            connection: 1,
            key_id: 1,
        };
        let key = || FrameKey::derive(&psk, id, Protection::Encrypt);
        let t = Instant::now();
        let mut tx = SenderSession::new(&p, &hello(&p), t, Some(key()));
        let mut rx = ReceiverSession::new(&p);
        rx.decoder_mut().feed(tx.pending_output());
        tx.clear_output();
        assert!(matches!(rx.next_request(), Ok(Some(Request::Hello(_)))));
        assert!(rx.hello_is_authenticated());
        let wrong = PreSharedKey::parse(&[8u8; 32]).expect("key");
        assert!(
            !rx.verify_hello(&FrameKey::derive(&wrong, id, Protection::Encrypt)),
            "a wrong key fails"
        );
        assert!(rx.verify_hello(&key()));
        rx.accept_hello(Some(key()));
        tx.on_bytes(rx.pending_output(), t);
        rx.clear_output();
        tx.send(FrameKind::Data, 3, 0, b"plain text bytes", t)
            .expect("room");
        let wire = tx.pending_output().to_vec();
        assert!(
            !wire.windows(16).any(|w| w == b"plain text bytes"),
            "the payload is encrypted on the wire"
        );
        // Tampered: flip a ciphertext bit and fix both CRCs, as an attacker with the wire could.
        let mut bad = wire.clone();
        bad[HEADER_LEN] ^= 1;
        let crc = crc32fast::hash(&bad[HEADER_LEN..]);
        bad[36..40].copy_from_slice(&crc.to_be_bytes());
        let hcrc = crc32fast::hash(&bad[..40]);
        bad[40..44].copy_from_slice(&hcrc.to_be_bytes());
        let mut rx2 = ReceiverSession::new(&p);
        let mut tx2 = SenderSession::new(&p, &hello(&p), t, Some(key()));
        rx2.decoder_mut().feed(tx2.pending_output());
        tx2.clear_output();
        rx2.next_request().expect("hello");
        rx2.accept_hello(Some(key()));
        rx2.decoder_mut().feed(&bad);
        assert!(matches!(
            rx2.next_request(),
            Err(ProtocolError::BadTag(1, _))
        ));
        // The genuine frame opens to the plaintext.
        rx.decoder_mut().feed(&wire);
        match rx.next_request() {
            Ok(Some(Request::Data { payload, .. })) => {
                assert_eq!(&payload[..], b"plain text bytes")
            }
            other => panic!("{other:?}"),
        }
        // Downgrade: an unsealed frame on a keyed connection is refused.
        rx.answer(true);
        let mut plain = Vec::new();
        encode_frame(Envelope::Raw, FrameKind::Data, 2, 3, 16, b"x", &mut plain).expect("small");
        rx.decoder_mut().feed(&plain);
        assert_eq!(rx.next_request(), Err(ProtocolError::Unauthenticated(2)));
    }
}
