//! Structured frame bodies (Hello, Open, Commit), encoded with bincode 2.0.1.
//!
//! The encoding is bincode's `standard()` configuration: little-endian, variable-length
//! integers (a value below 251 is one byte; 251, 252, 253 prefix a u16, u32, u64), strings and
//! byte vectors as a varint length then the bytes, structs as their fields in order, enums as a
//! varint variant index, fixed arrays as their elements without a length. PROTOCOL.md lists
//! every body field by field.

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::error::DecodeError;

/// Largest structured body accepted (handshake, open, commit). Bodies are small; this bound
/// stops a hostile varint length from allocating.
pub const MAX_BODY: usize = 16 * 1024;

/// Length of the whole-file digest (BLAKE3, 256 bits).
pub const DIGEST_LEN: usize = 32;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// The profile values both ends must agree on. The receiver compares them field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSummary {
    pub name: String,
    pub max_frame_bytes: u32,
    pub window: u32,
    pub ok_byte: u8,
    pub envelope: Envelope,
    pub heartbeat_ms: u64,
    pub ack_timeout_ms: u64,
}

impl ProfileSummary {
    /// Every field that differs, as `field: ours != theirs`, for the operator's log line.
    pub fn differences(&self, theirs: &Self) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($f:ident) => {
                if self.$f != theirs.$f {
                    out.push(format!(
                        "{}: receiver {:?} != sender {:?}",
                        stringify!($f),
                        self.$f,
                        theirs.$f
                    ));
                }
            };
        }
        cmp!(name);
        cmp!(max_frame_bytes);
        cmp!(window);
        cmp!(ok_byte);
        cmp!(envelope);
        cmp!(heartbeat_ms);
        cmp!(ack_timeout_ms);
        out
    }
}

/// Handshake body: the first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u8,
    /// The sender's node name (`node` in its config).
    pub node: String,
    /// The pipe this connection carries.
    pub pipe: String,
    /// Increases at every sender start; the receiver drops connections of older sessions.
    pub session_id: u64,
    /// Counts this sender session's connections from 1; with a key, (session_id, connection)
    /// must be newer than any pair the receiver accepted before.
    pub connection: u64,
    pub profile: ProfileSummary,
    /// The key used, on keyed pipes.
    pub auth: Option<HelloAuth>,
}

/// The key a keyed connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAuth {
    /// Which of the pipe's keys (rotation: current and next).
    pub key_id: u32,
    /// What the key protects on this connection.
    pub protection: crate::crypto::Protection,
}

/// Opens (or reopens after a reconnect) a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// Relative path, `/`-separated UTF-8, checked with [`crate::WirePath`].
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Modification time at the source, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// Ends a transfer: the receiver verifies, makes it durable and visible, then answers OK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub size: u64,
    /// BLAKE3-256 of the whole file.
    pub digest: [u8; DIGEST_LEN],
}

/// What a version-2 Hello carries after the version-1 fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloExtension {
    /// The sender compresses Data records: codec and level (see [`crate::compress`]).
    pub compression: Option<CompressionOffer>,
}

/// A compression offer as it is on the wire: the codec's id (1 zstd) and the level. The
/// receiver session refuses a codec it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionOffer {
    pub codec: u8,
    pub level: u8,
}

impl From<crate::compress::Compression> for CompressionOffer {
    fn from(c: crate::compress::Compression) -> Self {
        Self {
            codec: c.codec().wire_id(),
            level: c.level(),
        }
    }
}

/// The Hello body: the version-1 fields, then, when `hello.protocol_version` is 2 or more,
/// the [`HelloExtension`].
pub fn encode_hello(hello: &Hello, ext: &HelloExtension) -> Vec<u8> {
    let mut body = encode_body(hello);
    if hello.protocol_version >= 2 {
        body.extend_from_slice(&encode_body(ext));
    }
    body
}

/// Decodes a Hello body of version 1 (no extension) or 2 (with one), refusing trailing bytes.
pub fn decode_hello(bytes: &[u8]) -> Result<(Hello, HelloExtension), DecodeError> {
    let (hello, rest): (Hello, _) = decode_prefix("hello", bytes)?;
    let ext = match hello.protocol_version {
        0 | 1 => decode_body::<()>("hello", rest).map(|()| HelloExtension::default())?,
        _ => decode_body("hello extension", rest)?,
    };
    Ok((hello, ext))
}

/// An Open body with `origin` after it (version-2 connections only; nothing is added for an
/// empty chain, so the body is then a version-1 Open).
pub fn encode_open(open: &OpenFile, origin: &crate::origin::OriginChain) -> Vec<u8> {
    encode_open_ext(open, origin, &crate::attrs::ObjectAttrs::default())
}

