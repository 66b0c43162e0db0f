//! An append-only journal of text lines: the cheap way to keep small durable records of many
//! files. One append per change and one fdatasync per group, instead of a file per record
//! (whose creation and removal cost an inode allocation each, the dominant cost with thousands
//! of small files per second on ext4).
//!
//! A line without its newline at the end of the file was torn by a crash and is ignored: it
//! was never made durable. The owner rewrites the journal with only its live lines
//! ([`Journal::compact`]) when dead lines dominate.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

/// Rewrite when the journal holds this many lines more than `DEAD_FACTOR` times the live ones.
const COMPACT_SLACK: usize = 10_000;
const DEAD_FACTOR: usize = 4;

/// An open journal, appended to at the end.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
    /// Appended lines not yet written (written at the next sync, or when large).
    buf: String,
    unsynced: bool,
}

/// Appended lines are written to the file once this many bytes are buffered, at the latest.
const WRITE_AT: usize = 64 << 10;

impl Journal {
    /// Opens (or creates) `path`; returns the journal and its whole lines, in order.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<String>)> {
        let mut lines = Vec::new();
        let mut whole = 0u64;
        if let Ok(f) = File::open(path) {
            let mut reader = BufReader::new(f);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                if reader.read_until(b'\n', &mut raw)? == 0 {
                    break;
                }
                if raw.ends_with(b"\n") {
                    whole += raw.len() as u64;
                }
                if let Some(line) = raw
                    .strip_suffix(b"\n")
                    .and_then(|l| std::str::from_utf8(l).ok())
                {
                    lines.push(line.to_owned());
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // Cut a torn tail, so that the next line does not continue it.
        if file.metadata()?.len() > whole {
            OpenOptions::new().write(true).open(path)?.set_len(whole)?;
        }
        let j = Self {
            path: path.to_path_buf(),
            file,
            lines: lines.len(),
            buf: String::new(),
            unsynced: false,
        };
        Ok((j, lines))
    }

    /// Appends one line (without its newline); durable at the next [`Journal::sync`].
    pub fn append(&mut self, line: &str) -> io::Result<()> {
        self.append_all(std::iter::once(line))
    }

    /// Appends several lines (buffered: written at the next sync or once 64 KiB are waiting).
    pub fn append_all<'a>(&mut self, lines: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        for l in lines {
            self.buf.push_str(l);
            self.buf.push('\n');
            self.lines += 1;
        }
        if self.buf.len() >= WRITE_AT {
            self.write_buffered()?;
        }
        Ok(())
    }

    /// Writes the buffered lines to the file without waiting for the disk: for a caller that
    /// makes the whole filesystem durable itself (syncfs), after which it calls
    /// [`Journal::mark_synced`].
    pub fn write_out(&mut self) -> io::Result<()> {
        self.write_buffered()
    }

    /// Notes that the written lines were made durable by other means (a syncfs).
    pub fn mark_synced(&mut self) {
        if self.buf.is_empty() {
            self.unsynced = false;
        }
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(self.buf.as_bytes())?;
            self.buf.clear();
            self.unsynced = true;
        }
        Ok(())
    }

    /// Makes every appended line durable (one write and one fdatasync; nothing when nothing
    /// was appended).
    pub fn sync(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// True when a journal with `live` live lines holds enough dead ones to be rewritten.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.lines > live * DEAD_FACTOR + COMPACT_SLACK
    }

    /// Replaces the journal, atomically and durably, with exactly `live`.
    pub fn compact<'a>(&mut self, live: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        let mut text = String::new();
        let mut n = 0;
        for l in live {
            text.push_str(l);
            text.push('\n');
            n += 1;
        }
        crate::durable::write_atomic(&self.path, text.as_bytes())?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = n;
        self.buf.clear();
        self.unsynced = false;
        Ok(())
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Journal {
    /// Writes what is still buffered (not synced: lines that needed durability were synced).
    fn drop(&mut self) {
        let _ = self.write_buffered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_reopen_a_torn_line_is_dropped_and_compaction_keeps_only_live() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("j.log");
        let (mut j, lines) = Journal::open(&p).expect("open");
        assert!(lines.is_empty());
        j.append("a 1").expect("append");
        j.append_all(["b 2", "c 3"]).expect("append");
        j.sync().expect("sync");
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open")
            .write_all(b"torn wit")
            .expect("torn");
        let (mut j, lines) = Journal::open(&p).expect("reopen");
        assert_eq!(
            lines,
            ["a 1", "b 2", "c 3"],
            "the torn line is not a record"
        );
        j.append("e 5").expect("append after a torn tail");
        j.sync().expect("sync");
        let (mut j, lines) = Journal::open(&p).expect("reopen");
        assert_eq!(
            lines,
            ["a 1", "b 2", "c 3", "e 5"],
            "the tail was cut first"
        );
        assert!(!j.wants_compaction(4));
        j.compact(["c 3"]).expect("compact");
        j.append("d 4").expect("append after compaction");
        j.sync().expect("sync");
        let (_, lines) = Journal::open(&p).expect("reopen");
        assert_eq!(lines, ["c 3", "d 4"]);
    }
}
