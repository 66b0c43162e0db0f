//! A real tree moved into the spool whole (issue 24): dotfiles, nested symlinks (one inside
//! the tree, one escaping with `..`, one absolute), an empty folder and an executable. What
//! the config says is what lands, and every item left behind is counted. Then: the receiver
//! never writes through a link that stands in its destination.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::Path;
use std::time::Duration;

use gapsync_tests::{Lab, bin, count_lines, make_file, tree, wait_until};

/// The tree: each regular file's digest, by path.
fn fill(lab: &Lab) -> BTreeMap<String, String> {
    let files: [(&str, usize); 6] = [
        ("README", 1200),
        (".gitignore", 40),
        ("src/main.c", 30_000),
        ("src/.clang-format", 90),
        ("nested/deep/data.bin", 70_000),
        ("bin/run.sh", 300),
    ];
    let out = files
        .iter()
        .enumerate()
        .map(|(i, (rel, len))| {
            let d = make_file(&lab.spool.join(rel), *len, 40 + i as u64);
            ((*rel).to_owned(), d)
        })
        .collect();
    let exe = lab.spool.join("bin/run.sh");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::fs::create_dir_all(lab.spool.join("empty")).expect("empty folder");
    // Inside the tree; escaping the destination with `..`; absolute.
    symlink("../../src/main.c", lab.spool.join("nested/deep/in")).expect("link");
    symlink("../../outside", lab.spool.join("src/esc")).expect("link");
    symlink("/etc/passwd", lab.spool.join("abs")).expect("link");
    out
}

/// The value of `key` in the last `summary` line of `log`.
fn last_summary(log: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(" summary"))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()?.parse().ok()
}

/// The rows of `<daemon> pipes --json`.
fn pipes_json(daemon: &str, config: &Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(bin(daemon))
        .args(["pipes", "--json", "--config"])
        .arg(config)
        .output()
        .expect("pipes");
    serde_json::from_slice(&out.stdout).expect("json")
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("landed")
        .permissions()
        .mode()
        & 0o7777
}

fn start(lab: &mut Lab) {
    lab.sender_extra = format!("summary_interval = \"1s\"\n{}", lab.sender_extra);
    lab.receiver_extra = format!("summary_interval = \"1s\"\n{}", lab.receiver_extra);
    lab.start_receiver();
    lab.start_sender();
}

