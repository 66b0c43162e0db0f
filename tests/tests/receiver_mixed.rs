//! One receiver, pipes of different links and sink forms at once: a tcp pipe (through the
//! gate's TCP) and a udp pipe (a diode's datagrams) served by one process on one port number,
//! each file landing byte-identical exactly once in its own pipe's folder; a sender naming a
//! pipe over the wrong link is refused with a clear line; and a pipe written in the old form
//! (`dest = ...`) lands exactly what the new form (`sink = { type = "directory", ... }`) does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gapsync_tests::{Proc, bin, count_lines, make_file, profiles_dir, read_logs, tree, wait_until};

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// `n` files of mixed sizes (an empty one, one over a frame, small ones in folders).
fn files(spool: &Path, n: usize, seed: u64) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| {
            let size = match i {
                0 => 0,
                1 => 3 << 20,
                _ => (i * 7919) % 50_000,
            };
            let rel = format!("d{}/f-{i}.bin", i % 3);
            let digest = make_file(&spool.join(&rel), size, seed + i as u64);
            (rel, digest)
        })
        .collect()
}

/// Starts the receiver with `pipes` (TOML `[[pipe]]` tables) and returns it and its address
/// (from its `listening` line).
fn start_receiver(root: &Path, pipes: &str) -> (Proc, SocketAddr) {
    let cfg = root.join("receiver.toml");
    let text = format!(
        "node = \"outside-1\"\nprofile = \"loopback\"\nprofiles_dir = {}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\ncontrol_socket = \"receiver.sock\"\nstate_dir = {}\nlog_dir = {}\n{pipes}",
        q(&profiles_dir()),
        q(&root.join("rstate")),
        q(&root.join("rlogs")),
    );
    std::fs::write(&cfg, text).expect("receiver.toml");
    let args = [
        "run".to_owned(),
        "--config".to_owned(),
        cfg.display().to_string(),
    ];
    let mut proc = Proc::spawn("receiver", &bin("gapsync-receiver"), &args, root);
    let mut addr = None;
    wait_until(
        "the receiver's listening line",
        Duration::from_secs(20),
        || {
            assert!(proc.alive(), "receiver exited: {}", proc.stderr_text());
            addr = read_logs(&root.join("rlogs"))
                .split(" listening ")
                .nth(1)
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            addr.is_some()
        },
    );
    (proc, addr.expect("address"))
}

/// Starts a sender `node` with one profile and `pipes` (name, spool), sending to `gate`.
fn start_sender(
    root: &Path,
    tag: &str,
    profile: &str,
    gate: SocketAddr,
    pipes: &[(&str, &Path)],
) -> Proc {
    let mut text = format!(
        "node = \"plant-a\"\nprofile = {profile:?}\nprofiles_dir = {}\nstate_dir = {}\ncontrol_socket = {}\nlog_dir = {}\n",
        q(&profiles_dir()),
        q(&root.join(format!("sstate-{tag}"))),
        q(&root.join(format!("sstate-{tag}")).join("control.sock")),
        q(&root.join(format!("slogs-{tag}"))),
    );
    if profile != "udp-loopback" {
        text.push_str("[profile_overrides]\nreconnect_backoff_min = \"50ms\"\nreconnect_backoff_max = \"500ms\"\n");
    }
    for (name, spool) in pipes {
        text.push_str(&format!(
            "[[pipe]]\nname = {name:?}\nspool = {}\ngate = \"{gate}\"\nsettle = \"200ms\"\npoll_interval = \"200ms\"\n",
            q(spool)
        ));
    }
    let cfg = root.join(format!("sender-{tag}.toml"));
    std::fs::write(&cfg, text).expect("sender.toml");
    let args = [
        "run".to_owned(),
        "--config".to_owned(),
        cfg.display().to_string(),
    ];
    Proc::spawn(
        &format!("sender-{tag}"),
        &bin("gapsync-sender"),
        &args,
        root,
    )
}

fn folders(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let d = root.join(n);
            std::fs::create_dir_all(&d).expect("folder");
            d
        })
        .collect()
}

