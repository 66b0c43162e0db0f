//! The spool directory source.
//!
//! The rule for operators: write a file elsewhere (or under a name starting with `.` or ending
//! in `.tmp` / `.part`), then rename it into the spool. A file renamed in, or closed after
//! writing, is taken at once (inotify); a scan every `poll_interval` takes any other file once
//! it has been unchanged for `settle`. Names matching the pipe's `ignore` globs (by default
//! dotfiles, dot-folders, `*.tmp`, `*.part`; [`ignore`]) are never taken, nor are symlinks
//! unless `symlinks = "preserve"` (then a link is sent as a link, never followed):
//! an ignored file that the scan finds unchanged for `settle` is counted in the summary
//! (`ignored_files`, `ignored_bytes`) and named once in an INFO line, at most
//! [`NAMES_PER_MINUTE`] a minute, then one line with the count of the rest. The pipe takes a
//! file only once no process has it open for writing ([`lease`]), so a file written in
//! place and held open is left until it is closed.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use gapsync_protocol::WirePath;
use tokio::sync::mpsc;

pub mod after_send;
pub mod config;
pub mod ignore;
pub mod lease;
mod links;
mod object;
mod watch;

use self::ignore::IgnoreRule;
pub use self::object::{SpoolSource, move_file};
use self::watch::{Change, Watch};
use super::SourceEvent;
use crate::pipe::PipeStats;

/// Ignored files and symlinks named per minute per pipe; the rest are counted in one line.
pub const NAMES_PER_MINUTE: u32 = 20;

/// What the scanner needs to know about its pipe.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub pipe: String,
    pub spool: PathBuf,
    /// Folders inside the spool that are not part of it (sent/, quarantine/).
    pub exclude: Vec<PathBuf>,
    pub settle: Duration,
    pub poll_interval: Duration,
    /// Names never taken.
    pub ignore: IgnoreRule,
    /// Whether symlinks are sent as links or skipped.
    pub symlinks: config::Symlinks,
    /// Where the ignored files are counted.
    pub stats: Arc<PipeStats>,
}

/// Starts the scanner on its own thread. It stops when the receiving side is dropped.
pub fn spawn(
    cfg: SpoolConfig,
    tx: mpsc::Sender<SourceEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::fs::create_dir_all(&cfg.spool)?;
    std::thread::Builder::new()
        .name(format!("spool-{}", cfg.pipe))
        .spawn(move || {
            Scanner {
                cfg,
                tx,
                warned_links: Default::default(),
                ignored: Default::default(),
            }
            .run()
        })
}

struct Scanner {
    cfg: SpoolConfig,
    tx: mpsc::Sender<SourceEvent>,
    /// Symlinks already reported, so each is logged once, not at every scan.
    warned_links: RefCell<Reported>,
    /// Ignored files already reported, and the count of the current full scan.
    ignored: RefCell<Ignored>,
}

/// Names said once each, at most [`NAMES_PER_MINUTE`] a minute; the rest are counted.
#[derive(Debug, Default)]
struct Reported {
    said: HashSet<PathBuf>,
    /// Paths met in the current full scan: at its end, `said` forgets the others, so a file
    /// removed and put back is named again and the set stays as small as the spool.
    seen: HashSet<PathBuf>,
    window: Option<Instant>,
    named: u32,
    unnamed: u64,
}

impl Reported {
    /// Whether `path` is to be named now (first time met and within the minute's budget).
    fn first_time(&mut self, path: &Path) -> Option<bool> {
        self.seen.insert(path.to_path_buf());
        if !self.said.insert(path.to_path_buf()) {
            return None;
        }
        self.window.get_or_insert_with(Instant::now);
        if self.named < NAMES_PER_MINUTE {
            self.named += 1;
            Some(true)
        } else {
            self.unnamed += 1;
            Some(false)
        }
    }

    /// At the end of a full scan: forgets paths no longer there; once the minute is over,
    /// how many were not named in it (to be said in one line).
    fn end_scan(&mut self) -> u64 {
        let seen = std::mem::take(&mut self.seen);
        self.said.retain(|p| seen.contains(p));
        if self
            .window
            .is_some_and(|w| w.elapsed() >= Duration::from_secs(60))
        {
            self.window = None;
            self.named = 0;
            return std::mem::take(&mut self.unnamed);
        }
        0
    }
}