/// An Open body with its version-2 extensions: the origin chain (written, even empty, when
/// attributes follow it), then the object's attributes when there are any. Without either the
/// body is a version-1 Open.
pub fn encode_open_ext(
    open: &OpenFile,
    origin: &crate::origin::OriginChain,
    attrs: &crate::attrs::ObjectAttrs,
) -> Vec<u8> {
    let mut body = encode_body(open);
    if !origin.is_empty() || !attrs.is_empty() {
        origin.encode(&mut body);
    }
    if !attrs.is_empty() {
        body.extend_from_slice(&encode_body(attrs));
    }
    body
}

/// Decodes an Open body; on a connection of `version` 2 an origin chain may follow it, and
/// then the object's attributes (PROTOCOL.md 4.1).
pub fn decode_open(
    bytes: &[u8],
    version: u8,
) -> Result<
    (
        OpenFile,
        crate::origin::OriginChain,
        crate::attrs::ObjectAttrs,
    ),
    DecodeError,
> {
    let (open, rest): (OpenFile, _) = decode_prefix("open", bytes)?;
    if rest.is_empty() {
        return Ok((open, Default::default(), Default::default()));
    }
    if version < 2 {
        return Err(DecodeError::BadBody {
            what: "open",
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    let (chain, rest) = crate::origin::OriginChain::decode_prefix(rest)?;
    if rest.is_empty() {
        return Ok((open, chain, Default::default()));
    }
    Ok((open, chain, crate::attrs::ObjectAttrs::decode(rest)?))
}

/// Decodes `T` from the start of `bytes` (at most [`MAX_BODY`]) and returns what follows it.
pub fn decode_prefix<'a, T: for<'de> Deserialize<'de>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), DecodeError> {
    if bytes.len() > MAX_BODY {
        return Err(DecodeError::BadBody {
            what,
            reason: format!("{} bytes is over the limit of {MAX_BODY}", bytes.len()),
        });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| DecodeError::BadBody {
            what,
            reason: e.to_string(),
        })?;
    Ok((value, bytes.get(used..).unwrap_or_default()))
}

/// Encodes a body.
pub fn encode_body<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain structs of strings and integers into a Vec cannot fail.
    bincode::serde::encode_to_vec(value, config()).unwrap_or_default()
}

/// Decodes a body; trailing bytes and bodies over [`MAX_BODY`] are errors.
pub fn decode_body<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    if bytes.len() > MAX_BODY {
        return Err(DecodeError::BadBody {
            what,
            reason: format!("{} bytes is over the limit of {MAX_BODY}", bytes.len()),
        });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| DecodeError::BadBody {
            what,
            reason: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(DecodeError::BadBody {
            what,
            reason: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}

/// Fuzz body: decodes arbitrary bytes as each structured body.
pub fn fuzz_bodies(data: &[u8]) {
    let _ = decode_body::<Hello>("hello", data);
    let _ = decode_body::<OpenFile>("open", data);
    let _ = decode_body::<Commit>("commit", data);
    if let Ok(decoded) = decode_hello(data) {
        let again = encode_hello(&decoded.0, &decoded.1);
        assert_eq!(decode_hello(&again), Ok(decoded), "a Hello round-trips");
    }
    if let Ok(decoded) = decode_open(data, 2) {
        let again = encode_open_ext(&decoded.0, &decoded.1, &decoded.2);
        assert_eq!(decode_open(&again, 2), Ok(decoded), "an Open round-trips");
    }
    if let Ok(decoded) = crate::udp::decode_announce(data) {
        let again = crate::udp::encode_announce(&decoded.0, &decoded.1);
        assert_eq!(
            crate::udp::decode_announce(&again),
            Ok(decoded),
            "an Announce round-trips"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            protocol_version: 1,
            node: "plant-a".into(),
            pipe: "scada".into(),
            session_id: 300,
            connection: 1,
            profile: ProfileSummary {
                name: "syskeeper-2000".into(),
                max_frame_bytes: 1 << 20,
                window: 1,
                ok_byte: 0,
                envelope: Envelope::Raw,
                heartbeat_ms: 30_000,
                ack_timeout_ms: 10_000,
            },
            auth: None,
        }
    }

    #[test]
    fn hello_roundtrips_and_has_the_documented_bytes() {
        let bytes = encode_body(&hello());
        // protocol_version 1, then "plant-a" as len 7 + bytes (PROTOCOL.md shows this dump).
        assert_eq!(&bytes[..9], b"\x01\x07plant-a");
        // session id 300 is a u16 varint: 251, then 300 little-endian.
        assert_eq!(&bytes[15..18], &[251, 0x2c, 0x01]);
        assert_eq!(
            decode_body::<Hello>("hello", &bytes).expect("roundtrip"),
            hello()
        );
    }

    #[test]
    fn trailing_bytes_and_huge_lengths_are_refused() {
        let mut bytes = encode_body(&hello());
        bytes.push(0);
        assert!(decode_body::<Hello>("hello", &bytes).is_err());
        // protocol_version, then a string length of u64::MAX.
        let hostile = [1u8, 253, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(decode_body::<Hello>("hello", &hostile).is_err());
        fuzz_bodies(&hostile);
    }

    #[test]
    fn a_version_2_hello_carries_the_compression_offer_and_every_cut_is_refused() {
        let v1 = encode_hello(&hello(), &HelloExtension::default());
        assert_eq!(v1, encode_body(&hello()), "version 1: no extension");
        let offer = crate::compress::Compression::zstd(3).expect("level");
        let ext = HelloExtension {
            compression: Some(offer.into()),
        };
        let v2_hello = Hello {
            protocol_version: 2,
            ..hello()
        };
        let v2 = encode_hello(&v2_hello, &ext);
        assert_eq!(
            &v2[v2.len() - 3..],
            &[1, 1, 3],
            "Some, codec 1 (zstd), level 3"
        );
        assert_eq!(decode_hello(&v2), Ok((v2_hello.clone(), ext)));
        assert_eq!(decode_hello(&v1), Ok((hello(), HelloExtension::default())));
        for cut in 0..v2.len() {
            assert!(decode_hello(&v2[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = v2.clone();
        trailing.push(0);
        assert!(decode_hello(&trailing).is_err());
        let mut v1_trailing = v1.clone();
        v1_trailing.push(0);
        assert!(
            decode_hello(&v1_trailing).is_err(),
            "version 1 has no extension"
        );
        fuzz_bodies(&v2);
    }

    #[test]
    fn an_open_carries_an_origin_chain_on_version_2_only() {
        let open = OpenFile {
            path: "a/b.csv".into(),
            size: 9,
            mtime_ns: -1,
        };
        let chain = crate::origin::OriginChain::parse("plant-a/scada,dmz/relay").expect("ok");
        let wire = encode_open(&open, &chain);
        let plain = encode_body(&open);
        assert_eq!(encode_open(&open, &Default::default()), plain);
        assert_eq!(
            decode_open(&wire, 2),
            Ok((open.clone(), chain, Default::default()))
        );
        assert!(decode_open(&wire, 1).is_err(), "no chain on version 1");
        assert_eq!(
            decode_open(&plain, 1),
            Ok((open, Default::default(), Default::default()))
        );
        for cut in 0..wire.len() {
            // The chain is optional: the cut right after the version-1 fields is valid.
            assert_eq!(
                decode_open(&wire[..cut], 2).is_ok(),
                cut == plain.len(),
                "cut at {cut}"
            );
        }
        fuzz_bodies(&wire);
    }

    #[test]
    fn an_open_carries_attributes_after_a_chain_on_version_2_only() {
        use crate::attrs::ObjectAttrs;
        let open = OpenFile {
            path: "bin/run".into(),
            size: 0,
            mtime_ns: 5,
        };
        let attrs = ObjectAttrs {
            mode: Some(0o755),
            link: Some("../lib/x".into()),
        };
        let plain = encode_body(&open);
        let wire = encode_open_ext(&open, &Default::default(), &attrs);
        // No chain (00), then Some(0o755 = 493: 251 ed 01), then Some("../lib/x").
        assert_eq!(
            &wire[plain.len()..plain.len() + 5],
            &[0, 1, 251, 0xed, 0x01]
        );
        assert_eq!(&wire[plain.len() + 5..], b"\x01\x08../lib/x");
        assert_eq!(
            decode_open(&wire, 2),
            Ok((open.clone(), Default::default(), attrs.clone()))
        );
        assert!(decode_open(&wire, 1).is_err());
        for cut in 0..wire.len() {
            // Valid cuts: right after the version-1 fields and right after the chain.
            let ok = cut == plain.len() || cut == plain.len() + 1;
            assert_eq!(decode_open(&wire[..cut], 2).is_ok(), ok, "cut at {cut}");
        }
        let mut trailing = wire.clone();
        trailing.push(0);
        assert!(decode_open(&trailing, 2).is_err());
        fuzz_bodies(&wire);
    }

    #[test]
    fn differences_name_each_field() {
        let a = hello().profile;
        let mut b = a.clone();
        b.window = 8;
        b.ok_byte = 0xff;
        let d = a.differences(&b);
        assert_eq!(d.len(), 2);
        assert!(d[0].starts_with("window"));
        assert!(d[1].starts_with("ok_byte"));
    }
}
