//! The control commands of the real binaries (`pipes`, `pipe stop|start`, `reload`) against
//! a stand-in daemon serving the real control socket (`gapsync_daemon::control::serve`): what
//! an operator sees, the exit codes, and who may use the socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use gapsync_daemon::control::{self, PipeRow, PipeState, Request, Response};

/// A stand-in daemon with pipes `scada` (running) and `meters` (stopped); it records requests.
struct Daemon {
    runtime: tokio::runtime::Runtime,
    handle: Option<control::ControlHandle>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Daemon {
    fn start(socket: &Path) -> Daemon {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (handle, mut requests) = runtime
            .block_on(async { control::serve(socket) })
            .expect("serve");
        let log = Arc::clone(&seen);
        runtime.spawn(async move {
            while let Some(incoming) = requests.recv().await {
                log.lock().expect("log").push(incoming.request.clone());
                let answer = answer(&incoming.request);
                incoming.answer(answer);
            }
        });
        Daemon {
            runtime,
            handle: Some(handle),
            seen,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("log").clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _enter = self.runtime.enter();
        self.handle.take();
    }
}

fn answer(request: &Request) -> Response {
    match request {
        Request::Pipes => {
            let mut scada = PipeRow::new("scada", PipeState::Running);
            (scada.queued_objects, scada.queued_bytes) = (3, 4096);
            scada.from = Some("plant-a".into());
            let mut meters = PipeRow::new("meters", PipeState::Stopped);
            meters.last_error = Some("disk full on /srv/gapsync/inbox".into());
            Response::Pipes {
                rows: vec![scada, meters],
            }
        }
        Request::Stop { pipe } if pipe == "scada" => Response::done("pipe scada stopped"),
        Request::Stop { pipe } | Request::Start { pipe } => {
            Response::failed(format!("no pipe named {pipe:?}"))
        }
        Request::Reload => Response::failed("receiver.toml: pipe \"x\": `from` is missing"),
    }
}

/// A folder others may enter, with a config naming its control socket.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = gapsync_tests::open_tempdir();
    let config = dir.path().join("receiver.toml");
    std::fs::write(
        &config,
        "node = \"out\"\ncontrol_socket = \"run/control.sock\"\n",
    )
    .expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let socket = dir.path().join("run/control.sock");
    (dir, config, socket)
}

fn run(
    wrapper: &[String],
    exe: &Path,
    args: &[&str],
    config: &Path,
) -> (Option<i32>, String, String) {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = cmd
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn pipes_stop_start_and_reload_print_the_daemons_answers() {
    let (_dir, config, socket) = setup();
    let daemon = Daemon::start(&socket);
    let exe = gapsync_tests::bin("gapsync-receiver");

    let (code, table, _) = run(&[], &exe, &["pipes"], &config);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("FROM"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("scada") && lines[1].contains("plant-a"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("meters") && lines[2].contains("STOPPED"),
        "{table}"
    );
    assert_eq!(
        lines[3], "  last error: disk full on /srv/gapsync/inbox",
        "{table}"
    );

    let (code, json, _) = run(&[], &exe, &["pipes", "--json"], &config);
    assert_eq!(code, Some(0));
    let rows: serde_json::Value = serde_json::from_str(&json).expect("a JSON array");
    for field in [
        "name",
        "state",
        "queued_objects",
        "queued_bytes",
        "delivered_objects",
        "delivered_bytes",
        "last_error",
    ] {
        assert!(rows[0].get(field).is_some(), "{field} missing:\n{json}");
    }
    assert_eq!(
        (rows[0]["state"].as_str(), rows[0]["queued_bytes"].as_u64()),
        (Some("RUNNING"), Some(4096))
    );

    let (code, out, _) = run(&[], &exe, &["pipe", "stop", "scada"], &config);
    assert_eq!((code, out.as_str()), (Some(0), "pipe scada stopped\n"));
    let (code, _, err) = run(&[], &exe, &["pipe", "start", "nope"], &config);
    assert_eq!(
        (code, err.as_str()),
        (Some(1), "gapsync-receiver: no pipe named \"nope\"\n")
    );
    let (code, _, err) = run(&[], &exe, &["reload"], &config);
    assert_eq!(
        code,
        Some(1),
        "a refused reload fails (systemctl reload reports it)"
    );
    assert!(err.contains("`from` is missing"), "{err}");
    assert_eq!(daemon.requests().len(), 5);
    drop(daemon);
    assert!(
        !socket.exists(),
        "the socket is removed when the daemon stops"
    );
}

#[test]
fn without_a_running_daemon_the_command_says_how_to_start_it_and_exits_3() {
    let (_dir, config, socket) = setup();
    let (code, out, err) = run(
        &[],
        &gapsync_tests::bin("gapsync-sender"),
        &["pipes"],
        &config,
    );
    assert_eq!(code, Some(3));
    assert_eq!(out, "");
    let expected = format!(
        "gapsync-sender is not running (no control socket at {}); start it with systemctl start gapsync-sender\n",
        socket.display()
    );
    assert_eq!(err, expected);
}

#[test]
fn only_root_and_the_gapsync_group_may_use_the_socket() {
    let wrapper = gapsync_tests::without_root();
    assert!(
        !wrapper.is_empty(),
        "this test needs root (to run a command as nobody)"
    );
    let (dir, config, socket) = setup();
    let daemon = Daemon::start(&socket);
    std::fs::set_permissions(
        dir.path().join("run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let exe = gapsync_tests::exe_in(dir.path(), &gapsync_tests::bin("gapsync-sender"));

    let (code, _, err) = run(&wrapper, &exe, &["pipes"], &config);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("permission denied")
            && err.contains("run as root or as a member of group gapsync"),
        "{err}"
    );

    // Even with the socket opened to everyone, the daemon checks the client's credentials.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, _, err) = run(&wrapper, &exe, &["pipe", "stop", "scada"], &config);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("permission denied: run as root or as a member of group gapsync"),
        "{err}"
    );
    assert!(
        daemon.requests().is_empty(),
        "nothing reached the daemon: {:?}",
        daemon.requests()
    );
}