/// Ignored files: which were named, and the tally of the full scan under way.
#[derive(Debug, Default)]
struct Ignored {
    reported: Reported,
    files: u64,
    bytes: u64,
}

impl Scanner {
    fn run(self) {
        let mut watch = Watch::new();
        match &mut watch {
            Ok(w) => w.add_tree(&self, &self.cfg.spool),
            Err(e) => {
                tracing::warn!(pipe = %self.cfg.pipe, error = %e, "cannot watch the spool for new files; falling back to a scan every poll_interval (raise fs.inotify.max_user_instances if it is exhausted)")
            }
        }
        let (ok, mut scanned, mut scan_took) = self.scan_spool();
        if !ok {
            return;
        }
        loop {
            // The pipe stopped (a reload removed or restarted it): this thread ends too.
            if self.tx.is_closed() {
                return;
            }
            let changes = match &mut watch {
                Ok(w) => match w.wait(self.cfg.poll_interval) {
                    Ok(changes) => changes,
                    Err(e) => {
                        tracing::warn!(pipe = %self.cfg.pipe, error = %e, "the spool watch failed; falling back to a scan every poll_interval");
                        watch = Err(e);
                        None
                    }
                },
                Err(_) => {
                    std::thread::sleep(self.cfg.poll_interval);
                    None
                }
            };
            let quiet = changes.is_none();
            let mut keep_going = match (changes, &mut watch) {
                (Some(changes), Ok(w)) => self.on_changes(w, changes),
                _ => true,
            };
            // The scan finds what events missed (a file written in place and still open, a
            // watch at its limit): after poll_interval of quiet, and while events keep coming
            // (a busy spool once starved it) every poll_interval too, but at most 1/50 of the
            // time: scanning a spool of 20,000 files every 200 ms while sending them cost the
            // sender 7% more CPU (BENCHMARKS.md, history).
            let due = if quiet {
                self.cfg.poll_interval
            } else {
                self.cfg.poll_interval.max(scan_took * 50)
            };
            if keep_going && scanned.elapsed() >= due {
                (keep_going, scanned, scan_took) = self.scan_spool();
            }
            if !keep_going {
                return;
            }
        }
    }

    /// Scans the whole spool (files unchanged for `settle`): whether the pipe is still there,
    /// when the scan ended and how long it took.
    fn scan_spool(&self) -> (bool, std::time::Instant, Duration) {
        let start = std::time::Instant::now();
        let ok = self.scan(&self.cfg.spool, Some(self.cfg.settle));
        if ok {
            self.end_full_scan();
        }
        let end = std::time::Instant::now();
        (ok, end, end - start)
    }

    /// Publishes the ignored files counted by a full scan and says how many were not named.
    fn end_full_scan(&self) {
        let pipe = &self.cfg.pipe;
        let mut ig = self.ignored.borrow_mut();
        let (files, bytes) = (std::mem::take(&mut ig.files), std::mem::take(&mut ig.bytes));
        self.cfg.stats.ignored_files.store(files, Relaxed);
        self.cfg.stats.ignored_bytes.store(bytes, Relaxed);
        let unnamed = ig.reported.end_scan();
        if unnamed > 0 {
            tracing::info!(pipe = %pipe, more = unnamed, ignored_files = files, ignored_bytes = bytes, "more ignored files not named (at most {NAMES_PER_MINUTE} names a minute); they stay in the spool");
        }
        let skipped = self.warned_links.borrow().seen.len() as u64;
        self.cfg.stats.skipped_links.store(skipped, Relaxed);
        let links = self.warned_links.borrow_mut().end_scan();
        if links > 0 {
            tracing::warn!(pipe = %pipe, more = links, "more symlinks in the spool not followed and not named (at most {NAMES_PER_MINUTE} names a minute)");
        }
    }

