//! Test harness for black-box tests of the real gapsync binaries over loopback.
//!
//! A [`Lab`] is a temporary folder with a spool, a destination, state and log folders, and the
//! three processes (receiver, gate simulator, sender) started from the workspace's build. Every
//! process is killed when the lab is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gapsync_protocol::{Profile, RawProfile};

mod lab;
pub mod pg;
pub mod table_lab;
pub use lab::Lab;
pub use pg::PgCluster;
pub use table_lab::TableLab;

/// The folder holding the workspace's binaries (the one this test binary was built into).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GAPSYNC_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Rebuilds the daemons once per test process, so `cargo test -p gapsync-tests` never runs a
/// stale binary (that package cannot depend on the binary-only daemon packages).
fn ensure_built() {
    build_daemons(false);
}

/// Builds the daemons and this package's binaries once per process, in the profile this
/// program was built with, when it runs under cargo (`cargo test`, `cargo run`) and
/// `GAPSYNC_BIN_DIR` is not set. `show_progress` lets cargo print its progress (the demo);
/// otherwise the build is quiet.
pub fn build_daemons(show_progress: bool) {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let Some(cargo) = std::env::var_os("CARGO") else {
            return;
        };
        if std::env::var_os("GAPSYNC_BIN_DIR").is_some() {
            return;
        }
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "gapsync-sender",
            "-p",
            "gapsync-receiver",
            "-p",
            "gapsync-tests",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        if !show_progress {
            cmd.arg("--quiet");
        }
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        clear_inherited_cargo_env(&mut cmd);
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the daemons failed");
    });
}

/// Removes what `cargo run` and `cargo test` set for the program they run (CARGO_MANIFEST_DIR,
/// CARGO_PKG_*, CARGO_BIN_EXE_*, ...) from a nested cargo's environment. Left in, build scripts
/// that watch these variables (ring's does) see them change between the outer build and this
/// one, and rerun each time: every run then rebuilt ring, rustls and the workspace, alternately
/// in the outer and the inner build. Cargo's own settings (CARGO_HOME, CARGO_TARGET_DIR,
/// CARGO_BUILD_*, CARGO_PROFILE_*, RUSTFLAGS, ...) are kept.
fn clear_inherited_cargo_env(cmd: &mut Command) {
    const SET_BY_CARGO: &[&str] = &[
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_BIN_EXE_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "OUT_DIR",
        "__CARGO",
    ];
    for (name, _) in std::env::vars_os() {
        let Some(n) = name.to_str() else { continue };
        if SET_BY_CARGO.iter().any(|p| n.starts_with(p)) {
            cmd.env_remove(&name);
        }
    }
}

/// Path of a workspace binary (rebuilt first if the sources changed).
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        p.display()
    );
    p
}

/// The shipped hardware profiles folder.
pub fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware-profiles")
}

/// A shipped profile, checked.
pub fn profile(name: &str) -> Profile {
    let text =
        std::fs::read_to_string(profiles_dir().join(format!("{name}.toml"))).expect("profile file");
    Profile::try_from(RawProfile::from_toml(&text).expect("toml")).expect("valid profile")
}

/// A running process, killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub name: String,
    pub stderr: PathBuf,
}

