//! A pipe's counters for the current day (files, bytes), kept in a small file in the state
//! folder so that "what moved today" survives a restart.
//!
//! The file is rewritten durably at each summary and at shutdown; a crash loses at most what
//! moved since the last summary. The day follows `log_time` (UTC or local).

use std::io;
use std::path::{Path, PathBuf};

/// Today's totals of one pipe, fed with the process's own counters (since start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCounters {
    path: PathBuf,
    /// `YYYY-MM-DD` the totals are for.
    day: String,
    files: u64,
    bytes: u64,
    /// The process counters already added in.
    seen: (u64, u64),
}

impl DayCounters {
    /// Reads the counters kept at `path`; they count for `today` only if they were kept on the
    /// same day. A missing or unreadable file starts at zero.
    pub fn open(path: &Path, today: &str) -> Self {
        let kept = std::fs::read_to_string(path).ok().and_then(|t| parse(&t));
        let (files, bytes) = match kept {
            Some((day, files, bytes)) if day == today => (files, bytes),
            _ => (0, 0),
        };
        Self {
            path: path.to_path_buf(),
            day: today.to_owned(),
            files,
            bytes,
            seen: (0, 0),
        }
    }

    /// Adds what the process counted since the last call (`files` and `bytes` since start) and
    /// returns today's totals. On a new day the totals start again from what came since.
    pub fn update(&mut self, today: &str, files: u64, bytes: u64) -> (u64, u64) {
        if self.day != today {
            self.day = today.to_owned();
            (self.files, self.bytes) = (0, 0);
        }
        self.files += files.saturating_sub(self.seen.0);
        self.bytes += bytes.saturating_sub(self.seen.1);
        self.seen = (files, bytes);
        (self.files, self.bytes)
    }

    /// The day the totals are for.
    pub fn day(&self) -> &str {
        &self.day
    }

    /// Writes the totals durably (temporary file, fsync, rename, fsync of the folder).
    pub fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = format!(
            "# gapsync day counters: day files bytes\n{} {} {}\n",
            self.day, self.files, self.bytes
        );
        crate::durable::write_atomic(&self.path, text.as_bytes())
    }
}

fn parse(text: &str) -> Option<(String, u64, u64)> {
    let line = text.lines().find(|l| !l.starts_with('#'))?;
    let mut it = line.split_whitespace();
    let day = it.next()?.to_owned();
    Some((day, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_a_restart_on_the_same_day_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pipe").join("counters");
        let mut c = DayCounters::open(&path, "2026-11-21");
        assert_eq!(c.update("2026-11-21", 3, 300), (3, 300));
        assert_eq!(c.update("2026-11-21", 5, 500), (5, 500));
        c.save().expect("save");
        // A restart: the process counts from zero again.
        let mut c = DayCounters::open(&path, "2026-11-21");
        assert_eq!(c.update("2026-11-21", 0, 0), (5, 500));
        assert_eq!(c.update("2026-11-21", 2, 20), (7, 520));
        c.save().expect("save");
        // Started the next day: yesterday's counts are not today's.
        let mut c = DayCounters::open(&path, "2026-11-22");
        assert_eq!(c.update("2026-11-22", 1, 1), (1, 1));
        assert_eq!(c.day(), "2026-11-22");
    }

    #[test]
    fn a_new_day_while_running_starts_from_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = DayCounters::open(&dir.path().join("counters"), "2026-11-21");
        assert_eq!(c.update("2026-11-21", 10, 1000), (10, 1000));
        assert_eq!(c.update("2026-11-22", 12, 1200), (2, 200));
        assert_eq!(c.update("2026-11-22", 12, 1200), (2, 200));
    }

    #[test]
    fn a_damaged_file_starts_at_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("counters");
        std::fs::write(&path, "garbage").expect("write");
        let mut c = DayCounters::open(&path, "2026-11-21");
        assert_eq!(c.update("2026-11-21", 1, 2), (1, 2));
    }
}
