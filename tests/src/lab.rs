//! The [`Lab`]: a temporary folder with a spool, a destination, state and log folders, and the
//! three processes (receiver, gate simulator, sender) around one pipe.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{
    Proc, STAGING_DIR, bin, count_files, profile, profile_is_udp, profiles_dir, read_logs, tree,
    wait_until,
};

/// `exe args` run under `wrapper` (its program, its arguments, then `exe` and `args`).
fn wrapped(wrapper: &[String], exe: PathBuf, args: Vec<String>) -> (PathBuf, Vec<String>) {
    match wrapper.split_first() {
        Some((first, rest)) => {
            let all = rest
                .iter()
                .cloned()
                .chain([exe.display().to_string()])
                .chain(args)
                .collect();
            (PathBuf::from(first), all)
        }
        None => (exe, args),
    }
}

/// Sender, gate simulator and receiver around one pipe `scada` from `plant-a`.
#[derive(Debug)]
pub struct Lab {
    pub root: tempfile::TempDir,
    pub spool: PathBuf,
    pub dest: PathBuf,
    pub profile: String,
    /// Extra top-level TOML for the receiver config (e.g. `[profile_overrides]`).
    pub receiver_extra: String,
    /// Extra top-level TOML for the sender config.
    pub sender_extra: String,
    /// Extra keys inside the sender's `[[pipe]]`.
    pub sender_pipe_extra: String,
    /// Extra keys inside the receiver's `[[pipe]]`.
    pub receiver_pipe_extra: String,
    pub allow: String,
    pub sender_pipe_name: String,
    /// A command the sender is started under (e.g. `setpriv` to drop privileges); empty: none.
    pub sender_wrapper: Vec<String>,
    /// A command the receiver is started under (e.g. `unshare -m ...`); empty: none.
    pub receiver_wrapper: Vec<String>,
    /// The sender pipe's `settle` and `poll_interval`.
    pub settle: String,
    pub poll_interval: String,
    pub receiver: Option<Proc>,
    pub receiver_addr: Option<SocketAddr>,
    pub sim: Option<Proc>,
    pub sim_addr: Option<SocketAddr>,
    pub sender: Option<Proc>,
}

impl Lab {
    pub fn new(profile: &str) -> Lab {
        let root = tempfile::Builder::new()
            .prefix("gapsync-lab-")
            .tempdir()
            .expect("tempdir");
        let spool = root.path().join("spool");
        let dest = root.path().join("dest");
        std::fs::create_dir_all(&spool).expect("spool");
        std::fs::create_dir_all(&dest).expect("dest");
        Lab {
            spool,
            dest,
            profile: profile.to_owned(),
            receiver_extra: String::new(),
            // Quick reconnects keep fault tests short; the receiver does not compare these.
            sender_extra: if profile_is_udp(profile) {
                String::new()
            } else {
                "[profile_overrides]\nreconnect_backoff_min = \"50ms\"\nreconnect_backoff_max = \"500ms\"\n".into()
            },
            sender_pipe_extra: String::new(),
            receiver_pipe_extra: String::new(),
            allow: "[\"127.0.0.0/8\"]".into(),
            sender_pipe_name: "scada".into(),
            sender_wrapper: Vec::new(),
            receiver_wrapper: Vec::new(),
            settle: "200ms".into(),
            poll_interval: "200ms".into(),
            root,
            receiver: None,
            receiver_addr: None,
            sim: None,
            sim_addr: None,
            sender: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// The receiver pipe's staging folder (the default, inside dest).
    pub fn staging(&self) -> PathBuf {
        self.dest.join(STAGING_DIR).join("plant-a").join("scada")
    }

    fn q(p: &Path) -> String {
        format!("{:?}", p.display().to_string())
    }

    /// Writes receiver.toml (listening on the port of the previous start, or a free one), and
    /// creates the landing folder as an operator must (the receiver does not).
    pub fn receiver_config(&self) -> PathBuf {
        std::fs::create_dir_all(&self.dest).expect("dest");
        let listen = self
            .receiver_addr
            .map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut t = String::new();
        let _ = write!(
            t,
            "node = \"outside-1\"\nprofile = {:?}\nprofiles_dir = {}\nlisten = {listen:?}\nallow = {}\nstate_dir = {}\ncontrol_socket = {}\nlog_dir = {}\n{}\n[[pipe]]\nname = \"scada\"\nfrom = \"plant-a\"\ndest = {}\n{}\n",
            self.profile,
            Self::q(&profiles_dir()),
            self.allow,
            Self::q(&self.path("rstate")),
            Self::q(&self.path("rstate").join("control.sock")),
            Self::q(&self.path("rlogs")),
            self.receiver_extra,
            Self::q(&self.dest),
            self.receiver_pipe_extra,
        );
        let p = self.path("receiver.toml");
        std::fs::write(&p, t).expect("write receiver.toml");
        p
    }

    /// Writes sender.toml pointing at the simulator, or straight at the receiver, and creates
    /// the spool as an operator must (the sender does not).
    pub fn sender_config(&self) -> PathBuf {
        std::fs::create_dir_all(&self.spool).expect("spool");
        let gate = self
            .sim_addr
            .or(self.receiver_addr)
            .expect("start the receiver first");
        let mut t = String::new();
        let _ = write!(
            t,
            "node = \"plant-a\"\nprofile = {:?}\nprofiles_dir = {}\nstate_dir = {}\ncontrol_socket = {}\nlog_dir = {}\n{}\n[[pipe]]\nname = {:?}\nspool = {}\ngate = \"{gate}\"\nsettle = {:?}\npoll_interval = {:?}\n{}\n",
            self.profile,
            Self::q(&profiles_dir()),
            Self::q(&self.path("sstate")),
            Self::q(&self.path("sstate").join("control.sock")),
            Self::q(&self.path("slogs")),
            self.sender_extra,
            self.sender_pipe_name,
            Self::q(&self.spool),
            self.settle,
            self.poll_interval,
            self.sender_pipe_extra,
        );
        let p = self.path("sender.toml");
        std::fs::write(&p, t).expect("write sender.toml");
        p
    }

    /// Starts the receiver and waits for its `listening` line.
    pub fn start_receiver(&mut self) {
        let cfg = self.receiver_config();
        let before = self.receiver_log().matches(" listening ").count();
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            cfg.display().to_string(),
        ];
        let (exe, args) = wrapped(&self.receiver_wrapper, bin("gapsync-receiver"), args);
        self.receiver = Some(Proc::spawn("receiver", &exe, &args, self.root.path()));
        let mut addr = None;
        wait_until(
            "the receiver's listening line",
            Duration::from_secs(20),
            || {
                let log = self.receiver_log();
                if let Some(a) = crate::listening_addr(&log, before) {
                    addr = Some(a);
                }
                if let Some(r) = self.receiver.as_mut() {
                    assert!(
                        r.alive() || addr.is_some(),
                        "receiver exited: {}",
                        r.stderr_text()
                    );
                }
                addr.is_some()
            },
        );
        self.receiver_addr = addr;
    }

    /// Starts the gate simulator in front of the receiver, with extra fault arguments.
    pub fn start_sim(&mut self, extra: &[String]) {
        let forward = self.receiver_addr.expect("start the receiver first");
        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--forward".to_owned(),
            forward.to_string(),
            "--stats-file".to_owned(),
            self.path("sim.stats").display().to_string(),
        ];
        // A diode profile needs the simulator's UDP mode.
        if profile_is_udp(&self.profile) {
            args.push("--udp".to_owned());
        }
        // The simulator counts frames in the profile's envelope.
        if profile(&self.profile).envelope == gapsync_protocol::Envelope::ELanguage
            && !extra.iter().any(|a| a == "--envelope")
        {
            args.extend(["--envelope".to_owned(), "e-language".to_owned()]);
        }
        args.extend_from_slice(extra);
        let sim = Proc::spawn(
            "gate-sim",
            &bin("gapsync-gate-sim"),
            &args,
            self.root.path(),
        );
        let mut addr = None;
        wait_until(
            "the gate simulator's listening line",
            Duration::from_secs(10),
            || {
                addr = sim
                    .stderr_text()
                    .split("listening on ")
                    .nth(1)
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
                addr.is_some()
            },
        );
        self.sim = Some(sim);
        self.sim_addr = addr;
    }

