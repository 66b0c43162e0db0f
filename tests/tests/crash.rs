//! kill -9 of either daemon in the middle of a file: after a restart everything arrives once,
//! resumed rather than restarted, and no partial file is ever visible in the destination.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gapsync_tests::{Lab, count_lines, make_file, tree_sizes, wait_until};

const BIG: usize = 24 << 20;

fn staged_bytes(lab: &Lab) -> u64 {
    let dir: PathBuf = lab.staging();
    tree_sizes(&dir)
        .iter()
        .filter(|(k, _)| k.ends_with(".part"))
        .map(|(_, v)| *v)
        .sum()
}

/// Watches the destination until stopped; returns every (path, size) seen with a wrong size.
fn watch_dest(
    lab: &Lab,
    sizes: BTreeMap<String, u64>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<(String, u64)>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, dest) = (stop.clone(), lab.dest.clone());
    let h = std::thread::spawn(move || {
        let mut bad = Vec::new();
        while !s.load(Ordering::SeqCst) {
            for (k, v) in tree_sizes(&dest) {
                if sizes.get(&k) != Some(&v) {
                    bad.push((k, v));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bad
    });
    (stop, h)
}

fn setup() -> (Lab, BTreeMap<String, String>, BTreeMap<String, u64>) {
    let mut lab = Lab::new("syskeeper-2000");
    let mut expected = BTreeMap::new();
    let mut sizes = BTreeMap::new();
    expected.insert(
        "a-big.bin".to_owned(),
        make_file(&lab.spool.join("a-big.bin"), BIG, 1),
    );
    sizes.insert("a-big.bin".to_owned(), BIG as u64);
    for i in 0..4 {
        let rel = format!("z-small-{i}.txt");
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 5000 + i, 10 + i as u64),
        );
        sizes.insert(rel, 5000 + i as u64);
    }
    lab.start_receiver();
    // 5 MB/s so the big file takes ~5 s and a kill lands in its middle.
    lab.start_sim(&["--rate-mbit".into(), "40".into()]);
    (lab, expected, sizes)
}

fn resent_bytes(log: &str, path: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(" sent ") && l.contains(path))
        .filter_map(|l| {
            l.split("resent_bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Starts a transfer, kill -9s one daemon once a third of the big file is staged, restarts it,
/// and checks that everything arrives and no partial file was ever visible.
fn kill_mid_file_and_restart(kill_receiver: bool) -> Lab {
    let (mut lab, expected, sizes) = setup();
    let (stop, watcher) = watch_dest(&lab, sizes);
    lab.start_sender();
    wait_until(
        "a third of the big file staged",
        Duration::from_secs(60),
        || staged_bytes(&lab) > (BIG / 3) as u64,
    );
    if kill_receiver {
        lab.receiver.as_mut().expect("receiver").kill9();
        std::thread::sleep(Duration::from_millis(500));
        lab.start_receiver();
    } else {
        lab.sender.as_mut().expect("sender").kill9();
        std::thread::sleep(Duration::from_millis(300));
        lab.start_sender();
    }
    lab.wait_for_tree(&expected, Duration::from_secs(120));
    stop.store(true, Ordering::SeqCst);
    let bad = watcher.join().expect("watcher");
    assert!(
        bad.is_empty(),
        "partial files were visible: {:?}",
        &bad[..bad.len().min(5)]
    );
    assert_eq!(
        count_lines(&lab.receiver_log(), &[" delivered ", "a-big.bin"]),
        1,
        "delivered once"
    );
    lab
}

#[test]
fn receiver_killed_mid_file_resumes_and_never_shows_a_partial() {
    let lab = kill_mid_file_and_restart(true);
    let resent = resent_bytes(&lab.sender_log(), "a-big.bin");
    assert!(
        resent < (BIG / 4) as u64,
        "resumed, not restarted: {resent} bytes resent\n{}",
        lab.diagnostics()
    );
}

#[test]
fn sender_killed_mid_file_resumes_under_the_same_transfer_and_delivers_once() {
    let lab = kill_mid_file_and_restart(false);
    let slog = lab.sender_log();
    let resume_at: u64 = slog
        .lines()
        .find(|l| l.contains("resuming a transfer from before the restart"))
        .and_then(|l| {
            l.split("resume_at=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no resume line\n{}", lab.diagnostics()));
    assert!(
        resume_at >= 1 << 20,
        "resumed at byte {resume_at}, not from the start"
    );
    let staged = tree_sizes(&lab.staging());
    assert!(
        staged
            .keys()
            .all(|k| k == "done.log" || k == "opens.log" || k == "last-connection"),
        "no partial left behind: {staged:?}"
    );
}

#[test]
fn sender_killed_after_the_receiver_committed_but_before_it_saw_the_ok_delivers_once() {
    let mut lab = Lab::new("syskeeper-2000");
    let size = 24 << 20;
    let mut expected = BTreeMap::new();
    expected.insert(
        "only.bin".to_owned(),
        make_file(&lab.spool.join("only.bin"), size, 3),
    );
    // Replies: 1 for the Hello, then one per frame; the last frame carries the Commit. The gate
    // swallows the commit's OK: the receiver has made the file durable, the sender never
    // learns it.
    let chunk = gapsync_tests::profile("syskeeper-2000").chunk_size();
    let open = gapsync_tests::open_body_len(&lab.spool.join("only.bin"), "only.bin");
    let commit_reply = 1 + gapsync_tests::frames_for_file(chunk, size, open);
    lab.sender_extra =
        "[profile_overrides]\nreconnect_backoff_min = \"5s\"\nreconnect_backoff_max = \"5s\"\n"
            .into();
    lab.start_receiver();
    lab.start_sim(&["--drop-ack".into(), commit_reply.to_string()]);
    lab.start_sender();
    wait_until(
        "the commit's OK to be swallowed",
        Duration::from_secs(60),
        || lab.sim_stats().get("dropped_acks") == Some(&1),
    );
    // Crash before the 5 s reconnect: the spool file and its in-flight record are still there.
    lab.sender.as_mut().expect("sender").kill9();
    assert!(
        lab.dest.join("only.bin").exists(),
        "the receiver committed before the OK was swallowed"
    );
    assert!(
        lab.spool.join("only.bin").exists(),
        "the sender had not deleted its spool file"
    );
    lab.sender_extra = String::new();
    lab.start_sender();
    wait_until(
        "the spool file to be deleted after the OK",
        Duration::from_secs(60),
        || !lab.spool.join("only.bin").exists(),
    );
    lab.wait_for_tree(&expected, Duration::from_secs(10));
    assert_eq!(
        count_lines(&lab.receiver_log(), &[" delivered ", "only.bin"]),
        1,
        "landed once\n{}",
        lab.diagnostics()
    );
    assert_eq!(count_lines(&lab.sender_log(), &[" sent ", "only.bin"]), 1);
}
