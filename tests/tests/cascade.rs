//! Two-way pipes and cascades without loops (issue 19, section 5), on real processes over
//! loopback, each node a sender and a receiver of its own with its own node name.
//!
//! - Crossing: node `a`'s folder X is sent to node `b`'s folder Y (pipe `ab`), and Y is sent
//!   back to X (pipe `ba`): each folder is one pipe's spool and the other's landing folder.
//!   With the default `forward_received = false` a file written in X lands in Y once and
//!   stays there (and the original moves to X's sent_dir); nothing goes back. The same on the
//!   diode (udp) link, where the chain follows the Announce.
//! - A forced cycle (`forward_received = true` on both): the copies that come back are
//!   refused by the loop rule with FAIL and an ERROR, and their senders quarantine them:
//!   every file still exists, once delivered, none landed twice.
//! - Cascade: `a` -> `b` -> `c`, `b`'s spool being its landing folder; the file lands in C
//!   with the origin chain `a/p1,b/p2` in its extended attribute `user.gapsync.origin`.
//! - `forward_received = false` on `b`: what landed from `a` stays in `b`'s folder, unsent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gapsync_tests::{Proc, bin, count_lines, make_file, profiles_dir, read_logs, tree, wait_until};

const XATTR: &str = "user.gapsync.origin";

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// One host: a receiver and a sender named `node`, their state and logs under `root/node`.
struct Node {
    name: String,
    /// The hardware profile of both daemons (`loopback`: tcp; `udp-loopback`: the diode).
    profile: &'static str,
    dir: PathBuf,
    receiver: Option<Proc>,
    sender: Option<Proc>,
    addr: Option<SocketAddr>,
}

impl Node {
    fn new(root: &Path, name: &str) -> Node {
        Self::with_profile(root, name, "loopback")
    }

    fn with_profile(root: &Path, name: &str, profile: &'static str) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("node folder");
        Node {
            name: name.to_owned(),
            profile,
            dir,
            receiver: None,
            sender: None,
            addr: None,
        }
    }

    fn receiver_log(&self) -> String {
        read_logs(&self.dir.join("rlogs"))
    }

    fn sender_log(&self) -> String {
        read_logs(&self.dir.join("slogs"))
    }

    /// Starts the receiver with `pipes` (`(name, from, dest)`) and waits for its address.
    fn start_receiver(&mut self, pipes: &[(&str, &str, &Path)]) {
        let mut t = format!(
            "node = {:?}\nprofile = {:?}\nprofiles_dir = {}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\nstate_dir = {}\ncontrol_socket = {}\nlog_dir = {}\nsummary_interval = \"1s\"\n",
            self.name,
            self.profile,
            q(&profiles_dir()),
            q(&self.dir.join("rstate")),
            q(&self.dir.join("rstate/control.sock")),
            q(&self.dir.join("rlogs")),
        );
        for (name, from, dest) in pipes {
            std::fs::create_dir_all(dest).expect("dest");
            t += &format!(
                "\n[[pipe]]\nname = {name:?}\nfrom = {from:?}\ndest = {}\n",
                q(dest)
            );
        }
        let cfg = self.dir.join("receiver.toml");
        std::fs::write(&cfg, t).expect("receiver.toml");
        let args = ["run", "--config", &cfg.display().to_string()].map(str::to_owned);
        let proc = Proc::spawn("receiver", &bin("gapsync-receiver"), &args, &self.dir);
        let mut addr = None;
        wait_until(
            "the receiver's listening line",
            Duration::from_secs(20),
            || {
                addr = self
                    .receiver_log()
                    .split(" listening ")
                    .nth(1)
                    .and_then(|l| l.split("addr=").nth(1))
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
                addr.is_some()
            },
        );
        self.receiver = Some(proc);
        self.addr = addr;
    }

