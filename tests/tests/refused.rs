//! Refused cases, each with the log line an operator would look for: address not allowed,
//! unknown pipe, profile mismatch, names that escape the destination, a length over the
//! maximum. Nothing is written and the receiver stays up.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gapsync_protocol::{Envelope, FrameKind, OpenFile, encode_body, encode_frame};
use gapsync_tests::{Lab, count_files, make_file, profile, wait_until};

/// A hand-driven sender on a real socket, to send what the real sender never would.
struct RawClient {
    s: TcpStream,
    seq: u64,
}

impl RawClient {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Self { s, seq: 0 }
    }

    fn send(&mut self, kind: FrameKind, transfer: u64, offset: u64, payload: &[u8]) {
        let mut out = Vec::new();
        encode_frame(
            Envelope::Raw,
            kind,
            self.seq,
            transfer,
            offset,
            payload,
            &mut out,
        )
        .expect("encode");
        self.seq += 1;
        self.s.write_all(&out).expect("write");
    }

    /// The next reply byte, or `None` on EOF.
    fn reply(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }

    fn hello(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        let hello = gapsync_tests::hello(&profile("syskeeper-2000"));
        c.send(FrameKind::Hello, 0, 0, &encode_body(&hello));
        assert_eq!(c.reply(), Some(0x00), "handshake accepted with OK = 0x00");
        c
    }
}

fn lab_with_file() -> Lab {
    let lab = Lab::new("syskeeper-2000");
    make_file(&lab.spool.join("f.bin"), 1000, 1);
    lab
}

fn wait_for_log(lab: &Lab, receiver: bool, needle: &str) {
    wait_until(needle, Duration::from_secs(20), || {
        let log = if receiver {
            lab.receiver_log()
        } else {
            lab.sender_log()
        };
        log.contains(needle)
    });
}

#[test]
fn an_address_outside_the_allow_list_is_closed_without_a_byte() {
    let mut lab = lab_with_file();
    lab.allow = "[\"10.0.0.0/8\"]".into();
    lab.start_receiver();
    let mut raw = RawClient::connect(lab.receiver_addr.expect("addr"));
    assert_eq!(raw.reply(), None, "closed without a reply byte");
    lab.start_sender();
    wait_for_log(&lab, true, "refused connection: address not in `allow`");
    wait_for_log(&lab, false, "closed the connection during the handshake");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_files(&lab.dest), 0);
    assert!(
        lab.receiver_log().contains("peer=127.0.0.1"),
        "the refused address is named"
    );
}

#[test]
fn an_unknown_pipe_is_refused_and_named() {
    let mut lab = lab_with_file();
    lab.sender_pipe_name = "telemetry".into();
    lab.start_receiver();
    lab.start_sender();
    wait_for_log(
        &lab,
        true,
        r#"unknown pipe \"telemetry\" from node \"plant-a\""#,
    );
    assert_eq!(count_files(&lab.dest), 0);
}

#[test]
fn a_profile_mismatch_is_refused_with_each_differing_field() {
    let mut lab = lab_with_file();
    lab.sender_extra.push_str("window = 8\nok_byte = 0xFF\n");
    lab.start_receiver();
    lab.start_sender();
    wait_for_log(
        &lab,
        true,
        "profile mismatch: window: receiver 1 != sender 8, ok_byte: receiver 0 != sender 255",
    );
    assert_eq!(count_files(&lab.dest), 0);
}

#[test]
fn names_that_escape_the_destination_are_refused_and_nothing_is_written() {
    let mut lab = Lab::new("syskeeper-2000");
    lab.start_receiver();
    let addr = lab.receiver_addr.expect("addr");
    std::os::unix::fs::symlink(lab.root.path(), lab.dest.join("escape")).expect("symlink");
    for (i, name) in [
        "../evil.txt",
        "/tmp/evil.txt",
        "a/../../evil.txt",
        "escape/evil.txt",
        "nul\0.txt",
    ]
    .iter()
    .enumerate()
    {
        let mut c = RawClient::hello(addr);
        let open = OpenFile {
            path: (*name).into(),
            size: 4,
            mtime_ns: 0,
        };
        c.send(FrameKind::Open, 100 + i as u64, 0, &encode_body(&open));
        assert_eq!(c.reply(), Some(0xFF), "{name:?} answered FAIL");
        assert_eq!(
            c.reply(),
            None,
            "{name:?}: the connection is closed after a FAIL"
        );
    }
    // The log is written by a thread of its own: a line may reach the file just after the
    // reply byte reached us.
    // The error is a quoted field value: the quotes around the name inside it are escaped.
    for needle in [
        r#"\"../evil.txt\" refused"#,
        r#"\"/tmp/evil.txt\" refused"#,
        "would leave the destination folder",
    ] {
        wait_for_log(&lab, true, needle);
    }
    assert!(!lab.root.path().join("evil.txt").exists());
    assert!(!std::path::Path::new("/tmp/evil.txt").exists());
    assert_eq!(count_files(&lab.dest), 0);
}

#[test]
fn a_length_over_the_maximum_is_refused_before_any_allocation() {
    let mut lab = Lab::new("syskeeper-2000");
    lab.start_receiver();
    let addr = lab.receiver_addr.expect("addr");
    for _ in 0..20 {
        let mut c = RawClient::hello(addr);
        // A well-formed header (valid header CRC) announcing 4 GiB - 1 of payload.
        let mut frame = Vec::new();
        encode_frame(Envelope::Raw, FrameKind::Data, 1, 5, 0, b"x", &mut frame).expect("encode");
        frame[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
        let crc = crc(&frame[..40]);
        frame[40..44].copy_from_slice(&crc.to_be_bytes());
        c.s.write_all(&frame[..44]).expect("write");
        assert_eq!(c.reply(), Some(0xFF), "answered FAIL");
        assert_eq!(c.reply(), None, "then closed");
    }
    wait_for_log(&lab, true, "over the profile's maximum of 1048576 bytes");
    let rss = lab.receiver.as_ref().expect("receiver").peak_rss_kib();
    assert!(
        rss > 0 && rss < 64 * 1024,
        "peak RSS {rss} KiB: nothing was allocated for the 4 GiB length"
    );
    // Still serving: a real transfer goes through afterwards.
    let digest = make_file(&lab.spool.join("after.bin"), 3000, 9);
    lab.start_sender();
    lab.wait_for_tree(
        &[("after.bin".to_owned(), digest)].into_iter().collect(),
        Duration::from_secs(30),
    );
}

fn crc(b: &[u8]) -> u32 {
    // The header CRC is CRC32 (IEEE), as crc32fast computes it.
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !b.iter().fold(!0u32, |c, &x| {
        table[((c ^ u32::from(x)) & 0xFF) as usize] ^ (c >> 8)
    })
}
