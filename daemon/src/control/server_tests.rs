//! The control socket with a real Unix socket in a temporary folder and a fake daemon loop.

use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};

use super::*;
use crate::control::commands::{Outcome, outcome};
use crate::control::{PipeRow, PipeState};

/// A temporary folder with a config naming `control.sock` in it (relative to the config).
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = "node = \"plant-a\"\ncontrol_socket = \"run/control.sock\"\n[[pipe]]\nname = \"scada\"\n";
        std::fs::write(dir.path().join("sender.toml"), config).expect("config");
        Self { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/control.sock")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sender.toml")
    }
}

fn rows() -> Vec<PipeRow> {
    let mut scada = PipeRow::new("scada", PipeState::Running);
    scada.queued_objects = 12;
    scada.queued_bytes = 3 << 20;
    scada.delivered_objects = 1500;
    scada.delivered_bytes = 7 << 30;
    scada.link = Some("tcp".into());
    scada.remote = Some("192.0.2.131:28101".into());
    let mut meters = PipeRow::new("meters", PipeState::Stopped);
    meters.last_error = Some("the gate refused the connection".into());
    vec![scada, meters]
}

/// Answers like a daemon with pipes `scada` and `meters`.
fn fake_daemon(mut requests: mpsc::Receiver<Incoming>) -> JoinHandle<Vec<(Request, Origin)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(incoming) = requests.recv().await {
            seen.push((incoming.request.clone(), incoming.origin));
            let response = match &incoming.request {
                Request::Pipes => Response::Pipes { rows: rows() },
                Request::Stop { pipe } | Request::Start { pipe } if pipe == "scada" => {
                    Response::done(format!("pipe {pipe} stopped"))
                }
                Request::Stop { pipe } | Request::Start { pipe } => {
                    Response::failed(format!("no pipe named {pipe:?}; see `pipes`"))
                }
                Request::Reload => Response::failed("sender.toml: `gate` is missing"),
            };
            incoming.answer(response);
        }
        seen
    })
}

