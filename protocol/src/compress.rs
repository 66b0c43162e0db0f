//! Compression of Data records (the pipe's `compress` processor), negotiated in the Hello of
//! a version-2 connection.
//!
//! Each Data record of a Batch frame is compressed on its own, so a transfer resumes at any
//! acknowledged offset as before. A compressed record has kind byte `0x83` and the body
//!
//! ```text
//! +-----------------------+-------------------------------+
//! | original length (u32) | one zstd frame                |
//! +-----------------------+-------------------------------+
//! ```
//!
//! Its `offset` counts original bytes, like every offset and acknowledgement. A record that
//! would not shrink (incompressible data, or under [`MIN_COMPRESS`] bytes) is sent as a plain
//! Data record (kind 3). The sender compresses before it seals (encrypts): the tag covers the
//! compressed frame. The receiver checks the original lengths of a frame's compressed records
//! against the profile's largest payload **before** it allocates, then decompresses each into
//! exactly its declared size, so a compression bomb is refused, naming the frame.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::batch::{RECORD_COMPRESSED, RECORD_HEADER_LEN, Record};
use crate::error::DecodeError;
use crate::frame::FrameKind;

/// Data records shorter than this are never compressed (zstd's frame costs more than it saves).
pub const MIN_COMPRESS: usize = 64;
/// Bytes in front of the zstd frame in a compressed record: the original length.
pub const ORIGINAL_LEN_BYTES: usize = 4;

/// The codec a pipe compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Zstandard (RFC 8878), wire id 1.
    Zstd,
}

impl Codec {
    /// The codec's byte in the Hello.
    pub fn wire_id(self) -> u8 {
        match self {
            Self::Zstd => 1,
        }
    }

    /// The codec for a Hello byte, `None` if unknown.
    pub fn from_wire(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Zstd => "zstd",
        })
    }
}

/// A compression setting: codec and level. Only valid values can be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Compression {
    codec: Codec,
    level: u8,
}

/// A compression setting out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("zstd level {0} is out of range; use 1 (fastest) to 19 (smallest)")]
    Level(i64),
}

impl Compression {
    /// Lowest zstd level accepted.
    pub const MIN_LEVEL: u8 = 1;
    /// Highest zstd level accepted (20-22 need large windows and are refused).
    pub const MAX_LEVEL: u8 = 19;

    /// zstd at `level`, 1 to 19.
    pub fn zstd(level: i64) -> Result<Self, CompressionError> {
        match u8::try_from(level) {
            Ok(l) if (Self::MIN_LEVEL..=Self::MAX_LEVEL).contains(&l) => Ok(Self {
                codec: Codec::Zstd,
                level: l,
            }),
            _ => Err(CompressionError::Level(level)),
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn level(&self) -> u8 {
        self.level
    }
}

/// The sender's compressor: rewrites a batch, compressing each Data record that shrinks.
pub(crate) struct BatchCompressor {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl fmt::Debug for BatchCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchCompressor").finish_non_exhaustive()
    }
}

impl BatchCompressor {
    /// `None` only if zstd cannot allocate its context.
    pub(crate) fn new(c: Compression) -> Option<Self> {
        let zstd = zstd::bulk::Compressor::new(i32::from(c.level)).ok()?;
        Some(Self {
            zstd,
            scratch: Vec::new(),
        })
    }

