//! Version-2 connections against the real receiver: a hand-driven sender session that
//! compresses Data records (zstd) and sends origin chains. Text files land byte-identical with
//! far fewer bytes on the wire, a cut connection resumes at the acknowledged offset, and a
//! compression bomb is refused with an error naming the frame.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gapsync_protocol::batch::{RECORD_HEADER_LEN, finish_record};
use gapsync_protocol::{
    Commit, Compression, FrameKind, OpenFile, OriginChain, SenderEvent, SenderSession, encode_body,
    encode_open,
};
use gapsync_tests::{Lab, hello, profile, wait_until};

const CHUNK: usize = 64 * 1024;

fn csv(n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut i = seed;
    while out.len() < n {
        let line = format!(
            "2026-01-01T00:{:02}:{:02}Z,pump-{},{}.{}\n",
            i / 60 % 60,
            i % 60,
            i % 9,
            i * 7 % 1000,
            i % 10
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

fn record(buf: &mut Vec<u8>, kind: FrameKind, transfer: u64, offset: u64, body: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    buf.extend_from_slice(body);
    finish_record(buf, start, kind, transfer, offset).expect("record");
}

/// A version-2 connection that compresses; one frame in flight at a time.
struct Conn {
    tcp: TcpStream,
    s: SenderSession,
    /// Bytes written to the socket.
    wire: usize,
}

impl Conn {
    fn open(addr: SocketAddr, connection: u64) -> Conn {
        let p = profile("loopback");
        let h = gapsync_protocol::Hello {
            connection,
            ..hello(&p)
        };
        let s = SenderSession::new(&p, &h, Instant::now(), None)
            .with_compression(Compression::zstd(3).expect("level"))
            .with_origin_chains();
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut c = Conn { tcp, s, wire: 0 };
        c.round_trip();
        assert_eq!(c.s.poll_event(), Some(SenderEvent::HandshakeAccepted));
        c
    }

    /// Writes what is queued and reads one reply byte.
    fn round_trip(&mut self) {
        let out = self.s.pending_output().to_vec();
        self.s.clear_output();
        self.tcp.write_all(&out).expect("write");
        self.wire += out.len();
        let mut b = [0u8];
        self.tcp.read_exact(&mut b).expect("a reply byte");
        self.s.on_bytes(&b, Instant::now());
    }

    /// Sends one Batch frame and returns true if it was acknowledged.
    fn batch(&mut self, payload: &[u8]) -> bool {
        self.s
            .send(FrameKind::Batch, 0, 0, payload, Instant::now())
            .expect("room");
        self.round_trip();
        matches!(self.s.poll_event(), Some(SenderEvent::Acked(_)))
    }
}

/// Sends `data` as transfer `id` from `from` (an acknowledged offset) to the end, after an
/// Open with `origin`; `frames` limits how many Data frames go before it stops (a cut).
fn send_file(
    c: &mut Conn,
    id: u64,
    rel: &str,
    data: &[u8],
    origin: &OriginChain,
    from: usize,
    frames: Option<usize>,
) -> usize {
    let open = OpenFile {
        path: rel.into(),
        size: data.len() as u64,
        mtime_ns: 0,
    };
    let mut b = Vec::new();
    record(&mut b, FrameKind::Open, id, 0, &encode_open(&open, origin));
    assert!(c.batch(&b), "Open acknowledged");
    let mut at = from;
    let mut sent = 0;
    while at < data.len() && frames.is_none_or(|f| sent < f) {
        let mut b = Vec::new();
        // Records of one frame fit its payload uncompressed; at most 8 per frame.
        while at < data.len()
            && b.len() + RECORD_HEADER_LEN + CHUNK <= c.s.max_payload().min(8 * CHUNK)
        {
            let n = CHUNK.min(data.len() - at);
            record(&mut b, FrameKind::Data, id, at as u64, &data[at..at + n]);
            at += n;
        }
        assert!(c.batch(&b), "Data acknowledged");
        sent += 1;
    }
    if at == data.len() {
        let commit = Commit {
            size: data.len() as u64,
            digest: *blake3::hash(data).as_bytes(),
        };
        let mut b = Vec::new();
        record(&mut b, FrameKind::Commit, id, 0, &encode_body(&commit));
        assert!(c.batch(&b), "Commit acknowledged");
    }
    at
}

fn landed(lab: &Lab, expected: &BTreeMap<String, Vec<u8>>) {
    wait_until("every file landed", Duration::from_secs(30), || {
        expected.keys().all(|rel| lab.dest.join(rel).exists())
    });
    for (rel, data) in expected {
        let got = std::fs::read(lab.dest.join(rel)).expect("landed file");
        assert!(
            got == *data,
            "{rel} is byte-identical ({} vs {} bytes)",
            got.len(),
            data.len()
        );
    }
}

#[test]
fn compressed_text_lands_byte_identical_with_fewer_bytes_on_the_wire_and_resumes_after_a_cut() {
    let mut lab = Lab::new("loopback");
    lab.start_receiver();
    let addr = lab.receiver_addr.expect("addr");
    let mut expected = BTreeMap::new();
    let chain = OriginChain::parse("plant-x/up").expect("chain");
    let mut c = Conn::open(addr, 1);
    let mut original = 0;
    for i in 0..3u64 {
        let rel = format!("csv/{i}.csv");
        let data = csv(700_000 + i as usize * 1000, i * 1000);
        original += data.len();
        send_file(&mut c, 0x1_0000_0000 + i, &rel, &data, &chain, 0, None);
        expected.insert(rel, data);
    }
    landed(&lab, &expected);
    assert!(
        c.wire * 4 < original,
        "{} bytes on the wire for {original} bytes of text",
        c.wire
    );

    // A cut after one Data frame, then a new connection resumes at the acknowledged offset.
    let data = csv(2_000_000, 77);
    let acked = send_file(&mut c, 0x1_0000_0010, "big.csv", &data, &chain, 0, Some(1));
    assert!(acked > 0 && acked < data.len(), "cut half way: {acked}");
    drop(c);
    let mut c2 = Conn::open(addr, 2);
    assert_eq!(
        send_file(
            &mut c2,
            0x1_0000_0010,
            "big.csv",
            &data,
            &chain,
            acked,
            None
        ),
        data.len()
    );
    expected.insert("big.csv".into(), data);
    landed(&lab, &expected);
}

#[test]
fn a_compression_bomb_is_refused_naming_the_frame_and_nothing_lands() {
    let mut lab = Lab::new("loopback");
    lab.start_receiver();
    let mut c = Conn::open(lab.receiver_addr.expect("addr"), 1);
    let open = OpenFile {
        path: "bomb.csv".into(),
        size: 10 << 20,
        mtime_ns: 0,
    };
    let mut b = Vec::new();
    record(
        &mut b,
        FrameKind::Open,
        9,
        0,
        &encode_open(&open, &OriginChain::default()),
    );
    assert!(c.batch(&b));
    // A compressed record (kind 0x83) claiming 1 GiB: refused before anything is allocated.
    let mut bomb = vec![0x83];
    bomb.extend_from_slice(&9u64.to_be_bytes());
    bomb.extend_from_slice(&0u64.to_be_bytes());
    bomb.extend_from_slice(&8u32.to_be_bytes());
    bomb.extend_from_slice(&(1u32 << 30).to_be_bytes());
    bomb.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
    let mut wire = Vec::new();
    gapsync_protocol::frame::encode_versioned_frame(
        2,
        gapsync_protocol::Envelope::Raw,
        None,
        FrameKind::Batch,
        2,
        0,
        0,
        &bomb,
        &mut wire,
    )
    .expect("frame");
    c.tcp.write_all(&wire).expect("write");
    let mut reply = Vec::new();
    let _ = c.tcp.read_to_end(&mut reply);
    assert_eq!(
        reply,
        [profile("loopback").ack.fail],
        "one FAIL, then the connection closes"
    );
    wait_until("the refusal in the log", Duration::from_secs(10), || {
        lab.receiver_log()
            .contains("frame 2: refused compressed data")
    });
    assert!(!lab.dest.join("bomb.csv").exists());
}
