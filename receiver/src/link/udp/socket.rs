//! The diode link's socket on the receiver: large kernel buffers (forced with CAP_NET_ADMIN,
//! else a WARN with the sysctl to raise), read in batches (recvmmsg, and GRO where the kernel
//! has it) on a thread of its own that only reads, so decoding and disk writes never hold up
//! the socket.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::watch;

/// Receive buffers per read call.
const BATCH: usize = 32;
/// Bytes per receive buffer: a GRO-coalesced read is up to 64 KiB.
const BUF_BYTES: usize = 64 * 1024;
/// Receive buffer asked of the kernel when the profile does not say.
pub const DEFAULT_RCVBUF: usize = 64 * 1024 * 1024;
/// Longest pause between reads that found only a few datagrams.
const MAX_GATHER: Duration = Duration::from_millis(1);
/// Share of the receive buffer a pause may let fill at the profile's rate: an eighth, since
/// the kernel counts each 1500-byte datagram at about twice its size against the buffer.
const GATHER_SHARE: u32 = 8;

/// How long the socket thread pauses after a read that did not fill its batch, so that the
/// next read takes many datagrams at once: a paced sender's datagrams otherwise arrive a few
/// at a time and wake both threads thousands of times a second, which on a small machine costs
/// more CPU than reading them. Bounded so that the kernel buffer (`receive_buffer` bytes) fills
/// to at most an eighth at `rate_bytes_per_s`: with a buffer capped at the stock 208 KiB
/// there is almost no pause, with the profile's 64 MiB it is the full millisecond.
pub fn gather_pause(receive_buffer: usize, rate_bytes_per_s: u64) -> Duration {
    let fill = Duration::from_secs_f64(receive_buffer as f64 / rate_bytes_per_s.max(1) as f64);
    (fill / GATHER_SHARE).min(MAX_GATHER)
}

/// One read buffer: `len` bytes from `addr`, datagrams of `stride` bytes each (the last may
/// be shorter) when the kernel coalesced several (GRO).
#[derive(Debug)]
pub struct Read {
    pub addr: SocketAddr,
    pub buf: Vec<u8>,
    pub len: usize,
    pub stride: usize,
}

impl Read {
    /// The datagrams in the buffer.
    pub fn datagrams(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let (stride, len) = (self.stride.max(1), self.len.min(self.buf.len()));
        self.buf[..len].chunks_mut(stride)
    }
}

/// A batch of reads.
pub type Batch = Vec<Read>;

/// Binds the socket and sizes its receive buffer; returns it and the buffer size obtained.
pub fn bind(listen: SocketAddr, want: usize) -> io::Result<(UdpSocket, usize)> {
    let socket = UdpSocket::bind(listen)?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(want);
    // Linux reports twice the usable size; compare like with like.
    let got = sock.recv_buffer_size()? / 2;
    if got < want {
        // Above net.core.rmem_max only with CAP_NET_ADMIN (the systemd unit grants it).
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, want);
    }
    let got = sock.recv_buffer_size()? / 2;
    Ok((socket, got))
}

/// Reads datagrams until `stop` turns true, handing them to `out` in batches. Blocks when the
/// worker is behind (the kernel buffer then absorbs the burst). After a read that did not
/// fill the batch it pauses for `gather` (see [`gather_pause`]).
pub fn read_loop(
    socket: UdpSocket,
    out: SyncSender<Batch>,
    spare: Receiver<Vec<u8>>,
    gather: Duration,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let mut bufs = vec![vec![0u8; BUF_BYTES]; BATCH];
        let mut meta = vec![RecvMeta::default(); BATCH];
        loop {
            tokio::select! {
                r = socket.readable() => r?,
                _ = stop.changed() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
            let n = {
                let mut slices: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                match socket.try_io(Interest::READABLE, || {
                    state.recv(UdpSockRef::from(&socket), &mut slices, &mut meta)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            // The filled buffers go to the worker, which sends them back to be reused.
            let mut batch = Vec::with_capacity(n);
            for (i, m) in meta.iter().enumerate().take(n) {
                let fresh = spare.try_recv().unwrap_or_else(|_| vec![0u8; BUF_BYTES]);
                batch.push(Read {
                    addr: m.addr,
                    buf: std::mem::replace(&mut bufs[i], fresh),
                    len: m.len,
                    stride: m.stride,
                });
            }
            if out.send(batch).is_err() {
                return Ok(());
            }
            if n < BATCH && !gather.is_zero() {
                // Only this thread runs on this runtime, so blocking it holds up nothing else.
                std::thread::sleep(gather);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_lets_at_most_an_eighth_of_the_buffer_fill_and_never_exceeds_a_millisecond() {
        // The profile's 64 MiB at 2 Gbit/s: 33 ms to fill an eighth, so the full millisecond.
        assert_eq!(gather_pause(64 << 20, 250_000_000), MAX_GATHER);
        // The stock 208 KiB at 2 Gbit/s: an eighth fills in 106 us.
        let stock = gather_pause(212_992, 250_000_000);
        assert_eq!(stock, Duration::from_nanos(106_496));
        assert!(stock.as_secs_f64() * 250e6 <= 212_992.0 / 8.0 + 1.0);
        // A rate of zero (never in a checked profile) does not divide by zero.
        assert_eq!(gather_pause(1 << 20, 0), MAX_GATHER);
    }
}
