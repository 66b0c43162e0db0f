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
