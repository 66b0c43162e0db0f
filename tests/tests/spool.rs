//! The spool side: new files noticed at once, files moved after delivery, files that cannot be
//! sent quarantined with an ERROR line while the pipe goes on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gapsync_tests::{Lab, count_files, count_lines, make_file, tree, wait_until};

#[test]
fn a_file_renamed_into_the_spool_is_noticed_at_once_without_polling() {
    let mut lab = Lab::new("loopback");
    // Scans effectively off: only the inotify watcher can pick the file up.
    lab.settle = "1h".into();
    lab.poll_interval = "1h".into();
    lab.start_receiver();
    lab.start_sender();
    wait_until("the sender to connect", Duration::from_secs(20), || {
        lab.sender_log().contains(" connected ")
    });
    let staging = lab.path("outside-staging.bin");
    let digest = make_file(&staging, 10_000, 4);
    let start = Instant::now();
    std::fs::rename(&staging, lab.spool.join("new.bin")).expect("rename into the spool");
    lab.wait_for_tree(
        &[("new.bin".to_owned(), digest)].into_iter().collect(),
        Duration::from_secs(10),
    );
    eprintln!("renamed-in file delivered after {:?}", start.elapsed());
}

#[test]
fn after_send_move_keeps_the_file_in_sent_dir() {
    let mut lab = Lab::new("loopback");
    let sent = lab.path("sent");
    lab.sender_pipe_extra = format!(
        "after_send = \"move\"\nsent_dir = {:?}\n",
        sent.display().to_string()
    );
    let mut expected = BTreeMap::new();
    for i in 0..5 {
        let rel = format!("m/{i}.dat");
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 1000 * i, i as u64),
        );
    }
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    wait_until(
        "the files to be moved to sent_dir",
        Duration::from_secs(10),
        || count_files(&sent) == 5,
    );
    assert_eq!(tree(&sent), expected, "moved intact, relative paths kept");
    assert_eq!(count_files(&lab.spool), 0);
}

#[test]
fn a_file_the_receiver_keeps_refusing_is_quarantined_and_the_pipe_goes_on() {
    let mut lab = Lab::new("loopback");
    let quarantine = lab.path("quarantine");
    lab.sender_pipe_extra = format!(
        "after_send = \"delete\"\nmax_attempts = 3\nquarantine_dir = {:?}\n",
        quarantine.display().to_string()
    );
    // A folder where the file should land: the receiver can never place it and answers FAIL.
    std::fs::create_dir_all(lab.dest.join("blocked.bin")).expect("mkdir");
    let blocked = make_file(&lab.spool.join("blocked.bin"), 5000, 1);
    let mut expected = BTreeMap::new();
    for i in 0..3 {
        let rel = format!("ok-{i}.bin");
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 3000, 10 + i as u64),
        );
    }
    lab.start_receiver();
    lab.start_sender();
    wait_until(
        "blocked.bin to be quarantined",
        Duration::from_secs(60),
        || quarantine.join("blocked.bin").exists(),
    );
    let slog = lab.sender_log();
    assert_eq!(
        count_lines(
            &slog,
            &[
                "ERROR",
                "file quarantined",
                "path=blocked.bin",
                "refused it 3 times"
            ]
        ),
        1,
        "{}",
        lab.diagnostics()
    );
    assert_eq!(
        tree(&quarantine).get("blocked.bin"),
        Some(&blocked),
        "kept intact, not dropped"
    );
    // The files shared a batch with the refused one: only the culprit was charged with FAILs
    // (each file of a refused batch is then sent alone until the receiver's answer names it).
    assert_eq!(
        count_lines(&slog, &["answered FAIL", "path=ok-"]),
        0,
        "{}",
        lab.diagnostics()
    );
    // The other files were not held up.
    let mut with_dir = expected.clone();
    with_dir.retain(|k, _| k.starts_with("ok-"));
    wait_until("the other files", Duration::from_secs(30), || {
        let t = tree(&lab.dest);
        with_dir.iter().all(|(k, v)| t.get(k) == Some(v))
    });
}