    /// Writes `batch` to `out` with its Data records compressed where that saves bytes.
    /// Returns `false` (and leaves `out` unusable) if `batch` is not a well-formed batch, in
    /// which case the caller sends it unchanged.
    pub(crate) fn compress_batch(&mut self, batch: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        out.reserve(batch.len());
        let mut rest = batch;
        while !rest.is_empty() {
            let Some((head, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
                return false;
            };
            let len = u32::from_be_bytes([head[17], head[18], head[19], head[20]]) as usize;
            let Some((body, after)) = after.split_at_checked(len) else {
                return false;
            };
            rest = after;
            if head[0] != FrameKind::Data as u8 || !self.compress_record(head, body, out) {
                out.extend_from_slice(head);
                out.extend_from_slice(body);
            }
        }
        true
    }

    /// Appends `body` compressed as a `0x83` record, or returns `false` if it would not shrink.
    fn compress_record(
        &mut self,
        head: &[u8; RECORD_HEADER_LEN],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        let Ok(original) = u32::try_from(body.len()) else {
            return false;
        };
        if body.len() < MIN_COMPRESS {
            return false;
        }
        // Room for less than the original only: a record that does not shrink fails here.
        let room = body.len() - ORIGINAL_LEN_BYTES - 1;
        self.scratch.resize(room, 0);
        let Ok(n) = self.zstd.compress_to_buffer(body, &mut self.scratch[..]) else {
            return false;
        };
        let Some(frame) = self.scratch.get(..n) else {
            return false;
        };
        let mut h = *head;
        h[0] = RECORD_COMPRESSED | FrameKind::Data as u8;
        h[17..21].copy_from_slice(&((ORIGINAL_LEN_BYTES + n) as u32).to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&original.to_be_bytes());
        out.extend_from_slice(frame);
        true
    }
}

/// The receiver's decompressor, made on the first compressed record of a connection.
pub(crate) struct Decompressor(zstd::bulk::Decompressor<'static>);

impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

impl Decompressor {
    pub(crate) fn new() -> Option<Self> {
        zstd::bulk::Decompressor::new().ok().map(Self)
    }

    /// Restores the compressed records of frame `sequence` in place. Their original lengths
    /// must add up to at most `budget` bytes (checked before the one buffer for all of them is
    /// allocated), and each must decompress to exactly its declared length.
    pub(crate) fn restore(
        &mut self,
        sequence: u64,
        records: &mut [Record],
        budget: usize,
    ) -> Result<(), DecodeError> {
        let bad = |reason: String| DecodeError::BadCompressed { sequence, reason };
        let mut total = 0usize;
        for r in records.iter().filter(|r| r.compressed) {
            let (len, _) = split_original(&r.body).map_err(bad)?;
            total = total
                .checked_add(len)
                .filter(|&t| t <= budget)
                .ok_or_else(|| {
                    bad(format!(
                        "its records claim more than {budget} original bytes (a frame's uncompressed payload limit)"
                    ))
                })?;
        }
        let mut buf = BytesMut::zeroed(total);
        let mut at = 0usize;
        for r in records.iter().filter(|r| r.compressed) {
            let (len, frame) = split_original(&r.body).map_err(bad)?;
            let dst = buf
                .get_mut(at..at + len)
                .ok_or_else(|| bad("internal: buffer too small".into()))?;
            let n = self.0.decompress_to_buffer(frame, dst).map_err(|e| {
                bad(format!(
                    "a record at offset {} does not decompress to its declared {len} bytes: {e}",
                    r.offset
                ))
            })?;
            if n != len {
                return Err(bad(format!(
                    "a record at offset {} decompressed to {n} bytes, not its declared {len}",
                    r.offset
                )));
            }
            at += len;
        }
        let mut whole: Bytes = buf.freeze();
        for r in records.iter_mut().filter(|r| r.compressed) {
            let (len, _) = split_original(&r.body).map_err(bad)?;
            r.body = whole.split_to(len);
            r.compressed = false;
        }
        Ok(())
    }
}

/// The declared original length and the zstd frame of a compressed record's body.
fn split_original(body: &[u8]) -> Result<(usize, &[u8]), String> {
    let (len, frame) = body
        .split_first_chunk::<ORIGINAL_LEN_BYTES>()
        .ok_or_else(|| "a compressed record is shorter than its length field".to_string())?;
    Ok((u32::from_be_bytes(*len) as usize, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{finish_record, parse_records};

    #[test]
    fn the_compressed_record_in_protocol_md_is_exact() {
        let text: Vec<u8> = (0..3000u32).map(|i| b"abc,123\n"[i as usize % 8]).collect();
        let mut batch = vec![0; RECORD_HEADER_LEN];
        batch.extend_from_slice(&text);
        finish_record(&mut batch, 0, FrameKind::Data, 9, 4096).expect("record");
        let mut c = BatchCompressor::new(Compression::zstd(3).expect("level")).expect("zstd");
        let mut out = Vec::new();
        assert!(c.compress_batch(&batch, &mut out));
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            hex(&out[..17]),
            "83 00 00 00 00 00 00 00 09 00 00 00 00 00 00 10 00"
        );
        let n = out.len() - RECORD_HEADER_LEN - ORIGINAL_LEN_BYTES;
        assert_eq!(out[17..21], ((4 + n) as u32).to_be_bytes());
        assert_eq!(hex(&out[21..25]), "00 00 0b b8");
        let mut records = parse_records(&Bytes::from(out), true).expect("valid");
        Decompressor::new()
            .expect("zstd")
            .restore(1, &mut records, 4052)
            .expect("fits");
        assert_eq!((records[0].offset, &records[0].body[..]), (4096, &text[..]));
        assert!(Compression::zstd(0).is_err() && Compression::zstd(20).is_err());
    }
}