async fn run_command(config: &Path, request: Request, json: bool) -> Outcome {
    let config = config.to_owned();
    let now = "2026-12-03T12:00:00Z".parse().expect("now");
    tokio::task::spawn_blocking(move || outcome("gapsync-sender", &config, &request, json, now))
        .await
        .expect("client thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_print_the_daemons_answers_and_exit_accordingly() {
    let s = Setup::new();
    let (handle, requests) = serve(&s.socket()).expect("serve");
    let daemon = fake_daemon(requests);

    let table = run_command(&s.config(), Request::Pipes, false).await;
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{}", table.stdout);
    assert!(
        lines[1].starts_with("scada") && lines[1].contains("RUNNING"),
        "{}",
        table.stdout
    );
    assert!(
        lines[1].contains("192.0.2.131:28101") && lines[1].contains("12 3.0M"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("last error: the gate refused"),
        "{}",
        table.stdout
    );

    let json = run_command(&s.config(), Request::Pipes, true).await;
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON array");
    assert_eq!(value[0]["name"], "scada");
    assert_eq!(value[0]["state"], "RUNNING");
    assert_eq!(value[0]["queued_bytes"], 3 << 20);
    assert_eq!(value[1]["state"], "STOPPED");
    assert!(value[0]["last_error"].is_null() && value[0].get("from").is_none());

    let stop = run_command(
        &s.config(),
        Request::Stop {
            pipe: "scada".into(),
        },
        false,
    )
    .await;
    assert_eq!(
        (stop.code, stop.stdout.as_str()),
        (0, "pipe scada stopped\n")
    );
    let unknown = run_command(
        &s.config(),
        Request::Start {
            pipe: "nope".into(),
        },
        false,
    )
    .await;
    assert_eq!(unknown.code, 1);
    assert_eq!(
        unknown.stderr,
        "gapsync-sender: no pipe named \"nope\"; see `pipes`\n"
    );
    let reload = run_command(&s.config(), Request::Reload, false).await;
    assert_eq!(
        (reload.code, reload.stderr.contains("`gate` is missing")),
        (1, true)
    );

    drop(handle);
    let seen = daemon.await.expect("daemon");
    assert_eq!(seen.len(), 5);
    let me = rustix::process::geteuid().as_raw();
    assert!(
        matches!(seen[0].1, Origin::Socket { uid, .. } if uid == me),
        "the client's credentials come with the request: {:?}",
        seen[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_the_commands_say_so_and_exit_3() {
    let s = Setup::new();
    let out = run_command(&s.config(), Request::Pipes, false).await;
    assert_eq!(out.code, 3);
    let expected = format!(
        "gapsync-sender is not running (no control socket at {}); start it with systemctl start gapsync-sender\n",
        s.socket().display()
    );
    assert_eq!(out.stderr, expected);
    std::fs::create_dir_all(s.socket().parent().expect("dir")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(s.socket()).expect("bind"));
    let stale = run_command(&s.config(), Request::Pipes, false).await;
    assert_eq!(stale.code, 3, "a socket nobody answers on: {stale:?}");
    let missing = run_command(&s.dir.path().join("none.toml"), Request::Pipes, false).await;
    assert_eq!(missing.code, 2, "{missing:?}");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_the_socket_removed_at_shutdown() {
    let s = Setup::new();
    std::fs::create_dir_all(s.socket().parent().expect("dir")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(s.socket()).expect("bind"));
    assert!(s.socket().exists(), "a crash leaves the socket file");
    let (handle, _requests) = serve(&s.socket()).expect("replaces the stale socket");
    let meta = std::fs::metadata(s.socket()).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let group = nix::unistd::Group::from_name(SOCKET_GROUP).ok().flatten();
    let expected = group.map_or(nix::unistd::getegid().as_raw(), |g| g.gid.as_raw());
    assert_eq!(meta.gid(), expected, "group gapsync when it exists");
    drop(handle);
    assert!(!s.socket().exists(), "removed at shutdown");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_is_refused() {
    let s = Setup::new();
    let (_first, _requests) = serve(&s.socket()).expect("first");
    let err = serve(&s.socket()).expect_err("second");
    assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
    assert!(
        err.to_string().contains(&s.socket().display().to_string()),
        "{err}"
    );
    assert!(
        s.socket().exists(),
        "the first daemon's socket is left alone"
    );
    std::fs::write(s.dir.path().join("file"), b"x").expect("file");
    let err = serve(&s.dir.path().join("file")).expect_err("not a socket");
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_without_reading_it_all() {
    let s = Setup::new();
    let (_handle, requests) = serve(&s.socket()).expect("serve");
    let _daemon = fake_daemon(requests);
    let socket = s.socket();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = StdStream::connect(&socket).expect("connect");
        let mut writer = stream.try_clone().expect("clone");
        let sender = std::thread::spawn(move || {
            let chunk = [b'x'; 64 << 10];
            let mut sent = 0usize;
            while sent < 64 << 20 && writer.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
            sent
        });
        // The answer, then a reset: the daemon closed with the rest of the request unread.
        let mut answer = String::new();
        std::io::BufReader::new(&mut stream)
            .read_line(&mut answer)
            .expect("answer");
        drop(stream);
        (answer, sender.join().expect("writer"))
    })
    .await
    .expect("client");
    let (answer, sent) = answer;
    let response: Response = serde_json::from_str(answer.trim()).expect("a JSON answer");
    assert_eq!(
        response,
        Response::failed("request longer than 4096 bytes refused")
    );
    assert!(
        sent < 64 << 20,
        "the daemon stopped reading: the writer failed after {sent} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_daemon_drops_is_answered_and_garbage_is_refused() {
    let s = Setup::new();
    let (_handle, mut requests) = serve(&s.socket()).expect("serve");
    tokio::spawn(async move { while requests.recv().await.is_some() {} });
    let out = run_command(&s.config(), Request::Reload, false).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("did not answer"), "{out:?}");
    let socket = s.socket();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = StdStream::connect(&socket).expect("connect");
        stream
            .write_all(b"{\"op\":\"format_disk\"}\n")
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer
    })
    .await
    .expect("client");
    assert!(answer.contains("not a control request"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_timeout() {
    let s = Setup::new();
    let (_handle, _requests) = serve(&s.socket()).expect("serve");
    let socket = s.socket();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = StdStream::connect(&socket).expect("connect");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer
    })
    .await
    .expect("client");
    assert!(answer.contains("no request within 5 s"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_becomes_a_reload_request() {
    let s = Setup::new();
    let (mut handle, requests) = serve(&s.socket()).expect("serve");
    let daemon = fake_daemon(requests);
    handle.reload_on_hangup().expect("SIGHUP");
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
        .expect("kill -HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(handle);
    let seen = daemon.await.expect("daemon");
    assert_eq!(seen, [(Request::Reload, Origin::Hangup)]);
}

#[test]
fn only_root_the_daemons_user_and_its_group_are_allowed() {
    let access = Access {
        own_uid: 998,
        group: 105,
    };
    let nobody = |_, _| false;
    assert!(allowed(0, 0, access, nobody), "root");
    assert!(allowed(998, 998, access, nobody), "the daemon's user");
    assert!(allowed(1000, 105, access, nobody), "primary group gapsync");
    assert!(
        allowed(1000, 1000, access, |uid, gid| (uid, gid) == (1000, 105)),
        "member"
    );
    assert!(!allowed(1000, 1000, access, nobody), "anyone else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_config_that_does_not_parse_says_the_daemon_keeps_its_config() {
    let t = Setup::new();
    std::fs::write(t.config(), "node = \"x\nthis is = = not toml\n").expect("write");
    let out = run_command(&t.config(), Request::Reload, false).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("TOML parse error"), "{out:?}");
    assert!(
        out.stderr
            .contains("reload refused: nothing was sent to gapsync-sender; if it runs, it keeps its running config"),
        "{out:?}"
    );
    let pipes = run_command(&t.config(), Request::Pipes, false).await;
    assert!(!pipes.stderr.contains("reload refused"), "{pipes:?}");
}
