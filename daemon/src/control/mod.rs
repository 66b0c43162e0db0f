//! The control channel of a running daemon: a Unix socket in its runtime folder that answers
//! `pipes`, `pipe stop`, `pipe start` and `reload`, and the commands that use it.
//!
//! ```text
//!  gapsync-sender pipes --config FILE          gapsync-sender run --config FILE
//!   client::call ──JSON line──> /run/gapsync-sender/control.sock ──> server (this module)
//!               <──JSON line──              │                           │ Incoming { request, reply }
//!                                           │                           v
//!  SIGHUP (systemctl reload) ──> reload_on_hangup ─────────────> the daemon's loop answers
//! ```
//!
//! One request per connection: the client writes one JSON line ([`Request`]), the server
//! hands it to the daemon as an [`Incoming`] on an mpsc channel, the daemon answers with a
//! [`Response`], the server writes it back as one JSON line and closes. Only root, the daemon's
//! own user and members of the socket's group (`gapsync`) may connect: the socket is mode 0660
//! and each peer's credentials (SO_PEERCRED) are checked again.
//!
//! A daemon wires it like this (`control_socket` from its config, see [`socket_path`]):
//! ```no_run
//! # async fn daemon(config_dir: &std::path::Path) -> anyhow::Result<()> {
//! use gapsync_daemon::control::{self, Request, Response};
//! let socket = control::socket_path(config_dir, None, "gapsync-sender");
//! let (mut handle, requests) = control::serve(&socket)?;
//! handle.reload_on_hangup()?; // SIGHUP: the same Request::Reload, answered into the log
//! let every = std::time::Duration::from_secs(60);
//! gapsync_daemon::cli::serve_until_shutdown(every, || {}, Some(requests), |incoming| {
//!     let answer = match &incoming.request {
//!         Request::Pipes => Response::Pipes { rows: vec![] },
//!         Request::Stop { pipe } => Response::failed(format!("no pipe named {pipe:?}")),
//!         Request::Start { pipe } => Response::done(format!("pipe {pipe} started")),
//!         Request::Reload => Response::done("config unchanged"),
//!     };
//!     incoming.answer(answer);
//! })
//! .await?;
//! drop(handle); // removes the socket
//! # Ok(()) }
//! ```

pub mod client;
pub mod commands;
pub mod server;
pub mod states;
pub mod table;
mod wire;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use server::{ControlError, ControlHandle, serve};
pub use states::{PipeStates, StatesError};

/// What a client asks a running daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// One [`PipeRow`] per pipe.
    Pipes,
    /// Stop a pipe: it ends its frame in flight, keeps its state and stays stopped (across
    /// restarts too) until started.
    Stop { pipe: String },
    /// Start a stopped pipe.
    Start { pipe: String },
    /// Check the config file again and apply it; a bad one is refused and the running one kept.
    Reload,
}

/// The daemon's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Done; `message` says what happened (printed by the client).
    Done { message: String },
    /// The answer to [`Request::Pipes`].
    Pipes { rows: Vec<PipeRow> },
    /// Refused or failed; `error` says why and what to do (printed by the client, exit 1).
    Failed { error: String },
}

impl Response {
    /// A [`Response::Done`].
    pub fn done(message: impl Into<String>) -> Self {
        Self::Done {
            message: message.into(),
        }
    }

    /// A [`Response::Failed`].
    pub fn failed(error: impl Into<String>) -> Self {
        Self::Failed {
            error: error.into(),
        }
    }
}

/// Where a request came from: a client on the socket, or SIGHUP (answered into the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client on the control socket, with its user and group ids.
    Socket { uid: u32, gid: u32 },
    /// SIGHUP (`systemctl reload`, `kill -HUP`): always [`Request::Reload`].
    Hangup,
}

/// A request waiting for the daemon's answer. Dropping it unanswered tells the client that
/// the daemon did not answer.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    pub origin: Origin,
    reply: oneshot::Sender<Response>,
}

impl Incoming {
    /// A request and the receiver its answer arrives on.
    pub(crate) fn new(request: Request, origin: Origin) -> (Self, oneshot::Receiver<Response>) {
        let (reply, answer) = oneshot::channel();
        let incoming = Self {
            request,
            origin,
            reply,
        };
        (incoming, answer)
    }

