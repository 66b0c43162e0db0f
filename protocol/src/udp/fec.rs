//! Forward error correction with RaptorQ (RFC 6330, the `raptorq` crate).
//!
//! An object is cut into blocks of at most `block_symbols` symbols of `symbol_bytes` bytes;
//! each block is one RaptorQ source block of its own (so an object may have any number of
//! blocks, not RaptorQ's 256). The last symbol of a block is zero-padded; the receiver cuts the
//! padding off using the object's size. Symbol ids (ESIs) below the block's symbol count are
//! the data itself (the code is systematic); ids from there on are repair symbols, each pass of
//! the carousel using fresh ones.

use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder};

/// How an object is cut into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub symbol_bytes: u16,
    pub block_symbols: u32,
}

impl Layout {
    /// Bytes of a full block.
    pub fn block_bytes(&self) -> u64 {
        u64::from(self.symbol_bytes) * u64::from(self.block_symbols)
    }

    /// Number of blocks (0 for an empty object); `None` if over `u32::MAX`.
    pub fn blocks(&self) -> Option<u32> {
        u32::try_from(self.size.div_ceil(self.block_bytes().max(1))).ok()
    }

    /// Offset and length of block `b` in the object.
    pub fn block(&self, b: u32) -> (u64, usize) {
        let offset = u64::from(b) * self.block_bytes();
        let len = self.size.saturating_sub(offset).min(self.block_bytes());
        (offset, len as usize)
    }

    /// Symbol datagrams one pass sends for block `b` at `percent` repair (source + repair;
    /// the sender's sparse extra repair not included).
    pub fn datagrams(&self, b: u32, percent: u32) -> u64 {
        let k = self.symbols(b);
        u64::from(k + repair_count(k, percent))
    }

    /// Symbol datagrams one pass sends for blocks `first..` of the object.
    pub fn datagrams_from(&self, first: u32, percent: u32) -> u64 {
        (first..self.blocks().unwrap_or(0))
            .map(|b| self.datagrams(b, percent))
            .sum()
    }

    /// Source symbols of block `b`.
    pub fn symbols(&self, b: u32) -> u32 {
        let (_, len) = self.block(b);
        len.div_ceil(usize::from(self.symbol_bytes).max(1)) as u32
    }
}

/// The longest burst of consecutive lost datagrams the sender's interleaving is built to
/// absorb (the usual worst case of an overrun diode proxy).
pub const BURST_DATAGRAMS: u64 = 50;

/// Repair symbols a pass may add to a block on top of [`repair_count`] when too little is
/// in flight to spread a burst (the sender's sparse case): at most a burst's worth.
pub const MAX_EXTRA_REPAIR: u32 = BURST_DATAGRAMS as u32;

/// The first repair symbol id of pass `pass` (from 1) for a block of `k` source symbols: each
/// pass uses fresh ones, so the receiver accumulates new information across passes.
pub fn repair_first(k: u32, percent: u32, pass: u8) -> u32 {
    u32::from(pass).saturating_sub(1) * repair_stride(k, percent)
}

/// The symbol ids a block of `k` source symbols can use over `passes` passes: the receiver
/// refuses ids at or above this (it bounds the memory of a block's decoder).
pub fn esi_limit(k: u32, percent: u32, passes: u8) -> u32 {
    k + u32::from(passes) * repair_stride(k, percent)
}

/// Repair ids reserved per pass: the profile's repair symbols plus the sparse extra.
fn repair_stride(k: u32, percent: u32) -> u32 {
    repair_count(k, percent) + MAX_EXTRA_REPAIR
}

/// Repair symbols per pass for a block of `k` source symbols at `percent` repair (rounded up,
/// so every block has at least one when `percent` > 0).
pub fn repair_count(k: u32, percent: u32) -> u32 {
    (u64::from(k) * u64::from(percent)).div_ceil(100) as u32
}

fn oti(k: u32, symbol_bytes: u16) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(
        u64::from(k) * u64::from(symbol_bytes),
        symbol_bytes,
        1,
        1,
        1,
    )
}

/// Repair symbols `first..first + count` of one block. `padded` is the block's data
/// zero-padded to a whole number of symbols. Returns (ESI, symbol) pairs.
pub fn repair_symbols(
    padded: &[u8],
    symbol_bytes: u16,
    first: u32,
    count: u32,
) -> Vec<(u32, Vec<u8>)> {
    let k = (padded.len() / usize::from(symbol_bytes)) as u32;
    let encoder = raptorq::SourceBlockEncoder::new(0, &oti(k, symbol_bytes), padded);
    encoder
        .repair_packets(first, count)
        .into_iter()
        .map(|p| {
            let (id, data) = p.split();
            (id.encoding_symbol_id(), data)
        })
        .collect()
}

