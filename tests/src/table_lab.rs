//! The [`TableLab`]: two PostgreSQL clusters (source database `plant`, target database
//! `mirror`), and a receiver with a postgres sink, the gate simulator and a sender with a
//! postgres source around one pipe `plant-db` from `plant-a`, as real processes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{PgCluster, Proc, bin, profile, profiles_dir, read_logs, wait_until};

/// The source database.
pub const SOURCE_DB: &str = "plant";
/// The target database.
pub const TARGET_DB: &str = "mirror";
/// The pipe's name on both sides.
pub const PIPE: &str = "plant-db";

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Source and target clusters and the three processes of one table pipe.
#[derive(Debug)]
pub struct TableLab {
    pub root: tempfile::TempDir,
    pub source: PgCluster,
    pub target: PgCluster,
    pub profile: String,
    /// The `[[pipe.source.table]]` tables of the sender config (TOML).
    pub tables: String,
    /// Extra keys of `[pipe.source]` (e.g. `poll_interval = "200ms"`).
    pub source_extra: String,
    /// Extra keys of the receiver's postgres `[pipe.sink]`.
    pub sink_extra: String,
    /// A whole `[pipe.sink]` table instead of the postgres sink (e.g. a directory sink).
    pub sink_toml: Option<String>,
    /// Fault arguments of the gate simulator (each start; e.g. `--drop-ack N`).
    pub sim_extra: Vec<String>,
    pub receiver: Option<Proc>,
    pub receiver_addr: Option<SocketAddr>,
    pub sim: Option<Proc>,
    pub sim_addr: Option<SocketAddr>,
    pub sender: Option<Proc>,
}

