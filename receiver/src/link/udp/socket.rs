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
/// worker is behind (the kernel buffer then absorbs the burst).
pub fn read_loop(
    socket: UdpSocket,
    out: SyncSender<Batch>,
    spare: Receiver<Vec<u8>>,
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
        }
    })
}
