//! gapsync-rawcopy: the benchmark's baseline, a plain TCP copy with large reused buffers and
//! nothing else (no framing, no checksum, no digest). `recv` listens, prints `listening on
//! ADDR` on stderr, accepts one connection and writes what arrives to a file (fsync at the
//! end with `--fsync`) or to standard output; `send` connects and copies a file or standard
//! input to the socket.
//!   gapsync-rawcopy recv --listen 127.0.0.1:0 --out /var/tmp/x --fsync
//!   gapsync-rawcopy send --to 127.0.0.1:PORT --input /var/tmp/file
//!
//! With `--frame BYTES` on both sides the copy is acknowledged like gapsync over a one-byte
//! gate, and nothing more: the sender cuts the input into gapsync frames of that size (so the
//! gate simulator counts them and checks its one-byte rule) and keeps at most `--window` of
//! them unanswered; the receiver checks each frame's CRC, writes its payload and answers one
//! 0x00 byte. No digest, no journal, no commit: the fastest any sender and receiver that wait
//! for a gate's answers can be, the floor scenario 4 of the benchmark compares with.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gapsync_protocol::decoder::parse_header;
use gapsync_protocol::{Envelope, FrameKind, HEADER_LEN, encode_frame};

/// Buffer size of every read and write: large enough that syscalls cost nothing measurable.
const BUF: usize = 4 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "gapsync-rawcopy",
    about = "Plain TCP copy, the benchmark baseline"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Accept one connection and write its bytes to --out (a file, or - for stdout).
    Recv {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        out: PathBuf,
        /// fsync the output file before exiting.
        #[arg(long)]
        fsync: bool,
        /// Expect gapsync frames of at most this many bytes and answer each with 0x00.
        #[arg(long)]
        frame: Option<u32>,
    },
    /// Connect to --to and send --input (a file, or - for stdin).
    Send {
        #[arg(long)]
        to: String,
        #[arg(long)]
        input: PathBuf,
        /// Send gapsync frames of this many bytes (header included), each answered by one byte.
        #[arg(long)]
        frame: Option<u32>,
        /// Frames sent before waiting for an answer (with --frame).
        #[arg(long, default_value_t = 1)]
        window: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Recv {
            listen,
            out,
            fsync,
            frame,
        } => {
            let listener = TcpListener::bind(&listen).with_context(|| format!("bind {listen}"))?;
            eprintln!("listening on {}", listener.local_addr()?);
            let (mut sock, _) = listener.accept().context("accept")?;
            let received = if let Some(frame) = frame {
                sock.set_nodelay(true)?;
                let mut f = File::create(&out).with_context(|| format!("create {out:?}"))?;
                let n = recv_acked(&mut sock, &mut f, frame)?;
                if fsync {
                    f.sync_all().context("fsync")?;
                }
                n
            } else if out.as_os_str() == "-" {
                copy(&mut sock, &mut io::stdout().lock())?
            } else {
                let mut f = File::create(&out).with_context(|| format!("create {out:?}"))?;
                let n = copy(&mut sock, &mut f)?;
                if fsync {
                    f.sync_all().context("fsync")?;
                }
                n
            };
            // The count that decides whether a copy was complete (the benchmark compares it
            // with the input's size).
            eprintln!("received {received} bytes");
        }
        Cmd::Send {
            to,
            input,
            frame,
            window,
        } => {
            let mut sock = TcpStream::connect(&to).with_context(|| format!("connect {to}"))?;
            let sent = if let Some(frame) = frame {
                sock.set_nodelay(true)?;
                let mut f = File::open(&input).with_context(|| format!("open {input:?}"))?;
                send_acked(&mut f, &mut sock, frame, window.max(1))?
            } else if input.as_os_str() == "-" {
                copy(&mut io::stdin().lock(), &mut sock)?
            } else {
                copy(
                    &mut File::open(&input).with_context(|| format!("open {input:?}"))?,
                    &mut sock,
                )?
            };
            // Every byte was handed to the socket. A shutdown that finds the connection
            // already gone (ENOTCONN, seen a few times through the simulator) says nothing of
            // what arrived: the receiving side's `received N bytes` line decides.
            if let Err(e) = sock.shutdown(std::net::Shutdown::Write) {
                eprintln!("sent {sent} bytes; the final shutdown failed: {e}");
            }
        }
    }
    Ok(())
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read"),
        };
        to.write_all(buf.get(..n).unwrap_or_default())
            .context("write")?;
        total += n as u64;
    }
    to.flush().context("flush")?;
    Ok(total)
}

/// Sends `from` as Data frames of `frame` bytes, at most `window` of them unanswered.
fn send_acked(
    from: &mut File,
    sock: &mut TcpStream,
    frame: u32,
    window: u32,
) -> anyhow::Result<u64> {
    let payload_max = (frame as usize)
        .checked_sub(HEADER_LEN)
        .filter(|n| *n > 0)
        .context("--frame must be larger than the frame header")?;
    let mut payload = vec![0u8; payload_max];
    let mut wire = Vec::with_capacity(frame as usize);
    let (mut offset, mut sequence, mut in_flight) = (0u64, 1u64, 0u32);
    let mut done = false;
    while !done || in_flight > 0 {
        if !done && in_flight < window {
            let n = read_full(from, &mut payload)?;
            if n == 0 {
                done = true;
                continue;
            }
            wire.clear();
            let body = payload.get(..n).unwrap_or_default();
            encode_frame(
                Envelope::Raw,
                FrameKind::Data,
                sequence,
                1,
                offset,
                body,
                &mut wire,
            )
            .context("frame too large")?;
            sock.write_all(&wire).context("write")?;
            (offset, sequence, in_flight) = (offset + n as u64, sequence + 1, in_flight + 1);
        } else {
            let mut answer = [0u8; 1];
            sock.read_exact(&mut answer).context("read the answer")?;
            if answer[0] != 0x00 {
                anyhow::bail!("frame refused (answer {:#04x})", answer[0]);
            }
            in_flight -= 1;
        }
    }
    // Every frame was answered, so every byte is written and the copy is complete.
    Ok(offset)
}

/// Receives Data frames of at most `frame` bytes, writes their payloads in order and answers
/// each with 0x00 once it is written. Each payload is read straight into one reused buffer
/// (no copy through a decoder, so the floor is not slowed by work gapsync does not do); the
/// header goes through the protocol's own header check, the payload's CRC after it.
fn recv_acked(sock: &mut TcpStream, to: &mut File, frame: u32) -> anyhow::Result<u64> {
    let mut payload = vec![0u8; frame as usize];
    let mut total = 0u64;
    loop {
        let mut head = [0u8; HEADER_LEN];
        if let Err(e) = sock.read_exact(&mut head) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Ok(total);
            }
            return Err(e).context("read a frame header");
        }
        // Length within --frame, header CRC and the rest, as gapsync's decoder checks them.
        let h = parse_header(&head, frame as usize).context("a frame header")?;
        let body = payload
            .get_mut(..h.length as usize)
            .context("a frame longer than --frame")?;
        sock.read_exact(body).context("read a payload")?;
        if crc32fast::hash(body) != h.payload_crc {
            anyhow::bail!("a payload's CRC does not match");
        }
        to.write_all(body).context("write")?;
        total += body.len() as u64;
        sock.write_all(&[0x00]).context("answer")?;
    }
}

/// Fills `buf` from `from` unless the input ends first; returns the bytes read.
fn read_full(from: &mut File, buf: &mut [u8]) -> anyhow::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match from.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read"),
        }
    }
    Ok(got)
}