/// Waits until `dest` holds exactly `expected`, with the logs in the message on a timeout.
fn wait_for(dest: &Path, expected: &BTreeMap<String, String>, root: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while tree(dest) != *expected {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never held the expected files\nreceiver log:\n{}",
            dest.display(),
            read_logs(&root.join("rlogs"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_receiver_lands_a_tcp_pipe_and_a_udp_pipe_at_once_each_file_once() {
    let root = tempfile::tempdir().expect("tmp");
    let r = root.path();
    let [spool_t, spool_u, dest_t, dest_u, spool_wrong] = <[PathBuf; 5]>::try_from(folders(
        r,
        &["spool-t", "spool-u", "in-t", "in-u", "spool-w"],
    ))
    .expect("five folders");
    let (mut receiver, addr) = start_receiver(
        r,
        &format!(
            "[[pipe]]\nname = \"scada\"\nfrom = \"plant-a\"\nsink = {{ type = \"directory\", path = {} }}\n\
             [[pipe]]\nname = \"meters\"\nfrom = \"plant-a\"\nprofile = \"udp-loopback\"\nsink = {{ type = \"directory\", path = {} }}\n",
            q(&dest_t),
            q(&dest_u)
        ),
    );
    let want_t = files(&spool_t, 60, 1);
    let want_u = files(&spool_u, 60, 1000);
    let _tcp = start_sender(r, "t", "loopback", addr, &[("scada", &spool_t)]);
    let _udp = start_sender(r, "u", "udp-loopback", addr, &[("meters", &spool_u)]);
    wait_for(&dest_t, &want_t, r);
    wait_for(&dest_u, &want_u, r);
    // A sender naming the udp pipe over TCP is refused, with the reason.
    make_file(&spool_wrong.join("never.bin"), 10, 9);
    let _wrong = start_sender(r, "w", "loopback", addr, &[("meters", &spool_wrong)]);
    let log_dir = r.join("rlogs");
    wait_until("the wrong-link refusal", Duration::from_secs(30), || {
        read_logs(&log_dir).contains("is a udp pipe on this receiver")
    });
    // Give late duplicates (the diode's repeated passes) time to show.
    std::thread::sleep(Duration::from_secs(2));
    receiver.term();
    let log = read_logs(&log_dir);
    let listening: Vec<&str> = log.lines().filter(|l| l.contains(" listening ")).collect();
    assert_eq!(
        listening.len(),
        2,
        "a TCP listener and a UDP socket:\n{log}"
    );
    assert!(
        listening.iter().any(|l| l.contains("link=\"udp\"")),
        "{log}"
    );
    assert!(
        listening.iter().any(|l| l.contains("link=\"tcp\"")),
        "{log}"
    );
    for (pipe, want) in [("pipe=scada", &want_t), ("pipe=meters", &want_u)] {
        assert_eq!(
            count_lines(&log, &[" delivered ", pipe]),
            want.len(),
            "each file of {pipe} delivered exactly once\n{log}"
        );
    }
    assert_eq!(tree(&dest_t), want_t, "tcp pipe, byte-identical");
    assert_eq!(tree(&dest_u), want_u, "udp pipe, byte-identical");
    assert!(!dest_u.join("never.bin").exists());
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && !l.contains("is a udp pipe on this receiver"))
        .collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
}

#[test]
fn a_pipe_in_the_old_form_lands_what_the_new_form_lands() {
    let root = tempfile::tempdir().expect("tmp");
    let r = root.path();
    let [spool_old, spool_new, dest_old, dest_new] =
        <[PathBuf; 4]>::try_from(folders(r, &["spool-o", "spool-n", "in-old", "in-new"]))
            .expect("four folders");
    let (mut receiver, addr) = start_receiver(
        r,
        &format!(
            "[[pipe]]\nname = \"old\"\nfrom = \"plant-a\"\ndest = {}\n\
             [[pipe]]\nname = \"new\"\nfrom = \"plant-a\"\nsink = {{ type = \"directory\", path = {} }}\n",
            q(&dest_old),
            q(&dest_new)
        ),
    );
    // The same files on both pipes.
    let want = files(&spool_old, 40, 77);
    assert_eq!(files(&spool_new, 40, 77), want);
    let _sender = start_sender(
        r,
        "s",
        "loopback",
        addr,
        &[("old", &spool_old), ("new", &spool_new)],
    );
    wait_for(&dest_old, &want, r);
    wait_for(&dest_new, &want, r);
    receiver.term();
    let log = read_logs(&r.join("rlogs"));
    for pipe in ["pipe=old", "pipe=new"] {
        assert_eq!(
            count_lines(&log, &[" delivered ", pipe]),
            want.len(),
            "{log}"
        );
    }
    // Both keep their records in the same places: the staging journal in the default staging
    // folder inside dest, the done log in the pipe's state folder.
    for (dest, name) in [(&dest_old, "old"), (&dest_new, "new")] {
        let staging = dest.join(".gapsync-staging/plant-a").join(name);
        assert!(staging.join("opens.log").is_file(), "{}", staging.display());
        assert!(!staging.join("done.log").exists());
        let state = r.join("rstate/receiver/plant-a").join(name);
        assert!(state.join("done.log").is_file(), "{}", state.display());
    }
    assert_eq!(count_lines(&log, &["ERROR"]), 0, "{log}");
}
