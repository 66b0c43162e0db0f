//! A pipe's replay state: what makes a transfer sent again (after a lost reply, a reconnect, a
//! restart, a diode's repeated pass) land once, whatever the sink.
//!
//! - The done log ([`DoneLog`]): the ids of committed transfers, in the pipe's state folder
//!   (`<state_dir>/receiver/<from>/<name>/done.log`), opened by the pipe and handed to its sink.
//! - The staging journal ([`OpenLog`]): the Opens of staged partials, kept by a sink that
//!   stages files next to the partials it describes, so that one syncfs of their filesystem
//!   makes both durable.
//!
//! Versions before pipes kept the done log in the directory sink's staging folder;
//! [`open_done_log`] moves its records (each with its time) into the state folder at start,
//! durably, then removes the old file. Interrupted, the next start merges again: no record is
//! lost and none counts twice.

mod done_log;
mod open_log;

use std::io;
use std::path::Path;
use std::time::Duration;

pub use done_log::DoneLog;
pub use open_log::OpenLog;

/// The done log's file name, in the pipe's state folder (and, before pipes, in staging).
pub const DONE_LOG: &str = "done.log";

/// Opens the pipe's done log in `state` (created if missing), first adopting the records of a
/// done log an earlier version kept in `legacy` (the sink's staging folder).
pub fn open_done_log(
    state: &Path,
    legacy: Option<&Path>,
    retention: Duration,
) -> io::Result<DoneLog> {
    std::fs::create_dir_all(state)?;
    let mut done = DoneLog::open(&state.join(DONE_LOG), retention)?;
    let Some(old) = legacy.map(|d| d.join(DONE_LOG)).filter(|p| p.exists()) else {
        return Ok(done);
    };
    let added = done.absorb(&old)?;
    std::fs::remove_file(&old)?;
    if let Some(dir) = old.parent() {
        gapsync_daemon::durable::fsync_dir(dir)?;
    }
    tracing::info!(records = added, from_file = %old.display(), to_file = %done.path().display(), "moved the done log of an earlier version into the pipe's state folder");
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_log_in_staging_moves_into_the_state_folder_and_keeps_every_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let (staging, state) = (dir.path().join("staging"), dir.path().join("state"));
        std::fs::create_dir_all(&staging).expect("staging");
        std::fs::create_dir_all(&state).expect("state");
        let hour = Duration::from_secs(3600);
        let mut old = DoneLog::open(&staging.join(DONE_LOG), hour).expect("old");
        old.record_all(&[1, 2]).expect("record");
        drop(old);
        // A record already moved by an interrupted start is not counted twice.
        let mut new = DoneLog::open(&state.join(DONE_LOG), hour).expect("new");
        new.record_all(&[2, 3]).expect("record");
        drop(new);
        let done = open_done_log(&state, Some(&staging), hour).expect("open");
        assert!([1, 2, 3].iter().all(|id| done.contains(*id)));
        assert_eq!(done.records(), 3);
        assert!(!staging.join(DONE_LOG).exists(), "the old file is gone");
        drop(done);
        let again = open_done_log(&state, Some(&staging), hour).expect("reopen");
        assert!([1, 2, 3].iter().all(|id| again.contains(*id)));
    }
}
