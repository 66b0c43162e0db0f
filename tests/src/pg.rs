//! A PostgreSQL cluster of its own for one test: `initdb` in a temporary folder (as user
//! `nobody` when the tests run as root, as PostgreSQL refuses to run as root), its own free
//! port on 127.0.0.1 and its Unix socket inside its data folder, `fsync = off`. The superuser
//! `postgres` is trusted locally and on 127.0.0.1; the role `gapsync_pw` (password `secret`)
//! must log in with scram-sha-256 on 127.0.0.1 (for the wrong-password checks).
//!
//! The binaries come from `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package,
//! which tests/run.sh installs), or `pg_config --bindir`, or the PATH. Dropping the cluster
//! stops it (`pg_ctl stop -m immediate`) before its folder is removed.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The role that logs in with a password (scram-sha-256, on 127.0.0.1 only).
pub const PASSWORD_ROLE: &str = "gapsync_pw";
/// Its password.
pub const PASSWORD: &str = "secret";

/// Where [`find_pg_bindir`] looks, for messages.
pub const PG_BINDIR_SEARCH: &str =
    "/usr/lib/postgresql/*/bin (the newest version first), `pg_config --bindir` and the PATH";

/// The folder holding initdb, pg_ctl, postgres, psql and pgbench; panics naming what to install.
pub fn pg_bindir() -> PathBuf {
    find_pg_bindir().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no initdb, pg_ctl, postgres and psql under {PG_BINDIR_SEARCH}): \
             run tests/run.sh as root, or `apt-get install -y postgresql`"
        )
    })
}

