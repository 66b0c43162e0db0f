//! Links: how frames leave the sender. A new link kind (offline media) is a new module here.
//! Each pipe starts the link its profile names: `tcp` drives a session and asks
//! [`crate::pipe::batch::PipeWorker`] for frames (also over TLS); `udp` asks the
//! [`crate::pipe::Pipe`] for whole objects and sends them with forward error correction through
//! a data diode.

pub mod tcp;
#[cfg(test)]
mod tests;
pub mod udp;

use gapsync_protocol::LinkKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::pipe::Pipe;
use crate::pipe::batch::PipeWorker;
use crate::source::SourceEvent;

/// Starts `pipe`'s link (the one its profile names) until `stop` turns true.
pub fn start(
    pipe: Pipe,
    node: &str,
    session: u64,
    rx: mpsc::Receiver<SourceEvent>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    match pipe.cfg.profile.link {
        LinkKind::Udp => {
            let setup = udp::Setup {
                pipe,
                node: node.to_owned(),
                session,
            };
            tokio::task::spawn_blocking(move || udp::run(setup, rx, stop))
        }
        LinkKind::Tcp | LinkKind::Tls => {
            let worker = PipeWorker::new(pipe);
            tokio::spawn(tcp::run(worker, node.to_owned(), session, rx, stop))
        }
    }
}

/// The link kind as written in a profile (`tcp`, `tls`, `udp`), for logs and status.
pub fn kind_name(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Tcp => "tcp",
        LinkKind::Tls => "tls",
        LinkKind::Udp => "udp",
    }
}
