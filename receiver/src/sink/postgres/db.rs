//! The target database: one connection per pipe, owned by a thread of its own (sink methods run
//! inside the runtime's `block_in_place`, where the blocking client must not start its runtime
//! on a worker thread), asked for work over a channel. The connection is made when first
//! needed and again after it broke, and it makes sure the state table `gapsync.applied` exists.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use postgres::{Client, NoTls};

use super::apply::{self, ApplyError, Outcome};
use super::config::PostgresSettings;
use super::object;

/// The state table: one row per object applied, written in the object's own transaction.
const STATE_DDL: &str = "CREATE SCHEMA IF NOT EXISTS gapsync;
CREATE TABLE IF NOT EXISTS gapsync.applied (
    origin text NOT NULL,
    pipe text NOT NULL,
    object text NOT NULL,
    table_name text NOT NULL,
    kind text NOT NULL,
    batch bigint NOT NULL,
    rows bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    read_at timestamptz,
    PRIMARY KEY (origin, pipe, object)
)";

/// One pipe's view of its target database.
pub struct Db {
    settings: PostgresSettings,
    /// The sender node and the pipe: the first two columns of `gapsync.applied`.
    who: (String, String),
    client: Option<Client>,
}

/// Says a client error the way an operator reads it: the server's message and SQLSTATE, or
/// the connection's trouble.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    }
}

/// Connecting failed for a reason that waiting will not fix (a wrong password, a role or a
/// database that does not exist, a refused host in pg_hba.conf) rather than a database that
/// is down or unreachable for now.
#[derive(Debug)]
pub struct ConnectError {
    pub message: String,
    pub refused: bool,
}

impl Db {
    pub fn new(settings: PostgresSettings, origin: &str, pipe: &str) -> Self {
        Self {
            settings,
            who: (origin.to_owned(), pipe.to_owned()),
            client: None,
        }
    }

    /// The connection, made now if there is none or it broke.
    pub fn client(&mut self) -> Result<&mut Client, ConnectError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let config = self
                .settings
                .client_config()
                .map_err(|message| ConnectError {
                    message,
                    refused: true,
                })?;
            let mut client = config.connect(NoTls).map_err(|e| ConnectError {
                refused: e
                    .code()
                    .is_some_and(|c| c.code().starts_with("28") || c.code() == "3D000"),
                message: match e.code() {
                    Some(_) => format!("cannot connect to the target database: {}", describe(&e)),
                    None => format!(
                        "cannot connect to the target database at {}: {} (is PostgreSQL running and listening there?)",
                        place(&config),
                        describe(&e)
                    ),
                },
            })?;
            ensure_state_table(&mut client).map_err(|e| ConnectError {
                message: format!(
                    "cannot create the state table gapsync.applied in the target database (the user needs CREATE on the database, or create schema gapsync and the table for it): {}",
                    describe(&e)
                ),
                refused: e.code().is_some(),
            })?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Applies the object file at `path` exactly once.
    pub fn apply_file(&mut self, path: &Path) -> Result<Outcome, ApplyError> {
        let obj = object::open(path).map_err(|e| match e {
            object::ObjectError::Bad(m) => ApplyError::Bad(m),
            object::ObjectError::Io(e) => ApplyError::Io(format!("cannot read it: {e}")),
        })?;
        let settings = self.settings.clone();
        apply::precheck(&obj.header, &settings)?;
        let who = self.who.clone();
        let client = self
            .client()
            .map_err(|e| ApplyError::Connection(e.message))?;
        let r = apply::apply(client, &settings, (&who.0, &who.1), obj);
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            if let Err(ApplyError::Database(m)) = r {
                return Err(ApplyError::Connection(m));
            }
        }
        r
    }
}

/// Where the client connects: `host:port` (or the socket folder and port), each one tried.
fn place(c: &postgres::Config) -> String {
    use postgres::config::Host;
    let ports = c.get_ports();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(h) => format!("{h}:{port}"),
                Host::Unix(p) => format!("{}/.s.PGSQL.{port}", p.display()),
            }
        })
        .collect();
    if hosts.is_empty() {
        "the default host".into()
    } else {
        hosts.join(", ")
    }
}

/// Creates schema `gapsync` and its table unless they exist (looked up first, so a user
/// without CREATE on the database works once they were made for it).
fn ensure_state_table(client: &mut Client) -> Result<(), postgres::Error> {
    let row = client.query_one("SELECT to_regclass('gapsync.applied') IS NOT NULL", &[])?;
    if !row.get::<_, bool>(0) {
        client.batch_execute(STATE_DDL)?;
    }
    // A state table made by an earlier version has no read_at yet.
    let row = client.query_one(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'gapsync.applied'::regclass AND attname = 'read_at' AND NOT attisdropped",
        &[],
    )?;
    if row.get::<_, i64>(0) == 0 {
        client.batch_execute("ALTER TABLE gapsync.applied ADD COLUMN read_at timestamptz")?;
    }
    Ok(())
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The thread that owns a pipe's [`Db`].
pub struct DbThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl DbThread {
    pub fn spawn(db: Db, name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("pg-{name}"))
            .spawn(move || {
                let mut db = db;
                for job in rx {
                    job(&mut db);
                }
            })?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `f` on the database thread; false if the thread is gone.
    pub fn submit(&self, f: impl FnOnce(&mut Db) + Send + 'static) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|j| j.send(Box::new(f)).is_ok())
    }

    /// Runs `f` on the database thread and waits for its result; `None` if the thread is gone
    /// (it panicked).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |db| {
            let _ = tx.send(f(db));
        });
        self.jobs.as_ref()?.send(job).ok()?;
        rx.recv().ok()
    }
}

impl Drop for DbThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
