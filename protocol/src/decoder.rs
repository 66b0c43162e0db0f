//! The one decoder for the frame grammar, in both envelopes.
//!
//! `decode` returns `Ok(None)` when more bytes are needed and `Err` when the stream is corrupt.
//! Every length is compared with the profile's maximum before the buffer grows for it.

use bytes::{Buf as _, BytesMut};

use crate::envelope::{self, E_PREFIX, E_SUFFIX, Envelope};
use crate::error::DecodeError;
use crate::frame::{FrameHeader, FrameKind, HEADER_LEN, MAGIC, speaks_version};

/// A whole, checksum-verified frame. The payload is the decoder's own buffer, so that a
/// sealed frame can be opened in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: BytesMut,
}

/// Streaming frame decoder. Feed it bytes, take frames out.
#[derive(Debug)]
pub struct Decoder {
    envelope: Envelope,
    max_frame: usize,
    buf: BytesMut,
    /// E-language: where the search for the block end resumes.
    scan_from: usize,
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder that refuses frames (header + payload) longer than `max_frame` bytes.
    pub fn new(envelope: Envelope, max_frame: u32) -> Self {
        Self {
            envelope,
            max_frame: max_frame as usize,
            buf: BytesMut::new(),
            scan_from: 0,
            scratch: Vec::new(),
        }
    }

    /// Changes the largest frame accepted from now on.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame as usize;
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, for reading from a socket straight into it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        match self.envelope {
            Envelope::Raw => self.decode_raw(),
            Envelope::ELanguage => self.decode_e_language(),
        }
    }

    fn decode_raw(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(head) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = parse_header(head, self.max_frame)?;
        let total = HEADER_LEN + header.length as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(header.length as usize);
        check_payload(&header, &payload)?;
        Ok(Some(Frame { header, payload }))
    }

    fn decode_e_language(&mut self) -> Result<Option<Frame>, DecodeError> {
        let have = self.buf.len().min(E_PREFIX.len());
        if self.buf.get(..have) != E_PREFIX.get(..have) {
            return Err(DecodeError::BadEnvelope(
                "the block does not start with the E-language header line",
            ));
        }
        if self.buf.len() < E_PREFIX.len() {
            return Ok(None);
        }
        let max_text = envelope::base64_len(self.max_frame);
        let text_start = E_PREFIX.len();
        let start = text_start + self.scan_from;
        let Some(rel_end) = find(self.buf.get(start..).unwrap_or_default(), E_SUFFIX) else {
            let text_len = self.buf.len() - text_start;
            if text_len > max_text + E_SUFFIX.len() {
                return Err(DecodeError::TooLong {
                    length: text_len as u64 * 3 / 4,
                    max: self.max_frame as u64,
                });
            }
            // Resume the search where a partial suffix could still start.
            self.scan_from = text_len.saturating_sub(E_SUFFIX.len());
            return Ok(None);
        };
        let text_end = start + rel_end;
        self.scan_from = 0;
        if text_end - text_start > max_text {
            return Err(DecodeError::TooLong {
                length: (text_end - text_start) as u64 * 3 / 4,
                max: self.max_frame as u64,
            });
        }
        let text = self.buf.get(text_start..text_end).unwrap_or_default();
        envelope::unwrap_text(text, &mut self.scratch)
            .map_err(|_| DecodeError::BadEnvelope("the block is not valid base64"))?;
        self.buf.advance(text_end + E_SUFFIX.len());
        let head = self
            .scratch
            .first_chunk::<HEADER_LEN>()
            .ok_or(DecodeError::BadEnvelope(
                "the block is shorter than a frame header",
            ))?;
        let header = parse_header(head, self.max_frame)?;
        let payload = self.scratch.get(HEADER_LEN..).unwrap_or_default();
        if payload.len() != header.length as usize {
            return Err(DecodeError::BadEnvelope(
                "the block length does not match the frame header",
            ));
        }
        let payload = BytesMut::from(payload);
        check_payload(&header, &payload)?;
        Ok(Some(Frame { header, payload }))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(at..at + 8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b.get(at..at + 4).unwrap_or(&[0; 4]));
    u32::from_be_bytes(a)
}

