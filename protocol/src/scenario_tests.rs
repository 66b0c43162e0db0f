//! Scenario tests of version-2 connections on a simulated link: a small sender that batches
//! files as the real one does (Open, Data records from the acknowledged offset, Commit with the
//! BLAKE3 digest), the two session state machines, and a receiver "sink" that keeps partials
//! across connections. Compression, keys, cuts and resume, and hostile compressed frames.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::batch::{RECORD_HEADER_LEN, finish_record};
use crate::compress::Compression;
use crate::crypto::{ConnectionId, FrameKey, PreSharedKey, Protection};
use crate::error::{DecodeError, ProtocolError};
use crate::frame::{FrameKind, HEADER_LEN};
use crate::messages::{Commit, Hello, OpenFile, encode_body, encode_open};
use crate::origin::{Hop, OriginChain};
use crate::profile::Profile;
use crate::receiver_session::{ReceiverSession, Request};
use crate::sender_session::{SenderEvent, SenderSession};

const CHUNK: usize = 1000;

fn profile() -> Profile {
    crate::sender_session::tests::profile(4)
}

fn hello(p: &Profile, connection: u64, keyed: bool) -> Hello {
    Hello {
        protocol_version: 1,
        node: "plant-a".into(),
        pipe: "scada".into(),
        session_id: 7,
        connection,
        profile: p.summary(),
        auth: keyed.then_some(crate::messages::HelloAuth {
            key_id: 1,
            protection: Protection::Encrypt,
        }),
    }
}

fn key(connection: u64) -> FrameKey {
    let id = ConnectionId {
        node: "plant-a",
        pipe: "scada",
        session: 7,
        connection,
        key_id: 1,
    };
    FrameKey::derive(&PreSharedKey::from_random([5; 32]), id, Protection::Encrypt)
}

/// One file as the sender sees it: its bytes, what the receiver acknowledged, its chain.
struct Outgoing {
    path: String,
    data: Vec<u8>,
    acked: usize,
    committed: bool,
    origin: OriginChain,
}

/// The receiver's state that outlives connections: partials, the done log, landed files and
/// the origin chain recorded for each.
#[derive(Default)]
struct Sink {
    partial: HashMap<u64, (OpenFile, Vec<u8>, OriginChain)>,
    done: HashSet<u64>,
    landed: BTreeMap<String, Vec<u8>>,
    chains: HashMap<String, OriginChain>,
}

impl Sink {
    fn apply(&mut self, req: Request, hello: &Hello) -> bool {
        match req {
            Request::Open { transfer, .. }
            | Request::Data { transfer, .. }
            | Request::Commit { transfer, .. }
                if self.done.contains(&transfer) =>
            {
                true
            }
            Request::Open {
                transfer,
                open,
                origin,
                ..
            } => {
                let size = open.size as usize;
                let hop = Hop::new(&hello.node, &hello.pipe).expect("valid names");
                let chain = origin.with_hop(hop).expect("within the limit");
                self.partial
                    .entry(transfer)
                    .or_insert_with(|| (open, vec![0; size], chain));
                true
            }
            Request::Data {
                transfer,
                offset,
                payload,
            } => {
                let Some((_, buf, _)) = self.partial.get_mut(&transfer) else {
                    return false;
                };
                let at = offset as usize;
                buf[at..at + payload.len()].copy_from_slice(&payload);
                true
            }
            Request::Commit { transfer, commit } => {
                let Some((open, buf, chain)) = self.partial.remove(&transfer) else {
                    return false;
                };
                if *blake3::hash(&buf).as_bytes() != commit.digest {
                    return false;
                }
                self.done.insert(transfer);
                self.chains.insert(open.path.clone(), chain);
                self.landed.insert(open.path, buf);
                true
            }
            Request::Batch(records) => records.into_iter().all(|r| self.apply(r, hello)),
            Request::Hello(_) | Request::Heartbeat => true,
        }
    }
}

