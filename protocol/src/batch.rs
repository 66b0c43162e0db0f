//! Batch frames: several Open, Data and Commit records, of one transfer or many, in one frame
//! answered by one reply byte. One round trip then carries a whole frame of small files, and
//! the receiver makes all the commits of a frame durable together before it answers.
//!
//! Payload of a `Batch` frame (kind 6), records back to back, big-endian:
//!
//! ```text
//! +------+-------------+-------------+-----------+----------------+
//! | kind | transfer    | offset      | length    | body           |
//! | u8   | u64         | u64         | u32       | length bytes   |
//! +------+-------------+-------------+-----------+----------------+
//! ```
//!
//! `kind` is Open (2), Data (3) or Commit (4), and the body is what a frame of that kind would
//! carry. A batch holds at least one record and no trailing bytes. OK means every record was
//! applied and every commit in it is durable; FAIL means one was refused (the receiver applies
//! records in order and stops at the first refusal; commits staged before it are not made
//! visible, and are repeated by the sender).

use bytes::Bytes;

use crate::error::DecodeError;
use crate::frame::FrameKind;

/// Bytes in front of each record's body.
pub const RECORD_HEADER_LEN: usize = 21;

/// Set in a record's kind byte (Data only, version-2 connections that negotiated compression):
/// the body is the original length (u32, big-endian) and then one zstd frame. See
/// [`crate::compress`].
pub const RECORD_COMPRESSED: u8 = 0x80;

/// One record of a batch, its body sharing the frame's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: FrameKind,
    pub transfer: u64,
    pub offset: u64,
    pub body: Bytes,
    /// The body is compressed (kind byte `0x83`); [`crate::compress`] restores it.
    pub compressed: bool,
}

/// Writes the header of the record that starts at `start` of `out`: the caller reserved
/// `RECORD_HEADER_LEN` placeholder bytes there and appended the body after them. Returns the
/// body length, or `None` if `start` leaves no room for a header or the body exceeds u32.
pub fn finish_record(
    out: &mut [u8],
    start: usize,
    kind: FrameKind,
    transfer: u64,
    offset: u64,
) -> Option<u32> {
    let body_start = start.checked_add(RECORD_HEADER_LEN)?;
    let len = u32::try_from(out.len().checked_sub(body_start)?).ok()?;
    let head: &mut [u8; RECORD_HEADER_LEN] = out.get_mut(start..body_start)?.try_into().ok()?;
    head[0] = kind as u8;
    head[1..9].copy_from_slice(&transfer.to_be_bytes());
    head[9..17].copy_from_slice(&offset.to_be_bytes());
    head[17..21].copy_from_slice(&len.to_be_bytes());
    Some(len)
}

/// Splits a batch payload into its records. Every length is checked against what is left of
/// the payload before it is used; an empty batch, a kind other than Open, Data or Commit, a
/// truncated record and trailing bytes are errors.
pub fn parse_batch(payload: &Bytes) -> Result<Vec<Record>, DecodeError> {
    parse_records(payload, false)
}

/// [`parse_batch`], also accepting compressed Data records (kind byte `0x83`) when
/// `compressed_allowed`: the connection negotiated compression.
pub fn parse_records(
    payload: &Bytes,
    compressed_allowed: bool,
) -> Result<Vec<Record>, DecodeError> {
    let bad = |reason: &'static str| DecodeError::BadBatch(reason);
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < payload.len() {
        let head = payload
            .get(at..)
            .and_then(|r| r.first_chunk::<RECORD_HEADER_LEN>())
            .ok_or(bad("a record header is cut short"))?;
        let compressed = head[0] == RECORD_COMPRESSED | FrameKind::Data as u8;
        let kind = match FrameKind::from_u8(head[0]) {
            Some(k @ (FrameKind::Open | FrameKind::Data | FrameKind::Commit)) => k,
            None if compressed && compressed_allowed => FrameKind::Data,
            None if compressed => {
                return Err(bad(
                    "a compressed record on a connection that did not negotiate compression",
                ));
            }
            _ => return Err(bad("a record kind is not Open, Data or Commit")),
        };
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let (transfer, offset) = (word(1), word(9));
        let len = u32::from_be_bytes([head[17], head[18], head[19], head[20]]) as usize;
        let body_start = at + RECORD_HEADER_LEN;
        let body_end = body_start
            .checked_add(len)
            .filter(|&e| e <= payload.len())
            .ok_or(bad("a record body runs past the end of the frame"))?;
        records.push(Record {
            kind,
            transfer,
            offset,
            body: payload.slice(body_start..body_end),
            compressed,
        });
        at = body_end;
    }
    if records.is_empty() {
        return Err(bad("the batch holds no record"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[(FrameKind, u64, u64, &[u8])]) -> Bytes {
        let mut out = Vec::new();
        for (k, t, o, b) in records {
            let start = out.len();
            out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
            out.extend_from_slice(b);
            finish_record(&mut out, start, *k, *t, *o).expect("fits");
        }
        Bytes::from(out)
    }

    #[test]
    fn records_round_trip_and_share_the_buffer() {
        let b = batch(&[
            (FrameKind::Open, 7, 0, b"open body"),
            (FrameKind::Data, 7, 0, b"hello"),
            (FrameKind::Data, 7, 5, b""),
            (FrameKind::Commit, 7, 0, &[9; 33]),
            (FrameKind::Open, 8, 0, b"second"),
        ]);
        let r = parse_batch(&b).expect("valid");
        assert_eq!(r.len(), 5);
        assert_eq!(
            (r[1].kind, r[1].transfer, r[1].offset),
            (FrameKind::Data, 7, 0)
        );
        assert_eq!(&r[1].body[..], b"hello");
        assert_eq!(r[2].body.len(), 0);
        assert_eq!(&r[4].body[..], b"second");
    }

    #[test]
    fn the_example_in_protocol_md_is_exact() {
        let b = batch(&[(FrameKind::Data, 0x0000_0001_0000_0001, 0, b"ab")]);
        let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "03 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 02 61 62"
        );
    }

    #[test]
    fn every_malformed_batch_is_an_error_never_a_panic() {
        let good = batch(&[
            (FrameKind::Data, 1, 0, b"abc"),
            (FrameKind::Commit, 1, 0, b"x"),
        ]);
        let boundary = RECORD_HEADER_LEN + 3;
        for cut in 1..good.len() {
            let r = parse_batch(&good.slice(..cut));
            assert_eq!(r.is_ok(), cut == boundary, "a batch cut at {cut}");
        }
        assert!(parse_batch(&Bytes::new()).is_err(), "empty");
        let mut nested = good.to_vec();
        nested[0] = FrameKind::Hello as u8;
        assert!(parse_batch(&Bytes::from(nested)).is_err(), "a Hello inside");
        let mut huge = good.to_vec();
        huge[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            parse_batch(&Bytes::from(huge)).is_err(),
            "length past the end"
        );
        let mut trailing = good.to_vec();
        trailing.push(3);
        assert!(
            parse_batch(&Bytes::from(trailing)).is_err(),
            "trailing byte"
        );
    }
}