/// The first folder of [`PG_BINDIR_SEARCH`] holding initdb, pg_ctl, postgres and psql.
pub fn find_pg_bindir() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|b| d.join(b).exists())
    };
    // Debian: /usr/lib/postgresql/<major>/bin; the newest major first.
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    if let Some((_, d)) = debian.into_iter().rev().find(|(_, d)| has_all(d)) {
        return Some(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_all(&d) {
            return Some(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_all(d)) {
            return Some(d);
        }
    }
    None
}

/// True when this process runs as root (the cluster then runs as `nobody`).
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// The output's stdout and stderr, for messages.
fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One PostgreSQL cluster, running until stopped or dropped.
#[derive(Debug)]
pub struct PgCluster {
    pub label: String,
    /// The data folder; also the folder of the Unix socket.
    pub data: PathBuf,
    pub port: u16,
    /// The server's log (pg_ctl -l).
    pub log: PathBuf,
    bindir: PathBuf,
    running: bool,
    root: tempfile::TempDir,
}

impl PgCluster {
    /// initdb, configure and start a new cluster named `label` (for messages).
    pub fn start(label: &str) -> PgCluster {
        let bindir = pg_bindir();
        let root = tempfile::Builder::new()
            .prefix(&format!("gapsync-pg-{label}-"))
            .tempdir()
            .expect("tempdir");
        if is_root() {
            let nobody = Some(rustix::process::Uid::from_raw(65534));
            let nogroup = Some(rustix::process::Gid::from_raw(65534));
            rustix::fs::chown(root.path(), nobody, nogroup)
                .expect("chown the cluster folder to nobody");
        }
        let data = root.path().join("data");
        let log = root.path().join("server.log");
        let mut c = PgCluster {
            label: label.to_owned(),
            data,
            port: free_port(),
            log,
            bindir,
            running: false,
            root,
        };
        c.initdb();
        c.start_again();
        c.psql(
            "postgres",
            &format!("CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        );
        c
    }

    /// A command running `program` of the PostgreSQL binaries as the cluster's owner.
    fn as_owner(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.current_dir(self.root.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd`; panics with its output when it fails.
    fn run(&self, what: &str, cmd: &mut Command) -> Output {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cluster {}: cannot run {what}: {e}", self.label));
        assert!(
            out.status.success(),
            "cluster {}: {what} failed ({}):\n{}\n--- server log ---\n{}",
            self.label,
            out.status,
            both(&out),
            self.server_log()
        );
        out
    }

    fn initdb(&self) {
        let mut cmd = self.as_owner("initdb");
        cmd.args([
            "-N",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "-D",
        ])
        .arg(&self.data);
        self.run("initdb", &mut cmd);
        let hba = format!(
            "local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n\
             host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
        );
        std::fs::write(self.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        write!(
            conf,
            "\n# gapsync tests\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n\
             shared_buffers = 32MB\npassword_encryption = 'scram-sha-256'\ntimezone = 'UTC'\n\
             log_min_messages = warning\n",
            self.port,
            self.data.display()
        )
        .expect("write postgresql.conf");
    }

    /// Starts the (stopped) cluster again, on its port; waits until it accepts connections.
    pub fn start_again(&mut self) {
        let mut cmd = self.as_owner("pg_ctl");
        cmd.args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("start");
        self.run("pg_ctl start", &mut cmd);
        self.running = true;
    }

    /// Stops the cluster (fast shutdown: running transactions are rolled back).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let mut cmd = self.as_owner("pg_ctl");
        cmd.args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(&self.data)
            .arg("stop");
        self.running = false;
        self.run("pg_ctl stop", &mut cmd);
    }

    /// True while started.
    pub fn running(&self) -> bool {
        self.running
    }

    /// The folder of the Unix socket (the data folder).
    pub fn socket_dir(&self) -> &Path {
        &self.data
    }

    /// libpq keywords for superuser `postgres` on the Unix socket.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.data.display(),
            self.port
        )
    }

    /// libpq keywords for `user` over TCP on 127.0.0.1 (no password in it).
    pub fn tcp_conninfo(&self, db: &str, user: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port)
    }

    /// The server's log so far, for failure messages.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A psql command as superuser on database `db` (no psqlrc, unaligned, tuples only,
    /// quiet, stop at the first error), the client time zone UTC.
    fn psql_cmd(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db])
            .env("PGTZ", "UTC")
            .env("PGCLIENTENCODING", "UTF8")
            .env_remove("PGPASSWORD");
        cmd
    }

    /// Runs `sql` (one or more statements) in database `db`: its output, without the final
    /// newline. `Err` with psql's stderr when it fails.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut child = self
            .psql_cmd(db)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        let mut stdin = child.stdin.take().expect("psql stdin");
        let text = sql.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout)
                .trim_end_matches('\n')
                .to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` in database `db` and returns its output; panics with psql's stderr on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| {
            panic!(
                "cluster {}: psql on {db} failed: {e}\nSQL: {sql}",
                self.label
            )
        })
    }

    /// CREATE DATABASE `db`.
    pub fn createdb(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    }

    /// `pgbench -i -s scale` on database `db` (its four tables: pgbench_accounts, _branches,
    /// _tellers, _history).
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        let mut cmd = Command::new(self.bindir.join("pgbench"));
        cmd.args(["-i", "-q", "-s", &scale.to_string(), "-h"])
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", db]);
        self.run("pgbench -i", &mut cmd);
    }

    /// md5 over every row's text, in `order_by` order (`SELECT md5(string_agg(t::text, E'\n'
    /// ORDER BY ...)) FROM table t`); the md5 of the empty string for an empty table.
    pub fn table_digest(&self, db: &str, table: &str, order_by: &str) -> String {
        self.psql(
            db,
            &format!(
                "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {order_by}), '')) FROM {table} t"
            ),
        )
    }

    /// `SELECT count(*) FROM table`.
    pub fn row_count(&self, db: &str, table: &str) -> i64 {
        let n = self.psql(db, &format!("SELECT count(*) FROM {table}"));
        n.parse()
            .unwrap_or_else(|_| panic!("count(*) of {table} is not a number: {n:?}"))
    }

    /// Whether `table` (schema-qualified or not) exists in `db`.
    pub fn table_exists(&self, db: &str, table: &str) -> bool {
        self.psql(db, &format!("SELECT to_regclass('{table}') IS NOT NULL")) == "t"
    }

    /// The cluster's root folder (the data folder and the server log are inside).
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let mut cmd = self.as_owner("pg_ctl");
            cmd.args(["-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
            self.running = false;
        }
    }
}

/// `postgres --version` of the binaries the clusters use.
pub fn pg_version() -> String {
    let out = Command::new(pg_bindir().join("postgres"))
        .arg("--version")
        .output()
        .expect("run postgres --version");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
