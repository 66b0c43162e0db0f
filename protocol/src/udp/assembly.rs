//! The receiver's state for one object on the diode link: which blocks are decoded, the
//! symbols of the others, the pass and its deadline. Time comes in as an argument.

use std::time::{Duration, Instant};

use super::control::{Announce, End};
use super::fec::{self, BlockBuf, BlockDecoder, BlockPool, Layout, esi_limit};

/// Largest repair percentage an announcement may ask for (bounds the symbols kept per block).
pub const MAX_REPAIR_PERCENT: u32 = 400;
/// Most carousel passes an announcement may ask for.
pub const MAX_PASSES: u8 = 16;
/// Most blocks an object may have (16 Mi: 23 TB with 1400-byte symbols and 1024-symbol
/// blocks). Checked before the per-block state (one byte each) is allocated.
pub const MAX_BLOCKS: u32 = 1 << 24;

/// What the receiver's profile allows an object to be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub symbol_bytes: u16,
    pub max_block_symbols: u32,
    /// Blocks being decoded at once per object; beyond it the oldest unfinished block's
    /// symbols are dropped (a later pass brings them again). Bounds memory by the window.
    pub max_decoding: usize,
    /// Added to the announced pass duration to make the pass's deadline.
    pub deadline_slack: Duration,
}

/// One byte per block; the decoders of the blocks being decoded live beside, by block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Waiting,
    Decoding,
    Done,
}

/// A pass that ended with blocks still missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassFailure {
    pub pass: u8,
    pub passes: u8,
    /// No later pass is coming: the object is abandoned.
    pub last: bool,
    pub missing_blocks: u32,
    pub blocks: u32,
    /// Symbol datagrams received in the pass and sent by it (from the End, or the layout).
    pub received: u64,
    pub sent: u64,
    /// The End (and so the digest) never arrived.
    pub no_end: bool,
}

impl PassFailure {
    /// Datagrams lost in the pass, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }
}

/// One object being received.
pub struct Assembly {
    pub announce: Announce,
    layout: Layout,
    limits: Limits,
    slots: Vec<Slot>,
    /// The decoders of the blocks in `Slot::Decoding`, by block (lowest = oldest).
    decoders: std::collections::BTreeMap<u32, BlockDecoder>,
    /// Decoded blocks held until the blocks before them are decoded, so that they are written
    /// in order and the sink hashes them as it writes (at most `max_decoding`; past that the
    /// lowest goes out of order and the sink hashes the file at commit instead).
    held: std::collections::BTreeMap<u32, BlockBuf>,
    /// Blocks below this are written (or handed out to be).
    next_write: u32,
    /// Decoded blocks to write, in order: (offset in the object, bytes).
    ready: std::collections::VecDeque<(u64, BlockBuf)>,
    blocks: u32,
    done: u32,
    end: Option<End>,
    pass: u8,
    deadline: Instant,
    received: u64,
    per_pass: u64,
    /// Symbols received for blocks not yet decoded, over all passes, and that count at the
    /// last tick: while it grows the pass is still arriving (see [`Assembly::on_tick`]).
    useful: u64,
    useful_at_tick: u64,
}

