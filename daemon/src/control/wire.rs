//! The bytes on the control socket: one JSON object per line each way, read with a limit so
//! that a client cannot make the daemon buffer more than [`MAX_REQUEST`] bytes.

use std::io::{self, BufRead as _};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _};

/// The longest request line the daemon reads (a request is a few dozen bytes).
pub(crate) const MAX_REQUEST: usize = 4096;

/// The longest answer the client reads: `pipes` with thousands of pipes fits.
pub(crate) const MAX_RESPONSE: usize = 16 << 20;

/// How long the daemon waits for a client's request line, and for writing its answer.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request may wait for the daemon's answer (a reload restarts pipes).
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A line read with a limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// The line without its newline (or everything before end of input).
    Complete(Vec<u8>),
    /// More than the limit arrived before a newline; the rest was not read.
    TooLong,
    /// End of input before any byte.
    Empty,
}

impl Line {
    fn from_read(mut buf: Vec<u8>, limit: usize) -> Self {
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.len() > limit {
            Self::TooLong
        } else if buf.is_empty() {
            Self::Empty
        } else {
            Self::Complete(buf)
        }
    }
}

/// Reads one line of at most `limit` bytes (newline excluded) without reading further.
pub(crate) async fn read_line<R: AsyncRead + Unpin>(r: R, limit: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    tokio::io::BufReader::new(r.take(cap))
        .read_until(b'\n', &mut buf)
        .await?;
    Ok(Line::from_read(buf, limit))
}

/// The blocking twin of [`read_line`], for the command-line client.
pub(crate) fn read_line_blocking<R: io::Read>(r: R, limit: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    io::BufReader::new(r.take(cap)).read_until(b'\n', &mut buf)?;
    Ok(Line::from_read(buf, limit))
}

/// `value` as one JSON line.
pub(crate) fn to_line<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs and enums cannot fail (string keys, no maps of other keys).
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], limit: usize) -> Line {
        read_line_blocking(bytes, limit).expect("read")
    }

    #[test]
    fn a_line_up_to_the_limit_is_read_whole() {
        assert_eq!(read(b"abcd\nrest", 4), Line::Complete(b"abcd".to_vec()));
        assert_eq!(read(b"abcd", 4), Line::Complete(b"abcd".to_vec()));
        assert_eq!(read(b"", 4), Line::Empty);
    }

    #[test]
    fn a_line_over_the_limit_is_refused_after_reading_limit_plus_one_bytes() {
        assert_eq!(read(b"abcde\n", 4), Line::TooLong);
        assert_eq!(read(b"abcdefghijkl", 4), Line::TooLong);
        let mut src: &[u8] = &[b'x'; 100];
        assert_eq!(
            read_line_blocking(&mut src, 4).expect("read"),
            Line::TooLong
        );
        assert_eq!(
            src.len(),
            100 - 5,
            "read no further than the limit and one byte"
        );
    }
}
