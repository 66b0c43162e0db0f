//! # gapsync-protocol
//!
//! The wire protocol of gapsync, with no I/O: an encoder, one decoder, and the session state
//! machines of both ends. Drivers feed them bytes and time and write out what they return.
//!
//! ```text
//!  inside (sender)                         gate                         outside (receiver)
//!  spool -> SenderSession --frames-->  [ TCP relay ]  --frames--> ReceiverSession -> dest
//!                  ^                                                     |
//!                  +------- exactly one byte per frame: OK / FAIL -------+
//! ```
//!
//! A connection is: `Hello` (answered OK, or closed without a byte), then per file `Open`,
//! `Data`..., `Commit`, with `Heartbeat` when idle. Each frame has a 44-byte header (see
//! [`frame`]) and, on reverse gates, is wrapped in the E-language text envelope (see
//! [`envelope`]). A version-2 connection (the sender asked for [`compress`] or [`origin`]
//! chains) carries 2 in every frame header, offers its codec in the Hello, may send Data
//! records compressed (compress, then seal) and Open bodies with an origin chain; the receiver
//! session restores the original bytes before the driver sees them. PROTOCOL.md describes
//! every byte.
#![forbid(unsafe_code)]

pub mod attrs;
pub mod batch;
pub mod compress;
pub mod crypto;
pub mod decoder;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod fuzz;
pub mod messages;
pub mod origin;
pub mod profile;
pub mod receiver_session;
#[cfg(test)]
mod scenario_tests;
pub mod sender_session;
pub mod table;
pub mod udp;
pub mod wire_path;

pub use attrs::ObjectAttrs;
pub use compress::{Codec, Compression, CompressionError};
pub use decoder::{Decoder, Frame};
pub use envelope::Envelope;
pub use error::{DecodeError, ProtocolError};
pub use frame::{
    FrameHeader, FrameKind, HEADER_LEN, PROTOCOL_VERSION, PROTOCOL_VERSION_MAX, encode_frame,
    speaks_version,
};
pub use messages::{
    Commit, DIGEST_LEN, Hello, HelloExtension, OpenFile, ProfileSummary, decode_body, decode_hello,
    decode_open, encode_body, encode_hello, encode_open, encode_open_ext,
};
pub use origin::{Hop, MAX_HOPS, OriginChain, OriginError};
pub use profile::{AckBytes, LinkKind, Profile, ProfileError, RawProfile};
pub use receiver_session::{ReceiverSession, Request};
pub use sender_session::{FrameInfo, SendError, SenderEvent, SenderSession};
pub use wire_path::{PathError, WirePath};