#[test]
fn a_name_that_cannot_be_represented_is_quarantined_not_mangled() {
    use std::os::unix::ffi::OsStrExt as _;
    let mut lab = Lab::new("loopback");
    let quarantine = lab.path("quarantine");
    lab.sender_pipe_extra = format!("quarantine_dir = {:?}\n", quarantine.display().to_string());
    let bad = std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9.csv");
    std::fs::write(lab.spool.join(bad), b"data").expect("write");
    let good = make_file(&lab.spool.join("good.csv"), 100, 2);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(
        &[("good.csv".to_owned(), good)].into_iter().collect(),
        Duration::from_secs(30),
    );
    wait_until(
        "the bad name to be quarantined",
        Duration::from_secs(20),
        || quarantine.join(bad).exists(),
    );
    assert!(
        lab.sender_log().contains("not valid UTF-8"),
        "{}",
        lab.diagnostics()
    );
    assert_eq!(count_files(&lab.dest), 1, "nothing mangled arrived");
}

#[test]
fn a_later_file_with_the_same_path_replaces_the_earlier_one() {
    let mut lab = Lab::new("loopback");
    let first = make_file(&lab.spool.join("dir/report.csv"), 50_000, 1);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(
        &[("dir/report.csv".to_owned(), first)].into_iter().collect(),
        Duration::from_secs(30),
    );
    wait_until(
        "the first version to leave the spool",
        Duration::from_secs(10),
        || count_files(&lab.spool) == 0,
    );
    let second = make_file(&lab.spool.join("dir/report.csv"), 70_000, 2);
    lab.wait_for_tree(
        &[("dir/report.csv".to_owned(), second)]
            .into_iter()
            .collect(),
        Duration::from_secs(30),
    );
    assert_eq!(
        count_lines(&lab.receiver_log(), &[" delivered ", "dir/report.csv"]),
        2
    );
}

