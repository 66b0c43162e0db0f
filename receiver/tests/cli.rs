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
