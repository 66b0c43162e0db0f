//! The Opens of the partials staged in one pipe's staging folder, in one journal
//! (`opens.log`): `O <id hex> <size> <mtime_ns> <path>` when a partial is created (the path is
//! last and holds no control character), `X <id hex>` when it was landed or discarded. It lets
//! a restarted receiver resume a partial, and finish a commit interrupted between the done
//! record and the rename, without a metadata file per transfer.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use gapsync_daemon::journal::Journal;
use gapsync_protocol::OpenFile;

/// Staged Opens by transfer id.
#[derive(Debug)]
pub struct OpenLog {
    journal: Journal,
    opens: HashMap<u64, OpenFile>,
}

fn line(id: u64, o: &OpenFile) -> String {
    format!("O {id:016x} {} {} {}", o.size, o.mtime_ns, o.path)
}

fn parse(line: &str) -> Option<(u64, Option<OpenFile>)> {
    let mut it = line.splitn(5, ' ');
    let tag = it.next()?;
    let id = u64::from_str_radix(it.next()?, 16).ok()?;
    match tag {
        "X" => Some((id, None)),
        "O" => Some((
            id,
            Some(OpenFile {
                size: it.next()?.parse().ok()?,
                mtime_ns: it.next()?.parse().ok()?,
                path: it.next()?.to_owned(),
            }),
        )),
        _ => None,
    }
}

impl OpenLog {
    /// Loads the journal at `path` and rewrites it with the live entries only.
    pub fn open(path: &Path) -> io::Result<Self> {
        let (journal, lines) = Journal::open(path)?;
        let mut opens = HashMap::new();
        for l in &lines {
            match parse(l) {
                Some((id, Some(o))) => {
                    opens.insert(id, o);
                }
                Some((id, None)) => {
                    opens.remove(&id);
                }
                None => {
                    tracing::warn!(journal = %path.display(), line = %l, "skipping an unreadable line of the staging journal")
                }
            }
        }
        let mut log = Self { journal, opens };
        log.compact()?;
        Ok(log)
    }

    fn compact(&mut self) -> io::Result<()> {
        let live: Vec<String> = self.opens.iter().map(|(id, o)| line(*id, o)).collect();
        self.journal.compact(live.iter().map(String::as_str))
    }

    /// The staged Open of `id`.
    pub fn get(&self, id: u64) -> Option<&OpenFile> {
        self.opens.get(&id)
    }

    /// Every staged transfer id.
    pub fn ids(&self) -> Vec<u64> {
        self.opens.keys().copied().collect()
    }

    /// Records the Open of a new partial (durable at the next [`Self::sync`]).
    pub fn insert(&mut self, id: u64, open: &OpenFile) -> io::Result<()> {
        self.journal.append(&line(id, open))?;
        self.opens.insert(id, open.clone());
        Ok(())
    }

    /// Records that these partials were landed or discarded.
    pub fn finish(&mut self, ids: &[u64]) -> io::Result<()> {
        let lines: Vec<String> = ids
            .iter()
            .filter(|id| self.opens.remove(id).is_some())
            .map(|id| format!("X {id:016x}"))
            .collect();
        self.journal.append_all(lines.iter().map(String::as_str))?;
        if self.journal.wants_compaction(self.opens.len()) {
            self.compact()?;
        }
        Ok(())
    }

    /// Makes every recorded Open durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.journal.sync()
    }

    /// Writes the recorded Opens to the file, for a syncfs to make durable.
    pub fn write_out(&mut self) -> io::Result<()> {
        self.journal.write_out()
    }

    /// Notes that a syncfs made the written Opens durable.
    pub fn mark_synced(&mut self) {
        self.journal.mark_synced();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_survive_reopen_until_finished() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("opens.log");
        let o = |path: &str| OpenFile {
            path: path.into(),
            size: 5,
            mtime_ns: -1,
        };
        let mut log = OpenLog::open(&p).expect("open");
        log.insert(1, &o("a b/c")).expect("insert");
        log.insert(2, &o("d")).expect("insert");
        log.finish(&[2]).expect("finish");
        log.sync().expect("sync");
        drop(log);
        let log = OpenLog::open(&p).expect("reopen");
        assert_eq!(log.ids(), [1]);
        assert_eq!(log.get(1), Some(&o("a b/c")));
    }
}
