//! Hostile peers on real sockets: random bytes, a flood of bad handshakes, many idle
//! connections, and a slow-drip (slowloris) frame. The receiver stays up, its memory stays
//! bounded, and each case is logged once (rate-limited), not once per connection.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gapsync_protocol::{Envelope, FrameKind, encode_body, encode_frame};
use gapsync_tests::{Lab, count_lines, fill, make_file, profile, wait_until};

/// Short receiver timers for these tests (no real sender is involved except where noted).
const TIMERS: &str = "[profile_overrides]\nheartbeat_interval = \"1s\"\nack_timeout = \"1s\"\nidle_timeout = \"3s\"\nhandshake_timeout = \"1s\"\n";

fn lab() -> Lab {
    let mut lab = Lab::new("loopback");
    lab.receiver_extra = format!("max_connections = 8\n{TIMERS}");
    lab.start_receiver();
    lab
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Reads until EOF; returns the bytes received (the receiver may only ever send 0/1 bytes).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn hello_bytes() -> Vec<u8> {
    let mut p = profile("loopback");
    p.heartbeat_interval = Duration::from_secs(1);
    p.ack_timeout = Duration::from_secs(1);
    let hello = gapsync_tests::hello(&p);
    let mut wire = Vec::new();
    encode_frame(
        Envelope::Raw,
        FrameKind::Hello,
        0,
        0,
        0,
        &encode_body(&hello),
        &mut wire,
    )
    .expect("encode");
    wire
}

fn assert_alive_and_small(lab: &Lab) {
    let r = lab.receiver.as_ref().expect("receiver");
    let rss = r.peak_rss_kib();
    assert!(rss > 0 && rss < 64 * 1024, "receiver peak RSS {rss} KiB");
    let mut s = connect(lab.receiver_addr.expect("addr"));
    s.write_all(&hello_bytes()).expect("hello");
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).ok(), Some(1), "still serving handshakes");
    assert_eq!(b[0], 0x00);
}

#[test]
fn random_bytes_are_refused_without_a_reply() {
    let lab = lab();
    let mut s = connect(lab.receiver_addr.expect("addr"));
    let _ = s.write_all(&fill(42, 1 << 20));
    assert!(
        read_to_close(&mut s).is_empty(),
        "no byte back before a handshake"
    );
    wait_until("the refusal line", Duration::from_secs(10), || {
        lab.receiver_log().contains("refused a frame")
    });
    assert_alive_and_small(&lab);
}

#[test]
fn a_handshake_flood_is_refused_and_logged_once() {
    let lab = lab();
    let addr = lab.receiver_addr.expect("addr");
    let mut bad = hello_bytes();
    // Another pipe name, same length: an unknown pipe.
    let at = bad
        .windows(5)
        .position(|w| w == b"scada")
        .expect("pipe name");
    bad[at..at + 5].copy_from_slice(b"xxxxx");
    let crc = crc32(&bad[44..]);
    bad[36..40].copy_from_slice(&crc.to_be_bytes());
    let hcrc = crc32(&bad[..40]);
    bad[40..44].copy_from_slice(&hcrc.to_be_bytes());
    for _ in 0..300 {
        let mut s = connect(addr);
        s.write_all(&bad).expect("write");
        assert!(read_to_close(&mut s).is_empty(), "refused without a byte");
    }
    wait_until("the refusal", Duration::from_secs(10), || {
        lab.receiver_log().contains("unknown pipe")
    });
    let lines = count_lines(&lab.receiver_log(), &["refused handshake"]);
    assert_eq!(lines, 1, "300 refusals, one log line (rate-limited)");
    assert_alive_and_small(&lab);
}

#[test]
fn idle_connections_are_limited_and_cut_after_the_handshake_timeout() {
    let lab = lab();
    let addr = lab.receiver_addr.expect("addr");
    let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // The 12 over the limit of 8 are closed at once; the 8 within it after handshake_timeout.
    let start = Instant::now();
    for c in &mut conns {
        assert!(read_to_close(c).is_empty());
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "all closed within the handshake timeout"
    );
    // The log is written by a thread of its own: the line may follow the close by a moment.
    wait_until(
        "the handshake-timeout line",
        Duration::from_secs(10),
        || {
            lab.receiver_log()
                .contains("no handshake within the profile's handshake_timeout")
        },
    );
    let log = lab.receiver_log();
    assert_eq!(count_lines(&log, &["connection limit reached"]), 1, "{log}");
    assert_alive_and_small(&lab);
}

#[test]
fn a_slow_drip_frame_is_cut_after_the_idle_timeout() {
    let lab = lab();
    let mut s = connect(lab.receiver_addr.expect("addr"));
    s.write_all(&hello_bytes()).expect("hello");
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).ok(), Some(1));
    // A data frame, one byte every 250 ms: bytes keep coming, the frame never completes.
    let mut frame = Vec::new();
    encode_frame(
        Envelope::Raw,
        FrameKind::Data,
        1,
        9,
        0,
        &[7u8; 4000],
        &mut frame,
    )
    .expect("encode");
    s.set_nonblocking(false).expect("blocking");
    let start = Instant::now();
    let mut closed_after = None;
    for byte in frame.iter().take(40) {
        if s.write_all(&[*byte]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        if lab.receiver_log().contains("a frame did not complete") {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let t = closed_after.expect("the slow frame was cut");
    assert!(
        t < Duration::from_secs(6),
        "cut after {t:?} (idle_timeout 3 s)"
    );
    assert_alive_and_small(&lab);
}

#[test]
fn a_real_transfer_still_works_next_to_a_hostile_peer() {
    let mut lab = Lab::new("loopback");
    lab.receiver_extra = format!("max_connections = 8\n{TIMERS}");
    lab.sender_extra.push_str("heartbeat_interval = \"1s\"\nack_timeout = \"1s\"\nidle_timeout = \"3s\"\nhandshake_timeout = \"1s\"\n");
    let digest = make_file(&lab.spool.join("ok.bin"), 2_000_000, 3);
    lab.start_receiver();
    let addr = lab.receiver_addr.expect("addr");
    let noise = std::thread::spawn(move || {
        for i in 0..50 {
            let mut s = connect(addr);
            let _ = s.write_all(&fill(i, 10_000));
            let _ = read_to_close(&mut s);
        }
    });
    lab.start_sender();
    lab.wait_for_tree(
        &[("ok.bin".to_owned(), digest)].into_iter().collect(),
        Duration::from_secs(60),
    );
    noise.join().expect("noise");
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}
