//! Which pipes an operator stopped, and which pipes a reload dropped and when, in
//! `<state_dir>/pipe-states.json`. Written durably (temporary file, fsync, rename) before a
//! stop or start is answered, so a stopped pipe stays stopped across restarts until started.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file's name inside the state folder.
pub const FILE_NAME: &str = "pipe-states.json";

/// The pipe states file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StatesError {
    #[error("cannot read the pipe states {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the pipe states {path} are damaged ({source}); fix the file or move it away (every pipe then starts as running)"
    )]
    Damaged {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the pipe states {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What the file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// Pipes stopped by `pipe stop`.
    #[serde(default)]
    stopped: BTreeSet<String>,
    /// Pipes a reload removed from the config (their state kept aside), and when.
    #[serde(default)]
    dropped: BTreeMap<String, DateTime<Utc>>,
}

/// The persisted states of a daemon's pipes. Every change is on disk when the method returns.
#[derive(Debug)]
pub struct PipeStates {
    path: PathBuf,
    saved: Saved,
}

impl PipeStates {
    /// Loads `<state_dir>/pipe-states.json`; a missing file means every pipe runs.
    pub fn load(state_dir: &Path) -> Result<Self, StatesError> {
        let path = state_dir.join(FILE_NAME);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StatesError::Damaged {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Saved::default(),
            Err(source) => return Err(StatesError::Read { path, source }),
        };
        Ok(Self { path, saved })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `pipe` was stopped and not started since.
    pub fn is_stopped(&self, pipe: &str) -> bool {
        self.saved.stopped.contains(pipe)
    }

    /// The stopped pipes, sorted by name.
    pub fn stopped(&self) -> impl Iterator<Item = &str> {
        self.saved.stopped.iter().map(String::as_str)
    }

    /// Records `pipe` as stopped. Returns false (and writes nothing) if it already was.
    pub fn stop(&mut self, pipe: &str) -> Result<bool, StatesError> {
        self.change(|s| s.stopped.insert(pipe.to_owned()))
    }

    /// Records `pipe` as started. Returns false (and writes nothing) if it was not stopped.
    pub fn start(&mut self, pipe: &str) -> Result<bool, StatesError> {
        self.change(|s| s.stopped.remove(pipe))
    }

    /// Records that a reload removed `pipe` at `at`. A stopped pipe stays stopped should it
    /// come back.
    pub fn dropped_at(&mut self, pipe: &str, at: DateTime<Utc>) -> Result<(), StatesError> {
        self.change(|s| s.dropped.insert(pipe.to_owned(), at) != Some(at))
            .map(|_| ())
    }

    /// Forgets that `pipe` was dropped (a reload added it again); returns when it was dropped.
    pub fn restore(&mut self, pipe: &str) -> Result<Option<DateTime<Utc>>, StatesError> {
        let at = self.saved.dropped.get(pipe).copied();
        self.change(|s| s.dropped.remove(pipe).is_some())?;
        Ok(at)
    }

    /// The dropped pipes and when, sorted by name.
    pub fn dropped(&self) -> impl Iterator<Item = (&str, DateTime<Utc>)> {
        self.saved.dropped.iter().map(|(n, t)| (n.as_str(), *t))
    }

    /// Applies `edit` to a copy; writes it if `edit` says it changed, then keeps it.
    fn change(&mut self, edit: impl FnOnce(&mut Saved) -> bool) -> Result<bool, StatesError> {
        let mut next = self.saved.clone();
        if !edit(&mut next) {
            return Ok(false);
        }
        let mut bytes = serde_json::to_vec_pretty(&next).unwrap_or_default();
        bytes.push(b'\n');
        crate::durable::write_atomic(&self.path, &bytes).map_err(|source| StatesError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.saved = next;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn a_stopped_pipe_stays_stopped_after_reloading_until_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut states = PipeStates::load(dir.path()).expect("load");
        assert!(!states.is_stopped("scada"));
        assert!(states.stop("scada").expect("stop"));
        assert!(!states.stop("scada").expect("stop again"), "no change");
        let mut again = PipeStates::load(dir.path()).expect("reload");
        assert!(again.is_stopped("scada"), "survives a restart");
        assert!(!again.is_stopped("other"));
        assert!(again.start("scada").expect("start"));
        assert!(!again.start("scada").expect("start again"));
        let third = PipeStates::load(dir.path()).expect("reload");
        assert_eq!(third.stopped().count(), 0);
    }

    #[test]
    fn dropped_pipes_are_kept_with_their_time_until_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut states = PipeStates::load(dir.path()).expect("load");
        states.stop("old").expect("stop");
        states
            .dropped_at("old", at("2026-12-03T10:00:00Z"))
            .expect("drop");
        let mut again = PipeStates::load(dir.path()).expect("reload");
        let dropped: Vec<_> = again.dropped().collect();
        assert_eq!(dropped, [("old", at("2026-12-03T10:00:00Z"))]);
        assert_eq!(
            again.restore("old").expect("restore"),
            Some(at("2026-12-03T10:00:00Z"))
        );
        assert_eq!(again.restore("old").expect("restore"), None);
        let third = PipeStates::load(dir.path()).expect("reload");
        assert_eq!(third.dropped().count(), 0);
        assert!(
            third.is_stopped("old"),
            "a stopped pipe that comes back is still stopped"
        );
    }

    #[test]
    fn the_file_is_readable_json_and_damage_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut states = PipeStates::load(dir.path()).expect("load");
        states.stop("b").expect("stop");
        states.stop("a").expect("stop");
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["stopped"], serde_json::json!(["a", "b"]));
        std::fs::write(dir.path().join(FILE_NAME), b"{\"stopped\": [").expect("damage");
        let err = PipeStates::load(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        assert!(matches!(err, StatesError::Damaged { .. }));
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("missing-folder");
        let mut states = PipeStates::load(&gone).expect("load");
        assert!(matches!(states.stop("x"), Err(StatesError::Write { .. })));
        assert!(!states.is_stopped("x"), "memory follows the disk");
    }
}