    /// Starts the sender with one pipe `name` from `spool` to `gate`; sent files move to
    /// `<spool>-sent`.
    fn start_sender(&mut self, name: &str, spool: &Path, gate: SocketAddr, extra: &str) {
        std::fs::create_dir_all(spool).expect("spool");
        let sent = PathBuf::from(format!("{}-sent", spool.display()));
        let t = format!(
            "node = {:?}\nprofile = {:?}\nprofiles_dir = {}\nstate_dir = {}\ncontrol_socket = {}\nlog_dir = {}\nsummary_interval = \"1s\"\n{}\n\
             [[pipe]]\nname = {name:?}\nspool = {}\ngate = \"{gate}\"\nsettle = \"200ms\"\npoll_interval = \"200ms\"\n\
             after_send = \"move\"\nsent_dir = {}\n{extra}\n",
            self.name,
            self.profile,
            q(&profiles_dir()),
            q(&self.dir.join("sstate")),
            q(&self.dir.join("sstate/control.sock")),
            q(&self.dir.join("slogs")),
            if self.profile == "loopback" {
                "[profile_overrides]\nreconnect_backoff_min = \"50ms\"\nreconnect_backoff_max = \"500ms\"\n"
            } else {
                ""
            },
            q(spool),
            q(&sent),
        );
        let cfg = self.dir.join("sender.toml");
        std::fs::write(&cfg, t).expect("sender.toml");
        let args = ["run", "--config", &cfg.display().to_string()].map(str::to_owned);
        self.sender = Some(Proc::spawn(
            "sender",
            &bin("gapsync-sender"),
            &args,
            &self.dir,
        ));
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- {} receiver:\n{}\n--- {} sender:\n{}",
            self.name,
            self.receiver_log(),
            self.name,
            self.sender_log()
        )
    }
}

/// The origin chain recorded on a landed file (None: no attribute).
fn origin_of(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).expect("open landed file");
    let mut buf = vec![0u8; 4096];
    match rustix::fs::fgetxattr(&f, XATTR, &mut buf[..]) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("cannot read {XATTR} of {}: {e}", path.display()),
    }
}

/// `n` files under `folder`, named with `tag`, as relative path -> digest.
fn files(folder: &Path, tag: &str, n: usize, seed: u64) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| {
            let rel = format!("{tag}/f-{i}.bin");
            let size = [0, 17, 4096, 70_000, 300_000][i % 5];
            (
                rel.clone(),
                make_file(&folder.join(&rel), size, seed + i as u64),
            )
        })
        .collect()
}

fn sent_dir(spool: &Path) -> PathBuf {
    PathBuf::from(format!("{}-sent", spool.display()))
}

#[test]
fn two_pipes_crossing_between_two_folders_deliver_each_file_once_and_never_ping_pong() {
    crossing("loopback", "batch: sent ", ": delivered ");
}

#[test]
fn two_diode_pipes_crossing_between_two_folders_never_ping_pong() {
    crossing("udp-loopback", "udp: sent ", "worker: delivered ");
}