/// What one connection has sent of a file so far.
#[derive(Clone, Copy, Default)]
struct Cursor {
    opened: bool,
    sent: usize,
    commit_sent: bool,
}

/// What a frame carried: (file, kind, offset, length) per record, for its acknowledgement.
type Sent = Vec<(usize, FrameKind, usize, usize)>;

fn push_record(buf: &mut Vec<u8>, kind: FrameKind, transfer: u64, offset: u64, body: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    buf.extend_from_slice(body);
    finish_record(buf, start, kind, transfer, offset).expect("a record");
}

/// The next batch, as the real sender builds it: Open, then Data records from where this
/// connection got to (the acknowledged offset at its start), then Commit, file after file.
fn next_batch(files: &[Outgoing], max: usize, cur: &mut [Cursor]) -> Option<(Vec<u8>, Sent)> {
    let mut buf = Vec::new();
    let mut recs = Sent::new();
    let room = |buf: &Vec<u8>| max.saturating_sub(buf.len() + RECORD_HEADER_LEN);
    for (i, f) in files.iter().enumerate() {
        let c = &mut cur[i];
        let transfer = 100 + i as u64;
        if f.committed || c.commit_sent {
            continue;
        }
        if !c.opened {
            let open = OpenFile {
                path: f.path.clone(),
                size: f.data.len() as u64,
                mtime_ns: 0,
            };
            let body = encode_open(&open, &f.origin);
            if room(&buf) < body.len() {
                break;
            }
            push_record(&mut buf, FrameKind::Open, transfer, 0, &body);
            c.opened = true;
        }
        while c.sent < f.data.len() {
            let n = CHUNK.min(f.data.len() - c.sent);
            if room(&buf) < n {
                return Some((buf, recs));
            }
            push_record(
                &mut buf,
                FrameKind::Data,
                transfer,
                c.sent as u64,
                &f.data[c.sent..c.sent + n],
            );
            recs.push((i, FrameKind::Data, c.sent, n));
            c.sent += n;
        }
        let commit = encode_body(&Commit {
            size: f.data.len() as u64,
            digest: *blake3::hash(&f.data).as_bytes(),
        });
        if room(&buf) < commit.len() {
            break;
        }
        push_record(&mut buf, FrameKind::Commit, transfer, 0, &commit);
        recs.push((i, FrameKind::Commit, 0, 0));
        c.commit_sent = true;
    }
    (!buf.is_empty()).then_some((buf, recs))
}

struct Run {
    compression: Option<Compression>,
    keyed: bool,
    /// Acknowledgements delivered in the first connection before the link is cut.
    cut_after: Option<usize>,
}

/// Moves `files` over as many connections as it takes; returns the sink and the bytes the
/// sender wrote. `resumed_at` gets each file's acknowledged offset when the cut happened.
fn transfer_from(files: &mut [Outgoing], run: &Run, resumed_at: &mut Vec<usize>) -> (Sink, usize) {
    let p = profile();
    let t = Instant::now();
    let mut sink = Sink::default();
    let mut wire = 0usize;
    for connection in 1..=3u64 {
        let h = hello(&p, connection, run.keyed);
        let mut tx =
            SenderSession::new(&p, &h, t, run.keyed.then(|| key(connection))).with_origin_chains();
        if let Some(c) = run.compression {
            tx = tx.with_compression(c);
        }
        let mut rx = ReceiverSession::new(&p);
        let mut acks_left = if connection == 1 { run.cut_after } else { None };
        let mut cur: Vec<Cursor> = files
            .iter()
            .map(|f| Cursor {
                sent: f.acked,
                ..Cursor::default()
            })
            .collect();
        let mut in_flight: VecDeque<Sent> = VecDeque::new();
        loop {
            while tx.can_send() {
                let Some((batch, recs)) = next_batch(files, tx.max_payload(), &mut cur) else {
                    break;
                };
                tx.send(FrameKind::Batch, 0, 0, &batch, t).expect("room");
                in_flight.push_back(recs);
            }
            wire += tx.pending_output().len();
            receive(
                &mut tx,
                &mut rx,
                &mut sink,
                &h,
                run.keyed.then(|| key(connection)),
            );
            let mut replies = rx.pending_output().to_vec();
            rx.clear_output();
            if let Some(left) = acks_left.as_mut() {
                // The cut: replies beyond the first `left` never reach the sender.
                replies.truncate(*left);
                *left -= replies.len();
            }
            assert!(!replies.is_empty() || acks_left == Some(0), "no progress");
            tx.on_bytes(&replies, t);
            settle(&mut tx, files, &mut in_flight);
            if files.iter().all(|f| f.committed) {
                return (sink, wire);
            }
            if acks_left == Some(0) {
                *resumed_at = files.iter().map(|f| f.acked).collect();
                break;
            }
        }
    }
    panic!("not every file was committed in three connections");
}