#[test]
fn symlinks_in_the_spool_are_not_followed() {
    let mut lab = Lab::new("loopback");
    let secret = lab.path("outside-secret.txt");
    std::fs::write(&secret, b"host secret").expect("write");
    std::os::unix::fs::symlink(&secret, lab.spool.join("link.txt")).expect("file link");
    std::fs::create_dir_all(lab.path("outside-dir")).expect("mkdir");
    std::fs::write(lab.path("outside-dir/inner.txt"), b"more").expect("write");
    std::os::unix::fs::symlink(lab.path("outside-dir"), lab.spool.join("dirlink"))
        .expect("dir link");
    let real = make_file(&lab.spool.join("real.bin"), 1000, 1);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(
        &[("real.bin".to_owned(), real)].into_iter().collect(),
        Duration::from_secs(30),
    );
    wait_until("the symlink warnings", Duration::from_secs(10), || {
        count_lines(&lab.sender_log(), &["symlink in the spool not followed"]) == 2
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(count_files(&lab.dest), 1, "only the regular file crossed");
    assert_eq!(
        count_lines(&lab.sender_log(), &["symlink in the spool not followed"]),
        2,
        "each link said once, not at every scan"
    );
    assert_eq!(
        std::fs::read(&secret).expect("read"),
        b"host secret",
        "the target is untouched"
    );
}

#[test]
fn a_full_receiver_disk_is_reported_and_the_transfer_completes_once_space_is_freed() {
    let mut lab = Lab::new("loopback");
    let small = lab.path("small");
    // Needs root (as in CI) to mount a real, small filesystem.
    let Some(_disk) = gapsync_tests::SmallDisk::mount(&small, "8m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (not root); the disk-full case was not exercised"
        );
        return;
    };
    lab.dest = small.join("dest");
    lab.receiver_pipe_extra = format!(
        "staging = {:?}\n",
        small.join("staging").display().to_string()
    );
    lab.sender_pipe_extra = "max_attempts = 2\n".into();
    std::fs::create_dir_all(&lab.dest).expect("dest");
    // Another program filled the disk: 5 MiB of 8 are taken.
    std::fs::write(small.join("other-program.dat"), vec![1u8; 5 << 20]).expect("fill");
    let digest = make_file(&lab.spool.join("report.bin"), 4 << 20, 9);
    lab.start_receiver();
    lab.start_sender();
    wait_until(
        "the receiver's disk-full error",
        Duration::from_secs(30),
        || lab.receiver_log().contains("not enough free space"),
    );
    let line = lab
        .receiver_log()
        .lines()
        .find(|l| l.contains("not enough free space"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("ERROR") && line.contains("bytes needed") && line.contains("report.bin"),
        "{line}"
    );
    // Retries go on for longer than max_attempts would allow a bad file: nothing is quarantined.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.spool.join("report.bin").exists(),
        "kept in the spool, not quarantined"
    );
    assert_eq!(count_files(&lab.dest), 0);
    std::fs::remove_file(small.join("other-program.dat")).expect("free space");
    lab.wait_for_tree(
        &[("report.bin".to_owned(), digest)].into_iter().collect(),
        Duration::from_secs(60),
    );
    assert!(!lab.sender_log().contains("file quarantined"));
}

#[test]
fn an_unreadable_file_is_quarantined_with_the_os_error_and_the_pipe_goes_on() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut lab = Lab::new("loopback");
    let quarantine = lab.path("sstate/sender/scada/quarantine");
    let secret = lab.spool.join("secret.csv");
    std::fs::write(&secret, b"not for us").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let readable = make_file(&lab.spool.join("open.csv"), 2000, 4);
    // Root reads everything: run the sender as nobody, owning its folders, so that the mode
    // 000 file (owned by root) is unreadable for it.
    // (`id -u` instead of geteuid keeps the tests free of unsafe code.)
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id")
        .stdout;
    if String::from_utf8_lossy(&uid).trim() == "0" {
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
        // The checkout may sit in a folder nobody cannot enter (`mktemp -d` makes it 0700):
        // the profile goes next to the config, where the sender also looks for it.
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
    }
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(
        &[("open.csv".to_owned(), readable)].into_iter().collect(),
        Duration::from_secs(30),
    );
    wait_until(
        "the unreadable file to be quarantined",
        Duration::from_secs(20),
        || quarantine.join("secret.csv").exists(),
    );
    let line = lab
        .sender_log()
        .lines()
        .find(|l| l.contains("file quarantined") && l.contains("secret.csv"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("ERROR") && line.contains("Permission denied"),
        "the OS error is named: {line}"
    );
}

#[test]
fn a_sender_short_of_file_descriptors_sends_every_file_and_quarantines_none() {
    let mut lab = Lab::new("loopback");
    let quarantine = lab.path("quarantine");
    lab.sender_pipe_extra = format!("quarantine_dir = {:?}\n", quarantine.display().to_string());
    // A hard limit of 64 open files, which the sender cannot raise. It opens the files of the
    // next frames ahead (16 MB here, four frames), far more than 64 files, so opens fail with
    // EMFILE and the files wait their turn.
    lab.sender_wrapper = ["prlimit", "--nofile=64:64"].map(String::from).to_vec();
    let mut expected = BTreeMap::new();
    for i in 0..400u64 {
        let rel = format!("d{}/f{i:04}.dat", i % 4);
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 40_000 + i as usize, i),
        );
    }
    // The receiver is down until the sender has queued every file, so that the first frames
    // find the whole queue to open ahead.
    lab.start_receiver();
    lab.receiver.as_mut().expect("receiver").kill9();
    lab.start_sender();
    wait_until(
        "the sender to queue the spool",
        Duration::from_secs(20),
        || lab.sender_log().contains("cannot connect to the gate"),
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.start_receiver();
    lab.wait_for_tree(&expected, Duration::from_secs(60));
    assert_eq!(count_files(&quarantine), 0, "nothing quarantined");
    let log = lab.sender_log();
    assert!(
        log.contains("the hard limit of open files is low"),
        "the low limit is said at start:\n{log}"
    );
    assert!(
        log.contains("lack of descriptors"),
        "the shortage is said:\n{log}"
    );
    assert!(
        count_lines(&log, &["lack of descriptors"]) < 50,
        "said once per shortage, not per file"
    );
}
