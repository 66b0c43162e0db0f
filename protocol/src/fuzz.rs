//! Fuzz target bodies. `fuzz/` (cargo-fuzz, nightly) drives them with libFuzzer; a unit test
//! runs each one over the checked-in corpus in `fuzz/corpus/` on stable Rust. Each body panics
//! only when an invariant breaks (a crash, or a round trip that does not match).

use crate::crypto::{ConnectionId, FrameKey, PreSharedKey, Protection};
use crate::decoder::Decoder;
use crate::envelope::Envelope;
use crate::frame::encode_frame;
use crate::profile::{Profile, RawProfile};
use crate::receiver_session::{ReceiverSession, Request};

const PROFILE: &str = r#"
name = "fuzz"
link = "tcp"
envelope = "raw"
max_frame_bytes = 65536
window = 4
ok_byte = 0x00
connect_timeout = "1s"
handshake_timeout = "1s"
ack_timeout = "1s"
heartbeat_interval = "1s"
idle_timeout = "3s"
reconnect_backoff_min = "1s"
reconnect_backoff_max = "2s"
"#;

fn profile(envelope: Envelope) -> Option<Profile> {
    let raw = RawProfile::from_toml(PROFILE).ok()?;
    let mut p = Profile::try_from(raw).ok()?;
    p.envelope = envelope;
    Some(p)
}

/// Decodes arbitrary bytes, split at a point the input chooses. Every frame that decodes must
/// re-encode to exactly the bytes it came from.
pub fn frame_decoder(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut d = Decoder::new(Envelope::Raw, 64 * 1024);
    let mut consumed = 0usize;
    for part in [&data[..split], &data[split..]] {
        d.feed(part);
        loop {
            let before = consumed + d.buffered();
            match d.decode() {
                Ok(Some(f)) => {
                    let len = before - (consumed + d.buffered());
                    let h = f.header;
                    let mut again = Vec::new();
                    let _ = crate::frame::encode_versioned_frame(
                        h.version,
                        Envelope::Raw,
                        None,
                        h.kind,
                        h.sequence,
                        h.transfer,
                        h.offset,
                        &f.payload,
                        &mut again,
                    );
                    if h.flags == 0 {
                        assert_eq!(
                            again.as_slice(),
                            &data[consumed..consumed + len],
                            "a decoded frame re-encodes to its bytes"
                        );
                    }
                    consumed += len;
                }
                Ok(None) => break,
                // A corrupt stream is dead: the connection is closed, nothing after it is read.
                Err(_) => {
                    crate::messages::fuzz_bodies(data);
                    return;
                }
            }
        }
    }
    crate::messages::fuzz_bodies(data);
}

/// A receiver session fed arbitrary bytes, accepting every request, unkeyed and keyed.
pub fn handshake(data: &[u8]) {
    let Some(p) = profile(Envelope::Raw) else {
        return;
    };
    crate::receiver_session::fuzz_receiver(&p, data);
    let psk = PreSharedKey::from_random([7; 32]);
    let id = ConnectionId {
        node: "n",
        pipe: "p",
        session: 1,
        connection: 1,
        key_id: 1,
    };
    let mut s = ReceiverSession::new(&p);
    s.decoder_mut().feed(data);
    while let Ok(Some(req)) = s.next_request() {
        match req {
            Request::Hello(_) => {
                let key = FrameKey::derive(&psk, id, Protection::Encrypt);
                if s.verify_hello(&key) {
                    s.accept_hello(Some(key));
                } else {
                    s.reject_hello();
                }
            }
            _ => s.answer(true),
        }
    }
}

/// The Hello that opens every `v2_session` input: version 2, zstd offered.
fn v2_prefix() -> Option<Vec<u8>> {
    let p = profile(Envelope::Raw)?;
    let hello = crate::messages::Hello {
        protocol_version: 1,
        node: "plant-a".into(),
        pipe: "scada".into(),
        session_id: 1,
        connection: 1,
        profile: p.summary(),
        auth: None,
    };
    let zstd = crate::compress::Compression::zstd(3).ok()?;
    let tx = crate::sender_session::SenderSession::new(&p, &hello, std::time::Instant::now(), None)
        .with_compression(zstd);
    Some(tx.pending_output().to_vec())
}

/// A version-2 connection that negotiated zstd, then arbitrary bytes: compressed batch
/// records, origin chains and version checks on hostile input. Every Data payload handed out
/// stays within the frame's uncompressed limit.
pub fn v2_session(data: &[u8]) {
    let (Some(p), Some(mut wire)) = (profile(Envelope::Raw), v2_prefix()) else {
        return;
    };
    wire.extend_from_slice(data);
    let limit = p.max_frame_bytes as usize - crate::frame::HEADER_LEN;
    let mut s = ReceiverSession::new(&p);
    s.decoder_mut().feed(&wire);
    while let Ok(Some(req)) = s.next_request() {
        match req {
            Request::Hello(_) => s.accept_hello(None),
            Request::Batch(records) => {
                let total: usize = records
                    .iter()
                    .map(|r| match r {
                        Request::Data { payload, .. } => payload.len(),
                        _ => 0,
                    })
                    .sum();
                assert!(total <= limit, "decompressed {total} bytes, over {limit}");
                s.answer(true);
            }
            _ => s.answer(true),
        }
    }
    if let Ok(chain) = crate::origin::OriginChain::decode(data) {
        let mut again = Vec::new();
        chain.encode(&mut again);
        assert_eq!(crate::origin::OriginChain::decode(&again), Ok(chain));
    }
}