/// The sending order of a group of blocks, as (block in group, symbol index) where an index
/// below the block's `k` is a source symbol and the rest are its repair symbols in order:
/// every block's source symbols round-robin, then every block's repair symbols round-robin, so
/// a burst of loss is spread over the whole group.
pub fn interleave(counts: &[(u32, u32)]) -> Vec<(usize, u32)> {
    let mut order = Vec::with_capacity(counts.iter().map(|(k, r)| (k + r) as usize).sum());
    let max_k = counts.iter().map(|c| c.0).max().unwrap_or(0);
    let max_r = counts.iter().map(|c| c.1).max().unwrap_or(0);
    for i in 0..max_k {
        order.extend(
            (0..counts.len())
                .filter(|&b| i < counts[b].0)
                .map(|b| (b, i)),
        );
    }
    for i in 0..max_r {
        order.extend(
            (0..counts.len())
                .filter(|&b| i < counts[b].1)
                .map(|b| (b, counts[b].0 + i)),
        );
    }
    order
}

/// The page size, which direct I/O needs memory and file offsets aligned to.
pub const ALIGN: usize = 4096;

/// A block's bytes, placed in memory so that each byte sits at the same offset within its
/// page as it will in the file: wherever a page of the file starts inside the block, the
/// bytes are [`ALIGN`]-aligned, so the receiver writes the block's whole pages with direct
/// I/O and no copy, whatever the block size. Its buffer goes back to a [`BlockPool`] once
/// written.
pub struct BlockBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl BlockBuf {
    /// `len` bytes for the block at byte `offset` of its file, reusing `spare`'s allocation
    /// when it is large enough. The bytes are whatever the buffer held: every caller
    /// overwrites all of them before reading.
    fn new(len: usize, offset: u64, spare: Option<Vec<u8>>) -> Self {
        let mut buf = spare.unwrap_or_default();
        buf.resize(len + ALIGN, 0);
        let phase = (offset % ALIGN as u64) as usize;
        let start = (ALIGN + phase - buf.as_ptr().addr() % ALIGN) % ALIGN;
        Self { buf, start, len }
    }

    /// The block's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Cuts the block to its first `len` bytes (the padding of the last symbol).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The allocation, for the pool.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

impl std::fmt::Debug for BlockBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockBuf").field("len", &self.len).finish()
    }
}

/// Block buffers written and given back, handed to the next blocks, so that a stream of
/// blocks does not allocate, zero and fault in a fresh block each (at 0% loss that was 6% of
/// the receiver's CPU with 4 kept for 32 blocks in flight). It keeps as many as the receiver
/// decodes at once: no more memory than the window it already holds at its peak.
#[derive(Debug, Default)]
pub struct BlockPool {
    spare: Vec<Vec<u8>>,
    keep: usize,
}

impl BlockPool {
    /// A pool that keeps at most `keep` buffers.
    pub fn new(keep: usize) -> Self {
        Self {
            spare: Vec::new(),
            keep,
        }
    }

    /// Takes a spare buffer, if any.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        self.spare.pop()
    }

    /// Gives a written block's buffer back.
    pub fn give(&mut self, block: BlockBuf) {
        if self.spare.len() < self.keep {
            self.spare.push(block.into_vec());
        }
    }

    /// Frees the spare buffers (nothing in flight: an idle receiver holds no window).
    pub fn release(&mut self) {
        self.spare = Vec::new();
    }
}

/// Symbols beyond `k` a block waits for before it decodes, unless its pass's last symbol came
/// (or [`BlockDecoder::settle`] is called): with that many spare rows raptorq solves without
/// its GF(256) HDPC rows (at most 11 of them for blocks of up to 8192 symbols), which cost
/// about a third of a decode (1.1 against 1.5-2.3 ms for 512 symbols of 1400 bytes on the
/// reference machine). With fewer than about 14 the GF(2)-only attempt often fails and the
/// full solve runs after it.
pub const EAGER_EXTRA: u32 = 20;

/// Where symbol `esi` is in a decoder's `seen` bitmap: (word, bit).
fn seen_bit(esi: u32) -> (usize, u64) {
    ((esi / 64) as usize, 1u64 << (esi % 64))
}

