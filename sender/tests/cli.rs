//! The sender's command line: clear errors for bad configs, and check-config catching what
//! would break at run time (every problem in one run, each with its fix).

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

/// Writes `text` as `s.toml` in `dir`, readable by everyone (for checks run as another user).
fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let cfg = dir.join("s.toml");
    std::fs::write(&cfg, text).expect("write config");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    cfg
}

/// A fresh key file in `dir` with `mode`.
fn key_with_mode(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join(name);
    let out = Command::new(EXE)
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{out:?}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod key");
    key
}

#[test]
fn check_config_reports_every_run_time_problem_at_once_with_its_fix() {
    let dir = gapsync_tests::open_tempdir();
    let d = dir.path().display().to_string();
    let open_key = key_with_mode(dir.path(), "open.key", 0o644);
    std::fs::write(dir.path().join("a-file"), b"not a folder").expect("write");
    let cfg = write_config(
        dir.path(),
        &format!(
            "node = \"plant-a\"\nprofile = \"loopback\"\nstate_dir = \"{d}/state\"\nlog_levl = \"debug\"\n[profile_overrides]\nwindw = 4\n\
             [[pipe]]\nname = \"a\"\nspool = \"{d}/no-such-spool\"\ngate = \"127.0.0.1:1\"\nkey_file = \"open.key\"\n\
             [[pipe]]\nname = \"b\"\nspool = \"{d}/a-file\"\ngate = \"127.0.0.1:1\"\nsetle = \"2s\"\n"
        ),
    );
    let (code, out) = gapsync_tests::check_config_code(&[], Path::new(EXE), &cfg);
    assert_eq!(code, Some(2), "{out}");
    for needle in [
        "6 problem(s)",
        "unknown key `log_levl`: remove it or correct its spelling",
        "unknown key `windw` in [profile_overrides]",
        "unknown key `setle` in [[pipe]] #2",
        &format!(
            "[[pipe]] #1 (a): spool {d}/no-such-spool does not exist; create it: install -d -o "
        ),
        &format!("-m 2770 {d}/no-such-spool"),
        &format!("[[pipe]] #2 (b): spool {d}/a-file is not a folder"),
        &format!(
            "key file {} is open to others (mode 0644)",
            open_key.display()
        ),
        &format!("chmod 0640 {}", open_key.display()),
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn run_refuses_a_missing_spool_and_does_not_create_it() {
    let dir = gapsync_tests::open_tempdir();
    let d = dir.path().display().to_string();
    let cfg = write_config(
        dir.path(),
        &format!(
            "node = \"plant-a\"\nprofile = \"loopback\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\n[[pipe]]\nname = \"p\"\nspool = \"{d}/spoool\"\ngate = \"127.0.0.1:1\"\n"
        ),
    );
    let run = Command::new(EXE)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("spool {d}/spoool does not exist; create it")),
        "{err}"
    );
    assert!(!dir.path().join("spoool").exists(), "run created the typo");
}

#[test]
fn folders_and_keys_the_daemons_user_cannot_use_are_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = gapsync_tests::open_tempdir();
    let d = dir.path().display().to_string();
    // Not writable by the user running the check (root runs it as nobody: root writes anywhere).
    for (folder, mode) in [("spool", 0o555), ("state", 0o777), ("locked", 0o555)] {
        let f = dir.path().join(folder);
        std::fs::create_dir(&f).expect("mkdir");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    // Neither group nor others may read it, nor (after dropping root) its owner: the daemon
    // cannot read it.
    let key = key_with_mode(dir.path(), "scada.key", 0o200);
    let cfg = write_config(
        dir.path(),
        &format!(
            "node = \"plant-a\"\nprofile = \"loopback\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\n[[pipe]]\nname = \"p\"\nspool = \"{d}/spool\"\ngate = \"127.0.0.1:1\"\nkey_file = \"scada.key\"\nsent_dir = \"{d}/locked/sent\"\n"
        ),
    );
    let wrapper = gapsync_tests::without_root();
    let exe = gapsync_tests::exe_in(dir.path(), Path::new(EXE));
    let (code, out) = gapsync_tests::check_config_code(&wrapper, &exe, &cfg);
    assert_eq!(code, Some(2), "{wrapper:?}: {out}");
    for needle in [
        "3 problem(s)",
        &format!("[[pipe]] #1 (p): spool {d}/spool is not writable by user "),
        "; run check-config as the daemon's user, and give the folder to that user: chown ",
        &format!("chmod 2770 {d}/spool"),
        &format!("`sent_dir` {d}/locked/sent does not exist and user "),
        &format!("cannot create it in {d}/locked"),
        &format!("key file {} cannot be read by user ", key.display()),
        &format!("chmod 0640 {}", key.display()),
    ] {
        assert!(
            out.contains(needle),
            "{wrapper:?}: missing {needle:?} in:\n{out}"
        );
    }
}

#[test]
fn sighup_is_logged_and_the_sender_keeps_running_until_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("s.toml");
    std::fs::create_dir_all(dir.path().join("spool")).expect("spool");
    std::fs::write(
        &cfg,
        format!(
            "node = \"n\"\nprofile = \"loopback\"\nprofiles_dir = {1:?}\nstate_dir = \"{0}/state\"\ncontrol_socket = \"{0}/control.sock\"\nlog_dir = \"{0}/logs\"\n[[pipe]]\nname = \"p\"\nspool = \"{0}/spool\"\ngate = \"127.0.0.1:1\"\n",
            dir.path().display(),
            gapsync_tests::profiles_dir().display().to_string()
        ),
    )
    .expect("write");
    gapsync_tests::assert_sighup_is_logged_and_survived(
        Path::new(EXE),
        &cfg,
        &dir.path().join("logs"),
        " started ",
    );
}
