//! Authenticated and encrypted pipes: keyed transfers in both protection modes, key rotation,
//! and the refusals an operator must see (wrong key, missing key, replayed connection), each
//! with nothing written.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gapsync_protocol::crypto::{ConnectionId, FrameKey, PreSharedKey, Protection};
use gapsync_protocol::messages::HelloAuth;
use gapsync_protocol::{
    Envelope, FrameKind, Hello, PROTOCOL_VERSION, encode_body, frame::encode_sealed_frame,
};
use gapsync_tests::{Lab, bin, count_files, make_file, profile, wait_until};

fn keygen(path: &Path) {
    let out = Command::new(bin("gapsync-sender"))
        .arg("keygen")
        .arg("--out")
        .arg(path)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A lab whose pipe is keyed: the receiver holds `receiver_keys` (id, file), the sender uses
/// `sender_key` with `protection`.
fn keyed_lab(
    receiver_keys: &[(u32, &Path)],
    sender_key: Option<(u32, &Path)>,
    protection: &str,
) -> Lab {
    let mut lab = Lab::new("loopback");
    let keys: Vec<String> = receiver_keys
        .iter()
        .map(|(id, f)| format!("{{ id = {id}, file = {} }}", q(f)))
        .collect();
    lab.receiver_pipe_extra = format!("require_auth = true\nkeys = [{}]\n", keys.join(", "));
    if let Some((id, f)) = sender_key {
        lab.sender_pipe_extra = format!(
            "key_file = {}\nkey_id = {id}\nprotection = {protection:?}\n",
            q(f)
        );
    }
    lab
}

fn transfer_works(lab: &mut Lab) {
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..5 {
        let rel = format!("k/{i}.bin");
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 100 + i * 300_000, i as u64),
        );
    }
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(60));
}

#[test]
fn an_encrypted_pipe_delivers_and_logs_its_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("scada-1.key");
    keygen(&key);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key).expect("meta").permissions(),
    );
    // 640 when a `gapsync` group exists (the Debian packages make it), else 600: never others.
    assert!(
        matches!(mode & 0o777, 0o600 | 0o640),
        "keygen writes keys others cannot read: {:o}",
        mode & 0o777
    );
    let mut lab = keyed_lab(&[(1, &key)], Some((1, &key)), "encrypt");
    transfer_works(&mut lab);
    assert!(
        lab.receiver_log().contains("key_id=1 protection=encrypt"),
        "{}",
        lab.diagnostics()
    );
    assert!(!lab.receiver_log().contains("unauthenticated"));
}

#[test]
fn an_auth_only_pipe_delivers() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("k.key");
    keygen(&key);
    let mut lab = keyed_lab(&[(1, &key)], Some((1, &key)), "auth-only");
    transfer_works(&mut lab);
    assert!(lab.receiver_log().contains("protection=auth-only"));
}

#[test]
fn during_a_rotation_the_receiver_accepts_the_current_and_the_next_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let (k1, k2) = (dir.path().join("k1.key"), dir.path().join("k2.key"));
    keygen(&k1);
    keygen(&k2);
    let mut lab = keyed_lab(&[(1, &k1), (2, &k2)], Some((2, &k2)), "encrypt");
    transfer_works(&mut lab);
    assert!(lab.receiver_log().contains("key_id=2"));
}

#[test]
fn a_wrong_key_is_refused_with_an_error_naming_address_pipe_and_key_id() {
    let dir = tempfile::tempdir().expect("tmp");
    let (good, bad) = (dir.path().join("good.key"), dir.path().join("bad.key"));
    keygen(&good);
    keygen(&bad);
    let mut lab = keyed_lab(&[(1, &good)], Some((1, &bad)), "encrypt");
    make_file(&lab.spool.join("x.bin"), 1000, 1);
    lab.start_receiver();
    lab.start_sender();
    wait_until("the refusal", Duration::from_secs(20), || {
        lab.receiver_log().contains("wrong key")
    });
    let line = lab
        .receiver_log()
        .lines()
        .find(|l| l.contains("wrong key"))
        .unwrap_or_default()
        .to_owned();
    for needle in ["ERROR", "peer=127.0.0.1", "pipe=scada", "key id 1"] {
        assert!(line.contains(needle), "{needle:?} missing in {line}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_files(&lab.dest), 0, "nothing written");
    assert!(
        lab.spool.join("x.bin").exists(),
        "the file stays in the spool"
    );
}

#[test]
fn a_pipe_that_requires_auth_refuses_a_sender_without_a_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("k.key");
    keygen(&key);
    let mut lab = keyed_lab(&[(1, &key)], None, "encrypt");
    make_file(&lab.spool.join("x.bin"), 1000, 1);
    lab.start_receiver();
    lab.start_sender();
    wait_until("the refusal", Duration::from_secs(20), || {
        lab.receiver_log().contains("requires authentication")
    });
    assert_eq!(count_files(&lab.dest), 0);
}

#[test]
fn an_unkeyed_pipe_warns_at_every_start() {
    let mut lab = Lab::new("loopback");
    lab.start_receiver();
    assert!(
        lab.receiver_log().contains("pipe is unauthenticated"),
        "{}",
        lab.diagnostics()
    );
}

fn keyed_hello(addr: SocketAddr, key: &PreSharedKey, session: u64, connection: u64) -> Option<u8> {
    let p = profile("loopback");
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node: "plant-a".into(),
        pipe: "scada".into(),
        session_id: session,
        connection,
        profile: p.summary(),
        auth: Some(HelloAuth {
            key_id: 1,
            protection: Protection::Encrypt,
        }),
    };
    let id = ConnectionId {
        node: "plant-a",
        pipe: "scada",
        session,
        connection,
        key_id: 1,
    };
    let fk = FrameKey::derive(key, id, Protection::Encrypt);
    let mut wire = Vec::new();
    encode_sealed_frame(
        Envelope::Raw,
        Some(&fk),
        FrameKind::Hello,
        0,
        0,
        0,
        &encode_body(&hello),
        &mut wire,
    )
    .expect("encode");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&wire).expect("write");
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1)).then_some(b[0])
}

#[test]
fn a_replayed_connection_is_refused_even_after_a_receiver_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("k.key");
    keygen(&path);
    let key = PreSharedKey::parse(&std::fs::read(&path).expect("read")).expect("key");
    let mut lab = keyed_lab(&[(1, &path)], None, "encrypt");
    lab.start_receiver();
    let addr = lab.receiver_addr.expect("addr");
    assert_eq!(
        keyed_hello(addr, &key, 5, 1),
        Some(0x00),
        "a fresh keyed connection is accepted"
    );
    assert_eq!(
        keyed_hello(addr, &key, 5, 1),
        None,
        "the same connection again is a replay: closed without a byte"
    );
    assert_eq!(
        keyed_hello(addr, &key, 5, 2),
        Some(0x00),
        "the next connection of the session is fine"
    );
    lab.receiver.as_mut().expect("receiver").kill9();
    lab.start_receiver();
    assert_eq!(
        keyed_hello(addr, &key, 5, 2),
        None,
        "still a replay after a restart"
    );
    assert_eq!(
        keyed_hello(addr, &key, 6, 1),
        Some(0x00),
        "a new sender session is fine"
    );
    wait_until("the replay error", Duration::from_secs(10), || {
        lab.receiver_log().contains("replayed or stale connection")
    });
}