/// Collects one block's symbols and decodes it once enough have arrived. Source symbols go
/// straight to their place in the block, so a block whose source symbols all arrive is done
/// without RaptorQ; repair symbols are kept aside until a decode needs them. A block that
/// lost some waits for [`EAGER_EXTRA`] spare symbols, or for the last symbol of its pass, or
/// for [`BlockDecoder::settle`], whichever comes first.
pub struct BlockDecoder {
    k: u32,
    symbol_bytes: u16,
    /// ESIs at or above this are refused (bounds memory).
    esi_limit: u32,
    seen: Vec<u64>,
    distinct: u32,
    sources: u32,
    block: Option<BlockBuf>,
    repairs: Vec<EncodingPacket>,
    /// The pass's last symbol arrived: decode as soon as there are enough.
    tail_seen: bool,
    /// `distinct` at the last failed decode (0: none yet).
    tried_at: u32,
}

impl std::fmt::Debug for BlockDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDecoder")
            .field("k", &self.k)
            .field("distinct", &self.distinct)
            .finish_non_exhaustive()
    }
}

impl BlockDecoder {
    /// A decoder for the block of `k` source symbols at byte `offset` of its object,
    /// accepting ESIs below `esi_limit`, its block in `spare`'s allocation when one is given.
    pub fn new(
        k: u32,
        symbol_bytes: u16,
        esi_limit: u32,
        offset: u64,
        spare: Option<Vec<u8>>,
    ) -> Self {
        Self {
            k,
            symbol_bytes,
            esi_limit,
            seen: vec![0; (esi_limit as usize).div_ceil(64)],
            distinct: 0,
            sources: 0,
            block: Some(BlockBuf::new(
                k as usize * usize::from(symbol_bytes),
                offset,
                spare,
            )),
            repairs: Vec::new(),
            tail_seen: false,
            tried_at: 0,
        }
    }

    /// Adds one symbol (its length already checked against the object's symbol size); `tail`
    /// says it is the last (or past the last) its pass sends for this block. Returns the
    /// padded block once it decodes. Out-of-range and repeated ESIs are ignored.
    pub fn add(&mut self, esi: u32, symbol: &[u8], tail: bool) -> Option<BlockBuf> {
        if esi >= self.esi_limit {
            return None;
        }
        self.tail_seen |= tail;
        let (word, bit) = seen_bit(esi);
        let w = self.seen.get_mut(word)?;
        if *w & bit != 0 {
            return None;
        }
        *w |= bit;
        self.distinct += 1;
        let t = usize::from(self.symbol_bytes);
        if esi < self.k {
            let at = esi as usize * t;
            self.block.as_mut()?.bytes_mut()[at..at + t].copy_from_slice(symbol);
            self.sources += 1;
            if self.sources == self.k {
                return self.block.take();
            }
        } else {
            self.repairs
                .push(EncodingPacket::new(PayloadId::new(0, esi), symbol.to_vec()));
        }
        self.attempt(self.tail_seen || self.distinct >= self.k.saturating_add(EAGER_EXTRA))
    }

    /// Decodes with the symbols at hand if there are enough: no more are expected soon (the
    /// pass ended, or the block is about to be dropped).
    pub fn settle(&mut self) -> Option<BlockBuf> {
        self.attempt(true)
    }

    fn attempt(&mut self, now: bool) -> Option<BlockBuf> {
        // A failed attempt costs a full solve: try again only after two more symbols, when
        // the odds of success have risen about a hundredfold.
        let retry = self.tried_at == 0 || self.distinct >= self.tried_at + 2;
        if !now || self.distinct < self.k || !retry {
            return None;
        }
        let decoded = self.solve();
        if decoded.is_none() {
            self.tried_at = self.distinct;
        }
        decoded
    }