/// The receiver's side of one round: decode what the sender queued, apply it, answer.
fn receive(
    tx: &mut SenderSession,
    rx: &mut ReceiverSession,
    sink: &mut Sink,
    h: &Hello,
    key: Option<FrameKey>,
) {
    rx.decoder_mut().feed(tx.pending_output());
    tx.clear_output();
    let mut key = key;
    while let Some(req) = rx.next_request().expect("a valid stream") {
        if let Request::Hello(hello) = req {
            assert_eq!(hello.protocol_version, 2, "compression and chains need v2");
            rx.accept_hello(key.take());
        } else {
            let ok = sink.apply(req, h);
            rx.answer(ok);
        }
    }
}

/// Advances each file's acknowledged offset by the records of every acknowledged frame.
fn settle(tx: &mut SenderSession, files: &mut [Outgoing], in_flight: &mut VecDeque<Sent>) {
    while let Some(ev) = tx.poll_event() {
        match ev {
            SenderEvent::HandshakeAccepted => {}
            SenderEvent::Acked(info) => {
                assert_eq!(info.kind, FrameKind::Batch);
                for (i, kind, at, n) in in_flight.pop_front().expect("a frame") {
                    if kind == FrameKind::Commit {
                        files[i].committed = true;
                    } else {
                        files[i].acked = files[i].acked.max(at + n);
                    }
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

fn transfer(files: &mut [Outgoing], run: &Run) -> (Sink, usize) {
    transfer_from(files, run, &mut Vec::new())
}

fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "2026-01-01T00:00:{:02}Z,sensor-{},{}.5\n",
                i % 60,
                i % 7,
                i * 3
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn files(data: &[Vec<u8>]) -> Vec<Outgoing> {
    data.iter()
        .enumerate()
        .map(|(i, d)| Outgoing {
            path: format!("f{i}.csv"),
            data: d.clone(),
            acked: 0,
            committed: false,
            origin: OriginChain::default(),
        })
        .collect()
}

fn landed(sink: &Sink, i: usize) -> &[u8] {
    &sink.landed[&format!("f{i}.csv")]
}

#[test]
fn a_compressed_transfer_lands_byte_identical_with_fewer_bytes_on_the_wire() {
    let data = [text(20_000), text(50), Vec::new(), text(3_333)];
    for keyed in [false, true] {
        let zstd = Compression::zstd(3).expect("level");
        let (sink, packed) = transfer(
            &mut files(&data),
            &Run {
                compression: Some(zstd),
                keyed,
                cut_after: None,
            },
        );
        let (_, plain) = transfer(
            &mut files(&data),
            &Run {
                compression: None,
                keyed,
                cut_after: None,
            },
        );
        for (i, d) in data.iter().enumerate() {
            assert_eq!(landed(&sink, i), &d[..], "file {i}, keyed {keyed}");
        }
        assert!(
            packed * 3 < plain,
            "text compresses: {packed} bytes vs {plain}, keyed {keyed}"
        );
    }
}

#[test]
fn a_compressed_transfer_cut_mid_file_resumes_at_the_acknowledged_offset() {
    let data = [text(30_000), text(9_000)];
    for keyed in [false, true] {
        for cut in [1, 2, 3, 5] {
            let mut f = files(&data);
            let run = Run {
                compression: Some(Compression::zstd(19).expect("level")),
                keyed,
                cut_after: Some(cut),
            };
            let mut resumed_at = Vec::new();
            let (sink, _) = transfer_from(&mut f, &run, &mut resumed_at);
            if cut == 3 {
                assert!(
                    resumed_at[0] > 0 && resumed_at[0] < data[0].len(),
                    "the cut leaves the first file half sent: {resumed_at:?}"
                );
            }
            for (i, d) in data.iter().enumerate() {
                assert_eq!(
                    landed(&sink, i),
                    &d[..],
                    "file {i} after a cut at ack {cut}"
                );
            }
        }
    }
}

#[test]
fn incompressible_data_goes_uncompressed_and_costs_no_extra_byte() {
    let data = [noise(12_345)];
    let (sink, packed) = transfer(
        &mut files(&data),
        &Run {
            compression: Some(Compression::zstd(3).expect("level")),
            keyed: false,
            cut_after: None,
        },
    );
    let (_, plain) = transfer(
        &mut files(&data),
        &Run {
            compression: None,
            keyed: false,
            cut_after: None,
        },
    );
    assert_eq!(landed(&sink, 0), &data[0][..]);
    // The Hello's offer (`01 01 03` instead of `00`) costs two bytes; every Data record went
    // as it was.
    assert_eq!(
        packed,
        plain + 2,
        "random bytes are sent as plain Data records"
    );
}

#[test]
fn origin_chains_reach_the_receiver_which_adds_the_hop() {
    let mut f = files(&[text(10)]);
    f[0].origin = OriginChain::parse("plant-x/up,dmz/relay").expect("chain");
    let (sink, _) = transfer(
        &mut f,
        &Run {
            compression: None,
            keyed: false,
            cut_after: None,
        },
    );
    let chain = &sink.chains["f0.csv"];
    assert_eq!(chain.to_string(), "plant-x/up,dmz/relay,plant-a/scada");
}

/// A version-2 receiver session after the handshake, with compression offered.
fn compressed_session(accept: bool) -> Result<ReceiverSession, ProtocolError> {
    let p = profile();
    let tx = SenderSession::new(&p, &hello(&p, 1, false), Instant::now(), None)
        .with_compression(Compression::zstd(3).expect("level"));
    assert_eq!(
        tx.pending_output()[4],
        2,
        "header version 2: a version-1 receiver refuses it"
    );
    let mut rx = ReceiverSession::new(&p).with_compression(accept);
    rx.decoder_mut().feed(tx.pending_output());
    match rx.next_request()? {
        Some(Request::Hello(_)) => rx.accept_hello(None),
        other => panic!("{other:?}"),
    }
    rx.clear_output();
    Ok(rx)
}

#[test]
fn a_receiver_that_refuses_compression_says_so_and_sends_no_byte() {
    let e = compressed_session(false).expect_err("refused");
    assert!(matches!(e, ProtocolError::CompressionRefused { .. }));
    let text = e.to_string();
    assert!(
        text.contains("compression") && text.contains("zstd") && text.contains("scada"),
        "{text}"
    );
}

/// One Batch frame (sequence 1, version 2) of one compressed Data record: `declared` original
/// bytes, `frame` the zstd bytes.
fn hostile_frame(declared: u32, frame: &[u8]) -> Vec<u8> {
    let mut batch = vec![0x83];
    batch.extend_from_slice(&5u64.to_be_bytes());
    batch.extend_from_slice(&0u64.to_be_bytes());
    batch.extend_from_slice(&((4 + frame.len()) as u32).to_be_bytes());
    batch.extend_from_slice(&declared.to_be_bytes());
    batch.extend_from_slice(frame);
    let mut wire = Vec::new();
    crate::frame::encode_versioned_frame(
        2,
        crate::Envelope::Raw,
        None,
        FrameKind::Batch,
        1,
        0,
        0,
        &batch,
        &mut wire,
    )
    .expect("fits");
    wire
}

#[test]
fn a_decompression_bomb_is_refused_naming_the_frame_before_allocating() {
    let budget = profile().max_frame_bytes as usize - HEADER_LEN;
    let zeros = zstd::bulk::compress(&vec![0u8; 10 << 20], 19).expect("compress");
    let exact = zstd::bulk::compress(&text(500), 3).expect("compress");
    for (declared, frame, what) in [
        (u32::MAX, &zeros[..], "claims 4 GiB"),
        (
            budget as u32 + 1,
            &zeros[..],
            "claims one byte over the budget",
        ),
        (budget as u32, &zeros[..], "expands past what it claims"),
        (499, &exact[..], "claims less than it holds"),
        (501, &exact[..], "claims more than it holds"),
        (100, b"not zstd at all", "is not zstd"),
    ] {
        let mut rx = compressed_session(true).expect("accepted");
        rx.decoder_mut().feed(&hostile_frame(declared, frame));
        match rx.next_request() {
            Err(ProtocolError::Decode(DecodeError::BadCompressed { sequence: 1, .. })) => {}
            other => panic!("a record that {what}: {other:?}"),
        }
        assert!(rx.is_closed());
    }
    let mut rx = compressed_session(true).expect("accepted");
    rx.decoder_mut().feed(&hostile_frame(500, &exact));
    match rx.next_request() {
        Ok(Some(Request::Batch(r))) => assert!(
            matches!(&r[..], [Request::Data { payload, .. }] if payload[..] == text(500)[..])
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_compressed_record_without_negotiation_is_refused() {
    let p = profile();
    let mut tx =
        SenderSession::new(&p, &hello(&p, 1, false), Instant::now(), None).with_origin_chains();
    let mut rx = ReceiverSession::new(&p);
    rx.decoder_mut().feed(tx.pending_output());
    tx.clear_output();
    assert!(matches!(rx.next_request(), Ok(Some(Request::Hello(_)))));
    rx.accept_hello(None);
    rx.decoder_mut().feed(&hostile_frame(
        500,
        &zstd::bulk::compress(&text(500), 3).expect("zstd"),
    ));
    assert!(matches!(
        rx.next_request(),
        Err(ProtocolError::Decode(DecodeError::BadBatch(_)))
    ));
}

#[test]
fn a_version_2_stream_decodes_the_same_at_every_split() {
    let p = profile();
    let t = Instant::now();
    let mut tx = SenderSession::new(&p, &hello(&p, 1, false), t, None)
        .with_compression(Compression::zstd(3).expect("level"));
    tx.on_bytes(&[0xFF], t);
    let f = files(&[text(2500)]);
    let (batch, _) = next_batch(&f, tx.max_payload(), &mut [Cursor::default()]).expect("a batch");
    let mut wire = tx.pending_output().to_vec();
    tx.clear_output();
    let info = tx.send(FrameKind::Batch, 0, 0, &batch, t).expect("room");
    assert_eq!(
        info.length as usize,
        batch.len(),
        "acks count the original bytes"
    );
    assert!(
        tx.pending_output().len() < HEADER_LEN + batch.len() / 2,
        "compressed"
    );
    wire.extend_from_slice(tx.pending_output());
    let requests = |parts: &[&[u8]]| {
        let mut rx = ReceiverSession::new(&p);
        let mut out = Vec::new();
        for part in parts {
            rx.decoder_mut().feed(part);
            while let Some(req) = rx.next_request().expect("valid at every split") {
                if matches!(req, Request::Hello(_)) {
                    rx.accept_hello(None);
                } else {
                    rx.answer(true);
                }
                out.push(req);
            }
        }
        out
    };
    let whole = requests(&[&wire]);
    assert_eq!(whole.len(), 2);
    for cut in 0..=wire.len() {
        assert_eq!(
            requests(&[&wire[..cut], &wire[cut..]]),
            whole,
            "split at {cut}"
        );
    }
}
