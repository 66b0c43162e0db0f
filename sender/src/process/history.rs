//! `history` / `realtime` as in IoTDB: history = the objects present when the pipe was CREATED,
//! realtime = those that arrive afterwards.
//!
//! ```toml
//! [[pipe]]
//! history = true    # send what is already there when the pipe is created (default true)
//! realtime = true   # and what arrives afterwards (default true)
//! ```
//!
//! "Created" is the first start that finds no mark in the pipe's state folder: the mark (file
//! [`HistoryMark::FILE`]) is written then, once, durably (temporary file, fsync, rename, fsync of
//! the folder), and never at a later start. A pipe dropped and added again gets a new state
//! folder, so a new creation.
//!
//! The rule, and why not a time rule: an object is history when it was LISTED at creation with
//! the same size and mtime. Comparing the mtime with the creation time would be wrong for the
//! files operators move in later with `mv`, `cp -p` or `rsync -t`: they keep an old mtime but
//! arrived after the pipe was created, so a pipe with `history = false` must send them. And a file
//! present at creation but rewritten since (its size or mtime changed) is new content: realtime.
//! Sources that cannot list their objects (a table job) create the mark with an empty list and
//! compare their own watermark with [`HistoryMark::created`].
//!
//! How the policy calls it: when a pipe starts, before it takes any object,
//! `HistoryMark::open_or_create(state_dir, SystemTime::now(), || source_listing)` (the closure
//! runs only at creation); then for each object the source offers,
//! `mark.admits(history, realtime, key, size, mtime)`. An object refused stays where it is and is
//! counted (`not_history` / `not_realtime`). The mark holds one entry per object present at
//! creation (about 100 bytes each in memory); with `history = realtime = true` nothing is
//! looked up.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One object present when the pipe was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    /// The object's key (`/`-separated, relative to the source).
    pub key: String,
    pub size: u64,
    pub mtime: SystemTime,
}

/// The pipe's creation time and the objects present then.
#[derive(Debug, Clone)]
pub struct HistoryMark {
    created: SystemTime,
    present: HashMap<String, (u64, i128)>,
}

const HEADER: &str = "gapsync history mark 1";

impl HistoryMark {
    /// The mark's file name in the pipe's state folder.
    pub const FILE: &'static str = "history-mark";

    /// Reads the mark from `pipe_state_dir`, or, when there is none (the pipe is being
    /// created), writes one durably with `now` and the objects `list` returns, and returns it.
    /// Fails if the folder cannot be read or written, or if the mark is damaged (the error names
    /// the file; the operator can delete it to take the current objects as the history).
    pub fn open_or_create(
        pipe_state_dir: &Path,
        now: SystemTime,
        list: impl FnOnce() -> io::Result<Vec<Present>>,
    ) -> io::Result<Self> {
        let path = pipe_state_dir.join(Self::FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {e} (delete it to take the objects present now as the pipe's history)",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let present = list()?;
                let mark = Self {
                    created: now,
                    present: present
                        .into_iter()
                        .map(|p| (p.key, (p.size, nanos(p.mtime))))
                        .collect(),
                };
                gapsync_daemon::durable::create_dir_durable(pipe_state_dir)?;
                gapsync_daemon::durable::write_atomic(&path, mark.render().as_bytes())?;
                Ok(mark)
            }
            Err(e) => Err(e),
        }
    }

    /// When the pipe was created.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// How many objects were present at creation.
    pub fn len(&self) -> usize {
        self.present.len()
    }

    /// Whether no object was present at creation.
    #[allow(dead_code, reason = "the pair of `len`; no caller needs it yet")]
    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// Whether the object was present, with this size and mtime, when the pipe was created.
    pub fn is_history(&self, key: &str, size: u64, mtime: SystemTime) -> bool {
        self.present.get(key) == Some(&(size, nanos(mtime)))
    }

    /// Whether a pipe with these `history` / `realtime` switches takes the object.
    pub fn admits(
        &self,
        history: bool,
        realtime: bool,
        key: &str,
        size: u64,
        mtime: SystemTime,
    ) -> bool {
        match (history, realtime) {
            (true, true) => true,
            (false, false) => false,
            (true, false) => self.is_history(key, size, mtime),
            (false, true) => !self.is_history(key, size, mtime),
        }
    }