    /// Acts on a batch of watch events; false when the pipe is gone.
    fn on_changes(&self, w: &mut Watch, changes: Vec<Change>) -> bool {
        for change in changes {
            let ok = match change {
                Change::File(path) => match std::fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => true,
                    Ok(meta) => self.consider(&path, &meta, None),
                    Err(_) => true,
                },
                // Watched first, then walked: a file renamed in meanwhile is found either way.
                Change::NewFolder(path) => {
                    w.add_tree(self, &path);
                    !self.within(&path) || self.scan(&path, None)
                }
                Change::GoneFolder(path) => {
                    w.remove_tree(&path);
                    true
                }
                Change::Overflow => {
                    tracing::debug!(pipe = %self.cfg.pipe, "the spool watch overflowed; scanning");
                    self.scan_spool().0
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// True for a path the scanner takes (a file) or walks (a folder): inside the spool, with
    /// no ignored name on the way, not under an excluded folder.
    fn within(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.cfg.spool) else {
            return false;
        };
        self.cfg.ignore.matching_path(rel).is_none()
            && !self.cfg.exclude.iter().any(|x| path.starts_with(x))
    }

    /// Walks `root`; files unchanged for `settle` (or all, with `None`) are sent. With
    /// `settle` (the full scan) ignored files unchanged for it are counted and named; ignored
    /// folders are walked for that only, never watched or taken from.
    fn scan(&self, root: &Path, settle: Option<Duration>) -> bool {
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                let ignored_dir =
                    e.file_type().is_dir() && self.cfg.ignore.matching(e.file_name()).is_some();
                e.depth() == 0
                    || (!self.cfg.exclude.iter().any(|x| x == e.path())
                        && (settle.is_some() || !ignored_dir))
            });
        for entry in walk.flatten() {
            let Ok(rel) = entry.path().strip_prefix(&self.cfg.spool) else {
                continue;
            };
            if let Some(glob) = self.cfg.ignore.matching_path(rel) {
                if let (Some(settle), true) = (settle, entry.file_type().is_file()) {
                    if let Ok(meta) = entry.metadata() {
                        self.note_ignored(entry.path(), rel, &meta, glob, settle);
                    }
                }
            } else if entry.file_type().is_symlink() && !self.preserves_links() {
                self.skip_symlink(entry.path());
            } else if entry.file_type().is_file() || entry.file_type().is_symlink() {
                // walkdir does not follow links: this is the lstat.
                let Ok(meta) = entry.metadata() else { continue };
                if !self.consider(entry.path(), &meta, settle) {
                    return false;
                }
            }
        }
        true
    }

    /// Counts an ignored file unchanged for `settle` (younger ones may be temporary names
    /// about to be renamed) and names it the first time.
    fn note_ignored(
        &self,
        path: &Path,
        rel: &Path,
        meta: &std::fs::Metadata,
        glob: &str,
        settle: Duration,
    ) {
        if !settled(meta, settle) {
            return;
        }
        let mut ig = self.ignored.borrow_mut();
        ig.files += 1;
        ig.bytes += meta.len();
        if ig.reported.first_time(path) == Some(true) {
            tracing::info!(pipe = %self.cfg.pipe, path = %rel.display(), bytes = meta.len(), rule = glob, "file ignored: its name or a folder's on its path matches the pipe's `ignore` rule; it stays in the spool and is not sent (rename it, or change `ignore`)");
        }
    }

    /// True when symlinks are sent as links (`symlinks = "preserve"`).
    fn preserves_links(&self) -> bool {
        self.cfg.symlinks == config::Symlinks::Preserve
    }

    /// Symlinks are never followed (one could point anywhere on the host); said once per link,
    /// at most [`NAMES_PER_MINUTE`] a minute.
    fn skip_symlink(&self, path: &Path) {
        if self.warned_links.borrow_mut().first_time(path) == Some(true) {
            tracing::warn!(pipe = %self.cfg.pipe, path = %path.display(), "symlink in the spool not followed: gapsync sends regular files only; copy or move the file itself in");
        }
    }

