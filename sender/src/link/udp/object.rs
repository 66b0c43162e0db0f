//! The objects being sent over the diode link and the order of their datagrams.
//!
//! Blocks are sent in groups: a group takes the next blocks of the objects in flight, in order,
//! until it has `interleave_blocks` blocks and spans enough datagrams that a burst of
//! [`BURST_DATAGRAMS`] losses costs no block more than its repair symbols; its symbols are then
//! interleaved. So small files are interleaved with each other, not only the blocks of one big
//! file. When too little is queued to fill a group (a lone small file), each block gets extra
//! repair symbols instead. Per pass, an object's announcement goes before its first group and
//! its end (with the digest) after its last.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::time::{Duration, Instant};

use gapsync_protocol::udp::datagram::Kind;
use gapsync_protocol::udp::fec::{self, BURST_DATAGRAMS, Layout};
use gapsync_protocol::udp::{Announce, End};
use gapsync_protocol::{DIGEST_LEN, encode_body};

use super::emitter::Emitter;

/// Most objects in flight at once.
pub const MAX_ACTIVE: usize = 256;

/// What is sent about a file.
#[derive(Debug, Clone)]
pub struct Object {
    pub id: u64,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
}

/// An object whose every pass was sent.
#[derive(Debug)]
pub struct Sent {
    pub obj: Object,
    pub digest: [u8; DIGEST_LEN],
    pub datagrams: u64,
    pub started: Instant,
}

/// An object in flight.
#[derive(Debug)]
struct Active {
    obj: Object,
    file: File,
    layout: Layout,
    blocks: u32,
    /// Next block of the current pass.
    next: u32,
    pass: u8,
    announced: bool,
    announce: Vec<u8>,
    hasher: Option<blake3::Hasher>,
    digest: Option<[u8; DIGEST_LEN]>,
    sent_in_pass: u64,
    datagrams: u64,
    started: Instant,
}

/// The objects in flight, in order.
#[derive(Debug, Default)]
pub struct Stream {
    active: VecDeque<Active>,
    /// Block buffers of the last group, for the next.
    spare: Vec<Vec<u8>>,
}

/// Datagrams a group must span so that a burst of [`BURST_DATAGRAMS`] costs each block at most
/// half its repair symbols.
pub fn min_span(repair_percent: u32) -> u64 {
    2 * BURST_DATAGRAMS * 100 / u64::from(repair_percent.max(1))
}

impl Stream {
    /// The paths of the objects in flight, in order.
    pub fn paths(&self) -> Vec<String> {
        self.active.iter().map(|a| a.obj.path.clone()).collect()
    }

    /// Objects in flight.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Datagrams still to send in the current passes of the objects in flight.
    pub fn remaining(&self, pct: u32) -> u64 {
        self.active
            .iter()
            .map(|a| a.layout.datagrams_from(a.next, pct))
            .sum()
    }

    /// Whether the stream wants more objects before its next group.
    pub fn wants_more(&self, e: &Emitter) -> bool {
        let p = e.profile();
        self.active.len() < MAX_ACTIVE
            && self.remaining(p.repair_percent) < 2 * min_span(p.repair_percent)
    }

    /// Adds an object at the end, with its encoded announcement (see [`announce_body`]).
    pub fn add(&mut self, e: &Emitter, obj: Object, file: File, announce: Vec<u8>) {
        let layout = layout(e, &obj);
        self.active.push_back(Active {
            blocks: layout.blocks().unwrap_or(0),
            layout,
            file,
            next: 0,
            pass: 1,
            announced: false,
            announce,
            hasher: Some(blake3::Hasher::new()),
            digest: None,
            sent_in_pass: 0,
            datagrams: 0,
            started: Instant::now(),
            obj,
        });
    }

    /// Sends one group; returns the objects whose last pass it finished.
    pub fn send_group(&mut self, e: &mut Emitter) -> io::Result<Vec<Sent>> {
        let (t, pct) = (e.profile().symbol_bytes, e.profile().repair_percent);
        let (want_blocks, span_min) = (e.profile().interleave_blocks as usize, min_span(pct));
        // Pick blocks: (object index, block).
        let mut picks: Vec<(usize, u32)> = Vec::new();
        let mut touched = 0;
        let mut span = 0u64;
        for (i, a) in self.active.iter().enumerate() {
            if picks.len() >= want_blocks && span >= span_min {
                break;
            }
            touched = i + 1;
            let mut b = a.next;
            while b < a.blocks && (picks.len() < want_blocks || span < span_min) {
                span += a.layout.datagrams(b, pct);
                picks.push((i, b));
                b += 1;
            }
        }
        for i in 0..touched {
            if !self.active[i].announced {
                let a = &mut self.active[i];
                a.announced = true;
                let (id, pass, body) = (a.obj.id, a.pass, a.announce.clone());
                e.control(Kind::Announce, id, pass, body)?;
            }
        }
        self.send_blocks(e, &picks, span < span_min, t, pct)?;
        e.flush()?;
        self.finish_passes(e, touched)
    }

