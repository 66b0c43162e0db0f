//! The spool as a [`Source`]: a file is taken once no process writes to it, deleted or moved
//! (`after_send`) once sent if it is still the version sent, and moved to the quarantine
//! folder when it cannot be sent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::after_send::dispose_if_unchanged;
use super::config::{AfterSend, SpoolSettings, Symlinks};
use super::{SpoolConfig, lease, links, spawn};
use crate::config::PipeConfig;
use crate::pipe::PipeStats;
use crate::process::history::Present;
use crate::source::{Disposal, Opened, Outcome, Source, SourceEvent};

/// One pipe's spool folder.
#[derive(Debug)]
pub struct SpoolSource {
    pipe: String,
    s: SpoolSettings,
    quarantine_dir: PathBuf,
    stats: Arc<PipeStats>,
}

impl SpoolSource {
    pub fn new(pc: &PipeConfig, s: SpoolSettings, stats: Arc<PipeStats>) -> Self {
        Self {
            pipe: pc.name.clone(),
            s,
            quarantine_dir: pc.quarantine_dir.clone(),
            stats,
        }
    }

    /// True when symlinks are sent as links.
    fn links(&self) -> bool {
        self.s.symlinks == Symlinks::Preserve
    }

    fn path(&self, key: &str) -> PathBuf {
        self.s.path.join(key)
    }

    /// Moves a file of the spool into the quarantine folder and says so at ERROR.
    fn quarantine(&self, path: &Path, rel: &Path, reason: &str) {
        let dest = self.quarantine_dir.join(rel);
        match move_file(path, &dest) {
            Ok(()) => {
                tracing::error!(pipe = %self.pipe, path = %rel.display(), quarantined_to = %dest.display(), reason, "file quarantined; fix the cause and move it back into the spool to send it")
            }
            Err(e) => {
                tracing::error!(pipe = %self.pipe, path = %rel.display(), reason, error = %e, "file could not be sent nor moved to quarantine; it stays in the spool")
            }
        }
    }

    /// What `after_send` does with a sent file; returns what was done, for the `sent` line.
    fn dispose(&self, fs_path: &Path, rel: &str) -> io::Result<&'static str> {
        match self.s.after_send {
            AfterSend::Delete => fs::remove_file(fs_path).map(|()| "deleted"),
            AfterSend::Move => {
                move_file(fs_path, &self.s.sent_dir.join(rel)).map(|()| "moved to sent_dir")
            }
        }
    }
}

impl Source for SpoolSource {
    fn start(&mut self, tx: mpsc::Sender<SourceEvent>) -> io::Result<()> {
        let cfg = SpoolConfig {
            pipe: self.pipe.clone(),
            spool: self.s.path.clone(),
            exclude: vec![self.s.sent_dir.clone(), self.quarantine_dir.clone()],
            settle: self.s.settle,
            poll_interval: self.s.poll_interval,
            ignore: self.s.ignore.clone(),
            symlinks: self.s.symlinks,
            stats: self.stats.clone(),
        };
        tracing::info!(pipe = %self.pipe, ignore = ?self.s.ignore.globs(), "files and folders with these names stay in the spool unsent; each is counted (ignored_files) and named once");
        spawn(cfg, tx).map(drop)
    }

    fn exists(&self, key: &str) -> bool {
        let path = self.path(key);
        path.is_file() || (self.links() && links::is_link(&path))
    }

    fn size(&self, key: &str) -> u64 {
        fs::symlink_metadata(self.path(key)).map_or(0, |m| if m.is_file() { m.len() } else { 0 })
    }

    fn settled(&self, key: &str) -> bool {
        let now = SystemTime::now();
        fs::symlink_metadata(self.path(key))
            .and_then(|m| m.modified())
            .map_or(true, |t| {
                now.duration_since(t).unwrap_or_default() >= self.s.settle
            })
    }

