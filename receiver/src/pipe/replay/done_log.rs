//! The durable record of committed transfers: one line `<transfer id hex> <unix seconds>` per
//! commit, appended and fsynced before the file is renamed into place.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gapsync_daemon::journal::Journal;

/// Committed transfer ids of one pipe, kept for a retention period.
#[derive(Debug)]
pub struct DoneLog {
    journal: Journal,
    done: HashMap<u64, u64>,
}

/// The records of a log's lines (unreadable lines are skipped).
fn parse(lines: &[String]) -> HashMap<u64, u64> {
    let mut done = HashMap::new();
    for line in lines {
        let mut it = line.split(' ');
        if let (Some(id), Some(t), None) = (it.next(), it.next(), it.next()) {
            if let (Ok(id), Ok(t)) = (u64::from_str_radix(id, 16), t.parse::<u64>()) {
                done.insert(id, t);
            }
        }
    }
    done
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DoneLog {
    /// Opens `path`, dropping records older than `retention` (the file is rewritten atomically).
    /// A torn last line from a crash is ignored: that commit was not durable.
    pub fn open(path: &Path, retention: Duration) -> io::Result<Self> {
        let (journal, lines) = Journal::open(path)?;
        let mut done = parse(&lines);
        let cutoff = unix_now().saturating_sub(retention.as_secs());
        done.retain(|_, t| *t >= cutoff);
        let mut log = Self { journal, done };
        if lines.len() != log.done.len() {
            log.compact()?;
        }
        Ok(log)
    }

    fn compact(&mut self) -> io::Result<()> {
        let live: Vec<String> = self
            .done
            .iter()
            .map(|(id, t)| format!("{id:016x} {t}"))
            .collect();
        self.journal.compact(live.iter().map(String::as_str))
    }

    /// True when `id` was committed within the retention period.
    pub fn contains(&self, id: u64) -> bool {
        self.done.contains_key(&id)
    }

    /// Records every id of a group durably, with one write and one fsync.
    pub fn record_all(&mut self, ids: &[u64]) -> io::Result<()> {
        let t = unix_now();
        let lines: Vec<String> = ids.iter().map(|id| format!("{id:016x} {t}")).collect();
        self.journal.append_all(lines.iter().map(String::as_str))?;
        self.journal.sync()?;
        for &id in ids {
            self.done.insert(id, t);
        }
        Ok(())
    }

    /// Removes `id`'s record durably (the log is rewritten atomically): a transfer recorded as
    /// done whose staged data vanished before it landed must be sent again.
    pub fn forget(&mut self, id: u64) -> io::Result<()> {
        if self.done.remove(&id).is_some() {
            self.compact()?;
        }
        Ok(())
    }

    /// Adds the records of another done log (at `path`) that this one lacks, each with its own
    /// time, durably (one write and one fsync). Returns how many were added.
    pub fn absorb(&mut self, path: &Path) -> io::Result<usize> {
        let (_, lines) = Journal::open(path)?;
        let new: Vec<(u64, u64)> = parse(&lines)
            .into_iter()
            .filter(|(id, _)| !self.done.contains_key(id))
            .collect();
        let text: Vec<String> = new.iter().map(|(id, t)| format!("{id:016x} {t}")).collect();
        self.journal.append_all(text.iter().map(String::as_str))?;
        self.journal.sync()?;
        self.done.extend(new.iter().copied());
        Ok(new.len())
    }

    /// How many transfers are recorded.
    #[cfg(test)]
    pub fn records(&self) -> usize {
        self.done.len()
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        self.journal.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn records_survive_reopen_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("done.log");
        let mut log = DoneLog::open(&p, Duration::from_secs(3600)).expect("open");
        log.record_all(&[0xabc]).expect("record");
        drop(log);
        let torn = format!("{:016x} {}", 0xffu64, unix_now());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open")
            .write_all(torn.as_bytes())
            .expect("torn");
        let log = DoneLog::open(&p, Duration::from_secs(3600)).expect("reopen");
        assert!(log.contains(0xabc));
        assert!(
            !log.contains(0xff),
            "a line without its newline was torn and must not count"
        );
    }
}
