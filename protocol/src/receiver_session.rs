//! The receiver's side of one connection: frame order, the handshake, and exactly one reply
//! byte per frame.
//!
//! The session hands out one request at a time; the driver applies it and answers with
//! [`ReceiverSession::answer`] before the next request is released. The session never produces
//! a byte that was not asked for: a rejected Hello is closed without a reply, and after a FAIL
//! the session is closed.

use bytes::Bytes;

use crate::decoder::{Decoder, Frame};
use crate::error::{DecodeError, ProtocolError};
use crate::frame::FrameKind;
use crate::messages::{Commit, Hello, OpenFile, decode_body};
use crate::profile::{AckBytes, Profile};

/// One frame, decoded, for the driver to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Open {
        transfer: u64,
        open: OpenFile,
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
}

impl ReceiverSession {
    /// A session using the receiver's own profile for limits and reply bytes.
    pub fn new(profile: &Profile) -> Self {
        Self {
            decoder: Decoder::new(profile.envelope, profile.max_frame_bytes),
            ack: profile.ack,
            expected_seq: 0,
            state: State::AwaitHello,
            unanswered: false,
            out: Vec::new(),
        }
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
        let body = |what| -> Result<_, DecodeError> { Ok((what, &frame.payload[..])) };
        match (self.state, h.kind) {
            (State::AwaitHello, FrameKind::Hello) => {
                let (what, b) = body("hello")?;
                self.state = State::HelloPending;
                Ok(Request::Hello(decode_body(what, b)?))
            }
            (State::AwaitHello, kind) => Err(ProtocolError::NoHello(kind)),
            (_, FrameKind::Hello) => Err(ProtocolError::SecondHello),
            (_, FrameKind::Open) => {
                let (what, b) = body("open")?;
                Ok(Request::Open {
                    transfer: h.transfer,
                    open: decode_body(what, b)?,
                })
            }
            (_, FrameKind::Data) => Ok(Request::Data {
                transfer: h.transfer,
                offset: h.offset,
                payload: frame.payload,
            }),
            (_, FrameKind::Commit) => {
                let (what, b) = body("commit")?;
                Ok(Request::Commit {
                    transfer: h.transfer,
                    commit: decode_body(what, b)?,
                })
            }
            (_, FrameKind::Heartbeat) => Ok(Request::Heartbeat),
        }
    }

    /// Accepts the handshake: queues the OK byte.
    pub fn accept_hello(&mut self) {
        if self.state == State::HelloPending {
            self.state = State::Ready;
            self.unanswered = false;
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

/// Fuzz body: a receiver session fed arbitrary bytes, accepting every request.
pub fn fuzz_receiver(profile: &Profile, data: &[u8]) {
    let mut s = ReceiverSession::new(profile);
    s.decoder_mut().feed(data);
    while let Ok(Some(req)) = s.next_request() {
        match req {
            Request::Hello(_) => s.accept_hello(),
            _ => s.answer(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::frame::encode_frame;
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
            profile: p.summary(),
        }
    }

    #[test]
    fn sender_and_receiver_sessions_talk_one_byte_per_frame() {
        let p = profile();
        let t = Instant::now();
        let mut tx = SenderSession::new(&p, &hello(&p), t);
        let mut rx = ReceiverSession::new(&p);
        rx.decoder_mut().feed(tx.pending_output());
        tx.clear_output();
        assert!(matches!(rx.next_request(), Ok(Some(Request::Hello(_)))));
        rx.accept_hello();
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
        rx.accept_hello();
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
        rx.accept_hello();
        assert_eq!(
            rx.next_request(),
            Err(ProtocolError::Sequence {
                expected: 1,
                got: 5
            })
        );
        fuzz_receiver(&p, &wire);
    }
}