/// The E-language envelope: arbitrary bytes decoded, and arbitrary payloads round-tripped.
pub fn e_language(data: &[u8]) {
    let mut d = Decoder::new(Envelope::ELanguage, 64 * 1024);
    d.feed(data);
    while let Ok(Some(_)) = d.decode() {}
    let payload = data.get(..data.len().min(60_000)).unwrap_or_default();
    let mut wire = Vec::new();
    let _ = encode_frame(
        Envelope::ELanguage,
        crate::frame::FrameKind::Data,
        1,
        2,
        3,
        payload,
        &mut wire,
    );
    let mut d = Decoder::new(Envelope::ELanguage, 64 * 1024);
    d.feed(&wire);
    match d.decode() {
        Ok(Some(f)) => assert_eq!(&f.payload[..], payload, "the envelope round-trips"),
        other => panic!("a valid envelope did not decode: {other:?}"),
    }
}

/// Arbitrary text as a profile file.
pub fn profile_text(data: &[u8]) {
    crate::profile::fuzz_profile(data);
}

/// Runs the body named like a corpus folder.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "frame_decoder" => frame_decoder(data),
        "handshake" => handshake(data),
        "e_language" => e_language(data),
        "profile" => profile_text(data),
        "v2_session" => v2_session(data),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fuzz body over every file of the checked-in corpus (fuzz/corpus/<target>/).
    #[test]
    fn fuzz_bodies_run_over_the_checked_in_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut runs = 0;
        for target in [
            "frame_decoder",
            "handshake",
            "e_language",
            "profile",
            "v2_session",
        ] {
            let dir = root.join(target);
            let files =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for f in files.flatten() {
                let data = std::fs::read(f.path()).expect("read seed");
                run(target, &data);
                runs += 1;
            }
        }
        assert!(
            runs >= 15,
            "the corpus has seeds for every target ({runs} found)"
        );
    }

    /// Every single-bit flip of a version-2 connection through the bodies that read it, and
    /// every flip of its compressed batch behind valid CRCs (so the batch parser and the
    /// decompressor see it): a stable-Rust stand-in for a fuzzing run, so a panic on one corrupt
    /// byte shows in CI.
    #[test]
    fn every_bit_flip_of_a_version_2_connection_is_an_error_never_a_panic() {
        let (_, rest, both) = v2_seeds();
        for m in flips(&both) {
            handshake(&m);
            frame_decoder(&m);
        }
        let mut d = Decoder::new(Envelope::Raw, 1 << 20);
        d.feed(&rest);
        let f = d.decode().expect("valid").expect("a frame");
        let h = f.header;
        let mut outcomes = std::collections::BTreeMap::<bool, usize>::new();
        for payload in flips(&f.payload) {
            let mut wire = Vec::new();
            crate::frame::encode_versioned_frame(
                2,
                Envelope::Raw,
                None,
                h.kind,
                h.sequence,
                h.transfer,
                h.offset,
                &payload,
                &mut wire,
            )
            .expect("frame");
            v2_session(&wire);
            let p = profile(Envelope::Raw).expect("profile");
            let mut s = ReceiverSession::new(&p);
            s.decoder_mut().feed(&v2_prefix().expect("hello"));
            s.decoder_mut().feed(&wire);
            let _ = s.next_request();
            s.accept_hello(None);
            *outcomes.entry(s.next_request().is_ok()).or_default() += 1;
        }
        assert!(
            outcomes.get(&false).copied().unwrap_or(0) > 0,
            "some flips are refused: {outcomes:?}"
        );
    }

    /// Every copy of `seed` with one bit flipped.
    fn flips(seed: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
        (0..seed.len() * 8).map(move |i| {
            let mut m = seed.to_vec();
            m[i / 8] ^= 1 << (i % 8);
            m
        })
    }

    /// A version-2 connection: its Hello alone, what follows the Hello (a compressed batch
    /// with an origin chain), and both together.
    fn v2_seeds() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use crate::batch::{RECORD_HEADER_LEN, finish_record};
        use crate::frame::FrameKind;
        use crate::messages::{OpenFile, encode_open};
        let p = profile(Envelope::Raw).expect("profile");
        let hello = v2_prefix().expect("hello");
        let open = encode_open(
            &OpenFile {
                path: "a/b.csv".into(),
                size: 3000,
                mtime_ns: 1,
            },
            &crate::origin::OriginChain::parse("plant-x/up,dmz/relay").expect("chain"),
        );
        let text: Vec<u8> = (0..3000u32)
            .map(|i| b"0123456789,\n"[i as usize % 12])
            .collect();
        let mut batch = Vec::new();
        for (kind, offset, body) in [
            (FrameKind::Open, 0, &open[..]),
            (FrameKind::Data, 0, &text[..]),
        ] {
            let start = batch.len();
            batch.extend_from_slice(&[0; RECORD_HEADER_LEN]);
            batch.extend_from_slice(body);
            finish_record(&mut batch, start, kind, 9, offset).expect("record");
        }
        let hello_msg = crate::messages::Hello {
            protocol_version: 1,
            node: "plant-a".into(),
            pipe: "scada".into(),
            session_id: 1,
            connection: 1,
            profile: p.summary(),
            auth: None,
        };
        let t = std::time::Instant::now();
        let mut tx = crate::sender_session::SenderSession::new(&p, &hello_msg, t, None)
            .with_compression(crate::compress::Compression::zstd(3).expect("level"));
        tx.clear_output();
        tx.on_bytes(&[p.ack.ok], t);
        tx.send(FrameKind::Batch, 0, 0, &batch, t).expect("room");
        let rest = tx.pending_output().to_vec();
        let mut both = hello.clone();
        both.extend_from_slice(&rest);
        (hello, rest, both)
    }

    /// Writes the seed corpus (run once with --ignored; the files are checked in).
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        use crate::frame::FrameKind;
        use crate::messages::{Commit, Hello, OpenFile, encode_body};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let p = profile(Envelope::Raw).expect("profile");
        let hello = Hello {
            protocol_version: 1,
            node: "plant-a".into(),
            pipe: "scada".into(),
            session_id: 1,
            connection: 1,
            profile: p.summary(),
            auth: None,
        };
        let mut conn = Vec::new();
        let frames: [(FrameKind, u64, Vec<u8>); 5] = [
            (FrameKind::Hello, 0, encode_body(&hello)),
            (
                FrameKind::Open,
                0,
                encode_body(&OpenFile {
                    path: "a/b.csv".into(),
                    size: 5,
                    mtime_ns: 1,
                }),
            ),
            (FrameKind::Data, 0, b"hello".to_vec()),
            (
                FrameKind::Commit,
                0,
                encode_body(&Commit {
                    size: 5,
                    digest: [1; 32],
                }),
            ),
            (FrameKind::Heartbeat, 0, vec![]),
        ];
        for (seq, (kind, offset, body)) in frames.iter().enumerate() {
            let _ = encode_frame(
                Envelope::Raw,
                *kind,
                seq as u64,
                9,
                *offset,
                body,
                &mut conn,
            );
        }
        let psk = PreSharedKey::from_random([7; 32]);
        let id = ConnectionId {
            node: "n",
            pipe: "p",
            session: 1,
            connection: 1,
            key_id: 1,
        };
        let key = FrameKey::derive(&psk, id, Protection::Encrypt);
        let keyed_hello = Hello {
            node: "n".into(),
            pipe: "p".into(),
            auth: Some(crate::messages::HelloAuth {
                key_id: 1,
                protection: Protection::Encrypt,
            }),
            ..hello.clone()
        };
        let mut keyed = Vec::new();
        let _ = crate::frame::encode_sealed_frame(
            Envelope::Raw,
            Some(&key),
            FrameKind::Hello,
            0,
            0,
            0,
            &encode_body(&keyed_hello),
            &mut keyed,
        );
        let _ = crate::frame::encode_sealed_frame(
            Envelope::Raw,
            Some(&key),
            FrameKind::Data,
            1,
            9,
            0,
            b"secret",
            &mut keyed,
        );
        let mut elang = Vec::new();
        let _ = encode_frame(
            Envelope::ELanguage,
            FrameKind::Hello,
            0,
            0,
            0,
            &encode_body(&hello),
            &mut elang,
        );
        let (v2_hello_only, v2_rest, v2_connection) = v2_seeds();
        let seeds: [(&str, &str, Vec<u8>); 16] = [
            ("frame_decoder", "connection", conn.clone()),
            ("frame_decoder", "heartbeat", conn[conn.len() - 44..].to_vec()),
            ("frame_decoder", "truncated", conn[..70].to_vec()),
            ("handshake", "connection", conn.clone()),
            ("handshake", "keyed", keyed),
            ("handshake", "hello-only", conn[..44 + encode_body(&hello).len()].to_vec()),
            ("e_language", "hello", elang),
            ("e_language", "text", b"<!System=GAPSYNC Version=1.0 Code=UTF-8 Data=1.0!>\n<block:=Free>\nR1NZTg==\n</block:=Free>\n".to_vec()),
            ("e_language", "empty", vec![]),
            ("profile", "loopback", include_bytes!("../../hardware-profiles/loopback.toml").to_vec()),
            ("profile", "syskeeper", include_bytes!("../../hardware-profiles/syskeeper-2000.toml").to_vec()),
            ("profile", "fuzz", PROFILE.as_bytes().to_vec()),
            ("handshake", "v2-hello", v2_hello_only),
            ("handshake", "v2-connection", v2_connection.clone()),
            ("frame_decoder", "v2-connection", v2_connection),
            ("v2_session", "compressed-batch", v2_rest),
        ];
        for (target, name, data) in seeds {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(name), data).expect("write seed");
        }
    }
}