impl TableLab {
    /// Both clusters started, the databases created; no process yet.
    pub fn new(profile: &str) -> TableLab {
        let root = tempfile::Builder::new()
            .prefix("gapsync-tables-")
            .tempdir()
            .expect("tempdir");
        let source = PgCluster::start("source");
        let target = PgCluster::start("target");
        source.createdb(SOURCE_DB);
        target.createdb(TARGET_DB);
        TableLab {
            root,
            source,
            target,
            profile: profile.to_owned(),
            tables: String::new(),
            source_extra: "poll_interval = \"200ms\"\n".into(),
            sink_extra: String::new(),
            sink_toml: None,
            sim_extra: Vec::new(),
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

    /// SQL on the source database.
    pub fn src(&self, sql: &str) -> String {
        self.source.psql(SOURCE_DB, sql)
    }

    /// SQL on the target database.
    pub fn dst(&self, sql: &str) -> String {
        self.target.psql(TARGET_DB, sql)
    }

    /// The `[pipe.sink]` of the receiver: `sink_toml`, or postgres into the target database
    /// with `sink_extra`.
    pub fn sink_block(&self) -> String {
        self.sink_toml
            .clone()
            .unwrap_or_else(|| self.postgres_sink())
    }

    /// A postgres `[pipe.sink]` into the target database, with `sink_extra`.
    pub fn postgres_sink(&self) -> String {
        format!(
            "[pipe.sink]\ntype = \"postgres\"\nconnection = {:?}\n{}\n",
            self.target.conninfo(TARGET_DB),
            self.sink_extra
        )
    }

    /// A receiver config text with its state, control socket and logs under `state` (a folder
    /// name in the lab) and `sink` as the pipe's `[pipe.sink]`; listening on the port of the
    /// previous start, or a free one.
    pub fn receiver_config_text(&self, state: &str, sink: &str) -> String {
        let listen = self
            .receiver_addr
            .map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut t = String::new();
        let _ = write!(
            t,
            "node = \"outside-1\"\nprofile = {:?}\nprofiles_dir = {}\nlisten = {listen:?}\nallow = [\"127.0.0.0/8\"]\n\
             state_dir = {}\ncontrol_socket = {}\nlog_dir = {}\n\n[[pipe]]\nname = {PIPE:?}\nfrom = \"plant-a\"\n{sink}\n",
            self.profile,
            q(&profiles_dir()),
            q(&self.path(state)),
            q(&self.path(state).join("control.sock")),
            q(&self.path("rlogs")),
        );
        t
    }

    /// Writes receiver.toml (state in `rstate`, the sink of [`Self::sink_block`]).
    pub fn receiver_config(&self) -> PathBuf {
        let p = self.path("receiver.toml");
        std::fs::write(&p, self.receiver_config_text("rstate", &self.sink_block()))
            .expect("write receiver.toml");
        p
    }

    /// The sender config text with `tables` and `source_extra` (state, logs and control
    /// socket in the lab), pointing at the simulator or the receiver.
    pub fn sender_config_text(&self, tables: &str, source_extra: &str) -> String {
        let gate = self
            .sim_addr
            .or(self.receiver_addr)
            .map_or("127.0.0.1:1".to_owned(), |a| a.to_string());
        let overrides = if profile(&self.profile).link == gapsync_protocol::LinkKind::Tcp {
            "[profile_overrides]\nreconnect_backoff_min = \"50ms\"\nreconnect_backoff_max = \"500ms\"\n"
        } else {
            ""
        };
        format!(
            "node = \"plant-a\"\nprofile = {:?}\nprofiles_dir = {}\nstate_dir = {}\ncontrol_socket = {}\nlog_dir = {}\n{overrides}\n\
             [[pipe]]\nname = {PIPE:?}\ngate = \"{gate}\"\n[pipe.source]\ntype = \"postgres\"\nconnection = {:?}\n{source_extra}\n{tables}\n",
            self.profile,
            q(&profiles_dir()),
            q(&self.path("sstate")),
            q(&self.path("sstate").join("control.sock")),
            q(&self.path("slogs")),
            self.source.conninfo(SOURCE_DB),
        )
    }

    /// Writes sender.toml from `tables` and `source_extra`.
    pub fn sender_config(&self) -> PathBuf {
        let p = self.path("sender.toml");
        std::fs::write(
            &p,
            self.sender_config_text(&self.tables, &self.source_extra),
        )
        .expect("write sender.toml");
        p
    }

    /// Starts (or restarts) the receiver and waits for its `listening` line.
    pub fn start_receiver(&mut self) {
        let cfg = self.receiver_config();
        let before = self.receiver_log().matches(" listening ").count();
        let args = ["run", "--config", &cfg.display().to_string()].map(str::to_owned);
        self.receiver = Some(Proc::spawn(
            "receiver",
            &bin("gapsync-receiver"),
            &args,
            self.root.path(),
        ));
        let mut addr = None;
        wait_until(
            "the receiver's listening line",
            Duration::from_secs(30),
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

    /// Starts the gate simulator in front of the receiver (on its previous port when it is
    /// restarted, so the sender's config stays right).
    pub fn start_sim(&mut self) {
        let forward = self.receiver_addr.expect("start the receiver first");
        let listen = self
            .sim_addr
            .map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut args = vec![
            "--listen".to_owned(),
            listen,
            "--forward".to_owned(),
            forward.to_string(),
            "--stats-file".to_owned(),
            self.path("sim.stats").display().to_string(),
        ];
        if profile(&self.profile).envelope == gapsync_protocol::Envelope::ELanguage {
            args.extend(["--envelope".to_owned(), "e-language".to_owned()]);
        }
        args.extend(self.sim_extra.iter().cloned());
        let marker = "listening on ";
        let sim_err = self.path("gate-sim.stderr");
        let before = std::fs::read_to_string(&sim_err)
            .unwrap_or_default()
            .matches(marker)
            .count();
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
                let text = sim.stderr_text();
                if text.matches(marker).count() > before {
                    addr = text
                        .rsplit(marker)
                        .next()
                        .and_then(|l| l.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                }
                addr.is_some()
            },
        );
        self.sim = Some(sim);
        self.sim_addr = addr;
    }

    /// Cuts the gate: kills the simulator (every connection through it drops) and starts a
    /// new one on the same port after `pause`.
    pub fn cut_gate(&mut self, pause: Duration) {
        if let Some(mut s) = self.sim.take() {
            s.kill9();
        }
        std::thread::sleep(pause);
        self.start_sim();
    }

    /// Starts (or restarts) the sender with sender.toml.
    pub fn start_sender(&mut self) {
        let cfg = self.sender_config();
        let args = ["run", "--config", &cfg.display().to_string()].map(str::to_owned);
        self.sender = Some(Proc::spawn(
            "sender",
            &bin("gapsync-sender"),
            &args,
            self.root.path(),
        ));
    }

    /// Receiver, simulator and sender, in that order.
    pub fn start_all(&mut self) {
        self.start_receiver();
        self.start_sim();
        self.start_sender();
    }

    pub fn kill_sender(&mut self) {
        if let Some(mut s) = self.sender.take() {
            s.kill9();
        }
    }

    pub fn kill_receiver(&mut self) {
        if let Some(mut r) = self.receiver.take() {
            r.kill9();
        }
    }

    pub fn receiver_log(&self) -> String {
        read_logs(&self.path("rlogs"))
    }

    pub fn sender_log(&self) -> String {
        read_logs(&self.path("slogs"))
    }

    /// `gapsync-sender ARGS --config sender.toml`: exit code, stdout and stderr together.
    pub fn sender_ctl(&self, args: &[&str]) -> (Option<i32>, String) {
        ctl("gapsync-sender", args, &self.path("sender.toml"))
    }

    /// `gapsync-receiver ARGS --config receiver.toml`: exit code, stdout and stderr together.
    pub fn receiver_ctl(&self, args: &[&str]) -> (Option<i32>, String) {
        ctl("gapsync-receiver", args, &self.path("receiver.toml"))
    }

    /// `gapsync-sender pipe start plant-db`: a new run of the snapshot and partitions tables.
    pub fn trigger_run(&self) {
        let (code, out) = self.sender_ctl(&["pipe", "start", PIPE]);
        assert_eq!(
            code,
            Some(0),
            "pipe start {PIPE} failed: {out}\n{}",
            self.diagnostics()
        );
    }

    /// The receiver's `pipes --json` row of the pipe (`None` while it cannot be read).
    pub fn receiver_row(&self) -> Option<serde_json::Value> {
        let (code, out) = ctl_stdout(
            "gapsync-receiver",
            &["pipes", "--json"],
            &self.path("receiver.toml"),
        );
        if code != Some(0) {
            return None;
        }
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
        rows.into_iter().find(|r| r["name"] == PIPE)
    }

    /// The object ids of the receiver's `applied` lines, in log order.
    pub fn applied_ids(&self) -> Vec<String> {
        applied_ids(&self.receiver_log())
    }

    /// The objects recorded in the target's `gapsync.applied`, sorted.
    pub fn applied_table(&self) -> Vec<String> {
        if !self.target.table_exists(TARGET_DB, "gapsync.applied") {
            return Vec::new();
        }
        let out = self.dst("SELECT object FROM gapsync.applied ORDER BY object");
        out.lines().map(str::to_owned).collect()
    }

    /// Panics with the logs when the sender or the receiver (started and not killed by the
    /// test) has exited: waiting on would only time out.
    pub fn assert_daemons_alive(&self) {
        for p in [&self.receiver, &self.sender].into_iter().flatten() {
            assert!(!exited(p), "the {} exited:\n{}", p.name, self.diagnostics());
        }
    }

    /// Polls `cond` every 100 ms until it holds; panics with `what` and the logs after
    /// `timeout`, or at once when a daemon exited.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            self.assert_daemons_alive();
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every `(table, order_by)` has the same digest (and row count) on the
    /// target as on the source; panics with both digests, counts and the logs.
    pub fn wait_equal(&self, tables: &[(&str, &str)], timeout: Duration) {
        let start = Instant::now();
        loop {
            let diffs = self.differences(tables);
            if diffs.is_empty() {
                return;
            }
            self.assert_daemons_alive();
            if start.elapsed() > timeout {
                panic!(
                    "after {timeout:?} the target still differs from the source:\n{}\n{}",
                    diffs.join("\n"),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// One line per table whose target differs from the source (empty: all equal).
    pub fn differences(&self, tables: &[(&str, &str)]) -> Vec<String> {
        tables
            .iter()
            .filter_map(|(t, order)| {
                let s = self.source.table_digest(SOURCE_DB, t, order);
                let d = self
                    .target
                    .table_exists(TARGET_DB, t)
                    .then(|| self.target.table_digest(TARGET_DB, t, order));
                (d.as_deref() != Some(s.as_str())).then(|| {
                    let dc = d
                        .as_ref()
                        .map_or(-1, |_| self.target.row_count(TARGET_DB, t));
                    format!(
                        "{t}: source {} rows md5 {s}, target {dc} rows md5 {}",
                        self.source.row_count(SOURCE_DB, t),
                        d.as_deref().unwrap_or("(no table)")
                    )
                })
            })
            .collect()
    }

    /// The logs of both daemons (their last 60 lines) and their stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        let stderr = |p: &Option<Proc>| {
            p.as_ref()
                .map(|p| tail(p.stderr_text()))
                .unwrap_or_default()
        };
        format!(
            "--- receiver log ---\n{}\n--- sender log ---\n{}\n--- receiver stderr ---\n{}\n--- sender stderr ---\n{}\n--- gate sim ---\n{}",
            tail(self.receiver_log()),
            tail(self.sender_log()),
            stderr(&self.receiver),
            stderr(&self.sender),
            stderr(&self.sim),
        )
    }
}

/// True when the process has ended (a zombie not yet reaped, or gone).
fn exited(p: &Proc) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// The object ids of the `applied` lines of a receiver log (not the `already applied` ones).
pub fn applied_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(": applied ") && !l.contains("already applied"))
        .filter_map(|l| l.split("object=").nth(1))
        .filter_map(|v| v.split_whitespace().next())
        .map(|v| v.trim_matches('"').to_owned())
        .collect()
}

/// An incremental table: ids from a sequence and `ts` from clock_timestamp(), both assigned
/// at insert, before commit.
pub const EVENTS: &str = "CREATE TABLE public.events (
  id bigserial PRIMARY KEY,
  ts timestamptz NOT NULL DEFAULT clock_timestamp(),
  writer int NOT NULL,
  payload text)";

/// Concurrent writers inserting into public.events until stopped.
#[derive(Debug)]
pub struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<u64>>,
}

impl Writers {
    /// `n` connections, each inserting 1-5 rows per transaction every few milliseconds; one
    /// transaction in 12 is held open for a second before it commits (its rows' `ts` and ids
    /// are then older than rows other writers committed meanwhile).
    pub fn start(conninfo: &str, n: i32) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..n)
            .map(|w| {
                let (stop, conninfo) = (stop.clone(), conninfo.to_owned());
                std::thread::spawn(move || {
                    let mut client = postgres::Client::connect(&conninfo, postgres::NoTls)
                        .unwrap_or_else(|e| panic!("writer {w} cannot connect: {e}"));
                    let (mut rows, mut i) = (0u64, 0i32);
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let mut tx = client.transaction().expect("begin");
                        for r in 0..=(i + w) % 5 {
                            tx.execute(
                                "INSERT INTO public.events (writer, payload) VALUES ($1, $2)",
                                &[&w, &format!("writer {w} txn {i} row {r} ✓")],
                            )
                            .expect("insert");
                            rows += 1;
                        }
                        if (i + w) % 12 == 0 {
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        tx.commit().expect("commit");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    rows
                })
            })
            .collect();
        Writers { stop, handles }
    }

    /// Stops them; the rows they inserted.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("a writer failed"))
            .sum()
    }
}

/// The ids that occur more than once in `ids`, with their counts.
pub fn duplicates(ids: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m.retain(|_, n| *n > 1);
    m
}

/// `<daemon> ARGS --config CONFIG`: exit code, stdout and stderr together.
pub fn ctl(daemon: &str, args: &[&str], config: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin(daemon))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {daemon}: {e}"));
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `<daemon> ARGS --config CONFIG`: exit code and stdout alone.
fn ctl_stdout(daemon: &str, args: &[&str], config: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin(daemon))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {daemon}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
