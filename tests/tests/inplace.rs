//! Producers that write in place, in the spool itself, instead of renaming finished files in:
//! a file still open for writing is never taken (even when it has been quiet for longer than
//! `settle`), and a file written to after it was sent is not removed but sent again.

use std::io::Write as _;
use std::time::{Duration, Instant};

use gapsync_tests::{Lab, count_lines, fill, wait_until};

/// The sizes in the receiver's `delivered` lines for `rel`, oldest first.
fn delivered(log: &str, rel: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("delivered") && l.contains(rel))
        .map(|l| {
            let v = l.split_once(" size=").map_or("", |x| x.1);
            let v = v.trim_start_matches('"');
            let end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
            v[..end]
                .parse()
                .unwrap_or_else(|_| panic!("no size in {l}"))
        })
        .collect()
}

/// Writes `data` into `spool/rel` in place: the first `first` bytes, a pause of `pause`, the
/// rest, then closes. Returns when the file is closed.
fn write_in_place(
    path: std::path::PathBuf,
    data: Vec<u8>,
    first: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).expect("create in the spool");
        f.write_all(&data[..first]).expect("write the first part");
        f.flush().expect("flush");
        std::thread::sleep(pause);
        f.write_all(&data[first..]).expect("write the rest");
    })
}

fn a_file_written_in_place_with_a_pause_lands_whole(profile: &str) {
    let mut lab = Lab::new(profile);
    // The pause below is five times settle: the settle rule alone takes the file mid-write.
    lab.settle = "500ms".into();
    lab.poll_interval = "200ms".into();
    lab.start_receiver();
    lab.start_sender();
    std::thread::sleep(Duration::from_millis(500));
    let rel = "historian/export.csv";
    std::fs::create_dir_all(lab.spool.join("historian")).expect("mkdir");
    let data = fill(18, 2_500_000);
    let digest = blake3::hash(&data).to_hex().to_string();
    let started = Instant::now();
    let writer = write_in_place(
        lab.spool.join(rel),
        data.clone(),
        1_000_000,
        Duration::from_millis(2500),
    );
    // During the pause (several scans past settle) nothing is taken.
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        started.elapsed() < Duration::from_millis(2450),
        "the test was too slow to look during the pause"
    );
    assert!(
        delivered(&lab.receiver_log(), rel).is_empty() && !lab.dest.join(rel).exists(),
        "a file still open for writing was sent:\n{}",
        lab.diagnostics()
    );
    writer.join().expect("writer");
    lab.wait_for_tree(
        &[(rel.to_owned(), digest)].into_iter().collect(),
        Duration::from_secs(30),
    );
    // Every version that landed is the whole file, the last one above all.
    std::thread::sleep(Duration::from_millis(1000));
    let sizes = delivered(&lab.receiver_log(), rel);
    assert_eq!(
        sizes.last(),
        Some(&2_500_000),
        "the last version landed is whole"
    );
    assert_eq!(sizes, [2_500_000], "landed once, and never truncated");
    assert_eq!(
        std::fs::read(lab.dest.join(rel)).expect("landed"),
        data,
        "the landed file is the whole file"
    );
    let slog = lab.sender_log();
    assert_eq!(
        count_lines(&slog, &["cannot tell whether spool files are still open"]),
        0,
        "the open-for-writing check was in force:\n{slog}"
    );
    wait_until(
        "the spool file to be removed",
        Duration::from_secs(10),
        || !lab.spool.join(rel).exists(),
    );
}

#[test]
fn tcp_a_file_written_in_place_with_a_pause_lands_whole() {
    a_file_written_in_place_with_a_pause_lands_whole("loopback");
}

#[test]
fn udp_a_file_written_in_place_with_a_pause_lands_whole() {
    a_file_written_in_place_with_a_pause_lands_whole("udp-loopback");
}

