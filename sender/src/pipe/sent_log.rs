//! The sent log of one pipe on the diode link: what was sent when, under which transfer id.
//!
//! Kept in `<pipe state>/sent.log`, one line per sent file:
//! `S <unix secs> <id hex> <size> <mtime_ns> <path>` (the path last, no control character).
//! It serves two purposes: `gapsync-sender resend` finds the files sent in a time range, and a
//! file that comes back into the spool unchanged (same path, size and mtime, as a resend moves
//! it) is sent again under its old id, so a receiver that landed it does not land it twice.
//! Entries older than the pipe's `keep_sent_for` are dropped, with the files in `sent_dir`.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use gapsync_daemon::journal::Journal;

/// One sent file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEntry {
    pub at: u64,
    pub id: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub path: String,
}

impl SentEntry {
    fn line(&self) -> String {
        format!(
            "S {} {:016x} {} {} {}",
            self.at, self.id, self.size, self.mtime_ns, self.path
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut it = line.splitn(6, ' ');
        if it.next()? != "S" {
            return None;
        }
        Some(Self {
            at: it.next()?.parse().ok()?,
            id: u64::from_str_radix(it.next()?, 16).ok()?,
            size: it.next()?.parse().ok()?,
            mtime_ns: it.next()?.parse().ok()?,
            path: it.next()?.to_owned(),
        })
    }
}

/// The sent log of one pipe (the newest entry per path).
#[derive(Debug)]
pub struct SentLog {
    journal: Journal,
    by_path: HashMap<String, SentEntry>,
}

impl SentLog {
    /// Opens (or creates) the log in `pipe_state`.
    pub fn open(pipe_state: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(pipe_state)?;
        let (journal, lines) = Journal::open(&pipe_state.join("sent.log"))?;
        let by_path = lines
            .iter()
            .filter_map(|l| SentEntry::parse(l))
            .map(|e| (e.path.clone(), e))
            .collect();
        Ok(Self { journal, by_path })
    }

    /// Reads the log of `pipe_state` without opening it for writing (the daemon may be
    /// appending): the newest entry per path. A missing log is empty.
    pub fn read(pipe_state: &Path) -> io::Result<Vec<SentEntry>> {
        let text = match std::fs::read_to_string(pipe_state.join("sent.log")) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut by_path: HashMap<String, SentEntry> = HashMap::new();
        for e in text.lines().filter_map(SentEntry::parse) {
            by_path.insert(e.path.clone(), e);
        }
        Ok(by_path.into_values().collect())
    }

    /// Records a sent file (written out at once; a crash may lose the last lines, which only
    /// makes a later resend of those files land them again).
    pub fn record(&mut self, e: SentEntry) -> io::Result<()> {
        self.journal.append(&e.line())?;
        self.journal.write_out()?;
        self.by_path.insert(e.path.clone(), e);
        if self.journal.wants_compaction(self.by_path.len()) {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> io::Result<()> {
        let live: Vec<String> = self.by_path.values().map(SentEntry::line).collect();
        self.journal.compact(live.iter().map(String::as_str))
    }

    /// The id `path` was sent under, if it was sent with this size and mtime.
    pub fn id_of(&self, path: &str, size: u64, mtime_ns: i64) -> Option<u64> {
        self.by_path
            .get(path)
            .filter(|e| e.size == size && e.mtime_ns == mtime_ns)
            .map(|e| e.id)
    }

    /// Drops entries sent before `before` (Unix seconds); returns them.
    pub fn expire(&mut self, before: u64) -> io::Result<Vec<SentEntry>> {
        let old: Vec<SentEntry> = self
            .by_path
            .values()
            .filter(|e| e.at < before)
            .cloned()
            .collect();
        if !old.is_empty() {
            for e in &old {
                self.by_path.remove(&e.path);
            }
            self.compact()?;
        }
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = SentLog::open(dir.path()).expect("open");
        for (at, path) in [(100, "a b.txt"), (200, "d/c.bin"), (300, "a b.txt")] {
            log.record(SentEntry {
                at,
                id: at * 7,
                size: 5,
                mtime_ns: 9,
                path: path.into(),
            })
            .expect("record");
        }
        drop(log);
        let mut log = SentLog::open(dir.path()).expect("reopen");
        assert_eq!(
            log.id_of("a b.txt", 5, 9),
            Some(2100),
            "the newest entry wins"
        );
        assert_eq!(
            log.id_of("a b.txt", 6, 9),
            None,
            "a changed file is a new transfer"
        );
        let mut got: Vec<(u64, String)> = SentLog::read(dir.path())
            .expect("read")
            .into_iter()
            .map(|e| (e.at, e.path))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [(200, "d/c.bin".to_owned()), (300, "a b.txt".to_owned())]
        );
        assert_eq!(log.expire(250).expect("expire").len(), 1);
        assert_eq!(log.id_of("d/c.bin", 5, 9), None);
    }
}