/// Two pipes of `profile` crossing between X and Y; `sent` and `delivered` find the
/// senders' and receivers' lines for one object.
fn crossing(profile: &'static str, sent: &str, delivered: &str) {
    let root = tempfile::Builder::new()
        .prefix("gapsync-cascade-")
        .tempdir()
        .expect("tempdir");
    let (x, y) = (root.path().join("x"), root.path().join("y"));
    let mut a = Node::with_profile(root.path(), "a", profile);
    let mut b = Node::with_profile(root.path(), "b", profile);
    // a lands what b's pipe `ba` sends in X; b lands what a's pipe `ab` sends in Y.
    a.start_receiver(&[("ba", "b", &x)]);
    b.start_receiver(&[("ab", "a", &y)]);
    let from_a = files(&x, "from-a", 10, 1);
    let from_b = files(&y, "from-b", 10, 100);
    a.start_sender("ab", &x, b.addr.expect("b listens"), "");
    b.start_sender("ba", &y, a.addr.expect("a listens"), "");
    let diag = || format!("{}\n{}", a.diagnostics(), b.diagnostics());
    // Each side's files end in the other side's folder, and the originals in their sent_dir.
    wait_until(
        "each folder to hold the other side's files",
        Duration::from_secs(90),
        || {
            tree(&x) == from_b
                && tree(&y) == from_a
                && tree(&sent_dir(&x)) == from_a
                && tree(&sent_dir(&y)) == from_b
        },
    );
    // Long enough for a ping-pong to show: several settle and poll intervals and round trips.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        tree(&x) == from_b && tree(&y) == from_a,
        "the folders changed after the crossing:\n{}",
        diag()
    );
    let (ra, rb) = (a.receiver_log(), b.receiver_log());
    let (sa, sb) = (a.sender_log(), b.sender_log());
    // Each file crossed once, and was sent once: nothing went back.
    assert_eq!(
        count_lines(&rb, &[delivered, "pipe=ab"]),
        from_a.len(),
        "{}",
        diag()
    );
    assert_eq!(
        count_lines(&ra, &[delivered, "pipe=ba"]),
        from_b.len(),
        "{}",
        diag()
    );
    assert_eq!(
        count_lines(&sa, &[sent, "pipe=ab"]),
        from_a.len(),
        "{}",
        diag()
    );
    assert_eq!(
        count_lines(&sb, &[sent, "pipe=ba"]),
        from_b.len(),
        "{}",
        diag()
    );
    // The copies that arrived were left in place on purpose, and said so.
    for log in [&sa, &sb] {
        assert!(
            log.contains("forwarded_skipped=10"),
            "the summary counts what stayed: {}",
            diag()
        );
    }
    for (node, log) in [("a", &ra), ("b", &rb)] {
        assert!(
            !log.contains(" ERROR "),
            "node {node}'s receiver logged an ERROR:\n{log}"
        );
    }
}

#[test]
fn a_forced_cycle_is_refused_as_a_loop_and_loses_no_file() {
    let root = tempfile::Builder::new()
        .prefix("gapsync-cascade-")
        .tempdir()
        .expect("tempdir");
    let (x, y) = (root.path().join("x"), root.path().join("y"));
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    a.start_receiver(&[("ba", "b", &x)]);
    b.start_receiver(&[("ab", "a", &y)]);
    let from_a = files(&x, "from-a", 6, 1);
    let from_b = files(&y, "from-b", 6, 100);
    let cycle = "forward_received = true\nmax_attempts = 2";
    a.start_sender("ab", &x, b.addr.expect("b listens"), cycle);
    b.start_sender("ba", &y, a.addr.expect("a listens"), cycle);
    let diag = || format!("{}\n{}", a.diagnostics(), b.diagnostics());
    let quarantine =
        |n: &Node, pipe: &str| n.dir.join("sstate/sender").join(pipe).join("quarantine");
    // Every file still exists: the original in its sender's sent_dir, the copy that came
    // back in the other sender's quarantine.
    wait_until(
        "the originals sent and the returning copies quarantined",
        Duration::from_secs(120),
        || {
            tree(&sent_dir(&x)) == from_a
                && tree(&sent_dir(&y)) == from_b
                && tree(&quarantine(&b, "ba")) == from_a
                && tree(&quarantine(&a, "ab")) == from_b
        },
    );
    let (ra, rb) = (a.receiver_log(), b.receiver_log());
    // Each file was delivered once, on the side it was not written on.
    assert_eq!(
        count_lines(&rb, &[": delivered ", "pipe=ab"]),
        from_a.len(),
        "{}",
        diag()
    );
    assert_eq!(
        count_lines(&ra, &[": delivered ", "pipe=ba"]),
        from_b.len(),
        "{}",
        diag()
    );
    // The returning copies were refused as loops, at ERROR, naming the fix.
    for log in [&ra, &rb] {
        assert!(
            count_lines(
                log,
                &[
                    " ERROR ",
                    "came from this node before",
                    "forward_received = false"
                ]
            ) >= 1,
            "{}",
            diag()
        );
    }
    // Each returning copy is counted once as looped (the summary comes every second).
    let counted = || a.receiver_log().contains("looped=6") && b.receiver_log().contains("looped=6");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !counted() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        counted(),
        "each returning copy counted once as looped:\n{}",
        diag()
    );
    assert!(tree(&x).is_empty() && tree(&y).is_empty(), "{}", diag());
}

