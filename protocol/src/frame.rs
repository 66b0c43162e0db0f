//! The fixed 44-byte frame header and the encoder.
//!
//! ```text
//!  0      4      5      6       8              16             24             32      36      40      44
//!  +------+------+------+-------+--------------+--------------+--------------+-------+-------+-------+
//!  |magic |ver   |kind  |flags  | sequence     | transfer id  | offset       |length |pl crc |hdr crc|
//!  |GSYN  |u8=1  |u8    |u16=0  | u64          | u64          | u64          |u32    |u32    |u32    |
//!  +------+------+------+-------+--------------+--------------+--------------+-------+-------+-------+
//! ```
//! All integers are big-endian. `hdr crc` is the CRC32 of bytes 0..40, `pl crc` the CRC32 of the
//! payload (`length` bytes following the header, the tag included on keyed pipes). `flags` is 0,
//! or [`crate::crypto::FLAG_AUTH`] / [`crate::crypto::FLAG_ENCRYPTED`] on keyed pipes.

use crate::crypto::{AAD_LEN, FrameKey, TAG_LEN};
use crate::envelope::Envelope;

/// Frame magic: ASCII `GSYN`.
pub const MAGIC: [u8; 4] = *b"GSYN";
/// The base wire protocol version, carried in every frame header and in the Hello of a
/// connection that uses no version-2 feature (so that receivers of version 1 accept it).
pub const PROTOCOL_VERSION: u8 = 1;
/// The newest version this build speaks: version 2 adds the Hello extension (compression),
/// compressed Data records and origin chains (PROTOCOL.md). A connection is version 2 when its
/// sender needs one of those; every frame of it then carries 2.
pub const PROTOCOL_VERSION_MAX: u8 = 2;

/// True for a protocol version this build speaks (1 or 2).
pub fn speaks_version(version: u8) -> bool {
    (PROTOCOL_VERSION..=PROTOCOL_VERSION_MAX).contains(&version)
}
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 44;

/// What a frame carries. Every kind is answered by exactly one ack byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Handshake; payload is a bincode [`crate::Hello`]. Always sequence 0.
    Hello = 1,
    /// Announces a transfer; payload is a bincode [`crate::OpenFile`].
    Open = 2,
    /// Raw file bytes at `offset` of transfer `transfer`.
    Data = 3,
    /// Ends a transfer; payload is a bincode [`crate::Commit`] with the whole-file digest.
    Commit = 4,
    /// Keep-alive with an empty payload.
    Heartbeat = 5,
    /// Several Open, Data and Commit records in one frame; see [`crate::batch`].
    Batch = 6,
}

impl FrameKind {
    /// The kind for a wire byte, or `None` for an unknown kind.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Hello),
            2 => Some(Self::Open),
            3 => Some(Self::Data),
            4 => Some(Self::Commit),
            5 => Some(Self::Heartbeat),
            6 => Some(Self::Batch),
            _ => None,
        }
    }
}

/// A decoded (or to-be-encoded) frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version of the connection (1 or 2).
    pub version: u8,
    /// What the frame carries.
    pub kind: FrameKind,
    /// Position of the frame in its connection, starting at 0 for the Hello.
    pub sequence: u64,
    /// Transfer the frame belongs to; 0 for Hello and Heartbeat.
    pub transfer: u64,
    /// Byte offset in the file for Data frames; 0 otherwise.
    pub offset: u64,
    /// [`crate::crypto::FLAG_AUTH`] and [`crate::crypto::FLAG_ENCRYPTED`]; 0 without a key.
    pub flags: u16,
    /// Payload length in bytes (tag included).
    pub length: u32,
    /// CRC32 of the payload.
    pub payload_crc: u32,
}