    fn render(&self) -> String {
        let mut out = format!("{HEADER}\ncreated\t{}\n", nanos(self.created));
        let mut keys: Vec<_> = self.present.iter().collect();
        keys.sort();
        for (key, (size, mtime)) in keys {
            out.push_str(&format!("{size}\t{mtime}\t{}\n", escape(key)));
        }
        out
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("the first line is not {HEADER:?}"));
        }
        let created = lines
            .next()
            .and_then(|l| l.strip_prefix("created\t"))
            .and_then(|n| n.parse::<i128>().ok())
            .ok_or("the second line is not `created<TAB>nanoseconds`")?;
        let mut present = HashMap::new();
        for (i, line) in lines.enumerate() {
            let bad = || format!("line {} is not `size<TAB>mtime<TAB>key`", i + 3);
            let mut f = line.splitn(3, '\t');
            let (Some(size), Some(mtime), Some(key)) = (f.next(), f.next(), f.next()) else {
                return Err(bad());
            };
            let size = size.parse().map_err(|_| bad())?;
            let mtime = mtime.parse().map_err(|_| bad())?;
            present.insert(unescape(key), (size, mtime));
        }
        Ok(Self {
            created: from_nanos(created).ok_or("the creation time is out of range")?,
            present,
        })
    }
}

/// Nanoseconds since the Unix epoch (negative before it).
fn nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn from_nanos(n: i128) -> Option<SystemTime> {
    let d = Duration::from_nanos(u64::try_from(n.unsigned_abs()).ok()?);
    if n >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// Keys are the last field of a line: only `%`, line feed and carriage return are escaped.
fn escape(key: &str) -> String {
    key.replace('%', "%25")
        .replace('\n', "%0A")
        .replace('\r', "%0D")
}

fn unescape(key: &str) -> String {
    key.replace("%0A", "\n")
        .replace("%0D", "\r")
        .replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn p(key: &str, size: u64, mtime: SystemTime) -> Present {
        Present {
            key: key.into(),
            size,
            mtime,
        }
    }

    #[test]
    fn the_mark_is_written_once_at_creation_and_read_back_at_later_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("pipes/scada");
        let odd = "odd\nname%0A\r.csv";
        let list = vec![
            p("a.csv", 10, t(1_000)),
            p(odd, 3, t(5)),
            p("old", 1, UNIX_EPOCH - Duration::from_secs(7)),
        ];
        let m = HistoryMark::open_or_create(&state, t(2_000), || Ok(list.clone())).expect("create");
        assert_eq!(m.created(), t(2_000));
        assert!(state.join(HistoryMark::FILE).is_file());
        assert!(!state.join(format!(".{}.tmp", HistoryMark::FILE)).exists());
        // A later start reads the mark: the listing is not taken again, the time is not moved.
        let again =
            HistoryMark::open_or_create(&state, t(9_000), || -> io::Result<Vec<Present>> {
                panic!("listed again at a later start")
            })
            .expect("open");
        assert_eq!(again.created(), t(2_000));
        assert_eq!(again.len(), 3);
        assert!(again.is_history("a.csv", 10, t(1_000)));
        assert!(again.is_history(odd, 3, t(5)));
        assert!(again.is_history("old", 1, UNIX_EPOCH - Duration::from_secs(7)));
    }

    #[test]
    fn a_file_moved_in_later_with_an_old_mtime_is_realtime_and_so_is_a_rewritten_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = HistoryMark::open_or_create(dir.path(), t(2_000), || {
            Ok(vec![p("a.csv", 10, t(1_000))])
        })
        .expect("create");
        // `mv` of an old file after creation: old mtime, but not listed.
        assert!(!m.is_history("moved.csv", 10, t(500)));
        // The listed file rewritten after creation.
        assert!(!m.is_history("a.csv", 11, t(1_000)));
        assert!(!m.is_history("a.csv", 10, t(2_500)));
        assert!(m.admits(false, true, "moved.csv", 10, t(500)));
        assert!(!m.admits(false, true, "a.csv", 10, t(1_000)));
        assert!(m.admits(true, false, "a.csv", 10, t(1_000)));
        assert!(!m.admits(true, false, "moved.csv", 10, t(500)));
        assert!(m.admits(true, true, "anything", 0, t(0)));
        assert!(!m.admits(false, false, "a.csv", 10, t(1_000)));
    }

    #[test]
    fn a_damaged_mark_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(HistoryMark::FILE);
        fs::write(
            &path,
            format!("{HEADER}\ncreated\t5\n12\tnot-a-time\tkey\n"),
        )
        .expect("write");
        let e = HistoryMark::open_or_create(dir.path(), t(1), || Ok(vec![])).expect_err("damaged");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("line 3"),
            "{msg}"
        );
    }

    #[test]
    fn a_failed_listing_writes_no_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e =
            HistoryMark::open_or_create(dir.path(), t(1), || Err(io::Error::other("scan failed")))
                .expect_err("listing failed");
        assert_eq!(e.to_string(), "scan failed");
        assert!(!dir.path().join(HistoryMark::FILE).exists());
    }
}
