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

use super::emitter::{Emitter, SymbolOut};
use crate::source::identity::Identity;

/// Symbols handed to the emitter at a time (it cuts them into its own send batches).
const BATCH: usize = 64;

/// Most objects in flight at once.
pub const MAX_ACTIVE: usize = 256;

/// What is sent about a file.
#[derive(Debug, Clone)]
pub struct Object {
    pub id: u64,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// The file's identity and version when it was taken, compared before it is moved.
    pub ident: Identity,
    /// The hops it crossed before this pipe's source, sent in its Announce.
    pub origin: gapsync_protocol::OriginChain,
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
    /// Next block of the current pass to put in a group.
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

/// One block of a group: its source symbols (zero-padded) and its repair symbols.
#[derive(Debug)]
struct GroupBlock {
    id: u64,
    block: u32,
    pass: u8,
    k: u32,
    /// Repair symbols to make, from this id.
    first_repair: u32,
    repair: u32,
    data: Vec<u8>,
    repairs: Vec<(u32, Vec<u8>)>,
}

/// A group of blocks, read and hashed, to be interleaved and sent.
#[derive(Debug, Default)]
struct Group {
    blocks: Vec<GroupBlock>,
    /// Objects whose announcement goes before this group's symbols.
    announce: Vec<u64>,
    /// Objects whose current pass ends with this group.
    ends: Vec<u64>,
}

impl Group {
    /// Computes the repair symbols of every block (the costly part: RaptorQ encoding).
    fn encode(&self, t: u16) -> Vec<Vec<(u32, Vec<u8>)>> {
        self.blocks
            .iter()
            .map(|b| fec::repair_symbols(&b.data, t, b.first_repair, b.repair))
            .collect()
    }
}

/// The objects in flight, in order. Groups go through a two-stage pipeline: while one group
/// is sent (paced) on the pipe's thread, the next is encoded on a second thread, so the
/// pacer is not left idle while RaptorQ works.
#[derive(Debug, Default)]
pub struct Stream {
    active: VecDeque<Active>,
    /// The group encoded and next to send.
    ready: Option<Group>,
    /// Block buffers of sent groups, for the next.
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

    /// Datagrams not yet put in a group in the current passes of the objects in flight.
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

    /// Sends the group encoded last time (if any) while the next one is encoded on a second
    /// thread; returns the objects whose last pass was sent.
    pub fn send_group(&mut self, e: &mut Emitter) -> io::Result<Vec<Sent>> {
        let t = e.profile().symbol_bytes;
        let mut next = self.plan(e)?;
        let sent = match (self.ready.take(), next.as_ref()) {
            (Some(current), Some(n)) => std::thread::scope(|s| {
                let encoder = std::thread::Builder::new()
                    .name("udp-encode".into())
                    .spawn_scoped(s, || n.encode(t))?;
                let sent = self.emit(e, current);
                let repairs = encoder.join().map_err(|_| {
                    io::Error::other("the encoder thread panicked (a bug; please report it)")
                })?;
                Ok::<_, io::Error>((sent, Some(repairs)))
            })?,
            (Some(current), None) => (self.emit(e, current), None),
            (None, Some(n)) => (Ok(Vec::new()), Some(n.encode(t))),
            (None, None) => (Ok(Vec::new()), None),
        };
        if let (Some(g), Some(repairs)) = (next.as_mut(), sent.1) {
            for (b, r) in g.blocks.iter_mut().zip(repairs) {
                b.repairs = r;
            }
        }
        self.ready = next;
        sent.0
    }

