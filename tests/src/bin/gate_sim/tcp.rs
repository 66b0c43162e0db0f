//! The simulator's TCP mode: a forward isolation gate. Each connection is relayed in both
//! directions: the sender's bytes forward (faults applied, frames counted), the receiver's
//! reply bytes back (each checked against the one-byte rule).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use gapsync_protocol::{Decoder, Envelope};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Shared, take_in};

/// Bytes to deliver at a time; for the forward direction also the number of frames the sender
/// has started once these bytes are delivered (counted on the bytes before any fault).
type Chunk = (Instant, Vec<u8>, u64);

/// Chunks (of at most 64 KiB) the forward direction holds while they wait out the added
/// latency: the bytes in flight on the simulated link. At 64 chunks it held 4 MiB, so a
/// window of 8 frames of 1 MiB at +50 ms waited half in the sender's socket, and its second
/// half reached the receiver a whole one-way trip late (BENCHMARKS.md, scenario 4).
const DELAY_LINE_CHUNKS: usize = 4096;

/// Bytes read from the sender at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Where a direction's bytes go once the gate has looked at them.
enum Out<W> {
    /// Written at once, by the task that read them: no added latency and no rate cap. No queue
    /// and no timer between reading and writing, so a frame (and an answer) is not held until
    /// tokio's timer next ticks (it wakes on whole milliseconds, even for a due time already
    /// past), and the relay keeps a plain stream's pace (BENCHMARKS.md, scenario 4).
    Direct(W),
    /// Queued for a writer task that waits out the latency and the rate cap.
    Line(mpsc::Sender<Chunk>, Duration),
}

impl<W: tokio::io::AsyncWrite + Unpin> Out<W> {
    /// Delivers `data` (at once, or after the latency); false once the other side is gone.
    /// `published` runs just before a direct write (the latency line's writer publishes
    /// before it writes).
    async fn deliver(&mut self, data: Vec<u8>, tag: u64, published: impl FnOnce(u64)) -> bool {
        match self {
            Out::Direct(w) => {
                published(tag);
                w.write_all(&data).await.is_ok()
            }
            Out::Line(tx, latency) => tx
                .send((Instant::now() + *latency, data, tag))
                .await
                .is_ok(),
        }
    }
}

