//! Micro-benchmarks of the hot paths, with bytes/s: `cargo bench -p gapsync-protocol`.
//! The encoder and decoder of a 1 MiB frame (raw and sealed), the CRC and the whole-file
//! digest on their own, the E-language envelope, and a batch of 256 small-file records.

use bytes::Bytes;
use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use gapsync_protocol::batch::{RECORD_HEADER_LEN, finish_record, parse_batch};
use gapsync_protocol::crypto::{ConnectionId, FrameKey, PreSharedKey, Protection};
use gapsync_protocol::frame::encode_sealed_frame;
use gapsync_protocol::{Decoder, Envelope, FrameKind, encode_frame};

const MIB: usize = 1 << 20;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn key() -> FrameKey {
    let psk = PreSharedKey::from_random([7; 32]);
    let id = ConnectionId {
        node: "plant-a",
        pipe: "scada",
        session: 1,
        connection: 1,
        key_id: 1,
    };
    FrameKey::derive(&psk, id, Protection::Encrypt)
}

fn encoded(envelope: Envelope, key: Option<&FrameKey>, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_sealed_frame(
        envelope,
        key,
        FrameKind::Data,
        1,
        9,
        0,
        &payload(len),
        &mut out,
    )
    .expect("fits");
    out
}

#[divan::bench]
fn encode_raw_1mib(b: Bencher) {
    let p = payload(MIB);
    let mut out = Vec::with_capacity(MIB + 64);
    b.counter(BytesCount::new(MIB)).bench_local(|| {
        out.clear();
        encode_frame(
            Envelope::Raw,
            FrameKind::Data,
            1,
            9,
            0,
            black_box(&p),
            &mut out,
        )
    });
}

#[divan::bench]
fn decode_raw_1mib(b: Bencher) {
    let wire = encoded(Envelope::Raw, None, MIB);
    let mut d = Decoder::new(Envelope::Raw, 64 << 20);
    b.counter(BytesCount::new(MIB)).bench_local(|| {
        d.feed(black_box(&wire));
        d.decode().expect("valid").expect("whole")
    });
}

#[divan::bench]
fn encode_sealed_1mib(b: Bencher) {
    let (p, k) = (payload(MIB), key());
    let mut out = Vec::with_capacity(MIB + 64);
    b.counter(BytesCount::new(MIB)).bench_local(|| {
        out.clear();
        encode_sealed_frame(
            Envelope::Raw,
            Some(&k),
            FrameKind::Data,
            1,
            9,
            0,
            black_box(&p),
            &mut out,
        )
    });
}

#[divan::bench]
fn crc32_1mib(b: Bencher) {
    let p = payload(MIB);
    b.counter(BytesCount::new(MIB))
        .bench_local(|| crc32fast::hash(black_box(&p)));
}

#[divan::bench]
fn blake3_digest_1mib(b: Bencher) {
    let p = payload(MIB);
    b.counter(BytesCount::new(MIB))
        .bench_local(|| blake3::hash(black_box(&p)));
}

#[divan::bench]
fn e_language_encode_256kib(b: Bencher) {
    let p = payload(256 << 10);
    let mut out = Vec::new();
    b.counter(BytesCount::new(256usize << 10)).bench_local(|| {
        out.clear();
        encode_frame(
            Envelope::ELanguage,
            FrameKind::Data,
            1,
            9,
            0,
            black_box(&p),
            &mut out,
        )
    });
}

#[divan::bench]
fn e_language_decode_256kib(b: Bencher) {
    let wire = encoded(Envelope::ELanguage, None, 256 << 10);
    let mut d = Decoder::new(Envelope::ELanguage, 64 << 20);
    b.counter(BytesCount::new(256usize << 10)).bench_local(|| {
        d.feed(black_box(&wire));
        d.decode().expect("valid").expect("whole")
    });
}

#[divan::bench]
fn parse_batch_256_files_of_4kib(b: Bencher) {
    let body = payload(4096);
    let mut out = Vec::new();
    for id in 0..256u64 {
        for (kind, len) in [
            (FrameKind::Open, 40),
            (FrameKind::Data, 4096),
            (FrameKind::Commit, 41),
        ] {
            let start = out.len();
            out.resize(start + RECORD_HEADER_LEN, 0);
            out.extend_from_slice(&body[..len]);
            finish_record(&mut out, start, kind, id, 0).expect("fits");
        }
    }
    let batch = Bytes::from(out);
    b.counter(BytesCount::new(batch.len()))
        .bench_local(|| parse_batch(black_box(&batch)).expect("valid").len());
}

fn main() {
    divan::main();
}
