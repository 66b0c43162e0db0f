//! Links: how frames leave the sender. A new link kind (UDP with FEC, TLS, offline media) is a
//! new module here that drives a session and asks [`crate::pipe::PipeWorker`] for frames.

pub mod tcp;