    /// Picks the next group's blocks, reads and hashes them; `None` when every block of the
    /// current passes is already in a group.
    fn plan(&mut self, e: &Emitter) -> io::Result<Option<Group>> {
        let (t, pct) = (e.profile().symbol_bytes, e.profile().repair_percent);
        let (want_blocks, span_min) = (e.profile().interleave_blocks as usize, min_span(pct));
        // Pick blocks: (object index, block).
        let mut picks: Vec<(usize, u32)> = Vec::new();
        let mut span = 0u64;
        let mut group = Group::default();
        for (i, a) in self.active.iter_mut().enumerate() {
            if picks.len() >= want_blocks && span >= span_min {
                break;
            }
            let mut b = a.next;
            while b < a.blocks && (picks.len() < want_blocks || span < span_min) {
                span += a.layout.datagrams(b, pct);
                picks.push((i, b));
                b += 1;
            }
            let empty_pass = a.blocks == 0 && a.next == 0 && !a.announced;
            if b == a.next && !empty_pass {
                continue;
            }
            if !a.announced {
                a.announced = true;
                group.announce.push(a.obj.id);
            }
            if b == a.blocks {
                group.ends.push(a.obj.id);
            }
            // An empty object has no block: `next = 1` marks its pass as planned.
            a.next = if a.blocks == 0 { 1 } else { b };
        }
        if picks.is_empty() && group.ends.is_empty() {
            return Ok(None);
        }
        let sparse = span < span_min;
        let ts = usize::from(t);
        let total_k: u32 = picks
            .iter()
            .map(|&(i, b)| self.active[i].layout.symbols(b))
            .sum();
        for &(i, b) in &picks {
            let a = &mut self.active[i];
            let (offset, len) = a.layout.block(b);
            let k = a.layout.symbols(b);
            // Reused block buffers: a fresh 1.4 MB allocation per block costs page faults.
            // Only the padding is zeroed: the read overwrites the rest.
            let mut data = self.spare.pop().unwrap_or_default();
            data.resize(k as usize * ts, 0);
            a.file.read_exact_at(&mut data[..len], offset)?;
            data[len..].fill(0);
            if let Some(h) = a.hasher.as_mut() {
                h.update(&data[..len]);
            }
            // Too little in flight to spread a burst: each block gets its share of a burst's
            // worth of extra repair symbols instead.
            let extra = if sparse {
                (BURST_DATAGRAMS * u64::from(k)).div_ceil(u64::from(total_k.max(1))) as u32
            } else {
                0
            };
            group.blocks.push(GroupBlock {
                id: a.obj.id,
                block: b,
                pass: a.pass,
                k,
                first_repair: fec::repair_first(k, pct, a.pass),
                repair: fec::repair_count(k, pct) + extra,
                data,
                repairs: Vec::new(),
            });
        }
        Ok(Some(group))
    }

    fn index(&self, id: u64) -> Option<usize> {
        self.active.iter().position(|a| a.obj.id == id)
    }

    /// Sends a group: announcements, the interleaved symbols, then the ends of the passes it
    /// finishes. Returns the objects whose last pass it sent.
    fn emit(&mut self, e: &mut Emitter, g: Group) -> io::Result<Vec<Sent>> {
        let ts = usize::from(e.profile().symbol_bytes);
        for id in &g.announce {
            if let Some(a) = self.index(*id).map(|i| &self.active[i]) {
                e.control(Kind::Announce, *id, a.pass, a.announce.clone())?;
            }
        }
        let owners: Vec<Option<usize>> = g.blocks.iter().map(|b| self.index(b.id)).collect();
        let counts: Vec<(u32, u32)> = g
            .blocks
            .iter()
            .map(|b| (b.k, b.repairs.len() as u32))
            .collect();
        // Symbols go to the emitter a batch at a time, borrowed where they lie.
        let mut batch: Vec<SymbolOut<'_>> = Vec::with_capacity(BATCH);
        for (gi, idx) in fec::interleave(&counts) {
            let b = &g.blocks[gi];
            let (esi, bytes) = if idx < b.k {
                let s = idx as usize * ts;
                (idx, &b.data[s..s + ts])
            } else if let Some((esi, sym)) = b.repairs.get((idx - b.k) as usize) {
                (*esi, sym.as_slice())
            } else {
                continue;
            };
            batch.push(SymbolOut {
                object: b.id,
                block: b.block,
                esi,
                pass: b.pass,
                bytes,
            });
            if batch.len() == BATCH {
                e.symbols(&batch)?;
                batch.clear();
            }
            if let Some(a) = owners[gi].and_then(|i| self.active.get_mut(i)) {
                a.sent_in_pass += 1;
                a.datagrams += 1;
            }
        }
        e.symbols(&batch)?;
        e.flush()?;
        // Enough for the next group; more would only hold memory.
        self.spare.extend(g.blocks.into_iter().map(|b| b.data));
        self.spare.truncate(e.profile().interleave_blocks as usize);
        self.finish_passes(e, &g.ends)
    }

    /// Sends the ends of the passes of `ids` (all their blocks sent); starts their next pass
    /// or, after the last, returns them as sent.
    fn finish_passes(&mut self, e: &mut Emitter, ids: &[u64]) -> io::Result<Vec<Sent>> {
        let mut done = Vec::new();
        for id in ids {
            let Some(i) = self.index(*id) else { continue };
            let a = &mut self.active[i];
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
            let pass = a.pass;
            e.control(Kind::End, *id, pass, end)?;
            if pass < e.profile().passes {
                a.pass += 1;
                a.next = 0;
                a.announced = false;
                a.sent_in_pass = 0;
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
    let announce = Announce {
        path: obj.path.clone(),
        size: obj.size,
        mtime_ns: obj.mtime_ns,
        symbol_bytes: p.symbol_bytes,
        block_symbols: p.block_symbols,
        repair_percent: p.repair_percent,
        passes: p.passes,
        pass_ms: Duration::from_secs_f64(wire as f64 / p.rate_bytes_per_s() as f64).as_millis()
            as u64,
    };
    gapsync_protocol::udp::encode_announce(&announce, &obj.origin)
}