    /// Starts (or restarts) the sender.
    pub fn start_sender(&mut self) {
        let cfg = self.sender_config();
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            cfg.display().to_string(),
        ];
        let (exe, args) = wrapped(&self.sender_wrapper, bin("gapsync-sender"), args);
        self.sender = Some(Proc::spawn("sender", &exe, &args, self.root.path()));
    }

    pub fn receiver_log(&self) -> String {
        read_logs(&self.path("rlogs"))
    }

    pub fn sender_log(&self) -> String {
        read_logs(&self.path("slogs"))
    }

    /// The simulator's counters.
    pub fn sim_stats(&self) -> HashMap<String, u64> {
        std::fs::read_to_string(self.path("sim.stats"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            })
            .collect()
    }

    /// Both logs and the simulator's output, for failure messages.
    pub fn diagnostics(&self) -> String {
        let tail = |s: String| {
            s.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        // What a daemon printed before its log opened (or when it could not start).
        let stderr = |p: &Option<Proc>| {
            p.as_ref()
                .map(|p| tail(p.stderr_text()))
                .unwrap_or_default()
        };
        format!(
            "--- receiver log ---\n{}\n--- sender log ---\n{}\n--- gate sim ---\n{}\n--- receiver stderr ---\n{}\n--- sender stderr ---\n{}",
            tail(self.receiver_log()),
            tail(self.sender_log()),
            stderr(&self.sim),
            stderr(&self.receiver),
            stderr(&self.sender),
        )
    }

    /// Waits until the destination holds `expected` exactly (same names, same contents).
    pub fn wait_for_tree(&self, expected: &BTreeMap<String, String>, timeout: Duration) {
        let sizes_needed = expected.len();
        let start = Instant::now();
        loop {
            if count_files(&self.dest) >= sizes_needed {
                let got = tree(&self.dest);
                if &got == expected {
                    return;
                }
            }
            if start.elapsed() > timeout {
                let got = tree(&self.dest);
                let missing: Vec<_> = expected
                    .keys()
                    .filter(|k| !got.contains_key(*k))
                    .take(10)
                    .collect();
                let wrong: Vec<_> = got
                    .iter()
                    .filter(|(k, v)| expected.get(*k).is_some_and(|e| e != *v))
                    .take(10)
                    .collect();
                let extra: Vec<_> = got
                    .keys()
                    .filter(|k| !expected.contains_key(*k))
                    .take(10)
                    .collect();
                panic!(
                    "destination incomplete after {timeout:?}: {} of {} files; missing {missing:?}, wrong {wrong:?}, extra {extra:?}\n{}",
                    got.len(),
                    expected.len(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
