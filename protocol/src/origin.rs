//! Origin chains: the hops (node, pipe) an object crossed before the current connection,
//! oldest first, so that a cascade (A -> B -> C) lands in C saying it came from A, and a sender
//! never sends an object back to a node it already crossed.
//!
//! On the wire (PROTOCOL.md sections 4 and 8.2), in bincode 2.0.1 `standard()` form:
//!
//! ```text
//! count (varint, at most 16) then per hop: node (varint length, bytes), pipe (varint length, bytes)
//! ```
//!
//! Each name follows the config rules for node and pipe names: 1-64 bytes of ASCII letters,
//! digits, `-`, `_` and `.`, not starting with `.`. The decoder checks every count and length
//! against these limits before it allocates anything.

use std::fmt;

use crate::error::DecodeError;

/// Most hops a chain may hold.
pub const MAX_HOPS: usize = 16;
/// Longest node or pipe name in a hop (the config's limit for names).
pub const MAX_NAME_LEN: usize = 64;

/// One hop: the sender node and the pipe an object crossed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hop {
    pub node: String,
    pub pipe: String,
}

/// Why a chain or hop is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("an origin chain holds at most {MAX_HOPS} hops, this one {0}")]
    TooManyHops(usize),
    #[error(
        "origin hop name {0:?} must be 1-{MAX_NAME_LEN} letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadName(String),
    #[error("origin hop {0:?} is not written as node/pipe")]
    BadHop(String),
}

/// True for a valid node or pipe name (the same rule as the daemons' config check).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

impl Hop {
    /// A hop, if both names are valid.
    pub fn new(node: &str, pipe: &str) -> Result<Self, OriginError> {
        for name in [node, pipe] {
            if !valid_name(name) {
                return Err(OriginError::BadName(name.to_owned()));
            }
        }
        Ok(Self {
            node: node.to_owned(),
            pipe: pipe.to_owned(),
        })
    }
}

/// The hops an object crossed, oldest first; empty for an object that originated at its
/// sender. At most [`MAX_HOPS`] hops, each name valid: the type cannot hold anything else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OriginChain(Vec<Hop>);

impl OriginChain {
    /// A chain from hops, oldest first.
    pub fn new(hops: Vec<Hop>) -> Result<Self, OriginError> {
        if hops.len() > MAX_HOPS {
            return Err(OriginError::TooManyHops(hops.len()));
        }
        Ok(Self(hops))
    }

    /// The hops, oldest first.
    pub fn hops(&self) -> &[Hop] {
        &self.0
    }

    /// True for an object that crossed no gapsync hop before this connection.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `node` is already in the chain (an object must never be sent there).
    pub fn contains_node(&self, node: &str) -> bool {
        self.0.iter().any(|h| h.node == node)
    }

    /// The chain with one more hop at its end: what a receiver records for an object that
    /// arrived with this chain over the connection of `hop`. Fails past [`MAX_HOPS`].
    pub fn with_hop(&self, hop: Hop) -> Result<Self, OriginError> {
        let mut hops = self.0.clone();
        hops.push(hop);
        Self::new(hops)
    }

    /// Parses the text form written by `Display`: `node/pipe` hops joined by `,` (empty for
    /// no hop).
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let hops = text
            .split(',')
            .map(|h| {
                let (node, pipe) = h
                    .split_once('/')
                    .ok_or_else(|| OriginError::BadHop(h.to_owned()))?;
                Hop::new(node, pipe)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(hops)
    }

    /// Appends the wire form (count, then node and pipe of each hop) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.0.len() as u64);
        for hop in &self.0 {
            for name in [&hop.node, &hop.pipe] {
                put_varint(out, name.len() as u64);
                out.extend_from_slice(name.as_bytes());
            }
        }
    }

    /// Decodes the wire form, which must fill `bytes` exactly. The count and every name
    /// length are checked against the limits before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (chain, rest) = Self::decode_prefix(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::BadBody {
                what: "origin chain",
                reason: format!("{} trailing bytes", rest.len()),
            });
        }
        Ok(chain)
    }

    /// Decodes the wire form from the start of `bytes`; returns what follows it.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let bad = |reason: String| DecodeError::BadBody {
            what: "origin chain",
            reason,
        };
        let mut r = bytes;
        let count = take_varint(&mut r).ok_or_else(|| bad("cut short".into()))?;
        if count > MAX_HOPS as u64 {
            return Err(bad(format!("{count} hops is over the limit of {MAX_HOPS}")));
        }
        let mut hops = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let node = take_name(&mut r).map_err(bad)?;
            let pipe = take_name(&mut r).map_err(bad)?;
            hops.push(Hop { node, pipe });
        }
        Ok((Self(hops), r))
    }
}