    /// Sends one file if it is eligible, given its `lstat`; false when the pipe is gone.
    fn consider(&self, path: &Path, meta: &std::fs::Metadata, settle: Option<Duration>) -> bool {
        if !self.within(path) {
            return true;
        }
        let Ok(rel) = path.strip_prefix(&self.cfg.spool) else {
            return true;
        };
        if meta.file_type().is_symlink() && !self.preserves_links() {
            self.skip_symlink(path);
            return true;
        }
        if !meta.is_file() && !meta.file_type().is_symlink() {
            return true;
        }
        if settle.is_some_and(|s| !settled(meta, s)) {
            return true;
        }
        let event = match rel.to_str().map(WirePath::parse) {
            Some(Ok(p)) => SourceEvent::Found {
                rel: p.as_str().to_owned(),
                // A link is sent without data.
                size: if meta.is_file() { meta.len() } else { 0 },
                time: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            },
            Some(Err(e)) => SourceEvent::BadName {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
            None => SourceEvent::BadName {
                path: path.to_path_buf(),
                reason: "the name is not valid UTF-8, so it cannot be represented on the receiver"
                    .into(),
            },
        };
        self.tx.blocking_send(event).is_ok()
    }
}

/// True when the file was not modified for `settle`.
fn settled(meta: &std::fs::Metadata, settle: Duration) -> bool {
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok());
    age.is_some_and(|a| a >= settle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_files_are_taken() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool = dir.path().join("spool");
        for f in [
            "a.bin",
            "sub/b.bin",
            ".hidden",
            "c.tmp",
            "d.part",
            ".dot/e.bin",
            "sent/old.bin",
        ] {
            let p = spool.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, b"x").expect("write");
        }
        let (mut rx, _h) = watch_without_scans(&spool);
        let mut got = Vec::new();
        while got.len() < 2 {
            match rx.blocking_recv() {
                Some(SourceEvent::Found { rel, .. }) => got.push(rel),
                other => panic!("{other:?}"),
            }
        }
        got.sort();
        assert_eq!(got, ["a.bin", "sub/b.bin"]);
        // A file renamed in is noticed by the watcher without waiting for a scan.
        std::fs::write(dir.path().join("new.tmp"), b"y").expect("write");
        std::fs::rename(dir.path().join("new.tmp"), spool.join("new.bin")).expect("rename");
        match rx.blocking_recv() {
            Some(SourceEvent::Found { rel, size, time }) => {
                assert_eq!((rel.as_str(), size), ("new.bin", 1));
                let mtime = std::fs::metadata(spool.join("new.bin")).and_then(|m| m.modified());
                assert_eq!(Some(time), mtime.ok(), "the event carries the file's mtime");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Starts a scanner of `spool` (with `sent/` excluded) that scans only at start.
    fn watch_without_scans(
        spool: &Path,
    ) -> (mpsc::Receiver<SourceEvent>, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64);
        let cfg = SpoolConfig {
            pipe: "t".into(),
            spool: spool.to_path_buf(),
            exclude: vec![spool.join("sent")],
            settle: Duration::ZERO,
            poll_interval: Duration::from_secs(3600),
            ignore: IgnoreRule::default(),
            symlinks: Default::default(),
            stats: Default::default(),
        };
        (rx, spawn(cfg, tx).expect("spawn"))
    }

    #[test]
    fn a_file_no_event_reports_is_found_by_the_scan_while_events_keep_coming() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).expect("mkdir");
        let (tx, mut rx) = mpsc::channel(4096);
        let cfg = SpoolConfig {
            pipe: "t".into(),
            spool: spool.clone(),
            exclude: Vec::new(),
            settle: Duration::from_millis(200),
            poll_interval: Duration::from_millis(500),
            ignore: IgnoreRule::default(),
            symlinks: Default::default(),
            stats: Default::default(),
        };
        let _h = spawn(cfg, tx).expect("spawn");
        std::thread::sleep(Duration::from_millis(200));
        // Written in place and held open: no close, no rename, so no event; only a scan
        // takes it, once it has been unchanged for settle.
        let mut held = std::fs::File::create(spool.join("held.log")).expect("create");
        std::io::Write::write_all(&mut held, b"appended, never closed").expect("write");
        // Meanwhile a file is renamed in every 100 ms, so the watch is never quiet for
        // poll_interval.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let mut n = 0;
        let mut found_held = false;
        while std::time::Instant::now() < until && !found_held {
            let tmp = dir.path().join("x.tmp");
            std::fs::write(&tmp, b"x").expect("write");
            std::fs::rename(&tmp, spool.join(format!("busy-{n}.bin"))).expect("rename");
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(ev) = rx.try_recv() {
                found_held |= matches!(ev, SourceEvent::Found { rel, .. } if rel == "held.log");
            }
        }
        assert!(
            found_held,
            "the held-open file was not found within 5 s of busy events"
        );
        drop(held);
    }

    /// The next file found within 10 s, or `None`.
    fn next_found(rx: &mut mpsc::Receiver<SourceEvent>) -> Option<String> {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            match rx.try_recv() {
                Ok(SourceEvent::Found { rel, .. }) => return Some(rel),
                Ok(other) => panic!("{other:?}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        None
    }

    #[test]
    fn folders_made_moved_in_renamed_and_moved_out_are_followed_without_a_scan() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool = dir.path().join("spool");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&spool).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        // Everything below is found by the watch alone.
        let (mut rx, _h) = watch_without_scans(&spool);
        std::thread::sleep(Duration::from_millis(200));
        let put = |name: &str, into: &Path| {
            let tmp = dir.path().join("x.tmp");
            std::fs::write(&tmp, name).expect("write");
            std::fs::rename(&tmp, into.join(name)).expect("rename");
        };
        // A folder made in the spool, then a file renamed into it.
        std::fs::create_dir_all(spool.join("made/deep")).expect("mkdir");
        std::thread::sleep(Duration::from_millis(200));
        put("a.bin", &spool.join("made/deep"));
        assert_eq!(next_found(&mut rx).as_deref(), Some("made/deep/a.bin"));
        // A folder with files moved in whole; later files renamed into its sub-folder.
        std::fs::create_dir_all(outside.join("batch/sub")).expect("mkdir");
        put("b.bin", &outside.join("batch/sub"));
        std::fs::rename(outside.join("batch"), spool.join("batch")).expect("move in");
        assert_eq!(next_found(&mut rx).as_deref(), Some("batch/sub/b.bin"));
        put("c.bin", &spool.join("batch/sub"));
        assert_eq!(next_found(&mut rx).as_deref(), Some("batch/sub/c.bin"));
        // Renamed within the spool: its files are found again under the new path (the
        // operator renamed them), and later ones are named by it.
        std::fs::rename(spool.join("batch"), spool.join("renamed")).expect("rename");
        let mut again = [next_found(&mut rx), next_found(&mut rx)];
        again.sort();
        assert_eq!(
            again,
            [
                Some("renamed/sub/b.bin".to_owned()),
                Some("renamed/sub/c.bin".to_owned())
            ]
        );
        put("d.bin", &spool.join("renamed/sub"));
        assert_eq!(next_found(&mut rx).as_deref(), Some("renamed/sub/d.bin"));
        // Moved out: what lands there now is not the spool's. The excluded folder neither.
        std::fs::rename(spool.join("renamed"), outside.join("gone")).expect("move out");
        std::fs::create_dir_all(spool.join("sent")).expect("mkdir");
        std::thread::sleep(Duration::from_millis(200));
        put("e.bin", &outside.join("gone/sub"));
        put("f.bin", &spool.join("sent"));
        put("g.bin", &spool);
        assert_eq!(next_found(&mut rx).as_deref(), Some("g.bin"));
        assert_eq!(next_found_within(&mut rx, Duration::from_millis(500)), None);
    }

    #[test]
    fn names_are_said_once_each_at_most_twenty_a_minute_then_counted() {
        let mut r = Reported::default();
        let said: Vec<Option<bool>> = (0..25)
            .map(|i| r.first_time(Path::new(&format!("/s/{i}"))))
            .collect();
        assert_eq!(said.iter().filter(|s| **s == Some(true)).count(), 20);
        assert_eq!(said.iter().filter(|s| **s == Some(false)).count(), 5);
        assert_eq!(r.first_time(Path::new("/s/3")), None, "said once");
        assert_eq!(r.end_scan(), 0, "the rest is said when the minute is over");
        r.window = Instant::now().checked_sub(Duration::from_secs(61));
        // The next scan meets only some of them: the others are forgotten.
        r.first_time(Path::new("/s/0"));
        assert_eq!(r.end_scan(), 5);
        assert_eq!(r.first_time(Path::new("/s/0")), None);
        assert_eq!(
            r.first_time(Path::new("/s/7")),
            Some(true),
            "gone, back: named again"
        );
    }

    fn next_found_within(
        rx: &mut mpsc::Receiver<SourceEvent>,
        wait: Duration,
    ) -> Option<SourceEvent> {
        std::thread::sleep(wait);
        rx.try_recv().ok()
    }
}
