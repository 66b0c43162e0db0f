//! # gapsync-daemon
//!
//! Plumbing shared by `gapsync-sender` and `gapsync-receiver`, kept out of the I/O-free
//! protocol crate: finding and loading hardware profiles, log files, durable file writes,
//! systemd readiness, rate-limited warnings, and the
//! control socket of a running daemon (`pipes`, `pipe stop|start`, `reload`).

pub mod alarm;
pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod durable;
pub mod fields;
pub mod folders;
pub mod journal;
pub mod keys;
pub mod logging;
pub mod origin;
pub mod profiles;
pub mod ratelimit;
pub mod tls;

/// `e` and its causes as `outer: inner: ...`, as anyhow's `{:#}` shows an error: the text a
/// config problem shows for an error with a source (a file that cannot be read).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Tells systemd (`Type=notify`) that the daemon is ready. Does nothing outside systemd.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd that the service is ready");
    }
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}
