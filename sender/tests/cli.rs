//! The sender's command line: check-config on every shipped profile and example, and clear
//! errors for bad configs.

use std::path::Path;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_gapsync-sender");

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(EXE)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_shipped_profile_passes_check_config() {
    let dir = tempfile::tempdir().expect("tmp");
    for entry in std::fs::read_dir(root().join("hardware-profiles")).expect("profiles") {
        let p = entry.expect("entry").path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg = dir.path().join("s.toml");
        std::fs::write(&cfg, format!("node = \"n\"\nprofile = {:?}\nstate_dir = \"/tmp/x\"\n[[pipe]]\nname = \"p\"\nspool = \"/tmp/s\"\ngate = \"127.0.0.1:1\"\n", p.display().to_string())).expect("write");
        let (ok, out) = check(&cfg);
        assert!(ok, "{}: {out}", p.display());
    }
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