/// Parses and checks the 44 header bytes (magic, version, header CRC, flags, kind, and the
/// frame's length against `max_frame`); the payload's CRC is the caller's to check.
pub fn parse_header(head: &[u8; HEADER_LEN], max_frame: usize) -> Result<FrameHeader, DecodeError> {
    let magic: [u8; 4] = [head[0], head[1], head[2], head[3]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if !speaks_version(head[4]) {
        return Err(DecodeError::BadVersion(head[4]));
    }
    if crc32fast::hash(&head[0..40]) != be_u32(head, 40) {
        return Err(DecodeError::HeaderCrc);
    }
    let flags = u16::from_be_bytes([head[6], head[7]]);
    if flags & !(crate::crypto::FLAG_AUTH | crate::crypto::FLAG_ENCRYPTED) != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    let kind = FrameKind::from_u8(head[5]).ok_or(DecodeError::BadKind(head[5]))?;
    let length = be_u32(head, 32);
    let total = HEADER_LEN as u64 + u64::from(length);
    if total > max_frame as u64 {
        return Err(DecodeError::TooLong {
            length: total,
            max: max_frame as u64,
        });
    }
    Ok(FrameHeader {
        version: head[4],
        kind,
        sequence: be_u64(head, 8),
        transfer: be_u64(head, 16),
        offset: be_u64(head, 24),
        flags,
        length,
        payload_crc: be_u32(head, 36),
    })
}

fn check_payload(header: &FrameHeader, payload: &[u8]) -> Result<(), DecodeError> {
    if crc32fast::hash(payload) != header.payload_crc {
        return Err(DecodeError::PayloadCrc {
            sequence: header.sequence,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;

    type Sent = (FrameKind, u64, u64, Vec<u8>);

    fn sample(envelope: Envelope) -> (Vec<u8>, Vec<Sent>) {
        let frames = vec![
            (FrameKind::Hello, 0, 0, b"hello body".to_vec()),
            (FrameKind::Open, 1, 7, vec![]),
            (
                FrameKind::Data,
                2,
                7,
                (0..=255u8).cycle().take(1000).collect(),
            ),
            (FrameKind::Commit, 3, 7, vec![9; 33]),
            (FrameKind::Heartbeat, 4, 0, vec![]),
        ];
        let mut wire = Vec::new();
        for (kind, seq, tid, body) in &frames {
            encode_frame(envelope, *kind, *seq, *tid, 5, body, &mut wire).expect("small payload");
        }
        (wire, frames)
    }

    fn decode_all(envelope: Envelope, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut d = Decoder::new(envelope, 4096);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c);
            while let Some(f) = d.decode().expect("valid input") {
                out.push(f);
            }
        }
        assert_eq!(d.buffered(), 0);
        out
    }

    #[test]
    fn every_split_of_valid_input_decodes_the_same_frames() {
        for envelope in [Envelope::Raw, Envelope::ELanguage] {
            let (wire, frames) = sample(envelope);
            for split in 0..=wire.len() {
                let (a, b) = wire.split_at(split);
                let got = decode_all(envelope, &[a, b]);
                assert_eq!(got.len(), frames.len(), "split at {split}");
                for (f, (kind, seq, tid, body)) in got.iter().zip(&frames) {
                    assert_eq!(f.header.kind, *kind);
                    assert_eq!(f.header.sequence, *seq);
                    assert_eq!(f.header.transfer, *tid);
                    assert_eq!(&f.payload[..], &body[..]);
                }
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding_decodes_the_same_frames() {
        for envelope in [Envelope::Raw, Envelope::ELanguage] {
            let (wire, frames) = sample(envelope);
            let chunks: Vec<&[u8]> = wire.chunks(1).collect();
            assert_eq!(decode_all(envelope, &chunks).len(), frames.len());
        }
    }

    #[test]
    fn every_flipped_bit_is_refused_or_changes_nothing_silently() {
        let (wire, _) = sample(Envelope::Raw);
        for bit in 0..wire.len() * 8 {
            let mut bad = wire.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut d = Decoder::new(Envelope::Raw, 4096);
            d.feed(&bad);
            let mut n = 0;
            let err = loop {
                match d.decode() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            // A flipped bit must be detected: either an error or a stall waiting for bytes
            // that never come (a length that grew); never five clean frames.
            assert!(err.is_some() || n < 5, "bit {bit} went unnoticed");
        }
    }

    #[test]
    fn length_over_the_maximum_is_refused_before_buffering() {
        let mut wire = Vec::new();
        encode_frame(Envelope::Raw, FrameKind::Data, 0, 1, 0, &[0; 10], &mut wire).expect("ok");
        // Rewrite the length to 4 GiB - 1 and fix the header CRC: a well-formed hostile header.
        wire[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
        let crc = crc32fast::hash(&wire[0..40]);
        wire[40..44].copy_from_slice(&crc.to_be_bytes());
        let mut d = Decoder::new(Envelope::Raw, 1 << 20);
        d.feed(&wire[..HEADER_LEN]);
        assert!(matches!(d.decode(), Err(DecodeError::TooLong { .. })));
        assert!(d.buffer_mut().capacity() < 1 << 16);
    }

    #[test]
    fn e_language_block_without_end_is_refused_once_over_the_limit() {
        let mut d = Decoder::new(Envelope::ELanguage, 1024);
        d.feed(E_PREFIX);
        d.feed(&vec![b'A'; 2000]);
        assert!(matches!(d.decode(), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn fuzz_body_runs_on_a_sample() {
        let (wire, _) = sample(Envelope::ELanguage);
        // The fuzz targets' bodies (crate::fuzz) on a valid stream, a cut one and a stub.
        for data in [&wire[..], &wire[3..], b"GSYN\x01\x03"] {
            crate::fuzz::frame_decoder(data);
            crate::fuzz::e_language(data);
        }
    }
}
