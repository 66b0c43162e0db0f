//! The receiver's command line: check-config catches what would break at run time (every
//! problem in one run, each with its fix), and a refusal to start without an allow-list.

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
        "node = \"o\"\nprofile = \"syskeeper-2000\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"receiver.sock\"\nallow = [\"10.0.0.0/8\", \"nonsense\"]\nstate_dir = \"/tmp/r\"\n[profile_overrides]\nok_byte = 1\nwindow = 0\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"/tmp/d\"\n",
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
            "node = \"o\"\nprofile = \"loopback\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"receiver.sock\"\nallow = [\"127.0.0.1\"]\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/logs\"\nlog_format = \"json\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{0}/dest\"\n",
            dir.path().display()
        ),
    )
    .expect("write");
    std::fs::create_dir(dir.path().join("dest")).expect("dest");
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

/// Writes `text` as `r.toml` in `dir`, readable by everyone (for checks run as another user).
fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let cfg = dir.join("r.toml");
    std::fs::write(&cfg, text).expect("write config");
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
            "node = \"o\"\nprofile = \"loopback\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"receiver.sock\"\nallow = []\nstate_dir = \"{d}/state\"\nlisen = \"127.0.0.1:1\"\nsumary_interval = \"1s\"\n\
             [[pipe]]\nname = \"a\"\nfrom = \"n\"\ndest = \"{d}/no-such-dest\"\nkeys = [{{ id = 1, file = {:?} }}]\n\
             [[pipe]]\nname = \"b\"\nfrom = \"n\"\ndest = \"{d}/a-file\"\nstagin = \"x\"\n",
            open_key.display().to_string()
        ),
    );
    let (code, out) = gapsync_tests::check_config_code(&[], Path::new(EXE), &cfg);
    assert_eq!(code, Some(2), "{out}");
    for needle in [
        "7 problem(s)",
        "unknown key `lisen`: remove it or correct its spelling",
        "unknown key `sumary_interval`",
        "unknown key `stagin` in [[pipe]] #2",
        "`allow` is empty: the receiver would refuse every sender",
        "allow = [\"10.1.2.0/24\"]",
        &format!(
            "[[pipe]] #1 (a): dest {d}/no-such-dest does not exist; create it: install -d -o "
        ),
        &format!("-m 2770 {d}/no-such-dest"),
        &format!("[[pipe]] #2 (b): dest {d}/a-file is not a folder"),
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
fn run_refuses_a_missing_landing_folder_and_does_not_create_it() {
    let dir = gapsync_tests::open_tempdir();
    let d = dir.path().display().to_string();
    let cfg = write_config(
        dir.path(),
        &format!(
            "node = \"o\"\nprofile = \"loopback\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"receiver.sock\"\nallow = [\"127.0.0.1\"]\nstate_dir = \"{d}/state\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{d}/dset\"\n"
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
        err.contains(&format!("dest {d}/dset does not exist; create it")),
        "{err}"
    );
    assert!(!dir.path().join("dset").exists(), "run created the typo");
}

#[test]
fn folders_and_keys_the_daemons_user_cannot_use_are_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = gapsync_tests::open_tempdir();
    let d = dir.path().display().to_string();
    // Not writable by the user running the check (root runs it as nobody: root writes anywhere).
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // Readable by its owner's group only (root:root 0640 when root made it): not by the daemon.
    let key = key_with_mode(dir.path(), "scada.key", 0o200);
    let cfg = write_config(
        dir.path(),
        &format!(
            "node = \"o\"\nprofile = \"loopback\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"receiver.sock\"\nallow = [\"127.0.0.1\"]\nstate_dir = \"{d}/state\"\nstaging = \"x\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{d}/dest\"\nkeys = [{{ id = 1, file = \"{d}/scada.key\" }}]\n"
        ),
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let wrapper = gapsync_tests::without_root();
    let exe = gapsync_tests::exe_in(dir.path(), Path::new(EXE));
    let (code, out) = gapsync_tests::check_config_code(&wrapper, &exe, &cfg);
    assert_eq!(code, Some(2), "{wrapper:?}: {out}");
    for needle in [
        "3 problem(s)",
        "unknown key `staging`",
        &format!("[[pipe]] #1 (p): dest {d}/dest is not writable by user "),
        "; run check-config as the daemon's user, and give the folder to that user: chown ",
        &format!("chmod 2770 {d}/dest"),
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
fn an_allow_list_open_to_every_address_is_a_warning_in_check_config_and_in_the_log() {
    let dir = gapsync_tests::open_tempdir();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("dest")).expect("mkdir");
    let cfg = write_config(
        dir.path(),
        &format!(
            "node = \"o\"\nprofile = \"loopback\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"receiver.sock\"\nallow = [\"0.0.0.0/0\", \"::/0\"]\nstate_dir = \"{d}/state\"\nlog_dir = \"{d}/logs\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{d}/dest\"\n"
        ),
    );
    let (code, out) = gapsync_tests::check_config_code(&[], Path::new(EXE), &cfg);
    assert_eq!(code, Some(0), "{out}");
    for net in ["0.0.0.0/0", "::/0"] {
        assert!(
            out.contains(&format!(
                "warning: `allow` holds {net}: any address may connect"
            )),
            "{out}"
        );
    }
    let mut child = Command::new(EXE)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .spawn()
        .expect("start");
    let logs = dir.path().join("logs");
    gapsync_tests::wait_until(
        "the receiver's listening line",
        std::time::Duration::from_secs(20),
        || gapsync_tests::read_logs(&logs).contains("listening"),
    );
    let _ = child.kill();
    let _ = child.wait();
    let log = gapsync_tests::read_logs(&logs);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("`allow` holds 0.0.0.0/0")),
        "{log}"
    );
}

#[test]
fn sighup_is_logged_and_the_receiver_keeps_running_until_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"o\"\nprofile = \"loopback\"\nprofiles_dir = {1:?}\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"receiver.sock\"\nallow = [\"127.0.0.1\"]\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/logs\"\n[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{0}/dest\"\n",
            dir.path().display(),
            gapsync_tests::profiles_dir().display().to_string()
        ),
    )
    .expect("write");
    std::fs::create_dir_all(dir.path().join("dest")).expect("dest");
    gapsync_tests::assert_sighup_is_logged_and_survived(
        Path::new(EXE),
        &cfg,
        &dir.path().join("logs"),
        " listening ",
    );
}
