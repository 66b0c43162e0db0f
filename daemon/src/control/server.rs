//! The daemon's end of the control socket: binds it (refusing to start beside a live daemon,
//! replacing a stale socket), checks each peer, reads one request, hands it to the daemon and
//! writes its answer. The socket is removed when the [`ControlHandle`] is dropped.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::wire::{self, Line};
use super::{Incoming, Origin, Request, Response};

/// The group that may use the control socket besides root, when it exists.
pub const SOCKET_GROUP: &str = "gapsync";

/// Requests served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 8;

/// Why the control socket could not be set up. Each message names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another daemon is already running with the control socket {path} (it answered there); stop it first, or give this one its own control_socket"
    )]
    AlreadyRunning { path: PathBuf },
    #[error(
        "{path} exists and is not a socket; move it away or set control_socket to another path"
    )]
    NotASocket { path: PathBuf },
    #[error("cannot check whether a daemon answers on the control socket {path}: {source}")]
    Probe { path: PathBuf, source: io::Error },
    #[error(
        "cannot remove the stale control socket {path} (left by a daemon that did not stop cleanly): {source}"
    )]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error(
        "cannot create the control socket {path}: {source}; its folder must be writable by the daemon (the systemd unit's RuntimeDirectory= makes it)"
    )]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set mode 0660 on the control socket {path}: {source}")]
    Mode { path: PathBuf, source: io::Error },
    #[error("cannot handle SIGHUP: {0}")]
    Signal(io::Error),
}

/// Who may use the socket: root, the daemon's own user, and the socket's group.
#[derive(Debug, Clone, Copy)]
struct Access {
    own_uid: u32,
    group: u32,
}

/// The running control socket. Dropping it stops accepting and removes the socket file (if it
/// is still the one this daemon made).
#[derive(Debug)]
pub struct ControlHandle {
    path: PathBuf,
    inode: (u64, u64),
    requests: mpsc::Sender<Incoming>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds the control socket at `path` (mode 0660, group [`SOCKET_GROUP`] when it exists, else
/// the process's group) and returns its handle and the requests for the daemon to answer.
/// Fails when another daemon answers on `path`, or when `path` is not a socket; a stale socket
/// left by a crash is replaced. Must be called inside a tokio runtime.
pub fn serve(path: &Path) -> Result<(ControlHandle, mpsc::Receiver<Incoming>), ControlError> {
    clear_stale(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| bind_error(path, source))?;
    }
    let listener = UnixListener::bind(path).map_err(|source| bind_error(path, source))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ControlError::Mode {
            path: path.to_owned(),
            source,
        }
    })?;
    let meta = std::fs::metadata(path).map_err(|source| bind_error(path, source))?;
    let access = Access {
        own_uid: rustix::process::geteuid().as_raw(),
        group: give_to_group(path).unwrap_or(meta.gid()),
    };
    let (tx, rx) = mpsc::channel(16);
    let accept = tokio::spawn(accept_loop(listener, tx.clone(), access));
    tracing::info!(socket = %path.display(), "control socket ready");
    let handle = ControlHandle {
        path: path.to_owned(),
        inode: (meta.dev(), meta.ino()),
        requests: tx,
        tasks: vec![accept],
    };
    Ok((handle, rx))
}

fn bind_error(path: &Path, source: io::Error) -> ControlError {
    ControlError::Bind {
        path: path.to_owned(),
        source,
    }
}

