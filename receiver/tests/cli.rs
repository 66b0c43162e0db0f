//! The receiver's command line: check-config on the example, and a refusal to start without an
//! allow-list.

use std::path::Path;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_gapsync-receiver");

fn check(config: &Path) -> (bool, String) {
    gapsync_tests::check_config(Path::new(EXE), config)
}

#[test]
fn without_an_allow_list_the_receiver_refuses_to_start_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        "node = \"o\"\nprofile = \"syskeeper-2000\"\nlisten = \"127.0.0.1:0\"\nstate_dir = \"/tmp/r\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"/tmp/d\"\n",
    )
    .expect("write");
    let (ok, out) = check(&cfg);
    assert!(!ok);
    assert!(
        out.contains("`allow` is not set") && out.contains("allow = ["),
        "{out}"
    );
    let run = Command::new(EXE)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("`allow` is not set"));
}

#[test]
fn a_profile_with_a_bad_ok_byte_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        "node = \"o\"\nprofile = \"syskeeper-2000\"\nlisten = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/8\", \"nonsense\"]\nstate_dir = \"/tmp/r\"\n[profile_overrides]\nok_byte = 1\nwindow = 0\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"/tmp/d\"\n",
    )
    .expect("write");
    let (ok, out) = check(&cfg);
    assert!(!ok);
    for needle in [
        "0x00 or 0xFF",
        "`window` = 0",
        "\"nonsense\" is not a network",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn json_logs_are_one_object_per_line_in_the_log_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"o\"\nprofile = \"loopback\"\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1\"]\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/logs\"\nlog_format = \"json\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{0}/dest\"\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let mut child = Command::new(EXE)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .spawn()
        .expect("start");
    let logs = dir.path().join("logs");
    let start = std::time::Instant::now();
    let text = loop {
        let text: String = std::fs::read_dir(&logs)
            .map(|r| {
                r.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if text.contains("listening") || start.elapsed() > std::time::Duration::from_secs(20) {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("listening"))
        .expect("a listening line");
    let v: serde_json::Value = serde_json::from_str(line).expect("the line is JSON");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "listening");
    assert!(
        v["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{v}"
    );
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON");
    }
}

/// The log folder's text, waiting until it contains `needle` (or 20 s).
fn wait_for_log(logs: &Path, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = gapsync_tests::read_logs(logs);
        if text.contains(needle) || start.elapsed() > std::time::Duration::from_secs(20) {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sighup_is_logged_and_the_receiver_keeps_running_until_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"o\"\nprofile = \"loopback\"\nprofiles_dir = {1:?}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1\"]\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/logs\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{0}/dest\"\n",
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
    assert!(wait_for_log(&logs, "listening").contains("listening"));
    for _ in 0..2 {
        let hup = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(hup.success());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let text = wait_for_log(&logs, "reload is not supported yet");
    let alive = child.try_wait().expect("try_wait").is_none();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(alive, "the receiver died of SIGHUP: {status:?}");
    assert_eq!(
        text.matches("SIGHUP received; reload is not supported yet, keep running")
            .count(),
        2,
        "one WARN per SIGHUP:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" WARN ") && l.contains("SIGHUP received")),
        "{text}"
    );
    assert!(
        status.success(),
        "SIGTERM still stops it cleanly: {status:?}"
    );
}