    /// Decodes from the source symbols at hand and the repair symbols.
    fn solve(&mut self) -> Option<BlockBuf> {
        let t = usize::from(self.symbol_bytes);
        let block = self.block.as_ref()?;
        let mut packets = Vec::with_capacity(self.distinct as usize);
        for esi in 0..self.k {
            let (word, bit) = seen_bit(esi);
            if self.seen[word] & bit != 0 {
                let at = esi as usize * t;
                packets.push(EncodingPacket::new(
                    PayloadId::new(0, esi),
                    block.bytes()[at..at + t].to_vec(),
                ));
            }
        }
        packets.extend(self.repairs.iter().cloned());
        let info = oti(self.k, self.symbol_bytes);
        let decoded =
            SourceBlockDecoder::new(0, &info, u64::from(self.k) * t as u64).decode(packets)?;
        if decoded.len() != self.k as usize * t {
            return None;
        }
        let mut block = self.block.take()?;
        // The block holds every source symbol that arrived: only the lost ones are copied in.
        for esi in 0..self.k {
            let (word, bit) = seen_bit(esi);
            if self.seen[word] & bit == 0 {
                let at = esi as usize * t;
                block.bytes_mut()[at..at + t].copy_from_slice(&decoded[at..at + t]);
            }
        }
        Some(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(k: u32, t: u16) -> Vec<u8> {
        (0..k as usize * usize::from(t))
            .map(|i| (i * 31 % 251) as u8)
            .collect()
    }

    #[test]
    fn a_block_decodes_from_any_k_plus_a_few_symbols() {
        let (k, t) = (200u32, 64u16);
        let data = block(k, t);
        let repair = repair_symbols(&data, t, 0, 40);
        let mut d = BlockDecoder::new(k, t, k + 40, 0, None);
        // Lose every tenth source symbol: 20 lost, 40 repair symbols make up for them.
        let mut out = None;
        for i in (0..k).filter(|i| i % 10 != 3) {
            let s = usize::from(t) * i as usize;
            assert!(d.add(i, &data[s..s + usize::from(t)], false).is_none());
        }
        for (esi, sym) in &repair {
            if let Some(b) = d.add(*esi, sym, false) {
                out = Some(b);
                break;
            }
        }
        assert_eq!(out.as_ref().map(BlockBuf::bytes), Some(&data[..]));
    }

    #[test]
    fn a_block_short_of_spare_symbols_decodes_at_its_pass_tail_or_when_settled() {
        let (k, t) = (100u32, 32u16);
        let data = block(k, t);
        let repair = repair_symbols(&data, t, 0, 10);
        let ts = usize::from(t);
        for how in ["tail", "settle"] {
            let mut d = BlockDecoder::new(k, t, k + 10, 0, None);
            // Five source symbols lost and six repair symbols: enough to decode, fewer than
            // k + EAGER_EXTRA, so the decoder waits for a sign that no more are coming.
            for i in (0..k).filter(|i| i % 20 != 7) {
                let s = i as usize * ts;
                assert!(d.add(i, &data[s..s + ts], false).is_none());
            }
            for (esi, sym) in &repair[..5] {
                assert!(d.add(*esi, sym, false).is_none(), "{how}: waits");
            }
            let (esi, sym) = &repair[5];
            let out = if how == "tail" {
                d.add(*esi, sym, true)
            } else {
                assert!(d.add(*esi, sym, false).is_none(), "settle: still waits");
                d.settle()
            };
            assert_eq!(out.as_ref().map(BlockBuf::bytes), Some(&data[..]), "{how}");
        }
    }

    #[test]
    fn all_source_symbols_decode_without_repair_and_repeats_are_ignored() {
        let (k, t) = (10u32, 16u16);
        let data = block(k, t);
        // The block starts 100 bytes into a page of its file: its bytes start 100 bytes
        // into a page of memory, so the file's next page starts aligned in the block.
        let mut d = BlockDecoder::new(k, t, k + 2, 3 * ALIGN as u64 + 100, Some(vec![7; 3]));
        for i in 0..k - 1 {
            let s = usize::from(t) * i as usize;
            assert!(d.add(i, &data[s..s + 16], false).is_none());
            assert!(d.add(i, &data[s..s + 16], false).is_none());
        }
        assert!(d.add(k + 5, &[0; 16], true).is_none(), "ESI past the limit");
        let s = usize::from(t) * (k - 1) as usize;
        let out = d.add(k - 1, &data[s..s + 16], false).expect("decoded");
        assert_eq!(out.bytes(), &data[..]);
        assert_eq!(
            out.bytes().as_ptr().addr() % ALIGN,
            100,
            "in phase with the file's pages, for direct I/O"
        );
    }

    #[test]
    fn interleaving_spreads_blocks_and_puts_repair_last() {
        let order = interleave(&[(2, 1), (3, 1)]);
        assert_eq!(
            order,
            vec![(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (0, 2), (1, 3)]
        );
    }

    #[test]
    fn layout_cuts_the_last_block_short() {
        let l = Layout {
            size: 1000,
            symbol_bytes: 100,
            block_symbols: 4,
        };
        assert_eq!(l.blocks(), Some(3));
        assert_eq!(l.block(2), (800, 200));
        assert_eq!(l.symbols(2), 2);
        assert_eq!(repair_count(4, 10), 1);
        assert_eq!(repair_count(1000, 10), 100);
    }
}