/// Refuses when a daemon answers on `path`; removes a socket nobody answers on.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(probe_error(path, source)),
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ControlError::AlreadyRunning {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing a stale control socket (no daemon answers on it)");
            std::fs::remove_file(path).map_err(|source| ControlError::RemoveStale {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(probe_error(path, source)),
    }
}

fn probe_error(path: &Path, source: io::Error) -> ControlError {
    ControlError::Probe {
        path: path.to_owned(),
        source,
    }
}

/// Gives the socket to group [`SOCKET_GROUP`] if it exists; returns its gid when that worked.
fn give_to_group(path: &Path) -> Option<u32> {
    let group = nix::unistd::Group::from_name(SOCKET_GROUP).ok().flatten()?;
    let gid = group.gid.as_raw();
    match std::os::unix::fs::chown(path, None, Some(gid)) {
        Ok(()) => Some(gid),
        Err(e) => {
            tracing::warn!(socket = %path.display(), group = SOCKET_GROUP, error = %e,
                "cannot give the control socket to its group; only root and this daemon's user may use it (run the daemon as a member of the group)");
            None
        }
    }
}

async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Incoming>, access: Access) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!("control socket busy; closing a connection");
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    serve_connection(stream, &tx, access).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// One connection: check the peer, read its request, answer it.
async fn serve_connection(mut stream: UnixStream, tx: &mpsc::Sender<Incoming>, access: Access) {
    let origin = match stream.peer_cred() {
        Ok(c) if allowed(c.uid(), c.gid(), access, member_of) => Origin::Socket {
            uid: c.uid(),
            gid: c.gid(),
        },
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                gid = c.gid(),
                "control socket: refused a client that is neither root nor in the daemon's group"
            );
            let refusal =
                format!("permission denied: run as root or as a member of group {SOCKET_GROUP}");
            return write_answer(&mut stream, &Response::failed(refusal)).await;
        }
        Err(e) => {
            return tracing::warn!(error = %e, "control socket: cannot read the client's credentials");
        }
    };
    let response = match read_request(&mut stream).await {
        Ok(request) => ask_daemon(tx, request, origin).await,
        Err(refusal) => Response::failed(refusal),
    };
    write_answer(&mut stream, &response).await;
}

/// Whether a peer may use the socket: root, the daemon's user, the socket's group as primary
/// group, or (looked up in the group database) as a supplementary group.
fn allowed(uid: u32, gid: u32, access: Access, member: impl FnOnce(u32, u32) -> bool) -> bool {
    uid == 0 || uid == access.own_uid || gid == access.group || member(uid, access.group)
}

/// Whether user `uid` is a member of group `gid` in the group database.
fn member_of(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// The client's request, or the refusal to send back.
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let line = tokio::time::timeout(
        wire::CLIENT_TIMEOUT,
        wire::read_line(&mut *stream, wire::MAX_REQUEST),
    )
    .await;
    match line {
        Err(_) => Err(format!(
            "no request within {} s",
            wire::CLIENT_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Ok(Ok(Line::Empty)) => Err("empty request".into()),
        Ok(Ok(Line::TooLong)) => Err(format!(
            "request longer than {} bytes refused",
            wire::MAX_REQUEST
        )),
        Ok(Ok(Line::Complete(bytes))) => {
            serde_json::from_slice(&bytes).map_err(|e| format!("not a control request: {e}"))
        }
    }
}

/// Hands `request` to the daemon and waits for its answer.
pub(crate) async fn ask_daemon(
    tx: &mpsc::Sender<Incoming>,
    request: Request,
    origin: Origin,
) -> Response {
    tracing::debug!(?request, ?origin, "control request");
    let (incoming, answer) = Incoming::new(request, origin);
    if tx.send(incoming).await.is_err() {
        return Response::failed("the daemon is stopping");
    }
    match tokio::time::timeout(wire::ANSWER_TIMEOUT, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => Response::failed("the daemon did not answer this request"),
        Err(_) => Response::failed(format!(
            "the daemon did not answer within {} s",
            wire::ANSWER_TIMEOUT.as_secs()
        )),
    }
}

async fn write_answer(stream: &mut UnixStream, response: &Response) {
    let line = wire::to_line(response);
    let write = async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(wire::CLIENT_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "control socket: the client left before the answer")
        }
        Err(_) => tracing::debug!("control socket: the client did not read its answer"),
    }
}

impl ControlHandle {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes SIGHUP a [`Request::Reload`] (origin [`Origin::Hangup`]) on the same channel; the
    /// answer goes to the log (INFO when done, ERROR when refused). Until a daemon calls this,
    /// SIGHUP is only logged at WARN (see `cli::start`).
    pub fn reload_on_hangup(&mut self) -> Result<(), ControlError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).map_err(ControlError::Signal)?;
        crate::cli::hangups_reload(true);
        let tx = self.requests.clone();
        self.tasks.push(tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received; reloading the config");
                match ask_daemon(&tx, Request::Reload, Origin::Hangup).await {
                    Response::Failed { error } => tracing::error!(
                        hint = "fix the config file and reload again; the running config is kept",
                        "reload refused: {error}"
                    ),
                    Response::Done { message } => tracing::info!("reload done: {message}"),
                    Response::Pipes { .. } => {}
                }
            }
        }));
        Ok(())
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        crate::cli::hangups_reload(false);
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the control socket");
            }
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
