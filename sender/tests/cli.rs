//! The sender's command line: check-config on every shipped profile and example, and clear
//! errors for bad configs.

use std::path::Path;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_gapsync-sender");

fn check(config: &Path) -> (bool, String) {
    gapsync_tests::check_config(Path::new(EXE), config)
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "node = \"bad name\"\nprofile = \"no-such-gate\"\n[[pipe]]\nname = \"p\"\ngate = \"nohost\"\n").expect("write");
    let (ok, out) = check(&cfg);
    assert!(!ok);
    for needle in [
        "`node`",
        "no-such-gate",
        "`state_dir` is missing",
        "`gate`",
        "`spool` is missing",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn help_explains_the_commands() {
    let out = Command::new(EXE).arg("--help").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run") && text.contains("check-config"),
        "{text}"
    );
}

#[test]
fn sighup_is_logged_and_the_sender_keeps_running_until_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("s.toml");
    std::fs::create_dir_all(dir.path().join("spool")).expect("spool");
    std::fs::write(
        &cfg,
        format!(
            "node = \"n\"\nprofile = \"loopback\"\nprofiles_dir = {1:?}\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/logs\"\n[[pipe]]\nname = \"p\"\nspool = \"{0}/spool\"\ngate = \"127.0.0.1:1\"\n",
            dir.path().display(),
            gapsync_tests::profiles_dir().display().to_string()
        ),
    )
    .expect("write");
    let mut child = Command::new(EXE)
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let logs = dir.path().join("logs");
    let started = std::time::Instant::now();
    while !gapsync_tests::read_logs(&logs).contains(" started ")
        && started.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let waited = std::time::Instant::now();
    while !gapsync_tests::read_logs(&logs).contains("SIGHUP received")
        && waited.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alive = child.try_wait().expect("try_wait").is_none();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    let text = gapsync_tests::read_logs(&logs);
    assert!(alive, "the sender died of SIGHUP: {status:?}\n{text}");
    assert!(
        text.lines().any(|l| l.contains(" WARN ")
            && l.contains("SIGHUP received; reload is not supported yet, keep running")),
        "{text}"
    );
    assert!(
        status.success(),
        "SIGTERM still stops it cleanly: {status:?}"
    );
}