    fn send_blocks(
        &mut self,
        e: &mut Emitter,
        picks: &[(usize, u32)],
        sparse: bool,
        t: u16,
        pct: u32,
    ) -> io::Result<()> {
        let ts = usize::from(t);
        let total_k: u32 = picks
            .iter()
            .map(|&(i, b)| self.active[i].layout.symbols(b))
            .sum();
        let mut data = Vec::with_capacity(picks.len());
        let mut counts = Vec::with_capacity(picks.len());
        let mut repairs = Vec::with_capacity(picks.len());
        for &(i, b) in picks {
            let a = &mut self.active[i];
            let (offset, len) = a.layout.block(b);
            let k = a.layout.symbols(b);
            // Reused block buffers: a fresh 1.4 MB allocation per block costs page faults.
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.clear();
            buf.resize(k as usize * ts, 0);
            a.file.read_exact_at(&mut buf[..len], offset)?;
            if let Some(h) = a.hasher.as_mut() {
                h.update(&buf[..len]);
            }
            let base = fec::repair_count(k, pct);
            // Too little in flight to spread a burst: each block gets its share of a burst's
            // worth of extra repair symbols instead.
            let extra = if sparse {
                (BURST_DATAGRAMS * u64::from(k)).div_ceil(u64::from(total_k.max(1))) as u32
            } else {
                0
            };
            let r = base + extra;
            let first = fec::repair_first(k, pct, a.pass);
            repairs.push(fec::repair_symbols(&buf, t, first, r));
            counts.push((k, r));
            data.push(buf);
            a.next = b + 1;
        }
        for (g, idx) in fec::interleave(&counts) {
            let (i, b) = picks[g];
            let k = counts[g].0;
            let (id, pass) = (self.active[i].obj.id, self.active[i].pass);
            if idx < k {
                let s = idx as usize * ts;
                e.symbol(id, b, idx, pass, &data[g][s..s + ts])?;
            } else if let Some((esi, sym)) = repairs[g].get((idx - k) as usize) {
                e.symbol(id, b, *esi, pass, sym)?;
            }
            self.active[i].sent_in_pass += 1;
            self.active[i].datagrams += 1;
        }
        self.spare.extend(data);
        Ok(())
    }

    /// Ends the passes of the first `touched` objects that have no block left in this pass.
    fn finish_passes(&mut self, e: &mut Emitter, touched: usize) -> io::Result<Vec<Sent>> {
        let mut done = Vec::new();
        let mut i = 0;
        let mut seen = 0;
        while i < self.active.len() && seen < touched {
            seen += 1;
            let a = &mut self.active[i];
            if a.next < a.blocks {
                i += 1;
                continue;
            }
            let digest = *a.digest.get_or_insert_with(|| {
                *a.hasher
                    .take()
                    .map(|h| h.finalize())
                    .unwrap_or_else(|| blake3::hash(b""))
                    .as_bytes()
            });
            let end = encode_body(&End {
                datagrams: a.sent_in_pass,
                digest,
            });
            let (id, pass) = (a.obj.id, a.pass);
            e.control(Kind::End, id, pass, end)?;
            if pass < e.profile().passes {
                a.pass += 1;
                a.next = 0;
                a.announced = false;
                a.sent_in_pass = 0;
                i += 1;
                continue;
            }
            if let Some(a) = self.active.remove(i) {
                e.counters.objects += 1;
                e.counters.bytes += a.obj.size;
                done.push(Sent {
                    digest,
                    datagrams: a.datagrams,
                    started: a.started,
                    obj: a.obj,
                });
            }
        }
        Ok(done)
    }
}

/// How `obj` is cut into blocks under `e`'s profile.
fn layout(e: &Emitter, obj: &Object) -> Layout {
    Layout {
        size: obj.size,
        symbol_bytes: e.profile().symbol_bytes,
        block_symbols: e.profile().block_symbols,
    }
}

/// The encoded announcement of `obj` (the caller checks that it fits one datagram).
pub fn announce_body(e: &Emitter, obj: &Object) -> Vec<u8> {
    let p = e.profile();
    let wire = layout(e, obj).datagrams_from(0, p.repair_percent) * e.datagram_bytes() as u64;
    encode_body(&Announce {
        path: obj.path.clone(),
        size: obj.size,
        mtime_ns: obj.mtime_ns,
        symbol_bytes: p.symbol_bytes,
        block_symbols: p.block_symbols,
        repair_percent: p.repair_percent,
        passes: p.passes,
        pass_ms: Duration::from_secs_f64(wire as f64 / p.rate_bytes_per_s() as f64).as_millis()
            as u64,
    })
}
