//! The in-flight records of one pipe: what is durably known about each transfer not yet
//! delivered (id, path, size, mtime, acknowledged offset). A record is durable before the
//! transfer's first frame is sent, so that after a crash the same file is resent under the
//! same id: a receiver that already committed it answers OK without writing it again.
//!
//! Kept in one journal, `<pipe state>/inflight.log`, one line per change:
//! `P <id hex> <size> <mtime_ns> <acked> <path>` puts the record of `path` (the path is last
//! and holds no control character), `D <id hex> <path>` removes it.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use gapsync_daemon::durable::create_dir_durable;
use gapsync_daemon::journal::Journal;
use serde::{Deserialize, Serialize};

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

impl InFlight {
    fn line(&self) -> String {
        format!(
            "P {:016x} {} {} {} {}",
            self.transfer, self.size, self.mtime_ns, self.acked, self.path
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut it = line.splitn(6, ' ');
        if it.next()? != "P" {
            return None;
        }
        Some(Self {
            transfer: u64::from_str_radix(it.next()?, 16).ok()?,
            size: it.next()?.parse().ok()?,
            mtime_ns: it.next()?.parse().ok()?,
            acked: it.next()?.parse().ok()?,
            path: it.next()?.to_owned(),
        })
    }
}

/// The in-flight records of one pipe.
#[derive(Debug)]
pub struct InFlightStore {
    journal: Journal,
    by_path: HashMap<String, InFlight>,
    /// A record that must be durable before the next frame was written.
    must_sync: bool,
}

impl InFlightStore {
    /// Loads every record (also those of the one-file-per-record layout of earlier versions,
    /// `<pipe state>/inflight/*.toml`, which are moved into the journal).
    pub fn open(pipe_state: &Path) -> anyhow::Result<Self> {
        create_dir_durable(pipe_state)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", pipe_state.display()))?;
        let path = pipe_state.join("inflight.log");
        let (journal, lines) = Journal::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        let mut by_path = HashMap::new();
        for line in &lines {
            if let Some(r) = InFlight::parse(line) {
                by_path.insert(r.path.clone(), r);
            } else if let Some((id, p)) = line
                .strip_prefix("D ")
                .and_then(|rest| rest.split_once(' '))
            {
                if by_path
                    .get(p)
                    .is_some_and(|r: &InFlight| format!("{:016x}", r.transfer) == id)
                {
                    by_path.remove(p);
                }
            } else {
                tracing::warn!(journal = %path.display(), line, "skipping an unreadable in-flight record; its file will be sent as a new transfer");
            }
        }
        let old = pipe_state.join("inflight");
        for r in load_old_records(&old) {
            by_path.entry(r.path.clone()).or_insert(r);
        }
        let mut store = Self {
            journal,
            by_path,
            must_sync: false,
        };
        store.compact()?;
        if old.is_dir() {
            fs::remove_dir_all(&old)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", old.display()))?;
        }
        Ok(store)
    }

    fn compact(&mut self) -> io::Result<()> {
        let live: Vec<String> = self.by_path.values().map(InFlight::line).collect();
        self.journal.compact(live.iter().map(String::as_str))
    }

    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.journal.wants_compaction(self.by_path.len()) {
            self.compact()?;
        }
        Ok(())
    }

    /// The record for a spool path, if one survived from an earlier run.
    pub fn get(&self, path: &str) -> Option<&InFlight> {
        self.by_path.get(path)
    }

    /// All records (for dropping those whose files are gone).
    pub fn paths(&self) -> Vec<String> {
        self.by_path.keys().cloned().collect()
    }

    /// Writes the record of a new transfer, replacing the one for its path. It is durable
    /// after the next [`Self::sync`], which comes before the first frame of the transfer is
    /// sent (one fdatasync for every file of a frame).
    pub fn put(&mut self, r: InFlight) -> io::Result<()> {
        self.must_sync = true;
        self.record(r)
    }

    /// Records acknowledged progress: written at once (it survives a kill of the sender) but
    /// not worth an fsync of its own (it only saves resending after a crash); it becomes
    /// durable with the next new transfer's record.
    pub fn update(&mut self, r: InFlight) -> io::Result<()> {
        self.record(r)?;
        self.journal.write_out()
    }

    fn record(&mut self, r: InFlight) -> io::Result<()> {
        self.journal.append(&r.line())?;
        self.by_path.insert(r.path.clone(), r);
        self.maybe_compact()
    }

    /// True when a new transfer's record waits for [`Self::sync`].
    pub fn needs_sync(&self) -> bool {
        self.must_sync
    }

    /// Makes every new transfer's record written so far durable (nothing to do when only
    /// progress was recorded).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.must_sync {
            self.journal.sync()?;
            self.must_sync = false;
        }
        Ok(())
    }

    /// Removes the record of `path` (not synced: a stale record only makes a restarted sender
    /// offer the file again under the same id, which the receiver answers without writing).
    pub fn remove(&mut self, path: &str) -> io::Result<()> {
        if let Some(r) = self.by_path.remove(path) {
            self.journal
                .append(&format!("D {:016x} {}", r.transfer, r.path))?;
            self.maybe_compact()?;
        }
        Ok(())
    }
}

/// Records of the one-file-per-record layout (`<id>.toml` files).
fn load_old_records(dir: &Path) -> Vec<InFlight> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| toml::from_str(&fs::read_to_string(p).ok()?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(transfer: u64, path: &str, acked: u64) -> InFlight {
        InFlight {
            transfer,
            path: path.into(),
            size: 9,
            mtime_ns: -5,
            acked,
        }
    }

    #[test]
    fn records_survive_reopen_replacing_and_removing() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = InFlightStore::open(dir.path()).expect("open");
        s.put(rec(1 << 32 | 1, "a/b c", 0)).expect("put");
        s.put(rec(2 << 32 | 1, "a/b c", 4)).expect("replace");
        s.put(rec(2 << 32 | 2, "gone", 0)).expect("put");
        s.remove("gone").expect("remove");
        s.sync().expect("sync");
        drop(s);
        let s = InFlightStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get("a/b c"), Some(&rec(2 << 32 | 1, "a/b c", 4)));
        assert_eq!(s.paths(), ["a/b c"]);
    }

    #[test]
    fn records_of_the_old_layout_are_moved_into_the_journal() {
        let dir = tempfile::tempdir().expect("tmp");
        let old = dir.path().join("inflight");
        fs::create_dir_all(&old).expect("mkdir");
        let r = rec(3 << 32 | 7, "legacy.bin", 2);
        fs::write(old.join("x.toml"), toml::to_string(&r).expect("toml")).expect("write");
        let s = InFlightStore::open(dir.path()).expect("open");
        assert_eq!(s.get("legacy.bin"), Some(&r));
        assert!(
            !old.exists(),
            "the old folder is gone once its records are in the journal"
        );
        drop(s);
        let s = InFlightStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get("legacy.bin"), Some(&r));
    }
}