impl FrameHeader {
    /// Builds the header for `payload`, computing its length and CRC.
    ///
    /// Fails only when the payload is longer than `u32::MAX`, which no profile allows.
    pub fn for_payload(
        kind: FrameKind,
        sequence: u64,
        transfer: u64,
        offset: u64,
        payload: &[u8],
    ) -> Option<Self> {
        Some(Self {
            version: PROTOCOL_VERSION,
            kind,
            sequence,
            transfer,
            offset,
            flags: 0,
            length: u32::try_from(payload.len()).ok()?,
            payload_crc: crc32fast::hash(payload),
        })
    }

    /// The 44 header bytes, header CRC included.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&self.flags.to_be_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_be_bytes());
        out[16..24].copy_from_slice(&self.transfer.to_be_bytes());
        out[24..32].copy_from_slice(&self.offset.to_be_bytes());
        out[32..36].copy_from_slice(&self.length.to_be_bytes());
        out[36..40].copy_from_slice(&self.payload_crc.to_be_bytes());
        let crc = crc32fast::hash(&out[0..40]);
        out[40..44].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

/// Appends one whole frame (header and payload, wrapped in `envelope`) to `out`.
///
/// Fails when the payload is longer than `u32::MAX` bytes.
pub fn encode_frame(
    envelope: Envelope,
    kind: FrameKind,
    sequence: u64,
    transfer: u64,
    offset: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Option<FrameHeader> {
    encode_sealed_frame(
        envelope, None, kind, sequence, transfer, offset, payload, out,
    )
}

/// The header of an unsealed frame in the raw envelope: the frame is this header followed by
/// `payload` unchanged, so a sender may write both as they lie instead of copying the payload
/// behind the header. `None` if the payload is too large for a frame.
pub fn raw_frame_header(
    kind: FrameKind,
    sequence: u64,
    transfer: u64,
    offset: u64,
    payload: &[u8],
) -> Option<[u8; HEADER_LEN]> {
    Some(FrameHeader::for_payload(kind, sequence, transfer, offset, payload)?.to_bytes())
}

/// [`raw_frame_header`] with `version` in the header.
pub fn raw_versioned_header(
    version: u8,
    kind: FrameKind,
    sequence: u64,
    transfer: u64,
    offset: u64,
    payload: &[u8],
) -> Option<[u8; HEADER_LEN]> {
    let h = FrameHeader::for_payload(kind, sequence, transfer, offset, payload)?;
    Some(FrameHeader { version, ..h }.to_bytes())
}

/// [`encode_frame`], sealed with `key` when one is given (see [`crate::crypto`]).
#[allow(clippy::too_many_arguments)]
pub fn encode_sealed_frame(
    envelope: Envelope,
    key: Option<&FrameKey>,
    kind: FrameKind,
    sequence: u64,
    transfer: u64,
    offset: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Option<FrameHeader> {
    encode_versioned_frame(
        PROTOCOL_VERSION,
        envelope,
        key,
        kind,
        sequence,
        transfer,
        offset,
        payload,
        out,
    )
}

/// [`encode_sealed_frame`] with `version` in the header (a version-2 connection's frames).
#[allow(clippy::too_many_arguments)]
pub fn encode_versioned_frame(
    version: u8,
    envelope: Envelope,
    key: Option<&FrameKey>,
    kind: FrameKind,
    sequence: u64,
    transfer: u64,
    offset: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Option<FrameHeader> {
    let Some(key) = key else {
        let header = FrameHeader {
            version,
            ..FrameHeader::for_payload(kind, sequence, transfer, offset, payload)?
        };
        let head = header.to_bytes();
        match envelope {
            Envelope::Raw => {
                out.reserve(HEADER_LEN + payload.len());
                out.extend_from_slice(&head);
                out.extend_from_slice(payload);
            }
            Envelope::ELanguage => crate::envelope::wrap(&head, payload, out),
        }
        return Some(header);
    };
    let head = FrameHeader {
        version,
        kind,
        sequence,
        transfer,
        offset,
        flags: 0,
        length: 0,
        payload_crc: 0,
    };
    match envelope {
        Envelope::Raw => encode_sealed_raw(key, head, payload, out),
        Envelope::ELanguage => {
            // The text envelope carries the whole raw frame: seal it first, then wrap it.
            let mut raw = Vec::new();
            let header = encode_sealed_raw(key, head, payload, &mut raw)?;
            let (head, body) = raw.split_at_checked(HEADER_LEN)?;
            crate::envelope::wrap(head, body, out);
            Some(header)
        }
    }
}

/// A sealed frame in the raw envelope, encrypted in place in `out` (no copy of the payload
/// besides the one into `out`).
fn encode_sealed_raw(
    key: &FrameKey,
    head: FrameHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Option<FrameHeader> {
    let flags = key.flags(head.kind == FrameKind::Hello);
    let length = u32::try_from(payload.len().checked_add(TAG_LEN)?).ok()?;
    let sequence = head.sequence;
    let mut h = FrameHeader {
        flags,
        length,
        ..head
    };
    let aad_bytes = h.to_bytes();
    let aad: &[u8; AAD_LEN] = aad_bytes.first_chunk()?;
    let start = out.len();
    out.reserve(HEADER_LEN + length as usize);
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(payload);
    let body = out.get_mut(start + HEADER_LEN..)?;
    let tag = key.seal_in_place(sequence, flags, aad, body)?;
    out.extend_from_slice(&tag);
    let sealed = out.get(start + HEADER_LEN..)?;
    h.payload_crc = crc32fast::hash(sealed);
    out.get_mut(start..start + HEADER_LEN)?
        .copy_from_slice(&h.to_bytes());
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_sealed_in_place_equals_the_one_sealed_in_the_e_language_envelope() {
        use crate::crypto::{ConnectionId, PreSharedKey, Protection};
        use crate::decoder::Decoder;
        for protection in [Protection::Encrypt, Protection::AuthOnly] {
            let id = ConnectionId {
                node: "n",
                pipe: "p",
                session: 3,
                connection: 1,
                key_id: 1,
            };
            let key = FrameKey::derive(&PreSharedKey::from_random([9; 32]), id, protection);
            let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
            let mut raw = Vec::new();
            encode_sealed_frame(
                Envelope::Raw,
                Some(&key),
                FrameKind::Data,
                4,
                7,
                8,
                &payload,
                &mut raw,
            )
            .expect("fits");
            let mut text = Vec::new();
            encode_sealed_frame(
                Envelope::ELanguage,
                Some(&key),
                FrameKind::Data,
                4,
                7,
                8,
                &payload,
                &mut text,
            )
            .expect("fits");
            let mut d = Decoder::new(Envelope::ELanguage, 1 << 20);
            d.feed(&text);
            let f = d.decode().expect("valid").expect("whole");
            assert_eq!(&raw[..HEADER_LEN], &f.header.to_bytes()[..]);
            assert_eq!(&raw[HEADER_LEN..], &f.payload[..]);
            let mut body = raw[HEADER_LEN..].to_vec();
            let aad: [u8; AAD_LEN] = raw[..AAD_LEN].try_into().expect("aad");
            let n = key.open(4, f.header.flags, &aad, &mut body).expect("opens");
            assert_eq!(&body[..n], &payload[..]);
        }
    }

    #[test]
    fn a_heartbeat_has_the_bytes_protocol_md_shows() {
        let mut out = Vec::new();
        encode_frame(Envelope::Raw, FrameKind::Heartbeat, 5, 0, 0, &[], &mut out)
            .expect("empty payload");
        let mut expected = Vec::from(*b"GSYN\x01\x05\x00\x00");
        expected.extend_from_slice(&5u64.to_be_bytes());
        expected.extend_from_slice(&[0; 24]);
        expected.extend_from_slice(&[0xdb, 0xfd, 0x1c, 0x46]);
        assert_eq!(out, expected);
    }
}
