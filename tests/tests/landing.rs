//! Landing across mount points. Under systemd, `StateDirectory=` and `ReadWritePaths=` make the
//! state folder and each landing folder separate mounts of the same filesystem, and a rename
//! between two mounts fails with EXDEV. These tests build that situation with `unshare -m` and
//! bind mounts, as the issue's reproduction did, and check what an operator would: the file
//! lands whole, or the receiver refuses to start and says what to change, and a landing that
//! fails is never confirmed to the sender and lands (with its `delivered` line) once fixed.
//!
//! They need root (mount namespaces and mounts), as CI has: run as another user they fail
//! with a message saying so, rather than skip.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gapsync_tests::{Lab, Proc, count_lines, make_file, tree_sizes, wait_until};

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "these tests make mount namespaces and bind mounts: run them as root (CI does)"
    );
}

/// Runs the receiver in a new mount namespace in which the state folder and dest are each
/// bind-mounted onto themselves, as systemd's sandboxing does.
fn separate_mounts(lab: &mut Lab) {
    require_root();
    let state = lab.path("rstate");
    std::fs::create_dir_all(&state).expect("state folder");
    let script = r#"mount --bind "$1" "$1" && mount --bind "$2" "$2" && shift 2 && exec "$@""#;
    lab.receiver_wrapper = vec![
        "unshare".into(),
        "-m".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        state.display().to_string(),
        lab.dest.display().to_string(),
    ];
}

/// Runs `args` inside the receiver's mount namespace.
fn in_receiver_ns(lab: &Lab, args: &[&str]) {
    let pid = lab.receiver.as_ref().expect("receiver running").pid();
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "{args:?} in the receiver's namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn delivered_lines(lab: &Lab, path: &str) -> usize {
    count_lines(
        &lab.receiver_log(),
        &[" delivered ", &format!("path={path}")],
    )
}

#[test]
fn the_default_staging_lands_files_when_state_and_dest_are_separate_mounts() {
    let mut lab = Lab::new("loopback");
    separate_mounts(&mut lab);
    lab.start_receiver();
    lab.start_sender();
    let mut expected = BTreeMap::new();
    for (i, name) in ["one.bin", "sub/two.bin"].iter().enumerate() {
        let p = lab.spool.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        expected.insert((*name).to_owned(), make_file(&p, 300_000 + i, i as u64 + 1));
    }
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    wait_until("the spool to empty", Duration::from_secs(10), || {
        tree_sizes(&lab.spool).is_empty()
    });
    assert_eq!(delivered_lines(&lab, "one.bin"), 1, "{}", lab.diagnostics());
    assert_eq!(delivered_lines(&lab, "sub/two.bin"), 1);
    assert_eq!(
        count_lines(&lab.receiver_log(), &["ERROR"]),
        0,
        "{}",
        lab.diagnostics()
    );
    assert!(lab.staging().is_dir(), "staging is inside dest by default");
}

#[test]
fn a_staging_folder_on_another_mount_is_refused_at_start_with_the_fix() {
    let mut lab = Lab::new("loopback");
    separate_mounts(&mut lab);
    // The default of earlier versions: staging under state_dir.
    let staging = lab.path("rstate/receiver/plant-a/scada/staging");
    lab.receiver_pipe_extra = format!("staging = {:?}\n", staging.display().to_string());
    let cfg = lab.receiver_config();
    let receiver = gapsync_tests::bin("gapsync-receiver");
    let args: Vec<String> = lab.receiver_wrapper[1..]
        .iter()
        .cloned()
        .chain([
            receiver.display().to_string(),
            "run".into(),
            "--config".into(),
        ])
        .chain([cfg.display().to_string()])
        .collect();
    let mut receiver = Proc::spawn("receiver", Path::new("unshare"), &args, lab.root.path());
    wait_until(
        "the receiver to refuse to start",
        Duration::from_secs(20),
        || !receiver.alive(),
    );
    let err = format!("{}{}", receiver.stderr_text(), lab.receiver_log());
    assert!(
        err.contains("cannot be renamed from staging") && err.contains("remove `staging`"),
        "the refusal names the problem and the fix: {err}"
    );
    assert!(!err.contains(" listening "), "it never listened: {err}");
}

#[test]
fn a_landing_that_fails_is_not_confirmed_and_lands_once_the_cause_is_gone() {
    let mut lab = Lab::new("loopback");
    separate_mounts(&mut lab);
    let sub = lab.dest.join("sub");
    std::fs::create_dir_all(&sub).expect("dest/sub");
    std::fs::create_dir_all(lab.spool.join("sub")).expect("spool/sub");
    lab.start_receiver();
    // Inside the receiver's namespace, dest/sub becomes another mount: renames into it fail.
    let sub_arg = sub.display().to_string();
    in_receiver_ns(
        &lab,
        &["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", &sub_arg],
    );
    lab.start_sender();
    let digest = make_file(&lab.spool.join("sub/a.bin"), 200_000, 7);
    wait_until(
        "the receiver's landing error",
        Duration::from_secs(20),
        || count_lines(&lab.receiver_log(), &["ERROR", "could not land data"]) > 0,
    );
    // The sender keeps retrying; nothing is confirmed, so the spool file stays.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        lab.spool.join("sub/a.bin").exists(),
        "{}",
        lab.diagnostics()
    );
    assert_eq!(delivered_lines(&lab, "sub/a.bin"), 0);
    assert_eq!(count_lines(&lab.sender_log(), &[" sent ", "sub/a.bin"]), 0);
    assert!(
        count_lines(&lab.receiver_log(), &["ERROR", "Invalid cross-device link"]) > 0,
        "the ERROR says why: {}",
        lab.diagnostics()
    );
    // The cause fixed: the next retry lands it, once, with its delivered line.
    in_receiver_ns(&lab, &["umount", &sub_arg]);
    let expected = BTreeMap::from([("sub/a.bin".to_owned(), digest)]);
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    wait_until("the spool to empty", Duration::from_secs(10), || {
        tree_sizes(&lab.spool).is_empty()
    });
    assert_eq!(
        delivered_lines(&lab, "sub/a.bin"),
        1,
        "{}",
        lab.diagnostics()
    );
}