impl fmt::Display for OriginChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, hop) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}/{}", hop.node, hop.pipe)?;
        }
        Ok(())
    }
}

fn take_name(r: &mut &[u8]) -> Result<String, String> {
    let len = take_varint(r).ok_or("a name length is cut short")?;
    if len == 0 || len > MAX_NAME_LEN as u64 {
        return Err(format!(
            "a name of {len} bytes (names are 1-{MAX_NAME_LEN} bytes)"
        ));
    }
    let (name, rest) = r
        .split_at_checked(len as usize)
        .ok_or("a name runs past the end")?;
    *r = rest;
    let name = std::str::from_utf8(name).map_err(|_| "a name is not UTF-8")?;
    if !valid_name(name) {
        return Err(format!("name {name:?} is not a valid node or pipe name"));
    }
    Ok(name.to_owned())
}

/// bincode's varint: below 251 one byte; 251, 252, 253 then a u16, u32, u64 little-endian.
pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(251);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(252);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads a bincode varint; `None` if cut short or not a u64 marker.
pub(crate) fn take_varint(r: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = r.split_first()?;
    let (v, rest) = match first {
        0..=250 => (u64::from(first), rest),
        251 => {
            let (b, rest) = rest.split_first_chunk::<2>()?;
            (u64::from(u16::from_le_bytes(*b)), rest)
        }
        252 => {
            let (b, rest) = rest.split_first_chunk::<4>()?;
            (u64::from(u32::from_le_bytes(*b)), rest)
        }
        253 => {
            let (b, rest) = rest.split_first_chunk::<8>()?;
            (u64::from_le_bytes(*b), rest)
        }
        _ => return None,
    };
    *r = rest;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> OriginChain {
        let hops = (0..n)
            .map(|i| Hop::new(&format!("node-{i}"), "scada").expect("valid"))
            .collect();
        OriginChain::new(hops).expect("within the limit")
    }

    #[test]
    fn chains_round_trip_in_the_bincode_form_and_as_text() {
        for n in [0, 1, 3, MAX_HOPS] {
            let c = chain(n);
            let mut wire = Vec::new();
            c.encode(&mut wire);
            // The same bytes bincode writes for a Vec of (String, String).
            let pairs: Vec<(String, String)> = c
                .hops()
                .iter()
                .map(|h| (h.node.clone(), h.pipe.clone()))
                .collect();
            assert_eq!(wire, crate::messages::encode_body(&pairs));
            assert_eq!(OriginChain::decode(&wire).expect("valid"), c);
            assert_eq!(OriginChain::parse(&c.to_string()).expect("text"), c);
        }
        assert_eq!(chain(2).to_string(), "node-0/scada,node-1/scada");
        // The example in PROTOCOL.md section 4.1.
        let mut one = Vec::new();
        OriginChain::parse("plant-a/scada")
            .expect("ok")
            .encode(&mut one);
        assert_eq!(one, b"\x01\x07plant-a\x05scada");
        assert!(chain(2).contains_node("node-1") && !chain(2).contains_node("scada"));
    }

    #[test]
    fn over_long_chains_and_bad_names_are_refused() {
        let too_many = (0..=MAX_HOPS)
            .map(|i| Hop::new(&format!("n{i}"), "p").expect("valid"))
            .collect();
        assert_eq!(
            OriginChain::new(too_many),
            Err(OriginError::TooManyHops(17))
        );
        assert!(
            chain(MAX_HOPS)
                .with_hop(Hop::new("x", "y").expect("ok"))
                .is_err()
        );
        assert!(Hop::new(&"a".repeat(65), "p").is_err());
        assert!(Hop::new(".hidden", "p").is_err());
        assert!(Hop::new("a/b", "p").is_err());
        assert!(OriginChain::parse("a-b").is_err());
        // On the wire: 17 hops, a 65-byte name, a zero-length name, a bad byte.
        assert!(OriginChain::decode(&[17]).is_err());
        let mut long = vec![1, 65];
        long.extend_from_slice(&[b'a'; 65]);
        long.extend_from_slice(&[1, b'p']);
        assert!(OriginChain::decode(&long).is_err());
        assert!(OriginChain::decode(&[1, 0, 1, b'p']).is_err());
        assert!(OriginChain::decode(&[1, 1, b'/', 1, b'p']).is_err());
        // A count of u64::MAX is refused before any allocation.
        let mut huge = vec![253];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(OriginChain::decode(&huge).is_err());
    }

    #[test]
    fn every_split_of_a_chain_is_an_error_except_the_whole() {
        let mut wire = Vec::new();
        chain(3).encode(&mut wire);
        for cut in 0..wire.len() {
            assert!(OriginChain::decode(&wire[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = wire.clone();
        trailing.push(0);
        assert!(OriginChain::decode(&trailing).is_err());
    }
}
