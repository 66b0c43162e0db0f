//! The command-line end of the control socket: finds the socket from the config file, sends
//! one request and reads the answer (blocking; the commands need no runtime).

use std::io::{self, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::wire::{self, Line};
use super::{Request, Response};

/// Why a control command could not get the daemon's answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the config file {path}: {source}")]
    ConfigRead { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    ConfigParse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{program} is not running ({why} {path}); start it with systemctl start {program}")]
    NotRunning {
        program: String,
        why: &'static str,
        path: PathBuf,
    },
    #[error(
        "permission denied on the control socket {path}: run as root or as a member of group gapsync"
    )]
    PermissionDenied { path: PathBuf },
    #[error("cannot talk to {program} on its control socket {path}: {source}")]
    Io {
        program: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{program} did not answer on {path} within {} s", .after.as_secs())]
    Timeout {
        program: String,
        path: PathBuf,
        after: Duration,
    },
    #[error(
        "{program} sent an answer this command cannot read ({detail}); are the daemon and this command the same version?"
    )]
    BadAnswer { program: String, detail: String },
}

impl ClientError {
    /// The exit code: 2 config unreadable, 3 daemon not running, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::ConfigRead { .. } | Self::ConfigParse { .. } => 2,
            Self::NotRunning { .. } => 3,
            _ => 1,
        }
    }
}

/// The only key of a config file the client reads; every other key is ignored here (the
/// daemon checks them).
#[derive(serde::Deserialize)]
struct SocketOnly {
    control_socket: Option<PathBuf>,
}

/// The control socket named by the config file's `control_socket` (relative to the file's
/// folder), or [`super::default_socket`] for `program`.
pub fn socket_from_config(config: &Path, program: &str) -> Result<PathBuf, ClientError> {
    let text = std::fs::read_to_string(config).map_err(|source| ClientError::ConfigRead {
        path: config.to_owned(),
        source,
    })?;
    let partial: SocketOnly = toml::from_str(&text).map_err(|e| ClientError::ConfigParse {
        path: config.to_owned(),
        source: Box::new(e),
    })?;
    let dir = config.parent().unwrap_or(Path::new(""));
    Ok(super::socket_path(
        dir,
        partial.control_socket.as_deref(),
        program,
    ))
}

/// Sends `request` to `program`'s daemon on `socket` and returns its answer.
pub fn call(program: &str, socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let io_error = |source: io::Error| classify(program, socket, source);
    let mut stream = UnixStream::connect(socket).map_err(io_error)?;
    let waits = wire::ANSWER_TIMEOUT + wire::CLIENT_TIMEOUT;
    stream.set_read_timeout(Some(waits)).map_err(io_error)?;
    stream
        .set_write_timeout(Some(wire::CLIENT_TIMEOUT))
        .map_err(io_error)?;
    // A daemon that refuses this client answers and closes before reading: read its answer
    // even when the write failed.
    let written = stream.write_all(&wire::to_line(request));
    let bad = |detail: String| ClientError::BadAnswer {
        program: program.to_owned(),
        detail,
    };
    match (
        wire::read_line_blocking(&stream, wire::MAX_RESPONSE),
        written,
    ) {
        (Ok(Line::Complete(bytes)), _) => {
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
        }
        (_, Err(e)) => Err(io_error(e)),
        (Ok(Line::TooLong), _) => Err(bad(format!("longer than {} bytes", wire::MAX_RESPONSE))),
        (Ok(Line::Empty), _) => Err(bad("it closed the connection without answering".into())),
        (Err(e), _)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ClientError::Timeout {
                program: program.to_owned(),
                path: socket.to_owned(),
                after: waits,
            })
        }
        (Err(e), _) => Err(io_error(e)),
    }
}

fn classify(program: &str, path: &Path, source: io::Error) -> ClientError {
    let not_running = |why| ClientError::NotRunning {
        program: program.to_owned(),
        why,
        path: path.to_owned(),
    };
    match source.kind() {
        io::ErrorKind::NotFound => not_running("no control socket at"),
        io::ErrorKind::ConnectionRefused => not_running("nobody answers on the control socket at"),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: path.to_owned(),
        },
        _ => ClientError::Io {
            program: program.to_owned(),
            path: path.to_owned(),
            source,
        },
    }
}
