//! The spool directory source.
//!
//! The rule for operators: write a file elsewhere (or under a name starting with `.` or ending
//! in `.tmp` / `.part`), then rename it into the spool. A file renamed in, or closed after
//! writing, is taken at once (inotify); a scan every `poll_interval` takes any other file once
//! it has been unchanged for `settle`. Dotfiles, dot-folders, `*.tmp`, `*.part` and symlinks
//! are never taken.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use gapsync_protocol::WirePath;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::SourceEvent;

/// What the scanner needs to know about its pipe.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub pipe: String,
    pub spool: PathBuf,
    /// Folders inside the spool that are not part of it (sent/, quarantine/).
    pub exclude: Vec<PathBuf>,
    pub settle: Duration,
    pub poll_interval: Duration,
}

/// True for names the scanner never takes.
pub fn ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
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
            }
            .run()
        })
}

struct Scanner {
    cfg: SpoolConfig,
    tx: mpsc::Sender<SourceEvent>,
    /// Symlinks already reported, so each is logged once, not at every scan.
    warned_links: std::cell::RefCell<std::collections::HashSet<PathBuf>>,
}

impl Scanner {
    fn run(self) {
        let (ev_tx, ev_rx) = std_mpsc::channel();
        let watcher = notify::recommended_watcher(ev_tx).and_then(|mut w| {
            w.watch(&self.cfg.spool, RecursiveMode::Recursive)?;
            Ok(w)
        });
        if let Err(e) = &watcher {
            tracing::warn!(pipe = %self.cfg.pipe, error = %e, "cannot watch the spool for new files; falling back to a scan every poll_interval (raise fs.inotify.max_user_watches if it is exhausted)");
        }
        if !self.scan(&self.cfg.spool, Some(self.cfg.settle)) {
            return;
        }
        loop {
            match ev_rx.recv_timeout(self.cfg.poll_interval) {
                Ok(Ok(event)) => {
                    if !self.on_event(event) {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::debug!(pipe = %self.cfg.pipe, error = %e, "watch error"),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if !self.scan(&self.cfg.spool, Some(self.cfg.settle)) {
                        return;
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(self.cfg.poll_interval);
                    if !self.scan(&self.cfg.spool, Some(self.cfg.settle)) {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one filesystem event; false when the pipe is gone.
    fn on_event(&self, event: notify::Event) -> bool {
        let complete = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(
                    RenameMode::To | RenameMode::Both | RenameMode::Any
                ))
                | EventKind::Create(CreateKind::Folder)
        );
        if !complete {
            return true;
        }
        // For a rename pair the last path is the new name.
        let Some(path) = event.paths.last() else {
            return true;
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => self.scan(path, None),
            Ok(meta) => self.consider(path, &meta, None),
            Err(_) => true,
        }
    }

    /// Walks `root`; files unchanged for `settle` (or all, with `None`) are sent.
    fn scan(&self, root: &Path, settle: Option<Duration>) -> bool {
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                let name = e.file_name().to_string_lossy();
                e.depth() == 0
                    || (!ignored_name(&name) && !self.cfg.exclude.iter().any(|x| x == e.path()))
            });
        for entry in walk.flatten() {
            if entry.file_type().is_symlink() {
                self.skip_symlink(entry.path());
            } else if entry.file_type().is_file() {
                let Ok(meta) = entry.metadata() else { continue };
                if !self.consider(entry.path(), &meta, settle) {
                    return false;
                }
            }
        }
        true
    }

    /// Symlinks are never followed (one could point anywhere on the host); said once per link.
    fn skip_symlink(&self, path: &Path) {
        let mut warned = self.warned_links.borrow_mut();
        if warned.len() > 10_000 {
            warned.clear();
        }
        if warned.insert(path.to_path_buf()) {
            tracing::warn!(pipe = %self.cfg.pipe, path = %path.display(), "symlink in the spool not followed: gapsync sends regular files only; copy or move the file itself in");
        }
    }

    /// Sends one file if it is eligible, given its `lstat`; false when the pipe is gone.
    fn consider(&self, path: &Path, meta: &std::fs::Metadata, settle: Option<Duration>) -> bool {
        let Ok(rel) = path.strip_prefix(&self.cfg.spool) else {
            return true;
        };
        if rel
            .components()
            .any(|c| ignored_name(&c.as_os_str().to_string_lossy()))
            || self.cfg.exclude.iter().any(|x| path.starts_with(x))
        {
            return true;
        }
        if meta.file_type().is_symlink() {
            self.skip_symlink(path);
            return true;
        }
        if !meta.is_file() {
            return true;
        }
        if let Some(settle) = settle {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok());
            if age.is_none_or(|a| a < settle) {
                return true;
            }
        }
        let event = match rel.to_str().map(WirePath::parse) {
            Some(Ok(p)) => SourceEvent::Found {
                rel: p.as_str().to_owned(),
                size: meta.len(),
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
        let (tx, mut rx) = mpsc::channel(64);
        let cfg = SpoolConfig {
            pipe: "t".into(),
            spool: spool.clone(),
            exclude: vec![spool.join("sent")],
            settle: Duration::ZERO,
            poll_interval: Duration::from_secs(3600),
        };
        let _h = spawn(cfg, tx).expect("spawn");
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
        assert_eq!(
            rx.blocking_recv(),
            Some(SourceEvent::Found {
                rel: "new.bin".into(),
                size: 1
            })
        );
    }
}
