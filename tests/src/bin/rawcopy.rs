//! gapsync-rawcopy: the benchmark's baseline, a plain TCP copy with large reused buffers and
//! nothing else (no framing, no checksum, no digest). `recv` listens, prints `listening on
//! ADDR` on stderr, accepts one connection and writes what arrives to a file (fsync at the
//! end with `--fsync`) or to standard output; `send` connects and copies a file or standard
//! input to the socket.
//!   gapsync-rawcopy recv --listen 127.0.0.1:0 --out /var/tmp/x --fsync
//!   gapsync-rawcopy send --to 127.0.0.1:PORT --input /var/tmp/file

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    },
    /// Connect to --to and send --input (a file, or - for stdin).
    Send {
        #[arg(long)]
        to: String,
        #[arg(long)]
        input: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Recv { listen, out, fsync } => {
            let listener = TcpListener::bind(&listen).with_context(|| format!("bind {listen}"))?;
            eprintln!("listening on {}", listener.local_addr()?);
            let (mut sock, _) = listener.accept().context("accept")?;
            if out.as_os_str() == "-" {
                copy(&mut sock, &mut io::stdout().lock())?;
            } else {
                let mut f = File::create(&out).with_context(|| format!("create {out:?}"))?;
                copy(&mut sock, &mut f)?;
                if fsync {
                    f.sync_all().context("fsync")?;
                }
            }
        }
        Cmd::Send { to, input } => {
            let mut sock = TcpStream::connect(&to).with_context(|| format!("connect {to}"))?;
            if input.as_os_str() == "-" {
                copy(&mut io::stdin().lock(), &mut sock)?;
            } else {
                copy(
                    &mut File::open(&input).with_context(|| format!("open {input:?}"))?,
                    &mut sock,
                )?;
            }
            sock.shutdown(std::net::Shutdown::Write)?;
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
