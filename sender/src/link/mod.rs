//! Links: how frames leave the sender. A new link kind (offline media) is a new module here.
//! `tcp` drives a session and asks [`crate::pipe::PipeWorker`] for frames (also over TLS);
//! `udp` sends whole objects with forward error correction through a data diode.

pub mod tcp;
pub mod udp;

use gapsync_protocol::LinkKind;

/// The link kind as written in a profile (`tcp`, `tls`, `udp`), for logs and status.
pub fn kind_name(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Tcp => "tcp",
        LinkKind::Tls => "tls",
        LinkKind::Udp => "udp",
    }
}
