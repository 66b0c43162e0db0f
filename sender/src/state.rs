//! The sender's durable session counter, and the transfer ids handed out from it.
//!
//! Transfer ids are `session << 32 | counter`. The session is incremented and fsynced at every
//! start, so an id is never reused, even after kill -9; it is never below the Unix time in
//! seconds, so a sender whose state folder was lost does not reuse ids either.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gapsync_daemon::durable::{create_dir_durable, write_atomic};

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
    let next = (last + 1).max(unix_now());
    anyhow::ensure!(
        next < 1 << 32,
        "session counter {next} in {} is exhausted",
        path.display()
    );
    write_atomic(&path, format!("{next}\n").as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(next)
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
}