pub async fn relay(shared: Arc<Shared>, client: TcpStream, server: TcpStream, envelope: Envelope) {
    let peer = client
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut c_rd, c_wr) = client.into_split();
    let (mut s_rd, s_wr) = server.into_split();
    let latency = Duration::from_millis(shared.args.latency_ms);
    let frames_delivered = Arc::new(AtomicU64::new(0));
    let direct = latency.is_zero() && shared.args.rate_mbit.is_none();
    let (ftx, mut frx) = mpsc::channel::<Chunk>(DELAY_LINE_CHUNKS);
    let (rtx, mut rrx) = mpsc::channel::<Chunk>(64);
    // With the queues unused, their writers end at once and drop nothing.
    let (mut fout, s_wr) = if direct {
        (Out::Direct(s_wr), None)
    } else {
        (Out::Line(ftx, latency), Some(s_wr))
    };
    let (mut rout, c_wr) = if direct {
        (Out::Direct(c_wr), None)
    } else {
        (Out::Line(rtx, latency), Some(c_wr))
    };

    // sender -> gate: faults applied at read time.
    let sh = shared.clone();
    let delivered = frames_delivered.clone();
    let forward_read = async move {
        let mut decoder = Decoder::new(envelope, sh.args.max_frame);
        let mut complete = 0u64;
        // False once the stream could not be decoded (not gapsync frames, e.g. the bench's raw
        // copy): from then on bytes are only relayed, without decoding or a message per chunk.
        let mut counting = true;
        // Publish the frame count before writing: a reply can only come after the write.
        let publish = |started: u64| {
            delivered.fetch_max(started, SeqCst);
        };
        loop {
            let mut data = Vec::with_capacity(READ_CHUNK);
            let n = match c_rd.read_buf(&mut data).await {
                Ok(0) | Err(_) => return "sender closed",
                Ok(n) => n,
            };
            let start = sh.position.fetch_add(n as u64, SeqCst);
            let end = start + n as u64;
            if counting {
                decoder.feed(&data);
            }
            while counting {
                let frame = match decoder.decode() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("cannot count frames any more (relaying bytes only): {e}");
                        counting = false;
                        break;
                    }
                };
                complete += 1;
                sh.stats.frames.fetch_add(1, SeqCst);
                let nth = sh.frames_seen.fetch_add(1, SeqCst) + 1;
                if !take_in(&sh.faults.dups, nth, nth + 1).is_empty() {
                    // Insert a copy right after the frame's last byte in this chunk.
                    let mut copy = Vec::new();
                    let h = frame.header;
                    let _ = gapsync_protocol::encode_frame(
                        envelope,
                        h.kind,
                        h.sequence,
                        h.transfer,
                        h.offset,
                        &frame.payload,
                        &mut copy,
                    );
                    let at = data.len() - decoder.buffered();
                    data.splice(at..at, copy.iter().copied());
                    // The copy is a frame the receiver may answer, too.
                    complete += 1;
                    sh.stats.duplicated.fetch_add(1, SeqCst);
                    eprintln!("fault: duplicated frame {nth}");
                }
            }
            // A frame whose first bytes were forwarded may be answered (FAIL) before its end.
            let started = complete + u64::from(decoder.buffered() > 0);
            for at in take_in(&sh.faults.flips, start, end) {
                data[(at - start) as usize] ^= 1;
                sh.stats.flips.fetch_add(1, SeqCst);
                eprintln!("fault: flipped a bit at byte {at}");
            }
            let cut = take_in(&sh.faults.cuts, start + 1, end + 1)
                .first()
                .copied();
            if let Some(at) = cut {
                data.truncate((at - start) as usize);
            } else if !take_in(&sh.faults.stalls, start, end).is_empty() {
                sh.stats.stalls.fetch_add(1, SeqCst);
                eprintln!("fault: stalling for {} ms", sh.args.stall_ms);
                tokio::time::sleep(Duration::from_millis(sh.args.stall_ms)).await;
            }
            let len = data.len() as u64;
            let sent = fout.deliver(data, started, publish).await;
            // The latency line's writer counts the bytes it writes.
            if sent && direct {
                sh.stats.forward_bytes.fetch_add(len, SeqCst);
            }
            if let Some(at) = cut {
                sh.stats.cuts.fetch_add(1, SeqCst);
                eprintln!("fault: cut the connection after byte {at}");
                return "cut";
            }
            if !sent {
                return "receiver side closed";
            }
        }
    };
    // gate -> receiver after the latency line: latency, rate cap.
    let sh = shared.clone();
    let delivered = frames_delivered.clone();
    let forward_write = async move {
        let Some(mut s_wr) = s_wr else {
            return "direct";
        };
        let mut next_free = Instant::now();
        while let Some((due, data, started)) = frx.recv().await {
            tokio::time::sleep_until(due).await;
            if let Some(mbit) = sh.args.rate_mbit {
                let cost = Duration::from_secs_f64(data.len() as f64 * 8.0 / (mbit * 1e6));
                next_free = next_free.max(Instant::now()) + cost;
                tokio::time::sleep_until(next_free).await;
            }
            // Publish the frame count before writing: a reply can only come after the write.
            delivered.fetch_max(started, SeqCst);
            if s_wr.write_all(&data).await.is_err() {
                return "receiver closed";
            }
            sh.stats.forward_bytes.fetch_add(data.len() as u64, SeqCst);
        }
        "forward queue closed"
    };
    // receiver -> gate: the one-byte rule, swallowed acks.
    let sh = shared.clone();
    let delivered = frames_delivered.clone();
    let reverse_read = async move {
        let mut buf = [0u8; 4096];
        let mut replies_here = 0u64;
        loop {
            let n = match s_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return "receiver closed",
                Ok(n) => n,
            };
            let mut out = Vec::with_capacity(n);
            for &b in &buf[..n] {
                replies_here += 1;
                let nth = sh.replies.fetch_add(1, SeqCst) + 1;
                let frames = delivered.load(SeqCst);
                if b != 0x00 && b != 0xFF {
                    violation(&sh, format!("reply byte {b:#04x} is neither 0x00 nor 0xFF"));
                    return "violation";
                }
                if replies_here > frames {
                    violation(
                        &sh,
                        format!(
                            "{replies_here} reply bytes for {frames} forwarded frame(s): a byte nobody asked for"
                        ),
                    );
                    return "violation";
                }
                if !take_in(&sh.faults.delays, nth, nth + 1).is_empty() {
                    sh.stats.delayed_acks.fetch_add(1, SeqCst);
                    eprintln!(
                        "fault: holding reply byte {nth} for {} ms",
                        sh.args.delay_ms
                    );
                    rout.deliver(std::mem::take(&mut out), 0, |_| {}).await;
                    tokio::time::sleep(Duration::from_millis(sh.args.delay_ms)).await;
                }
                if !take_in(&sh.faults.drops, nth, nth + 1).is_empty() {
                    sh.stats.dropped_acks.fetch_add(1, SeqCst);
                    eprintln!("fault: swallowed reply byte {nth} and cut the connection");
                    rout.deliver(out, 0, |_| {}).await;
                    return "dropped ack";
                }
                out.push(b);
            }
            sh.stats.reverse_bytes.fetch_add(n as u64, SeqCst);
            if !rout.deliver(out, 0, |_| {}).await {
                return "sender side closed";
            }
        }
    };
    // gate -> sender after the latency line.
    let reverse_write = async move {
        let Some(mut c_wr) = c_wr else {
            return "direct";
        };
        while let Some((due, data, _)) = rrx.recv().await {
            tokio::time::sleep_until(due).await;
            if c_wr.write_all(&data).await.is_err() {
                return "sender closed";
            }
        }
        "reverse queue closed"
    };
    // The first direction to end ends the connection, after queued bytes are delivered.
    let (fr, fw, rr, rw) = (
        tokio::spawn(forward_read),
        tokio::spawn(forward_write),
        tokio::spawn(reverse_read),
        tokio::spawn(reverse_write),
    );
    let aborts = [
        fr.abort_handle(),
        fw.abort_handle(),
        rr.abort_handle(),
        rw.abort_handle(),
    ];
    let why = tokio::select! {
        r = fr => r.unwrap_or("the forward relay failed"),
        r = rr => r.unwrap_or("the reverse relay failed"),
    };
    // Let already-read bytes drain (they were sent before the cut), then close everything.
    tokio::time::sleep(latency + Duration::from_millis(20)).await;
    for a in aborts {
        a.abort();
    }
    // Why each connection ended: the first thing to read when a run went wrong.
    eprintln!("connection {peer} closed: {why}");
}

fn violation(sh: &Shared, what: String) {
    sh.stats.violations.fetch_add(1, SeqCst);
    eprintln!("VIOLATION: {what}");
}
