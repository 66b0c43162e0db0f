//! Unit tests of the pipes registry: status rows from real sinks in a temporary folder.

use std::net::SocketAddr;

use gapsync_protocol::{Commit, OpenFile};

use super::status::PipeState;
use super::*;

/// A receiver with a tcp pipe `a` and a udp pipe `b`, both from `plant`.
fn pipes(dir: &Path) -> Pipes {
    for f in ["in-a", "in-b"] {
        std::fs::create_dir_all(dir.join(f)).expect("dest");
    }
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware-profiles");
    let text = format!(
        "node = \"outside\"\nprofile = \"syskeeper-2000\"\nprofiles_dir = {:?}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1\"]\nstate_dir = {:?}\n\
         [[pipe]]\nname = \"a\"\nfrom = \"plant\"\nsink = {{ type = \"directory\", path = \"in-a\" }}\n\
         [[pipe]]\nname = \"b\"\nfrom = \"plant\"\ndest = \"in-b\"\nprofile = \"udp-loopback\"\n",
        profiles.display().to_string(),
        dir.join("state").display().to_string(),
    );
    let path = dir.join("receiver.toml");
    std::fs::write(&path, text).expect("write");
    Pipes::open(&Config::load(&path).expect("config")).expect("open")
}

fn land(pipe: &Pipe, id: u64, name: &str, data: &[u8]) {
    let open = OpenFile {
        path: name.into(),
        size: data.len() as u64,
        mtime_ns: 0,
    };
    let commit = Commit {
        size: data.len() as u64,
        digest: *blake3::hash(data).as_bytes(),
    };
    let flushed = pipe.with_sink(|s| {
        s.open(id, &open).expect("open");
        s.write(id, 0, data).expect("write");
        s.commit(id, &commit).expect("commit");
        s.flush()
    });
    assert!(flushed.result.is_ok());
    for d in &flushed.delivered {
        pipe.log_delivered(d);
    }
}

#[test]
fn status_rows_follow_landings_peers_partials_and_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let pipes = pipes(dir.path());
    let rows = pipes.status();
    let names: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.link, r.profile.as_str()))
        .collect();
    assert_eq!(
        names,
        [("a", "tcp", "syskeeper-2000"), ("b", "udp", "udp-loopback")]
    );
    assert!(rows.iter().all(|r| r.state == PipeState::Running
        && r.landed_objects == 0
        && r.last_landed.is_none()
        && r.sink == "directory"));

    let a = pipes.get("plant", "a").expect("pipe a");
    let peer: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
    let listed = a.activity.peer_connected(peer);
    land(&a, 1, "x.bin", b"hello");
    // A partial: opened, not committed.
    let open = OpenFile {
        path: "half.bin".into(),
        size: 10,
        mtime_ns: 0,
    };
    a.with_sink(|s| s.open(2, &open)).expect("open");
    let row = &pipes.status()[0];
    assert_eq!((row.landed_objects, row.landed_bytes), (1, 5));
    assert_eq!(row.today_objects, 1);
    assert!(row.last_landed.is_some());
    assert_eq!(row.partials, 1);
    assert_eq!(row.unlanded, 0);
    assert_eq!(row.peers.len(), 1);
    assert_eq!(row.peers[0].addr, peer);
    assert_eq!(pipes.status()[1].landed_objects, 0, "pipe b is untouched");

    drop(listed);
    a.error("cannot rename into place");
    let row = &pipes.status()[0];
    assert!(row.peers.is_empty(), "the connection ended");
    assert_eq!(row.state, PipeState::Error);
    assert_eq!(row.state, PipeState::Error);
    assert_eq!(
        row.last_problem.as_ref().map(|p| p.message.as_str()),
        Some("cannot rename into place")
    );
    // A landing after the error: running again; the message stays for the operator.
    std::thread::sleep(std::time::Duration::from_millis(5));
    land(&a, 3, "y.bin", b"again");
    let row = &pipes.status()[0];
    assert_eq!(row.state, PipeState::Running);
    assert!(row.last_problem.is_some());
    assert_eq!(row.landed_objects, 2);
    // A warning does not make the pipe ERROR.
    a.warn("the sender uses another profile");
    assert_eq!(pipes.status()[0].state, PipeState::Running);
}

#[test]
fn an_upgrade_keeps_the_done_log_of_the_staging_folder_so_a_replay_lands_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    // Before pipes: the done log in the directory sink's default staging folder.
    let staging = dir.path().join("in-a/.gapsync-staging/plant/a");
    std::fs::create_dir_all(&staging).expect("staging");
    let mut old = replay::DoneLog::open(
        &staging.join(replay::DONE_LOG),
        std::time::Duration::from_secs(3600),
    )
    .expect("old done log");
    old.record_all(&[0x10]).expect("record");
    drop(old);
    let pipes = pipes(dir.path());
    let a = pipes.get("plant", "a").expect("pipe a");
    let open = OpenFile {
        path: "landed-before.bin".into(),
        size: 3,
        mtime_ns: 0,
    };
    assert_eq!(
        a.with_sink(|s| s.open(0x10, &open)).expect("open"),
        crate::sink::Applied::AlreadyCommitted,
        "a transfer committed before the upgrade is not landed again"
    );
    assert!(!staging.join(replay::DONE_LOG).exists());
    assert!(
        dir.path()
            .join("state/receiver/plant/a")
            .join(replay::DONE_LOG)
            .is_file()
    );
}