#[test]
fn by_default_dotfiles_links_and_modes_stay_behind_counted() {
    let mut lab = Lab::new("loopback");
    let all = fill(&lab);
    start(&mut lab);
    let expected: BTreeMap<String, String> = all
        .iter()
        .filter(|(rel, _)| !rel.rsplit('/').next().unwrap_or("").starts_with('.'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    wait_until(
        "a summary counting what stayed",
        Duration::from_secs(20),
        || {
            let log = lab.sender_log();
            last_summary(&log, "ignored_files") == Some(2)
                && last_summary(&log, "skipped_links") == Some(3)
                && last_summary(&log, "queued") == Some(0)
        },
    );
    let log = lab.sender_log();
    for link in ["nested/deep/in", "src/esc", "abs"] {
        assert_eq!(
            count_lines(&log, &["symlink in the spool not followed", link]),
            1,
            "{link} named once\n{log}"
        );
    }
    assert_eq!(tree(&lab.dest), expected);
    let rows = pipes_json("gapsync-sender", &lab.path("sender.toml"));
    assert_eq!(
        (
            rows[0]["ignored"].as_u64(),
            rows[0]["skipped_links"].as_u64()
        ),
        (Some(2), Some(3)),
        "{rows:?}"
    );
    assert_eq!(
        mode(&lab.dest.join("bin/run.sh")) & 0o111,
        0,
        "no executable bit without preserve_mode"
    );
    assert!(!lab.dest.join("empty").exists(), "folders are not sent");
    for link in ["nested/deep/in", "src/esc", "abs"] {
        assert!(
            std::fs::symlink_metadata(lab.dest.join(link)).is_err(),
            "{link}"
        );
    }
}

#[test]
fn preserve_sends_every_file_the_inside_link_and_the_mode_and_refuses_escaping_links() {
    let mut lab = Lab::new("loopback");
    lab.sender_pipe_extra = "ignore = []\nsymlinks = \"preserve\"\npreserve_mode = true\n".into();
    let all = fill(&lab);
    start(&mut lab);
    lab.wait_for_tree(&all, Duration::from_secs(30));
    wait_until("the inside link landed", Duration::from_secs(20), || {
        std::fs::read_link(lab.dest.join("nested/deep/in")).is_ok()
    });
    assert_eq!(
        std::fs::read_link(lab.dest.join("nested/deep/in")).expect("link"),
        Path::new("../../src/main.c")
    );
    assert_eq!(
        std::fs::read(lab.dest.join("nested/deep/in")).expect("through the link"),
        std::fs::read(lab.dest.join("src/main.c")).expect("file")
    );
    wait_until(
        "both escaping links refused",
        Duration::from_secs(20),
        || {
            let log = lab.receiver_log();
            count_lines(&log, &["symlink refused", "path=src/esc", "../../outside"]) == 1
                && count_lines(&log, &["symlink refused", "path=abs", "/etc/passwd"]) == 1
                && last_summary(&log, "refused_links") == Some(2)
        },
    );
    for link in ["src/esc", "abs"] {
        assert!(
            std::fs::symlink_metadata(lab.dest.join(link)).is_err(),
            "{link}"
        );
    }
    let rows = pipes_json("gapsync-receiver", &lab.path("receiver.toml"));
    assert_eq!(rows[0]["refused_links"].as_u64(), Some(2), "{rows:?}");
    // Acknowledged: the sender settles them, nothing is left to send or resend.
    wait_until(
        "the spool emptied of files and links",
        Duration::from_secs(20),
        || {
            tree(&lab.spool).is_empty()
                && ["nested/deep/in", "src/esc", "abs"]
                    .iter()
                    .all(|l| std::fs::symlink_metadata(lab.spool.join(l)).is_err())
        },
    );
    let m = mode(&lab.dest.join("bin/run.sh"));
    assert_eq!(m & 0o100, 0o100, "owner's executable bit kept: {m:o}");
    assert_eq!(m & 0o7000, 0, "never set-uid, set-gid or sticky: {m:o}");
    assert!(!lab.dest.join("empty").exists(), "folders are not sent");
    wait_until(
        "a summary with nothing skipped",
        Duration::from_secs(20),
        || {
            let log = lab.sender_log();
            last_summary(&log, "skipped_links") == Some(0)
                && last_summary(&log, "ignored_files") == Some(0)
        },
    );
}

#[test]
fn the_receiver_never_writes_through_a_link_in_its_destination() {
    let mut lab = Lab::new("loopback");
    lab.sender_pipe_extra = "symlinks = \"preserve\"\n".into();
    let outside = lab.path("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::create_dir_all(lab.dest.join("sub")).expect("sub");
    // One link placed by hand (a consumer, or an older tool) pointing out of dest.
    symlink(&outside, lab.dest.join("etc")).expect("link");
    // One landed by gapsync, inside: `d -> sub`.
    symlink("sub", lab.spool.join("d")).expect("link");
    start(&mut lab);
    wait_until("the link d landed", Duration::from_secs(20), || {
        std::fs::read_link(lab.dest.join("d")).is_ok()
            && std::fs::symlink_metadata(lab.spool.join("d")).is_err()
    });
    // Now files whose folders are those links' names.
    make_file(&lab.spool.join("d/x"), 100, 1);
    make_file(&lab.spool.join("etc/y"), 100, 2);
    // Each is refused (FAIL, said once per cause by the receiver), then quarantined by the
    // sender after its retries: never written.
    wait_until(
        "both refused and quarantined",
        Duration::from_secs(30),
        || {
            let (r, s) = (lab.receiver_log(), lab.sender_log());
            count_lines(&r, &["would leave the destination folder"]) >= 1
                && count_lines(&s, &["file quarantined", "path=d/x "]) == 1
                && count_lines(&s, &["file quarantined", "path=etc/y "]) == 1
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::fs::read_dir(&outside).expect("ls").next().is_none(),
        "nothing written outside dest"
    );
    assert!(
        !lab.dest.join("sub/x").exists(),
        "nothing written through d"
    );
}