    /// Sends the answer. A client that has gone away is not an error.
    pub fn answer(self, response: Response) {
        let _ = self.reply.send(response);
    }
}

/// A pipe's state as `pipes` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PipeState {
    /// Sending (sender) or accepting (receiver).
    Running,
    /// Stopped by `pipe stop`; stays stopped across restarts until `pipe start`.
    Stopped,
    /// Outside its schedule window: objects queue until the next one.
    Waiting,
    /// Cannot work until an operator acts (see `last_error`).
    Error,
}

impl PipeState {
    /// The name `pipes` prints: RUNNING, STOPPED, WAITING, ERROR.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Stopped => "STOPPED",
            Self::Waiting => "WAITING",
            Self::Error => "ERROR",
        }
    }
}

/// A peer connected to a receiver pipe, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub address: String,
    pub since: DateTime<Utc>,
}

/// One row of `pipes` (like IoTDB's SHOW PIPES). The fields every row has are always in the
/// JSON (`null` when unknown); the side-specific ones are left out when `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipeRow {
    pub name: String,
    pub state: PipeState,
    /// Link kind: tcp, tls, udp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Sender: the gate's address. Receiver: the listening address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    pub profile: Option<String>,
    pub queued_objects: u64,
    pub queued_bytes: u64,
    /// Sender: objects sent and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
    /// Since the daemon started.
    pub delivered_objects: u64,
    pub delivered_bytes: u64,
    /// Since midnight (the daemon's log time zone).
    pub delivered_today_objects: u64,
    pub delivered_today_bytes: u64,
    pub last_delivery: Option<DateTime<Utc>>,
    /// Sender: estimated seconds to drain the queue at the recent rate; `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_eta_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<u64>,
    /// Sender: objects left in place by a `filter` processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered: Option<u64>,
    /// Sender: objects matching the pipe's `ignore` globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<u64>,
    /// Sender: symlinks left in the spool (`symlinks = "skip"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_links: Option<u64>,
    /// Receiver: symlinks refused because their target leaves the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_links: Option<u64>,
    /// Sender: what the pipe's source holds back now (e.g. a postgres source's incremental
    /// reading paused at `max_pending`), `None` when nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The last WARN or ERROR about this pipe, `None` when there was none.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Receiver: the sender node the pipe accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Receiver: the connected senders and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<Peer>>,
    /// Receiver: transfers staged and not yet committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partials: Option<u64>,
    /// Receiver: connections refused since start (address, pipe or profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_connections: Option<u64>,
}

impl PipeRow {
    /// A row with every counter at zero and every optional field `None`.
    pub fn new(name: impl Into<String>, state: PipeState) -> Self {
        Self {
            name: name.into(),
            state,
            link: None,
            remote: None,
            profile: None,
            queued_objects: 0,
            queued_bytes: 0,
            in_flight: None,
            delivered_objects: 0,
            delivered_bytes: 0,
            delivered_today_objects: 0,
            delivered_today_bytes: 0,
            last_delivery: None,
            drain_eta_seconds: None,
            quarantined: None,
            filtered: None,
            ignored: None,
            skipped_links: None,
            refused_links: None,
            note: None,
            last_error: None,
            last_error_at: None,
            from: None,
            peers: None,
            partials: None,
            refused_connections: None,
        }
    }
}

/// The control socket a daemon uses when its config has no `control_socket`:
/// `/run/<program>/control.sock` (the unit's `RuntimeDirectory=<program>`).
pub fn default_socket(program: &str) -> PathBuf {
    Path::new("/run").join(program).join("control.sock")
}

/// The control socket of a daemon whose config file is in `config_dir`: its `control_socket`
/// (relative to that folder) if set, else [`default_socket`]. The commands find it the same way.
pub fn socket_path(config_dir: &Path, configured: Option<&Path>, program: &str) -> PathBuf {
    match configured {
        Some(p) => crate::config::abs(config_dir, p),
        None => default_socket(program),
    }
}

/// The config key naming the control socket (both daemons).
pub const SOCKET_KEY: &str = "control_socket";
