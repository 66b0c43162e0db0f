//! Links: how frames reach the receiver. A new link kind (UDP with FEC, TLS) is a new module
//! here that feeds a session and calls [`crate::pipes::Pipes`]; sinks do not change.

pub mod tcp;
pub mod udp;