impl Proc {
    /// Starts `exe` with `args`; stdout and stderr go to `<dir>/<name>.stderr`.
    pub fn spawn(name: &str, exe: &Path, args: &[String], dir: &Path) -> Proc {
        let stderr = dir.join(format!("{name}.stderr"));
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .expect("stderr file");
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(err.try_clone().expect("dup"))
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        Proc {
            child,
            name: name.to_owned(),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn term(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        self.child.wait().expect("wait")
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many frames the sender uses for one file alone in its pipe: batches of records (an
/// Open, Data records, a Commit), each frame filled up to `chunk` payload bytes. Mirrors the
/// sender's packing rule (a Data record starts only with room for 64 KiB or the rest of the
/// file) so that tests can aim a fault at a given frame.
pub fn frames_for_file(chunk: usize, size: usize, open_body: usize) -> usize {
    use gapsync_protocol::batch::RECORD_HEADER_LEN as R;
    const MIN_DATA: usize = 64 << 10;
    const COMMIT: usize = 48;
    let (mut frames, mut sent, mut opened, mut committed) = (0, 0, false, false);
    while !committed {
        frames += 1;
        let mut used = 0;
        if !opened {
            used += R + open_body;
            opened = true;
        }
        loop {
            let room = chunk.saturating_sub(used + R);
            if sent < size {
                if room < MIN_DATA.min(size - sent) {
                    break;
                }
                let n = room.min(size - sent);
                sent += n;
                used += R + n;
            } else {
                committed = room >= COMMIT;
                break;
            }
        }
    }
    frames
}

/// The length of the Open body the sender sends for the spool file `rel` at `path`.
pub fn open_body_len(path: &Path, rel: &str) -> usize {
    let m = std::fs::metadata(path).expect("stat spool file");
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    gapsync_protocol::encode_body(&gapsync_protocol::OpenFile {
        path: rel.to_owned(),
        size: m.len(),
        mtime_ns: mtime,
    })
    .len()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Concatenated log files of a folder (all days).
pub fn read_logs(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for hundreds of MiB.
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file of `len` pseudo-random bytes (via a temporary name, then rename, as operators
/// must), creating folders. Returns its BLAKE3 hex digest.
pub fn make_file(path: &Path, len: usize, seed: u64) -> String {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let data = fill(seed, len);
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().expect("name").to_string_lossy()
    ));
    std::fs::write(&tmp, &data).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
    blake3::hash(&data).to_hex().to_string()
}

/// The receiver's default staging folder inside a destination folder, which a consumer of the
/// destination ignores.
pub const STAGING_DIR: &str = ".gapsync-staging";

/// True for the receiver's staging folder directly under a walked destination `root`.
fn is_staging(root: &Path, p: &Path) -> bool {
    p.parent() == Some(root) && p.file_name().is_some_and(|n| n == STAGING_DIR)
}

/// Every regular file under `dir` (dot-folders included, the receiver's staging folder not)
/// as relative path -> BLAKE3 hex.
pub fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if is_staging(root, &p) {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                let data = std::fs::read(&p).unwrap_or_default();
                out.insert(rel, blake3::hash(&data).to_hex().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Number of regular files under `dir`.
pub fn count_files(dir: &Path) -> usize {
    tree_sizes(dir).len()
}

/// Every regular file under `dir` (not the receiver's staging folder) as relative path -> size
/// (cheap, for watching).
pub fn tree_sizes(dir: &Path) -> BTreeMap<String, u64> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if is_staging(root, &p) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                walk(root, &p, out);
            } else if m.is_file() {
                out.insert(
                    p.strip_prefix(root)
                        .expect("under root")
                        .to_string_lossy()
                        .into_owned(),
                    m.len(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// True for a profile of the diode (udp) link.
pub fn profile_is_udp(name: &str) -> bool {
    profile(name).link == gapsync_protocol::LinkKind::Udp
}

/// Counts lines of `log` containing every one of `needles`.
pub fn count_lines(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// A downstream consumer, as a user would run one: it moves every file out of the landing
/// folder as soon as it appears and records what it saw. A file delivered twice is seen twice;
/// a partial file would be seen with the wrong content.
#[derive(Debug)]
pub struct Consumer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    /// Starts taking files from `dest` into `out` every few milliseconds.
    pub fn start(dest: &Path, out: &Path) -> Consumer {
        use std::sync::atomic::Ordering;
        std::fs::create_dir_all(out).expect("consumer folder");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let (s, sn, dest, out) = (
            stop.clone(),
            seen.clone(),
            dest.to_path_buf(),
            out.to_path_buf(),
        );
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                let last = s.load(Ordering::SeqCst);
                for rel in tree_sizes(&dest).into_keys() {
                    n += 1;
                    let taken = out.join(n.to_string());
                    if std::fs::rename(dest.join(&rel), &taken).is_ok() {
                        let data = std::fs::read(&taken).unwrap_or_default();
                        sn.lock()
                            .expect("lock")
                            .entry(rel)
                            .or_insert_with(Vec::new)
                            .push(blake3::hash(&data).to_hex().to_string());
                    }
                }
                if last {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Consumer {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// What was consumed so far: path -> digests, in arrival order.
    pub fn seen(&self) -> BTreeMap<String, Vec<String>> {
        self.seen.lock().expect("lock").clone()
    }

    /// Stops after one last sweep and returns everything consumed.
    pub fn finish(mut self) -> BTreeMap<String, Vec<String>> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.seen()
    }
}

/// A Hello from sender `plant-a` on pipe `scada`, session 1, connection 1, for hand-driven
/// peers in tests.
pub fn hello(profile: &Profile) -> gapsync_protocol::Hello {
    gapsync_protocol::Hello {
        protocol_version: gapsync_protocol::PROTOCOL_VERSION,
        node: "plant-a".into(),
        pipe: "scada".into(),
        session_id: 1,
        connection: 1,
        profile: profile.summary(),
        auth: None,
    }
}

/// PEM files for the `tls` link: a CA, a receiver certificate for 127.0.0.1 and localhost, and
/// a sender (client) certificate, all made now.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes a CA named `name` and a server and a client certificate signed by it, in `dir`.
pub fn make_certs(dir: &Path, name: &str) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).expect("cert folder");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let write = |file: &str, text: String| {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, text).expect("write pem");
        // Private keys open to others are refused (0640 root:gapsync is what operators use).
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod pem");
        p
    };
    let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_pem, client_key) =
        leaf(vec!["plant-a".into()], ExtendedKeyUsagePurpose::ClientAuth);
    Certs {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server_pem),
        server_key: write("server.key", server_key),
        client_cert: write("client.pem", client_pem),
        client_key: write("client.key", client_key),
    }
}

/// A small tmpfs mounted for one test (root only), unmounted lazily when dropped.
#[derive(Debug)]
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. "8m") at `at`; `None` when this user cannot mount.
    pub fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `<exe> check-config --config <config>`: success, and stdout and stderr together.
pub fn check_config(exe: &Path, config: &Path) -> (bool, String) {
    let out = Command::new(exe)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run check-config");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `<exe> check-config --config <config>` under `wrapper` (e.g. [`without_root`]; empty:
/// directly): the exit code, and stdout and stderr together.
pub fn check_config_code(wrapper: &[String], exe: &Path, config: &Path) -> (Option<i32>, String) {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = cmd
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run check-config ({wrapper:?}): {e}"));
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A command prefix that runs a program without root's power over file modes: as root (as in
/// CI), `setpriv` to nobody (uid and gid 65534, no other groups); otherwise nothing, as this
/// user has no such power. A missing `setpriv` fails the test that needs it.
pub fn without_root() -> Vec<String> {
    if rustix::process::geteuid().is_root() {
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    }
}

/// A temporary folder that other users may enter and read (mode 0755), holding a copy of the
/// shipped profiles in `hardware-profiles/` (found next to a config written there), for
/// commands run through [`without_root`].
pub fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let profiles = dir.path().join("hardware-profiles");
    std::fs::create_dir(&profiles).expect("mkdir profiles");
    for e in std::fs::read_dir(profiles_dir())
        .expect("profiles")
        .flatten()
    {
        std::fs::copy(e.path(), profiles.join(e.file_name())).expect("copy profile");
    }
    dir
}

/// `exe` placed in `dir` (a hard link, or a copy across filesystems), so that another user can
/// run it even when the checkout sits in a folder only root may enter.
pub fn exe_in(dir: &Path, exe: &Path) -> PathBuf {
    let to = dir.join(exe.file_name().expect("exe name"));
    if std::fs::hard_link(exe, &to).is_err() {
        std::fs::copy(exe, &to).expect("copy exe");
    }
    to
}

/// The text of the log files in `logs`, once it contains `needle` (or after 20 s).
pub fn wait_for_log(logs: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = read_logs(logs);
        if text.contains(needle) || start.elapsed() > Duration::from_secs(20) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `exe run --config config` until its log (in `logs`) shows `ready`, sends it SIGHUP
/// twice (config unchanged), then breaks the config file and sends SIGHUP again, then SIGTERM,
/// and checks what an operator would: each SIGHUP is a reload that says its outcome in the log
/// (done twice, then refused at ERROR naming the bad file), the daemon kept running with its
/// config, and it stopped cleanly on SIGTERM.
pub fn assert_sighup_is_logged_and_survived(exe: &Path, config: &Path, logs: &Path, ready: &str) {
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let up = wait_for_log(logs, ready);
    assert!(
        up.contains(ready),
        "the daemon never logged {ready:?}:\n{up}"
    );
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
    };
    for _ in 0..2 {
        assert!(signal("-HUP").success());
        std::thread::sleep(Duration::from_millis(300));
    }
    let good = std::fs::read_to_string(config).expect("read config");
    std::fs::write(config, "node = \"broken\nthis is not toml\n").expect("break config");
    assert!(signal("-HUP").success());
    let text = wait_for_log(logs, "reload refused");
    std::fs::write(config, good).expect("restore config");
    let alive = child.try_wait().expect("try_wait").is_none();
    let _ = signal("-TERM");
    let status = child.wait().expect("wait");
    assert!(alive, "the daemon died of SIGHUP: {status:?}\n{text}");
    let count = |level: &str, what: &str| {
        text.lines()
            .filter(|l| l.contains(level) && l.contains(what))
            .count()
    };
    assert_eq!(
        count(" INFO ", "SIGHUP received; reloading the config"),
        3,
        "one INFO per SIGHUP:\n{text}"
    );
    assert_eq!(
        count(" INFO ", "reload done"),
        2,
        "an unchanged config reloads:\n{text}"
    );
    assert_eq!(
        count(" ERROR ", "reload refused"),
        1,
        "a broken config is refused at ERROR:\n{text}"
    );
    assert!(
        status.success(),
        "SIGTERM still stops it cleanly: {status:?}"
    );
}

/// The address of a daemon's newest `listening` log line, once there are more than `before`
/// of them (one per start); `None` until then.
pub fn listening_addr<T: std::str::FromStr>(log: &str, before: usize) -> Option<T> {
    if log.matches(" listening ").count() <= before {
        return None;
    }
    log.rsplit(" listening ")
        .next()
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}
