//! The spool's inotify watch: one watch per folder (inotify is not recursive), and what its
//! events mean for the spool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::Scanner;

/// What the watch asks the kernel for: a file closed after writing or renamed in, a folder
/// made or renamed in, a folder renamed away. Not opens, writes, attribute changes or
/// deletions: the sender's own reads and removals would otherwise cost two events per file.
fn watch_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::MOVED_FROM
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
}

/// One inotify watch per folder of the spool (inotify is not recursive).
pub(super) struct Watch {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    buf: Vec<u8>,
    /// The limit of watches was reported (once).
    warned_limit: bool,
}

/// What an event means for the spool.
pub(super) enum Change {
    /// A file that may be complete.
    File(PathBuf),
    /// A folder made or renamed into the spool.
    NewFolder(PathBuf),
    /// A folder renamed away (or within: its new name comes as a `NewFolder`).
    GoneFolder(PathBuf),
    /// The kernel's queue overflowed: events were lost.
    Overflow,
}

impl Watch {
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(Self {
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
            buf: vec![0; 64 << 10],
            warned_limit: false,
        })
    }

    /// Watches `root` and every folder under it that the scanner would walk.
    pub(super) fn add_tree(&mut self, scanner: &Scanner, root: &Path) {
        if !scanner.within(root) {
            return;
        }
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || scanner.within(e.path()));
        for dir in walk.flatten().filter(|e| e.file_type().is_dir()) {
            match self.inotify.watches().add(dir.path(), watch_mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir.path().to_path_buf());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    if !std::mem::replace(&mut self.warned_limit, true) {
                        tracing::warn!(pipe = %scanner.cfg.pipe, folder = %dir.path().display(), "cannot watch every spool folder: the limit of inotify watches is reached; files there are found by the scan every poll_interval (raise fs.inotify.max_user_watches)");
                    }
                }
                // Gone or replaced meanwhile: its own event or the next scan tells.
                Err(_) => {}
            }
        }
    }

    /// Stops watching `root` and everything under it.
    pub(super) fn remove_tree(&mut self, root: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, p)| p.starts_with(root))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.inotify.watches().remove(wd);
        }
    }

    /// Waits up to `timeout` for events; `None` when none came.
    pub(super) fn wait(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<Change>>> {
        use rustix::event::{PollFd, PollFlags, poll};
        let ts = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&self.inotify, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(None),
            Err(rustix::io::Errno::INTR) => return Ok(Some(Vec::new())),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let events = match self.inotify.read_events(&mut self.buf) {
            Ok(events) => events,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Some(Vec::new())),
            Err(e) => return Err(e),
        };
        let mut changes = Vec::new();
        let mut ignored = Vec::new();
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                changes.push(Change::Overflow);
                continue;
            }
            if ev.mask.contains(EventMask::IGNORED) {
                ignored.push(ev.wd);
                continue;
            }
            let (Some(dir), Some(name)) = (self.dirs.get(&ev.wd), ev.name) else {
                continue;
            };
            let path = dir.join(name);
            let is_dir = ev.mask.contains(EventMask::ISDIR);
            if is_dir && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                changes.push(Change::NewFolder(path));
            } else if is_dir && ev.mask.contains(EventMask::MOVED_FROM) {
                changes.push(Change::GoneFolder(path));
            } else if !is_dir
                && ev
                    .mask
                    .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
            {
                changes.push(Change::File(path));
            }
        }
        for wd in ignored {
            self.dirs.remove(&wd);
        }
        Ok(Some(changes))
    }
}
