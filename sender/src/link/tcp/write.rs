//! Writing frames to the gate: paced to the profile's rate and to the pipe's `rate_limit`
//! processor, the payload written from where it lies behind the session's header, flushed (TLS
//! keeps records until flushed).

use std::time::{Duration, Instant};

use gapsync_protocol::{FrameKind, SenderSession};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::pipe::batch::PipeWorker;

/// Sends the frame whose payload `w.buf` holds, paced, and writes it out.
pub async fn send<W: AsyncWrite + Unpin>(
    s: &mut SenderSession,
    wr: &mut W,
    pacer: &mut Pacer,
    w: &PipeWorker,
    (kind, transfer, offset): (FrameKind, u64, u64),
    limit: Duration,
) -> Result<(), String> {
    // Where the session queued only the frame's header, the payload is written from where it
    // lies, right behind it (no copy of up to a frame's bytes behind the header).
    let payload: &[u8] = match s.send_split(kind, transfer, offset, &w.buf, Instant::now()) {
        Ok((_, true)) => &w.buf,
        Ok((_, false)) => &[],
        Err(e) => {
            tracing::error!(pipe = %w.pipe.cfg.name, error = %e, "internal: a frame did not fit the session");
            return Err(format!("internal: {e}"));
        }
    };
    let wire = s.pending_output().len() + payload.len();
    pacer.wait(wire).await;
    if let Some(limiter) = &w.pipe.limiter {
        // The pipe's rate_limit counts wire bytes when listed after compress, else the
        // original bytes the frame carries.
        let counted = if w.pipe.cfg.processors.limit_after_compress() {
            wire
        } else {
            wire.max(w.buf.len())
        };
        limiter.take(counted as u64).await;
    }
    write_out(s, wr, payload, limit).await
}

pub async fn flush<W: AsyncWrite + Unpin>(
    s: &mut SenderSession,
    wr: &mut W,
    limit: Duration,
) -> Result<(), String> {
    write_out(s, wr, &[], limit).await
}

/// Writes the session's pending output and then `payload`, in as few writes as the stream
/// takes (vectored where it can), and flushes.
async fn write_out<W: AsyncWrite + Unpin>(
    s: &mut SenderSession,
    wr: &mut W,
    payload: &[u8],
    limit: Duration,
) -> Result<(), String> {
    if s.pending_output().is_empty() && payload.is_empty() {
        return Ok(());
    }
    // TLS keeps records it could not hand to the socket until flushed: without the flush the
    // tail of a frame could wait for the next write, and the receiver never answer it.
    let write = async {
        let (mut head, mut body) = (s.pending_output(), payload);
        while !head.is_empty() || !body.is_empty() {
            let n = if head.is_empty() {
                wr.write(body).await?
            } else {
                let parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
                wr.write_vectored(&parts).await?
            };
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        wr.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => {
            s.clear_output();
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the gate accepted no bytes for {}",
            humantime::format_duration(limit)
        )),
    }
}

/// Paces writes to the profile's `rate_limit_mbit` (a token bucket with one frame of burst).
pub struct Pacer {
    bytes_per_sec: Option<f64>,
    next_free: tokio::time::Instant,
}

impl Pacer {
    pub fn new(mbit: Option<u64>) -> Self {
        Self {
            bytes_per_sec: mbit.map(|m| m as f64 * 1e6 / 8.0),
            next_free: tokio::time::Instant::now(),
        }
    }

    /// Waits until `n` more bytes may be written.
    async fn wait(&mut self, n: usize) {
        let Some(rate) = self.bytes_per_sec else {
            return;
        };
        let now = tokio::time::Instant::now();
        let start = self.next_free.max(now);
        self.next_free = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(start).await;
    }
}
