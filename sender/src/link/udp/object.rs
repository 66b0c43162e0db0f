//! Sending one object (a spool file) over the diode link: per pass, the announcement, every
//! block's source and repair symbols interleaved by group, then the end with the digest.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::time::Duration;

use gapsync_protocol::udp::datagram::Kind;
use gapsync_protocol::udp::fec::{self, Layout};
use gapsync_protocol::udp::{Announce, End};
use gapsync_protocol::{DIGEST_LEN, encode_body};

use super::emitter::Emitter;

/// What is sent about a file.
#[derive(Debug, Clone)]
pub struct Object {
    pub id: u64,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
}

/// How sending an object ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every pass was sent; the digest of what was read.
    Sent([u8; DIGEST_LEN]),
    /// Shutdown was asked for in the middle.
    Stopped,
}

/// The profile's announcement of `obj`.
fn announce(e: &Emitter, obj: &Object) -> Announce {
    let p = e.profile();
    let layout = layout(e, obj);
    let per_pass: u64 = (0..layout.blocks().unwrap_or(0))
        .map(|b| {
            let k = layout.symbols(b);
            u64::from(k + fec::repair_count(k, p.repair_percent))
        })
        .sum();
    let wire = per_pass * e.datagram_bytes() as u64;
    Announce {
        path: obj.path.clone(),
        size: obj.size,
        mtime_ns: obj.mtime_ns,
        symbol_bytes: p.symbol_bytes,
        block_symbols: p.block_symbols,
        repair_percent: p.repair_percent,
        passes: p.passes,
        pass_ms: Duration::from_secs_f64(wire as f64 / p.rate_bytes_per_s() as f64).as_millis()
            as u64,
    }
}

fn layout(e: &Emitter, obj: &Object) -> Layout {
    Layout {
        size: obj.size,
        symbol_bytes: e.profile().symbol_bytes,
        block_symbols: e.profile().block_symbols,
    }
}

/// Sends every pass of `obj` read from `file`. `stop` is polled between groups of blocks.
pub fn send(
    e: &mut Emitter,
    file: &File,
    obj: &Object,
    stop: &dyn Fn() -> bool,
) -> io::Result<Outcome> {
    let body = encode_body(&announce(e, obj));
    let mut digest = None;
    for pass in 1..=e.profile().passes {
        e.control(Kind::Announce, obj.id, pass, body.clone())?;
        let mut hasher = digest.is_none().then(blake3::Hasher::new);
        let Some(sent) = send_pass(e, file, obj, pass, hasher.as_mut(), stop)? else {
            return Ok(Outcome::Stopped);
        };
        let d = *digest.get_or_insert_with(|| {
            *hasher
                .map(|h| h.finalize())
                .unwrap_or_else(|| blake3::hash(b""))
                .as_bytes()
        });
        e.control(
            Kind::End,
            obj.id,
            pass,
            encode_body(&End {
                datagrams: sent,
                digest: d,
            }),
        )?;
    }
    e.counters.objects += 1;
    e.counters.bytes += obj.size;
    Ok(Outcome::Sent(
        digest.unwrap_or_else(|| *blake3::hash(b"").as_bytes()),
    ))
}

/// One pass: returns the symbol datagrams sent, or `None` if stopped.
fn send_pass(
    e: &mut Emitter,
    file: &File,
    obj: &Object,
    pass: u8,
    mut hasher: Option<&mut blake3::Hasher>,
    stop: &dyn Fn() -> bool,
) -> io::Result<Option<u64>> {
    let layout = layout(e, obj);
    let blocks = layout.blocks().unwrap_or(0);
    let (t, pct) = (e.profile().symbol_bytes, e.profile().repair_percent);
    let group = e.profile().interleave_blocks;
    let ts = usize::from(t);
    let mut sent = 0u64;
    let mut first = 0;
    while first < blocks {
        if stop() {
            return Ok(None);
        }
        let last = blocks.min(first + group);
        let mut data = Vec::new();
        let mut counts = Vec::new();
        let mut repairs = Vec::new();
        for b in first..last {
            let (offset, len) = layout.block(b);
            let k = layout.symbols(b);
            let mut buf = vec![0u8; k as usize * ts];
            file.read_exact_at(&mut buf[..len], offset)?;
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&buf[..len]);
            }
            let r = fec::repair_count(k, pct);
            repairs.push(fec::repair_symbols(&buf, t, (u32::from(pass) - 1) * r, r));
            counts.push((k, r));
            data.push(buf);
        }
        for (g, idx) in fec::interleave(&counts) {
            let b = first + g as u32;
            let k = counts[g].0;
            if idx < k {
                let s = idx as usize * ts;
                e.symbol(obj.id, b, idx, pass, &data[g][s..s + ts])?;
            } else if let Some((esi, sym)) = repairs[g].get((idx - k) as usize) {
                e.symbol(obj.id, b, *esi, pass, sym)?;
            }
            sent += 1;
        }
        e.flush()?;
        first = last;
    }
    Ok(Some(sent))
}
