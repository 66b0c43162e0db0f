//! The diode link's control bodies (bincode 2.0.1 `standard()`, like the TCP link's bodies).
//! Each is small, sent several times (the profile's `control_repeats`) spread over the stream,
//! and identical in every copy, so any one copy is enough.

use serde::{Deserialize, Serialize};

use crate::messages::DIGEST_LEN;

/// Announces an object: what it is and how it is cut into blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Relative path, `/`-separated UTF-8, checked with [`crate::WirePath`].
    pub path: String,
    pub size: u64,
    /// Modification time at the source, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Bytes per symbol (every symbol datagram of the object carries exactly this many).
    pub symbol_bytes: u16,
    /// Source symbols per full block; the last block may have fewer.
    pub block_symbols: u32,
    /// Repair symbols per pass, in percent of each block's source symbols (rounded up).
    pub repair_percent: u32,
    /// How many passes the carousel sends.
    pub passes: u8,
    /// How long one pass takes at the sender's rate, in milliseconds: the receiver's deadline
    /// for the pass is this plus the profile's `object_deadline`.
    pub pass_ms: u64,
}

/// Ends one pass of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Symbol datagrams this pass sent for the object (for the loss figure).
    pub datagrams: u64,
    /// BLAKE3-256 of the whole object.
    pub digest: [u8; DIGEST_LEN],
}

/// The sender is alive; its counters since its session began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub pipe: String,
    /// Profile name, so a receiver configured for another profile says so.
    pub profile: String,
    /// Objects whose last pass was sent.
    pub objects: u64,
    /// Every datagram sent in this session, this heartbeat included.
    pub datagrams: u64,
    /// Milliseconds until the next heartbeat.
    pub interval_ms: u64,
}
