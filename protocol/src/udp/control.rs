//! The diode link's control bodies (bincode 2.0.1 `standard()`, like the TCP link's bodies).
//! Each is small, sent several times (the profile's `control_repeats`) spread over the stream,
//! and identical in every copy, so any one copy is enough.

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::messages::{DIGEST_LEN, decode_prefix, encode_body};
use crate::origin::OriginChain;

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

/// An Announce body with the object's origin chain after it (nothing is added for an empty
/// chain, so that receivers that predate origin chains accept the object).
pub fn encode_announce(announce: &Announce, origin: &OriginChain) -> Vec<u8> {
    let mut body = encode_body(announce);
    if !origin.is_empty() {
        origin.encode(&mut body);
    }
    body
}

/// Decodes an Announce body and the origin chain that may follow it (absent: empty).
pub fn decode_announce(bytes: &[u8]) -> Result<(Announce, OriginChain), DecodeError> {
    let (announce, rest): (Announce, _) = decode_prefix("announce", bytes)?;
    if rest.is_empty() {
        return Ok((announce, OriginChain::default()));
    }
    Ok((announce, OriginChain::decode(rest)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Hop;

    fn announce() -> Announce {
        Announce {
            path: "a/b.csv".into(),
            size: 10,
            mtime_ns: 1,
            symbol_bytes: 1200,
            block_symbols: 64,
            repair_percent: 10,
            passes: 2,
            pass_ms: 5,
        }
    }

    #[test]
    fn an_announce_carries_an_origin_chain_and_every_cut_is_refused() {
        let plain = encode_announce(&announce(), &OriginChain::default());
        assert_eq!(
            plain,
            encode_body(&announce()),
            "no chain: the version-1 body"
        );
        let chain = OriginChain::new(vec![
            Hop::new("plant-a", "scada").expect("ok"),
            Hop::new("dmz", "relay").expect("ok"),
        ])
        .expect("ok");
        let wire = encode_announce(&announce(), &chain);
        assert_eq!(decode_announce(&wire), Ok((announce(), chain)));
        for cut in 0..wire.len() {
            let r = decode_announce(&wire[..cut]);
            // The chain is optional: the cut right after the version-1 fields is valid.
            assert_eq!(r.is_ok(), cut == plain.len(), "cut at {cut}");
        }
        let mut long = plain.clone();
        long.push(17);
        assert!(decode_announce(&long).is_err(), "17 hops");
    }
}