impl std::fmt::Debug for Assembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembly")
            .field("path", &self.announce.path)
            .field("done", &self.done)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl Assembly {
    /// Starts an object in pass `pass`, or says why the announcement is refused.
    pub fn new(announce: Announce, pass: u8, limits: Limits, now: Instant) -> Result<Self, String> {
        if announce.symbol_bytes != limits.symbol_bytes {
            return Err(format!(
                "symbol size {} differs from this profile's {}: both ends must use the same profile",
                announce.symbol_bytes, limits.symbol_bytes
            ));
        }
        if !(1..=limits.max_block_symbols).contains(&announce.block_symbols) {
            return Err(format!(
                "{} symbols per block is outside 1..={}",
                announce.block_symbols, limits.max_block_symbols
            ));
        }
        if announce.repair_percent > MAX_REPAIR_PERCENT
            || !(1..=MAX_PASSES).contains(&announce.passes)
            || !(1..=announce.passes).contains(&pass)
        {
            return Err(format!(
                "repair {}% or pass {pass} of {} is out of range",
                announce.repair_percent, announce.passes
            ));
        }
        let layout = Layout {
            size: announce.size,
            symbol_bytes: announce.symbol_bytes,
            block_symbols: announce.block_symbols,
        };
        let blocks = layout
            .blocks()
            .filter(|b| *b <= MAX_BLOCKS)
            .ok_or_else(|| {
                format!(
                    "{} bytes is more than {MAX_BLOCKS} blocks of this profile",
                    announce.size
                )
            })?;
        let per_pass = layout.datagrams_from(0, announce.repair_percent);
        let slots = vec![Slot::Waiting; blocks as usize];
        let deadline = now + Self::pass_time(&announce, &limits);
        Ok(Self {
            announce,
            layout,
            limits,
            slots,
            decoders: std::collections::BTreeMap::new(),
            held: std::collections::BTreeMap::new(),
            next_write: 0,
            ready: std::collections::VecDeque::new(),
            blocks,
            done: 0,
            end: None,
            pass,
            deadline,
            received: 0,
            per_pass,
            useful: 0,
            useful_at_tick: 0,
        })
    }

    fn pass_time(a: &Announce, limits: &Limits) -> Duration {
        Duration::from_millis(a.pass_ms).saturating_add(limits.deadline_slack)
    }

    /// The pass being received.
    pub fn pass(&self) -> u8 {
        self.pass
    }

    /// Every block is decoded and the End (with the digest) arrived.
    pub fn complete(&self) -> bool {
        self.done == self.blocks && self.end.is_some()
    }

    /// The object's End, once one copy arrived.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Notes the End of a pass (any copy; the digest is the same in all). The pass's symbols
    /// have all been sent: blocks waiting for spare symbols decode with what they have.
    pub fn on_end(&mut self, end: End) {
        self.end.get_or_insert(end);
        self.settle_all();
    }

    /// Decodes every block that has enough symbols, spare or not (see
    /// [`BlockDecoder::settle`]).
    fn settle_all(&mut self) {
        let waiting: Vec<u32> = self.decoders.keys().copied().collect();
        for block in waiting {
            if let Some(buf) = self.decoders.get_mut(&block).and_then(BlockDecoder::settle) {
                self.decoded(block, buf);
            }
        }
    }

    /// A datagram of pass `pass` arrived. If it starts a later pass while this one is not
    /// complete, the earlier pass failed: that failure is returned (once).
    pub fn on_pass(&mut self, pass: u8, now: Instant) -> Option<PassFailure> {
        if pass <= self.pass || pass > self.announce.passes {
            return None;
        }
        // Only missing blocks fail a pass: a missing End comes with any later copy.
        self.settle_all();
        let failure = (self.done < self.blocks).then(|| self.failure(false));
        self.pass = pass;
        self.received = 0;
        self.deadline = now + Self::pass_time(&self.announce, &self.limits);
        failure
    }

    /// The Announce of pass `pass` came again: the sender started the pass over (its pipe was
    /// stopped mid-object, or restarted). The pass gets a whole pass time from now, so the
    /// object is not given up while its symbols are arriving again (copies of blocks already
    /// decoded do not count as progress and would not move the deadline otherwise).
    pub fn on_announce_again(&mut self, pass: u8, now: Instant) {
        if pass == self.pass {
            self.deadline = self
                .deadline
                .max(now + Self::pass_time(&self.announce, &self.limits));
        }
    }

    /// The pass's deadline passed with blocks missing: returns the failure, and either waits
    /// for the next pass (a new deadline) or, after the last, marks it final.
    ///
    /// A pass ends `deadline_slack` after its announced duration or after the last symbol that
    /// a block still needed, whichever is later: a sender slowed below its pace (a busy host)
    /// is still sending, and abandoning its object then would discard data that is arriving.
    pub fn on_tick(&mut self, now: Instant) -> Option<PassFailure> {
        if self.useful != self.useful_at_tick {
            self.useful_at_tick = self.useful;
            self.deadline = self.deadline.max(now + self.limits.deadline_slack);
        }
        if now < self.deadline || self.complete() {
            return None;
        }
        self.settle_all();
        if self.complete() {
            return None;
        }
        let last = self.pass >= self.announce.passes;
        let failure = self.failure(last);
        if !last {
            // The next pass is late or lost: wait one more pass time for it.
            self.pass += 1;
            self.received = 0;
            self.deadline = now + Self::pass_time(&self.announce, &self.limits);
        }
        Some(failure)
    }

    fn failure(&self, last: bool) -> PassFailure {
        PassFailure {
            pass: self.pass,
            passes: self.announce.passes,
            last,
            missing_blocks: self.blocks - self.done,
            blocks: self.blocks,
            received: self.received,
            sent: self.end.as_ref().map_or(self.per_pass, |e| e.datagrams),
            no_end: self.end.is_none(),
        }
    }

    /// Adds symbol `esi` of block `block`. Decoded blocks become ready in order (see
    /// [`Assembly::next_ready`]); returns true when one did.
    pub fn on_symbol(
        &mut self,
        block: u32,
        esi: u32,
        symbol: &[u8],
        pool: &mut BlockPool,
    ) -> Result<bool, &'static str> {
        if symbol.len() != usize::from(self.layout.symbol_bytes) {
            return Err("symbol length differs from the announced symbol size");
        }
        let idx = block as usize;
        let Some(slot) = self.slots.get(idx).copied() else {
            return Err("block number past the announced size");
        };
        self.received += 1;
        if slot == Slot::Done {
            return Ok(false);
        }
        self.useful += 1;
        let before = self.ready.len();
        if slot == Slot::Waiting {
            self.start_block(block, pool);
        }
        let k = self.layout.symbols(block);
        let pct = self.announce.repair_percent;
        // At or past the last symbol this pass sends for the block (the sender may add a few
        // repair symbols to the blocks of a sparse group).
        let tail = u64::from(esi) + 1
            >= u64::from(k)
                + u64::from(fec::repair_first(k, pct, self.pass))
                + u64::from(fec::repair_count(k, pct));
        let Some(d) = self.decoders.get_mut(&block) else {
            return Ok(self.ready.len() > before);
        };
        if let Some(buf) = d.add(esi, symbol, tail) {
            self.decoded(block, buf);
        }
        Ok(self.ready.len() > before)
    }

    /// Block `block` decoded: it waits in `held` until the blocks before it are written.
    fn decoded(&mut self, block: u32, mut block_buf: BlockBuf) {
        block_buf.truncate(self.layout.block(block).1);
        self.decoders.remove(&block);
        self.slots[block as usize] = Slot::Done;
        self.done += 1;
        self.held.insert(block, block_buf);
        while self.next_write < self.blocks && self.slots[self.next_write as usize] == Slot::Done {
            // Done but not held: it went out of order earlier.
            if let Some(b) = self.held.remove(&self.next_write) {
                self.ready
                    .push_back((self.layout.block(self.next_write).0, b));
            }
            self.next_write += 1;
        }
        if self.held.len() > self.limits.max_decoding {
            if let Some((b, buf)) = self.held.pop_first() {
                self.ready.push_back((self.layout.block(b).0, buf));
            }
        }
    }

    /// Whether decoded blocks wait to be written ([`Assembly::next_ready`]).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The next decoded block to write: its offset in the object and its bytes (give the
    /// buffer back to the pool once written).
    pub fn next_ready(&mut self) -> Option<(u64, BlockBuf)> {
        self.ready.pop_front()
    }

    fn start_block(&mut self, block: u32, pool: &mut BlockPool) {
        if self.decoders.len() >= self.limits.max_decoding {
            if let Some((old, mut d)) = self.decoders.pop_first() {
                // Its last chance in this pass: decode with what it has, or drop its symbols.
                match d.settle() {
                    Some(buf) => self.decoded(old, buf),
                    None => self.slots[old as usize] = Slot::Waiting,
                }
            }
        }
        let k = self.layout.symbols(block);
        let limit = esi_limit(k, self.announce.repair_percent, self.announce.passes);
        let (offset, _) = self.layout.block(block);
        self.decoders.insert(
            block,
            BlockDecoder::new(k, self.layout.symbol_bytes, limit, offset, pool.take()),
        );
        self.slots[block as usize] = Slot::Decoding;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u16 = 16;

    fn limits() -> Limits {
        Limits {
            symbol_bytes: T,
            max_block_symbols: 4,
            max_decoding: 4,
            deadline_slack: Duration::from_secs(1),
        }
    }

    fn announce(size: u64, passes: u8) -> Announce {
        Announce {
            path: "a.bin".into(),
            size,
            mtime_ns: 0,
            symbol_bytes: T,
            block_symbols: 4,
            repair_percent: 25,
            passes,
            pass_ms: 10,
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 256) as u8).collect()
    }

    /// Feeds block `b` of `d` (its source symbols, the last zero-padded); returns the blocks
    /// that became ready to write, by offset.
    fn feed(a: &mut Assembly, d: &[u8], b: u32) -> Vec<(u64, Vec<u8>)> {
        let mut pool = BlockPool::default();
        let t = usize::from(T);
        let start = b as usize * 4 * t;
        let block = &d[start..d.len().min(start + 4 * t)];
        let mut out = Vec::new();
        for (i, chunk) in block.chunks(t).enumerate() {
            let mut sym = chunk.to_vec();
            sym.resize(t, 0);
            a.on_symbol(b, i as u32, &sym, &mut pool)
                .expect("valid symbol");
            while let Some((at, done)) = a.next_ready() {
                out.push((at, done.bytes().to_vec()));
            }
        }
        out
    }

    fn end(d: &[u8]) -> End {
        End {
            datagrams: d.len().div_ceil(usize::from(T)) as u64,
            digest: [7; 32],
        }
    }

    #[test]
    fn a_pass_with_a_missing_block_fails_once_and_the_next_pass_completes_it() {
        let now = Instant::now();
        let d = data(160);
        let mut a = Assembly::new(announce(160, 2), 1, limits(), now).expect("valid");
        assert_eq!(feed(&mut a, &d, 0), vec![(0, d[..64].to_vec())]);
        assert_eq!(feed(&mut a, &d, 2), vec![], "held until block 1 is decoded");
        a.on_end(end(&d));
        assert!(!a.complete(), "block 1 is missing");
        let f = a.on_pass(2, now).expect("pass 1 failed");
        assert_eq!(
            (f.pass, f.last, f.missing_blocks, f.blocks),
            (1, false, 1, 3)
        );
        assert_eq!(a.on_pass(2, now), None, "reported once");
        assert_eq!(
            feed(&mut a, &d, 1),
            vec![(64, d[64..128].to_vec()), (128, d[128..].to_vec())],
            "written in order"
        );
        assert!(a.complete());
    }

    #[test]
    fn a_pass_announced_again_gets_a_new_pass_time_and_is_not_given_up() {
        let now = Instant::now();
        let d = data(160);
        let mut a = Assembly::new(announce(160, 1), 1, limits(), now).expect("valid");
        feed(&mut a, &d, 0);
        assert_eq!(a.on_tick(now), None, "progress seen");
        let pass_time = Assembly::pass_time(&announce(160, 1), &limits());
        // The sender stopped; just before the deadline it starts the pass over.
        let later = now + pass_time - Duration::from_millis(1);
        a.on_announce_again(1, later);
        assert_eq!(
            a.on_tick(now + pass_time),
            None,
            "not given up at the old deadline"
        );
        feed(&mut a, &d, 1);
        feed(&mut a, &d, 2);
        a.on_end(end(&d));
        assert!(a.complete());
        // Without the new Announce the same object is given up at the old deadline.
        let mut b = Assembly::new(announce(160, 1), 1, limits(), now).expect("valid");
        feed(&mut b, &d, 0);
        assert_eq!(b.on_tick(now), None, "progress seen");
        assert!(b.on_tick(now + pass_time).is_some_and(|f| f.last));
    }

    #[test]
    fn a_block_whose_pass_tail_was_lost_decodes_when_the_end_arrives() {
        let now = Instant::now();
        let d = data(64);
        // Two repair symbols per block of 4 (ids 4 and 5; 5 is the pass's last).
        let ann = Announce {
            repair_percent: 50,
            ..announce(64, 1)
        };
        let mut a = Assembly::new(ann, 1, limits(), now).expect("valid");
        let pool = &mut BlockPool::default();
        let repair = fec::repair_symbols(&d, T, 0, 2);
        let t = usize::from(T);
        for i in [0usize, 2, 3] {
            assert_eq!(
                a.on_symbol(0, i as u32, &d[i * t..(i + 1) * t], pool),
                Ok(false)
            );
        }
        // Symbol 1 and repair id 5 lost: four symbols, enough, but short of the spare ones
        // a decode waits for, and the pass's last symbol never came.
        assert_eq!(a.on_symbol(0, repair[0].0, &repair[0].1, pool), Ok(false));
        assert!(!a.has_ready());
        a.on_end(end(&d));
        let (at, block) = a.next_ready().expect("settled by the End");
        assert_eq!((at, block.bytes()), (0, &d[..]));
        assert!(a.complete());
    }

    #[test]
    fn blocks_are_written_in_order_while_at_most_max_decoding_wait() {
        let now = Instant::now();
        let d = data(7 * 64);
        let mut a = Assembly::new(announce(7 * 64, 1), 1, limits(), now).expect("valid");
        let mut offsets = Vec::new();
        for b in [1, 2, 3, 4, 5, 0, 6] {
            for (at, bytes) in feed(&mut a, &d, b) {
                assert_eq!(bytes, d[at as usize..at as usize + 64]);
                offsets.push(at);
            }
        }
        // Block 1 left early when a fifth block waited (max_decoding is 4); the rest in order.
        assert_eq!(offsets, vec![64, 0, 128, 192, 256, 320, 384]);
        assert!(a.next_ready().is_none());
    }

    #[test]
    fn a_pass_still_arriving_past_its_announced_time_is_not_abandoned() {
        let now = Instant::now();
        let d = data(100);
        let mut a = Assembly::new(announce(100, 1), 1, limits(), now).expect("valid");
        let pool = &mut BlockPool::default();
        // The sender runs late: one symbol of block 0 arrives each second, long past the
        // announced 10 ms + 1 s.
        for esi in 0..3u32 {
            let at = now + Duration::from_secs(2 + u64::from(esi));
            let start = esi as usize * usize::from(T);
            a.on_symbol(0, esi, &d[start..start + usize::from(T)], pool)
                .expect("valid symbol");
            assert_eq!(a.on_tick(at), None, "symbols still arriving at {esi} s");
        }
        // Then nothing more: the pass fails one slack after the last symbol.
        assert_eq!(a.on_tick(now + Duration::from_millis(4500)), None);
        let f = a
            .on_tick(now + Duration::from_millis(5100))
            .expect("silent for longer than the slack");
        assert!(f.last && f.missing_blocks == 2);
    }

    #[test]
    fn the_last_pass_past_its_deadline_is_final_and_bad_symbols_are_refused() {
        let now = Instant::now();
        let mut a = Assembly::new(announce(100, 1), 1, limits(), now).expect("valid");
        let pool = &mut BlockPool::default();
        assert!(a.on_symbol(0, 0, &[0; 5], pool).is_err(), "wrong length");
        assert!(
            a.on_symbol(9, 0, &[0; 16], pool).is_err(),
            "block past the size"
        );
        assert_eq!(a.on_tick(now), None, "before the deadline");
        let f = a
            .on_tick(now + Duration::from_secs(5))
            .expect("deadline passed");
        assert!(f.last && f.no_end && f.missing_blocks == 2);
        assert!(
            Assembly::new(
                announce(100, 1),
                1,
                Limits {
                    symbol_bytes: 32,
                    ..limits()
                },
                now
            )
            .is_err(),
            "another profile's symbol size is refused"
        );
    }
}