#[test]
fn a_three_node_cascade_lands_with_the_whole_origin_chain() {
    let root = tempfile::Builder::new()
        .prefix("gapsync-cascade-")
        .tempdir()
        .expect("tempdir");
    let (spool_a, land_b, land_c) = (
        root.path().join("a-out"),
        root.path().join("b-in"),
        root.path().join("c-in"),
    );
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    let mut c = Node::new(root.path(), "c");
    b.start_receiver(&[("p1", "a", &land_b)]);
    c.start_receiver(&[("p2", "b", &land_c)]);
    let sent = files(&spool_a, "batch", 5, 7);
    a.start_sender("p1", &spool_a, b.addr.expect("b listens"), "");
    b.start_sender(
        "p2",
        &land_b,
        c.addr.expect("c listens"),
        "forward_received = true",
    );
    let diag = || {
        format!(
            "{}\n{}\n{}",
            a.diagnostics(),
            b.diagnostics(),
            c.diagnostics()
        )
    };
    wait_until("every file in C", Duration::from_secs(60), || {
        tree(&land_c) == sent
    });
    for rel in sent.keys() {
        assert_eq!(
            origin_of(&land_c.join(rel)).as_deref(),
            Some("a/p1,b/p2"),
            "{rel}\n{}",
            diag()
        );
    }
    // b's copies went on (moved to its sent_dir) with the chain b recorded: a/p1.
    wait_until(
        "b's sent_dir holds every file",
        Duration::from_secs(30),
        || tree(&sent_dir(&land_b)) == sent,
    );
    for rel in sent.keys() {
        assert_eq!(
            origin_of(&sent_dir(&land_b).join(rel)).as_deref(),
            Some("a/p1")
        );
    }
    // b's forwarding pipe reconnected as version 2 to carry the chains, once.
    let sb = b.sender_log();
    assert!(
        count_lines(&sb, &["reconnecting with protocol version 2"]) >= 1,
        "{}",
        diag()
    );
    assert_eq!(
        count_lines(&c.receiver_log(), &[" delivered ", "pipe=p2"]),
        sent.len()
    );
}

#[test]
fn forward_received_false_leaves_what_arrived_through_gapsync_in_place() {
    let root = tempfile::Builder::new()
        .prefix("gapsync-cascade-")
        .tempdir()
        .expect("tempdir");
    let (spool_a, land_b, land_c) = (
        root.path().join("a-out"),
        root.path().join("b-in"),
        root.path().join("c-in"),
    );
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    let mut c = Node::new(root.path(), "c");
    b.start_receiver(&[("p1", "a", &land_b)]);
    c.start_receiver(&[("p2", "b", &land_c)]);
    let forwarded = files(&spool_a, "relayed", 4, 50);
    a.start_sender("p1", &spool_a, b.addr.expect("b listens"), "");
    b.start_sender(
        "p2",
        &land_b,
        c.addr.expect("c listens"),
        "forward_received = false",
    );
    // A file written on b itself still goes.
    let own = files(&land_b, "local", 2, 90);
    let diag = || {
        format!(
            "{}\n{}\n{}",
            a.diagnostics(),
            b.diagnostics(),
            c.diagnostics()
        )
    };
    wait_until("b's own files in C", Duration::from_secs(60), || {
        tree(&land_c) == own
    });
    wait_until("a's files in b", Duration::from_secs(60), || {
        tree(&land_b) == forwarded
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        tree(&land_c),
        own,
        "nothing that arrived through gapsync went on\n{}",
        diag()
    );
    assert_eq!(
        tree(&land_b),
        forwarded,
        "it stays where it landed\n{}",
        diag()
    );
    let sb = b.sender_log();
    assert_eq!(
        count_lines(
            &sb,
            &["arrived through gapsync and forward_received = false"]
        ),
        forwarded.len(),
        "one INFO per object\n{sb}"
    );
    assert!(
        sb.contains(&format!("forwarded_skipped={}", forwarded.len())),
        "the summary counts them\n{sb}"
    );
}
