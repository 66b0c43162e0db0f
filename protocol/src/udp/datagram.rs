//! The diode link's datagram: a fixed 52-byte header, a payload and, with a key, a 16-byte tag.
//!
//! ```text
//!  0       4  5  6     8        12             20             28             36      40      44   46 47 48      52
//!  | magic |ve|ki|flags| pipe tag| session      | sequence     | object       | block | symbol| len|pa|rs| crc32 | payload ... | tag |
//! ```
//!
//! All integers are big-endian. `crc32` covers the header's first 48 bytes, the payload and
//! the tag, so corruption is dropped before any other work. With a key, the tag authenticates
//! (and, with `encrypt`, the payload is ciphertext) under the session key, the nonce being the
//! sequence number; the associated data is the header's first 48 bytes.

use crate::crypto::{FLAG_AUTH, FLAG_ENCRYPTED, FrameKey, TAG_LEN};

/// First four bytes of every diode datagram: "GSUD".
pub const MAGIC: [u8; 4] = *b"GSUD";
/// Version of the diode datagram format.
pub const VERSION: u8 = 1;
/// Header bytes, the CRC included.
pub const HEADER_LEN: usize = 52;
/// Header bytes covered by the tag as associated data (everything before the CRC).
pub const COVERED_LEN: usize = 48;
/// IPv4 and UDP header bytes the MTU must also hold.
pub const IP_UDP_OVERHEAD: usize = 28;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One encoding symbol (source or repair) of one block of an object.
    Symbol = 1,
    /// An object's name, size and layout.
    Announce = 2,
    /// An object's pass is over: its digest and how many datagrams the pass sent.
    End = 3,
    /// The sender is alive: its counters.
    Heartbeat = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Kind::Symbol,
            2 => Kind::Announce,
            3 => Kind::End,
            4 => Kind::Heartbeat,
            _ => return None,
        })
    }
}

/// A datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u16,
    /// Which pipe: see [`pipe_tag`].
    pub pipe_tag: u32,
    /// The sender's session (increasing across restarts).
    pub session: u64,
    /// Datagram number within the session: the AEAD nonce and the loss counter.
    pub sequence: u64,
    /// The object (transfer id); 0 for a heartbeat.
    pub object: u64,
    pub block: u32,
    /// Encoding symbol id within the block (RaptorQ ESI).
    pub symbol: u32,
    /// Carousel pass, from 1.
    pub pass: u8,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram of {0} bytes is shorter than the header")]
    Short(usize),
    #[error("bad magic: not a gapsync diode datagram")]
    BadMagic,
    #[error("unsupported diode datagram version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    #[error("unknown datagram kind {0}")]
    BadKind(u8),
    #[error("reserved flags {0:#06x} are set")]
    BadFlags(u16),
    #[error("length field {field} does not match the datagram's {actual} bytes")]
    BadLength { field: usize, actual: usize },
    #[error("checksum mismatch: the datagram was corrupted on the way")]
    Crc,
}

/// The 4-byte tag naming a pipe in every datagram: CRC32 of `node`, a zero byte and `pipe`.
/// It routes, it does not authenticate (the key does).
pub fn pipe_tag(node: &str, pipe: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(node.as_bytes());
    h.update(&[0]);
    h.update(pipe.as_bytes());
    h.finalize()
}

/// Bytes of a datagram with `payload` bytes.
pub fn datagram_len(payload: usize, keyed: bool) -> usize {
    HEADER_LEN + payload + if keyed { TAG_LEN } else { 0 }
}

/// Appends one datagram to `out`: the header, `payload` (sealed with `key` if given) and the
/// tag. `payload` must be at most 65535 bytes.
pub fn encode(h: &Header, payload: &[u8], key: Option<&FrameKey>, out: &mut Vec<u8>) {
    let Some(k) = key else {
        out.extend_from_slice(&unsealed_header(h, payload));
        out.extend_from_slice(payload);
        return;
    };
    let start = out.len();
    let flags = k.flags(false);
    out.extend_from_slice(&header_fields(h, flags, payload.len()));
    out.extend_from_slice(payload);
    let (head, body) = out[start..].split_at_mut(HEADER_LEN);
    if let Some(tag) = k.seal_in_place(h.sequence, flags, &head[..COVERED_LEN], body) {
        out.extend_from_slice(&tag);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..start + COVERED_LEN]);
    crc.update(&out[start + HEADER_LEN..]);
    let sum = crc.finalize().to_be_bytes();
    out[start + COVERED_LEN..start + HEADER_LEN].copy_from_slice(&sum);
}

/// The header of a datagram without a key, its CRC computed over `payload` where it lies: the
/// datagram is this header followed by `payload` unchanged, so a sender can hand both to the
/// kernel as they are (a vectored send) instead of copying the payload behind the header.
pub fn unsealed_header(h: &Header, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut head = header_fields(h, 0, payload.len());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[..COVERED_LEN]);
    crc.update(payload);
    head[COVERED_LEN..].copy_from_slice(&crc.finalize().to_be_bytes());
    head
}

