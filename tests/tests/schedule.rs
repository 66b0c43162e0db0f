//! Pipe schedules on a real sender and receiver: a sync window that opens a few seconds after
//! the test starts (nothing lands before, everything after; WAITING then RUNNING), and cron
//! ("send what is there at the run, then wait"; a run missed while the daemon was down runs
//! once at start).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gapsync_tests::{Lab, bin, count_files, make_file, wait_until};
use std::time::{SystemTime, UNIX_EPOCH};

/// The pipe's row of `pipes --json`.
fn row(config: &Path) -> serde_json::Value {
    let out = Command::new(bin("gapsync-sender"))
        .args(["pipes", "--json", "--config"])
        .arg(config)
        .output()
        .expect("pipes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    rows.into_iter().next().expect("one row")
}

/// Seconds since the Unix epoch (UTC), now.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The next whole minute (UTC, seconds since the epoch) at least `margin` seconds away.
fn next_minute(margin: u64) -> u64 {
    let now = now_secs();
    let mut at = now - now % 60 + 60;
    if at - now < margin {
        at += 60;
    }
    at
}

/// "HH:MM" of `at` (seconds since the epoch) in UTC.
fn hh_mm(at: u64) -> String {
    format!("{:02}:{:02}", (at / 3600) % 24, (at / 60) % 60)
}

/// Sleeps until `at` (seconds since the epoch).
fn sleep_until(at: u64) {
    let target = UNIX_EPOCH + Duration::from_secs(at);
    if let Ok(d) = target.duration_since(SystemTime::now()) {
        std::thread::sleep(d);
    }
}

fn start(lab: &mut Lab) -> std::path::PathBuf {
    lab.start_receiver();
    lab.start_sender();
    let config = lab.path("sender.toml");
    wait_until(
        "the sender's control socket",
        Duration::from_secs(20),
        || lab.path("sstate/control.sock").exists(),
    );
    config
}

#[test]
fn a_window_that_opens_later_holds_the_files_until_it_opens() {
    let opens = next_minute(8);
    let closes = opens + 30 * 60;
    let mut lab = Lab::new("loopback");
    lab.sender_pipe_extra = format!(
        "schedule = {{ windows = [\"{}-{}\"], timezone = \"UTC\" }}\n",
        hh_mm(opens),
        hh_mm(closes)
    );
    let config = start(&mut lab);
    let mut expected = BTreeMap::new();
    for i in 0..4 {
        let name = format!("night-{i}.bin");
        expected.insert(name.clone(), make_file(&lab.spool.join(&name), 20_000, i));
    }
    wait_until("the files queued", Duration::from_secs(10), || {
        row(&config)["queued_objects"] == 4
    });
    assert_eq!(row(&config)["state"], "WAITING");
    sleep_until(opens - 1);
    assert_eq!(
        count_files(&lab.dest),
        0,
        "a file landed before the window opened"
    );
    assert_eq!(row(&config)["state"], "WAITING");
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    assert!(now_secs() >= opens);
    assert_eq!(row(&config)["state"], "RUNNING");
    assert!(
        lab.sender_log().contains("sync window open"),
        "{}",
        lab.sender_log()
    );
}

#[test]
fn a_missed_cron_run_runs_once_at_start_and_later_files_wait_for_the_next() {
    let mut lab = Lab::new("loopback");
    // Once a year; the last run two years ago: one run was missed while the daemon was down.
    lab.sender_pipe_extra = "schedule = { cron = \"0 0 1 1 *\", timezone = \"UTC\" }\n".into();
    let state = lab.path("sstate/sender/scada");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::write(state.join("cron-last-run"), "2024-06-01T00:00:00+00:00\n").expect("last run");
    let there = make_file(&lab.spool.join("there.bin"), 30_000, 1);
    let config = start(&mut lab);
    lab.wait_for_tree(
        &BTreeMap::from([("there.bin".to_owned(), there)]),
        Duration::from_secs(30),
    );
    let log = lab.sender_log();
    assert!(
        log.contains("a cron run was missed while the daemon was down"),
        "{log}"
    );
    make_file(&lab.spool.join("later.bin"), 30_000, 2);
    wait_until("later.bin queued", Duration::from_secs(10), || {
        row(&config)["queued_objects"] == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !lab.dest.join("later.bin").exists(),
        "a file found after the run was sent"
    );
    assert_eq!(row(&config)["state"], "WAITING");
    let recorded = std::fs::read_to_string(state.join("cron-last-run")).expect("record");
    assert!(
        !recorded.starts_with("2024"),
        "the run is recorded: {recorded}"
    );
}

#[test]
fn a_cron_run_sends_what_is_there_and_files_found_after_it_wait_for_the_next_run() {
    let mut lab = Lab::new("loopback");
    lab.sender_pipe_extra = "schedule = { cron = \"* * * * *\", timezone = \"UTC\" }\n".into();
    let config = start(&mut lab);
    let first = make_file(&lab.spool.join("first.bin"), 10_000, 1);
    wait_until("first.bin queued", Duration::from_secs(5), || {
        row(&config)["queued_objects"] == 1
    });
    // The first run is the next minute from now, not from before the daemons started: on a
    // busy machine starting them took longer than a fixed margin (the file then crossed at a
    // minute the test had already slept past, and "sent before the first run" was wrong).
    let run = next_minute(3);
    assert_eq!(row(&config)["state"], "WAITING");
    sleep_until(run - 1);
    assert!(
        !lab.dest.join("first.bin").exists(),
        "sent before the first run"
    );
    lab.wait_for_tree(
        &BTreeMap::from([("first.bin".to_owned(), first.clone())]),
        Duration::from_secs(15),
    );
    make_file(&lab.spool.join("second.bin"), 10_000, 2);
    sleep_until(run + 60 - 2);
    assert!(!lab.dest.join("second.bin").exists(), "sent before its run");
    wait_until(
        "second.bin at the next run",
        Duration::from_secs(20),
        || lab.dest.join("second.bin").exists(),
    );
}
