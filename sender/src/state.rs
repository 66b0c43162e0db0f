//! The sender's durable state: the session counter and one in-flight record per transfer.
//!
//! Transfer ids are `session << 32 | counter`. The session is incremented and fsynced at every
//! start, so an id is never reused, even after kill -9; it is never below the Unix time in
//! seconds, so a sender whose state folder was lost does not reuse ids either. An in-flight record (id, path, size,
//! mtime, acknowledged offset) is fsynced before the transfer's first frame, so that after a
//! crash the same file is resent under the same id: a receiver that already committed it
//! answers OK without writing it again.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gapsync_daemon::durable::{create_dir_durable, write_atomic};
use serde::{Deserialize, Serialize};

/// Loads, increments (to at least the Unix time in seconds) and durably stores the session
/// counter in `<state_dir>/sender/session`.
pub fn next_session(state_dir: &Path) -> anyhow::Result<u64> {
    let dir = state_dir.join("sender");
    create_dir_durable(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create state folder {}: {e}", dir.display()))?;
    let path = dir.join("session");
    let last = match fs::read_to_string(&path) {
        Ok(t) => t.trim().parse::<u64>().map_err(|_| {
            anyhow::anyhow!("{} is corrupt ({t:?}); it must hold the last session number. Put a number larger than any used before (e.g. the current Unix time) in it", path.display())
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    // Never below the clock: a sender whose state folder was wiped must not reuse the ids of
    // its earlier sessions, which the receiver's done log would take for duplicates.
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let next = (last + 1).max(clock);
    anyhow::ensure!(
        next < 1 << 32,
        "session counter {next} in {} is exhausted",
        path.display()
    );
    write_atomic(&path, format!("{next}\n").as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(next)
}

/// Hands out transfer ids `session << 32 | n`, never the same twice on this node: when `n`
/// runs out, the durable session counter is advanced and `n` starts again.
#[derive(Debug)]
pub struct IdSource {
    state_dir: PathBuf,
    inner: std::sync::Mutex<(u64, u64)>,
}

impl IdSource {
    /// Starts a new session (durably) and hands out its ids.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let session = next_session(state_dir)?;
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            inner: std::sync::Mutex::new((session, 1)),
        })
    }

    /// The current session, sent in every Hello.
    pub fn session(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// A transfer id never used before by this node.
    pub fn next(&self) -> anyhow::Result<u64> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 > u64::from(u32::MAX) {
            *g = (next_session(&self.state_dir)?, 1);
        }
        let id = g.0 << 32 | g.1;
        g.1 += 1;
        Ok(id)
    }
}

/// What is durably known about a transfer in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub transfer: u64,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// Bytes the receiver acknowledged as written (may lag behind; resending is harmless).
    pub acked: u64,
}

/// The in-flight records of one pipe, in `<pipe state>/inflight/<id>.toml`.
#[derive(Debug)]
pub struct InFlightStore {
    dir: PathBuf,
    by_path: HashMap<String, InFlight>,
    /// Records written with `durable` and not yet synced.
    unsynced: Vec<PathBuf>,
}

impl InFlightStore {
    /// Loads every record; unreadable ones are reported and removed (their files are resent).
    pub fn open(pipe_state: &Path) -> anyhow::Result<Self> {
        let dir = pipe_state.join("inflight");
        create_dir_durable(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let mut by_path = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            match fs::read_to_string(&path)
                .map_err(anyhow::Error::from)
                .and_then(|t| Ok(toml::from_str::<InFlight>(&t)?))
            {
                Ok(r) => {
                    by_path.insert(r.path.clone(), r);
                }
                Err(e) => {
                    tracing::warn!(record = %path.display(), error = %e, "dropping an unreadable in-flight record; its file will be sent as a new transfer");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            dir,
            by_path,
            unsynced: Vec::new(),
        })
    }

    fn file(&self, transfer: u64) -> PathBuf {
        self.dir.join(format!("{transfer:016x}.toml"))
    }

    /// The record for a spool path, if one survived from an earlier run.
    pub fn get(&self, path: &str) -> Option<&InFlight> {
        self.by_path.get(path)
    }

    /// All records (for dropping those whose files are gone).
    pub fn paths(&self) -> Vec<String> {
        self.by_path.keys().cloned().collect()
    }

    /// Writes a record. With `durable` it is made durable at the next [`Self::sync`], which
    /// must come before the first frame of the transfer is sent (grouping the fsyncs of many
    /// small files); without, it only saves resending after a crash.
    pub fn put(&mut self, r: InFlight, durable: bool) -> io::Result<()> {
        let text = toml::to_string(&r).map_err(io::Error::other)?;
        let path = self.file(r.transfer);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        if durable {
            self.unsynced.push(path);
        }
        let id = r.transfer;
        if let Some(old) = self.by_path.insert(r.path.clone(), r) {
            if old.transfer != id {
                let _ = fs::remove_file(self.file(old.transfer));
            }
        }
        Ok(())
    }

    /// Makes every record written with `durable` since the last call durable: an fsync of each
    /// (and of the folder) for one or two, one syncfs of the state filesystem for more.
    pub fn sync(&mut self) -> io::Result<()> {
        match self.unsynced.len() {
            0 => return Ok(()),
            1 | 2 => {
                for p in &self.unsynced {
                    match fs::File::open(p) {
                        Ok(f) => f.sync_all()?,
                        // Removed already (delivered): nothing to make durable.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                gapsync_daemon::durable::fsync_dir(&self.dir)?;
            }
            _ => gapsync_daemon::durable::sync_filesystem(&self.dir)?,
        }
        self.unsynced.clear();
        Ok(())
    }

    /// Removes the record of `path`.
    pub fn remove(&mut self, path: &str) -> io::Result<()> {
        if let Some(r) = self.by_path.remove(path) {
            match fs::remove_file(self.file(r.transfer)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_increase_across_restarts_and_a_lost_state_folder() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = next_session(dir.path()).expect("first");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(first >= now - 1, "a new state folder starts at the clock");
        assert_eq!(next_session(dir.path()).expect("second"), first + 1);
        // The state folder lost a moment later: the new sender does not reuse a session.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let wiped = tempfile::tempdir().expect("tmp");
        assert!(next_session(wiped.path()).expect("after wipe") > first + 1);
        // A counter ahead of the clock (many quick restarts) keeps counting up.
        fs::write(dir.path().join("sender/session"), format!("{}", now + 100)).expect("ahead");
        assert_eq!(next_session(dir.path()).expect("third"), now + 101);
        fs::write(dir.path().join("sender/session"), "garbage").expect("corrupt");
        let err = next_session(dir.path()).expect_err("corrupt counter is an error");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn ids_never_repeat_when_the_counter_runs_out() {
        let dir = tempfile::tempdir().expect("tmp");
        let ids = IdSource::open(dir.path()).expect("open");
        let s = ids.session();
        assert_eq!(ids.next().expect("id"), s << 32 | 1);
        ids.inner.lock().expect("lock").1 = u64::from(u32::MAX);
        assert_eq!(ids.next().expect("id"), s << 32 | u64::from(u32::MAX));
        assert_eq!(
            ids.next().expect("id"),
            (s + 1) << 32 | 1,
            "a new durable session, not a wrap to an old id"
        );
        assert_eq!(ids.session(), s + 1);
        assert_eq!(
            fs::read_to_string(dir.path().join("sender/session"))
                .expect("read")
                .trim(),
            (s + 1).to_string()
        );
    }

    #[test]
    fn records_survive_reopen_and_replacing_drops_the_old_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = InFlightStore::open(dir.path()).expect("open");
        let r = InFlight {
            transfer: 1 << 32 | 1,
            path: "a/b".into(),
            size: 9,
            mtime_ns: 5,
            acked: 0,
        };
        s.put(r.clone(), true).expect("put");
        s.put(
            InFlight {
                transfer: 2 << 32 | 1,
                ..r.clone()
            },
            true,
        )
        .expect("replace");
        let s = InFlightStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get("a/b").map(|r| r.transfer), Some(2 << 32 | 1));
        assert_eq!(
            fs::read_dir(dir.path().join("inflight"))
                .expect("ls")
                .count(),
            1
        );
    }
}