/// The header's fields, the CRC left zero.
fn header_fields(h: &Header, flags: u16, payload_len: usize) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = h.kind as u8;
    b[6..8].copy_from_slice(&flags.to_be_bytes());
    b[8..12].copy_from_slice(&h.pipe_tag.to_be_bytes());
    b[12..20].copy_from_slice(&h.session.to_be_bytes());
    b[20..28].copy_from_slice(&h.sequence.to_be_bytes());
    b[28..36].copy_from_slice(&h.object.to_be_bytes());
    b[36..40].copy_from_slice(&h.block.to_be_bytes());
    b[40..44].copy_from_slice(&h.symbol.to_be_bytes());
    b[44..46].copy_from_slice(&(payload_len as u16).to_be_bytes());
    b[46] = h.pass;
    // b[47] is reserved (zero); b[48..52] the CRC.
    b
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Parses and checksums one datagram. Returns the header and the sealed part (payload and,
/// if flagged, the tag) still to be opened with [`open`].
pub fn decode(buf: &[u8]) -> Result<(Header, usize), DatagramError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Err(DatagramError::Short(buf.len()));
    };
    if head[..4] != MAGIC {
        return Err(DatagramError::BadMagic);
    }
    if head[4] != VERSION {
        return Err(DatagramError::BadVersion(head[4]));
    }
    let kind = Kind::from_u8(head[5]).ok_or(DatagramError::BadKind(head[5]))?;
    let flags = be_u16(head, 6);
    if flags & !(FLAG_AUTH | FLAG_ENCRYPTED) != 0
        || (flags & FLAG_ENCRYPTED != 0 && flags & FLAG_AUTH == 0)
    {
        return Err(DatagramError::BadFlags(flags));
    }
    let len = be_u16(head, 44) as usize;
    let expected = datagram_len(len, flags & FLAG_AUTH != 0);
    if expected != buf.len() {
        return Err(DatagramError::BadLength {
            field: len,
            actual: buf.len(),
        });
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[..COVERED_LEN]);
    crc.update(&buf[HEADER_LEN..]);
    if crc.finalize() != be_u32(head, COVERED_LEN) {
        return Err(DatagramError::Crc);
    }
    let header = Header {
        kind,
        flags,
        pipe_tag: be_u32(head, 8),
        session: be_u64(head, 12),
        sequence: be_u64(head, 20),
        object: be_u64(head, 28),
        block: be_u32(head, 36),
        symbol: be_u32(head, 40),
        pass: head[46],
    };
    Ok((header, len))
}

/// Verifies (and decrypts) a decoded datagram in place with `key`; returns the payload.
pub fn open<'a>(
    h: &Header,
    buf: &'a mut [u8],
    key: &FrameKey,
) -> Result<&'a [u8], crate::crypto::BadTag> {
    let (head, sealed) = buf.split_at_mut(HEADER_LEN);
    let n = key.open(h.sequence, h.flags, &head[..COVERED_LEN], sealed)?;
    Ok(&sealed[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{ConnectionId, PreSharedKey, Protection};

    fn header() -> Header {
        Header {
            kind: Kind::Symbol,
            flags: 0,
            pipe_tag: pipe_tag("plant-a", "scada"),
            session: 1_700_000_000,
            sequence: 42,
            object: 7,
            block: 3,
            symbol: 1001,
            pass: 1,
        }
    }

    fn key(byte: u8) -> FrameKey {
        let id = ConnectionId {
            node: "plant-a",
            pipe: "scada",
            session: 1_700_000_000,
            connection: 0,
            key_id: 1,
        };
        FrameKey::derive(
            &PreSharedKey::from_random([byte; 32]),
            id,
            Protection::Encrypt,
        )
    }

    #[test]
    fn a_plain_datagram_round_trips_and_every_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode(&header(), b"symbol bytes", None, &mut out);
        assert_eq!(out.len(), HEADER_LEN + 12);
        let (h, len) = decode(&out).expect("valid");
        assert_eq!(h, header());
        assert_eq!(&out[HEADER_LEN..HEADER_LEN + len], b"symbol bytes");
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "bit {bit} flipped went unnoticed");
        }
        assert_eq!(decode(&out[..30]), Err(DatagramError::Short(30)));
    }

    #[test]
    fn a_sealed_datagram_opens_with_its_key_only() {
        let mut out = Vec::new();
        encode(&header(), b"secret symbol", Some(&key(1)), &mut out);
        assert!(
            !out.windows(6).any(|w| w == b"secret"),
            "payload is encrypted"
        );
        let (h, _) = decode(&out).expect("valid");
        let mut wrong = out.clone();
        assert!(open(&h, &mut wrong, &key(2)).is_err());
        assert_eq!(
            open(&h, &mut out, &key(1)).expect("right key"),
            b"secret symbol"
        );
    }
}