    fn take(&mut self, key: &str) -> io::Result<Option<Opened>> {
        let path = self.path(key);
        if self.links() && links::is_link(&path) {
            return Ok(links::take(&path)?.map(|(file, meta, target)| Opened {
                file,
                meta,
                reopen: path,
                origin: Default::default(),
                attrs: gapsync_protocol::ObjectAttrs {
                    mode: None,
                    link: Some(target),
                },
            }));
        }
        let preserve_mode = self.s.preserve_mode;
        let taken = lease::take(&self.pipe, &path)?;
        Ok(taken.map(|(file, meta)| {
            let origin = origin_of(&self.pipe, key, &file);
            let mode = preserve_mode.then(|| {
                use std::os::unix::fs::PermissionsExt as _;
                meta.permissions().mode() & gapsync_protocol::attrs::MAX_MODE
            });
            Opened {
                file,
                meta,
                reopen: path,
                origin,
                attrs: gapsync_protocol::ObjectAttrs { mode, link: None },
            }
        }))
    }

    fn settle(&mut self, key: &str, outcome: Outcome<'_>) -> Disposal {
        let path = self.path(key);
        match outcome {
            Outcome::Sent(ident) if self.links() && links::is_link(&path) => {
                links::dispose_if_unchanged(&path, ident, || self.dispose(&path, key))
            }
            Outcome::Sent(ident) => {
                dispose_if_unchanged(&self.pipe, key, &path, ident, || self.dispose(&path, key))
            }
            Outcome::Quarantine(reason) => {
                self.quarantine(&path, Path::new(key), reason);
                Disposal::Done("quarantined")
            }
        }
    }

    fn reject(&mut self, found: &Path, reason: &str) {
        let rel = found.strip_prefix(&self.s.path).unwrap_or(found);
        self.quarantine(found, rel, reason);
    }

    fn retention(&self) -> Option<Duration> {
        self.s.keep_sent_for
    }

    fn drop_kept(&mut self, key: &str) -> bool {
        fs::remove_file(self.s.sent_dir.join(key)).is_ok()
    }

    /// The regular files of the spool (and its links, with `symlinks = "preserve"`), not
    /// under sent_dir or the quarantine folder, by key.
    fn list(&self) -> io::Result<Vec<Present>> {
        let root = &self.s.path;
        let aside = [&self.s.sent_dir, &self.quarantine_dir];
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| !aside.iter().any(|d| e.path() == d.as_path()));
        let mut out = Vec::new();
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                // Removed while listed: not present. The spool itself not made yet: empty.
                Err(e)
                    if e.io_error()
                        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound) =>
                {
                    if e.depth() == 0 {
                        return Ok(out);
                    }
                    continue;
                }
                Err(e) => return Err(io::Error::other(e)),
            };
            let link = self.links() && entry.file_type().is_symlink();
            if !entry.file_type().is_file() && !link {
                continue;
            }
            let (Ok(rel), Ok(meta)) = (entry.path().strip_prefix(root), entry.metadata()) else {
                continue;
            };
            if let (Some(key), Ok(mtime)) = (rel.to_str(), meta.modified()) {
                out.push(Present {
                    key: key.to_owned(),
                    size: if link { 0 } else { meta.len() },
                    mtime,
                });
            }
        }
        Ok(out)
    }
}

/// The origin chain a receiver recorded on a file of the spool (the spool is then another
/// pipe's landing folder); empty for a file written here. An unreadable one is said at WARN
/// and counts as empty.
fn origin_of(pipe: &str, key: &str, file: &fs::File) -> gapsync_protocol::OriginChain {
    gapsync_daemon::origin::read(file).unwrap_or_else(|e| {
        tracing::warn!(pipe = %pipe, path = %key, error = %e, "cannot read where the file came from; it is sent as if it originated here");
        Default::default()
    })
}

/// Moves `from` to `to`, creating folders, copying across filesystems when rename cannot (a
/// symlink is made again there, not followed).
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices && links::is_link(from) => {
            // A link is made again, never followed (a copy would read its target).
            std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
            fs::remove_file(from)
        }
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            fs::copy(from, to)?;
            fs::File::open(to)?.sync_all()?;
            fs::remove_file(from)
        }
        other => other,
    }
}
