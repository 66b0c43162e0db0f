//! Error types of the protocol crate, sorted by who is at fault.

/// The peer sent bytes that are not a valid frame. The connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "bad frame magic {0:02x?}: the peer is not a gapsync sender or the stream is out of step"
    )]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0} (this build speaks versions {min} to {max})", min = crate::PROTOCOL_VERSION, max = crate::frame::PROTOCOL_VERSION_MAX)]
    BadVersion(u8),
    #[error("frame header checksum mismatch: the header was corrupted on the way")]
    HeaderCrc,
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("reserved flags {0:#06x} are set")]
    BadFlags(u16),
    #[error("frame of {length} bytes is over the profile's maximum of {max} bytes")]
    TooLong { length: u64, max: u64 },
    #[error("payload checksum mismatch in frame {sequence}: the payload was corrupted on the way")]
    PayloadCrc { sequence: u64 },
    #[error("malformed E-language envelope: {0}")]
    BadEnvelope(&'static str),
    #[error("malformed {what} body: {reason}")]
    BadBody { what: &'static str, reason: String },
    #[error("malformed batch: {0}")]
    BadBatch(&'static str),
    #[error("frame {sequence}: refused compressed data: {reason}")]
    BadCompressed { sequence: u64, reason: String },
}

/// The peer sent well-formed frames that break the protocol's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("frame sequence {got} where {expected} was expected")]
    Sequence { expected: u64, got: u64 },
    #[error("the first frame must be a Hello, got {0:?}")]
    NoHello(crate::FrameKind),
    #[error("a second Hello in one connection")]
    SecondHello,
    #[error("the receiver sent byte {0:#04x}, which is neither the OK nor the FAIL byte")]
    UnexpectedByte(u8),
    #[error("the receiver sent byte {0:#04x} although no frame was waiting for an answer")]
    UnsolicitedByte(u8),
    #[error("a request arrived before the previous one was answered")]
    Unanswered,
    #[error("frame {0} lacks the authentication the handshake agreed on")]
    Unauthenticated(u64),
    #[error("frame {0} carries authentication flags on an unkeyed connection")]
    UnexpectedAuth(u64),
    #[error("frame {0}: {1}")]
    BadTag(u64, crate::crypto::BadTag),
    #[error(
        "frame {sequence} has protocol version {got}, but the connection's Hello said {expected}"
    )]
    VersionChanged {
        sequence: u64,
        expected: u8,
        got: u8,
    },
    #[error(
        "sender node {node:?} pipe {pipe:?} offers {offer} compression, which this receiver does not accept: {why}"
    )]
    CompressionRefused {
        node: String,
        pipe: String,
        offer: String,
        why: &'static str,
    },
}