#[test]
fn a_file_appended_to_after_it_was_sent_is_not_deleted_and_is_sent_again() {
    let mut lab = Lab::new("loopback");
    lab.settle = "300ms".into();
    lab.start_receiver();
    // 1.5 s each way: the answer to the file's frame reaches the sender three seconds after
    // the frame left it, and the file is appended to in between.
    lab.start_sim(&["--latency-ms".to_owned(), "1500".to_owned()]);
    lab.start_sender();
    wait_until("the sender to connect", Duration::from_secs(30), || {
        lab.sender_log().contains(" connected ")
    });
    let rel = "report.csv";
    let v1 = fill(5, 100_000);
    let mut v2 = v1.clone();
    v2.extend_from_slice(&fill(6, 50_000));
    let staging = lab.path("report.tmp");
    std::fs::write(&staging, &v1).expect("write");
    let forwarded = || lab.sim_stats().get("forward_bytes").copied().unwrap_or(0);
    let before = forwarded();
    std::fs::rename(&staging, lab.spool.join(rel)).expect("rename in");
    // Taken at once (renamed in); once its frame, commit included, has crossed the gate, its
    // answer is still 1.5 s away.
    wait_until("the file's frame to cross", Duration::from_secs(20), || {
        forwarded() >= before + 100_000
    });
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.spool.join(rel))
        .expect("open");
    f.write_all(&v2[v1.len()..]).expect("append");
    drop(f);
    let v2_digest = blake3::hash(&v2).to_hex().to_string();
    lab.wait_for_tree(
        &[(rel.to_owned(), v2_digest)].into_iter().collect(),
        Duration::from_secs(60),
    );
    let slog = lab.sender_log();
    let warn = slog
        .lines()
        .find(|l| l.contains("changed after it was sent") && l.contains("path=report.csv"))
        .unwrap_or_else(|| panic!("no warning:\n{}", lab.diagnostics()));
    assert!(
        warn.contains("WARN") && warn.contains("size 100000 -> 150000"),
        "{warn}"
    );
    assert_eq!(
        delivered(&lab.receiver_log(), rel),
        [100_000, 150_000],
        "the first version, then the new one"
    );
    wait_until(
        "the spool file to be removed",
        Duration::from_secs(10),
        || !lab.spool.join(rel).exists(),
    );
}

/// Run as another user without CAP_LEASE, the sender cannot ask about writers of files it
/// does not own: it says so once, with the fix, and falls back to the settle rule.
#[test]
fn without_cap_lease_the_fallback_is_said_once_and_files_still_go() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut lab = Lab::new("loopback");
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id")
        .stdout;
    if String::from_utf8_lossy(&uid).trim() != "0" {
        eprintln!(
            "SKIPPED: not root, so files of another user cannot be made here; the fallback was not exercised"
        );
        return;
    }
    // The sender runs as nobody, owning its folders; the files are root's.
    for d in ["spool", "sstate", "slogs"] {
        std::fs::create_dir_all(lab.path(d)).expect("mkdir");
        let ok = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(lab.path(d))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown {d}");
    }
    std::fs::set_permissions(lab.root.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod root");
    let profiles = lab.path("hardware-profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir profiles");
    std::fs::copy(
        gapsync_tests::profiles_dir().join("loopback.toml"),
        profiles.join("loopback.toml"),
    )
    .expect("copy the profile");
    lab.sender_wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]
    .map(String::from)
    .to_vec();
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..3u64 {
        let rel = format!("root-{i}.csv");
        expected.insert(
            rel.clone(),
            gapsync_tests::make_file(&lab.spool.join(&rel), 5000, i),
        );
    }
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    let slog = lab.sender_log();
    let warns: Vec<&str> = slog
        .lines()
        .filter(|l| l.contains("cannot tell whether spool files are still open"))
        .collect();
    assert_eq!(warns.len(), 1, "said once per pipe:\n{slog}");
    assert!(
        warns[0].contains("WARN")
            && warns[0].contains("CAP_LEASE")
            && warns[0].contains("pipe=scada"),
        "{}",
        warns[0]
    );
    wait_until("the spool to empty", Duration::from_secs(10), || {
        gapsync_tests::count_files(&lab.spool) == 0
    });
}
