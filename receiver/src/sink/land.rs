//! Renaming committed partials into place (step 4 of the directory sink's commit order).
//!
//! A group's folders are opened once each, component by component with `O_NOFOLLOW`, and the
//! partials are renamed relative to those handles: a symlink anywhere in a target's folders is
//! refused by the open itself (no `lstat` before the rename, no window between a check and the
//! rename in which a folder could be swapped), and a rename resolves only its last name.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use gapsync_protocol::WirePath;

use super::{SinkError, io_err};

/// Up to this many files (or folders) a commit fsyncs each one; above it, one syncfs of the
/// filesystem makes the whole group durable at once.
pub const FSYNC_EACH_UP_TO: usize = 2;

/// Where a pipe's partials are staged and where they land.
#[derive(Debug, Clone)]
pub struct Places {
    pub dest: PathBuf,
    pub staging: PathBuf,
}

pub fn part_name(id: u64) -> String {
    format!("{id:016x}.part")
}

impl Places {
    pub fn part_path(&self, id: u64) -> PathBuf {
        self.staging.join(part_name(id))
    }

    /// Renames the staged partials of `items` into place, in order, then makes the renames
    /// durable. Returns the ids landed durably, and the error that stopped it: the rest stay
    /// staged, and a rename that could not be made durable is checked again at the next start
    /// (its id stays in the staging journal).
    pub fn land_all(&self, items: &[(u64, WirePath)]) -> (Vec<u64>, Option<SinkError>) {
        let mut folders = match Folders::new(&self.staging) {
            Ok(f) => f,
            Err(e) => return (Vec::new(), Some(io_err("cannot open", &self.staging)(e))),
        };
        let mut landed = Vec::with_capacity(items.len());
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stopped = None;
        for (id, path) in items {
            match self.land(&mut folders, *id, path) {
                Ok(dir) => {
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                    landed.push(*id);
                }
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        if let Err(e) = self.sync_dirs(&dirs) {
            return (Vec::new(), Some(stopped.unwrap_or(e)));
        }
        (landed, stopped)
    }

    /// Renames the staged partial into place through `folders`; returns the folder that must
    /// be made durable.
    fn land(&self, folders: &mut Folders, id: u64, path: &WirePath) -> Result<PathBuf, SinkError> {
        let (dir, name) = path
            .as_str()
            .rsplit_once('/')
            .unwrap_or(("", path.as_str()));
        folders.prepare(&self.dest, dir, path)?;
        let target = self.dest.join(path.as_str());
        rustix::fs::renameat(&folders.staging, part_name(id), &folders.open[dir], name).map_err(
            |e| match e {
                // A folder of that name: renaming a file over it is refused.
                rustix::io::Errno::ISDIR => SinkError::Escape(path.to_string()),
                e => io_err("cannot rename into place", &target)(e.into()),
            },
        )?;
        Ok(target.parent().unwrap_or(&self.dest).to_path_buf())
    }

    /// The size of the file landed at `path`, if there is one (0 for a landed link).
    pub fn landed_size(&self, path: &WirePath) -> Option<u64> {
        let m = std::fs::symlink_metadata(self.dest.join(path.as_str())).ok()?;
        if m.file_type().is_symlink() {
            return Some(0);
        }
        m.is_file().then_some(m.len())
    }

    /// Makes an earlier rename of `path` into place durable (its folder's fsync failed then).
    pub fn sync_landed(&self, path: &WirePath) -> Result<(), SinkError> {
        let target = self.dest.join(path.as_str());
        let dir = target.parent().unwrap_or(&self.dest);
        gapsync_daemon::durable::fsync_dir(dir).map_err(io_err("cannot fsync", dir))
    }

    /// Makes the renames into `dirs` durable: an fsync of each folder for one or two, one
    /// syncfs of the destination filesystem for more.
    fn sync_dirs(&self, dirs: &[PathBuf]) -> Result<(), SinkError> {
        if dirs.len() > FSYNC_EACH_UP_TO {
            return gapsync_daemon::durable::sync_filesystem(&self.dest)
                .map_err(io_err("cannot sync the filesystem of", &self.dest));
        }
        for d in dirs {
            gapsync_daemon::durable::fsync_dir(d).map_err(io_err("cannot fsync", d))?;
        }
        Ok(())
    }
}

/// The folders of one group's renames, opened once each: the staging folder and the
/// destination's folders by relative path. Each component is opened with `O_NOFOLLOW`, so a
/// symlink anywhere in a target's folders is refused without a separate `lstat`, and the
/// renames resolve only the last name. Kept for one group only: a folder moved away by a
/// consumer afterwards is not written into.
struct Folders {
    staging: OwnedFd,
    open: HashMap<String, OwnedFd>,
}

impl Folders {
    fn new(staging: &Path) -> io::Result<Self> {
        Ok(Self {
            staging: open_dir(rustix::fs::CWD, staging)?,
            open: HashMap::new(),
        })
    }

    /// Opens the folder `dir` (relative to `dest`, "" for dest itself) into `open`, creating
    /// it if missing.
    fn prepare(&mut self, dest: &Path, dir: &str, path: &WirePath) -> Result<(), SinkError> {
        if self.open.contains_key(dir) {
            return Ok(());
        }
        let mut cur = open_dir(rustix::fs::CWD, dest).map_err(io_err("cannot open", dest))?;
        let mut at = dest.to_path_buf();
        for comp in dir.split('/').filter(|c| !c.is_empty()) {
            at.push(comp);
            cur = match open_dir(&cur, comp) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let mode = rustix::fs::Mode::from_raw_mode(0o777);
                    match rustix::fs::mkdirat(&cur, comp, mode) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(io_err("cannot create folder", &at)(e.into())),
                    }
                    open_dir(&cur, comp).map_err(|e| escape_or(e, path, &at))?
                }
                Err(e) => return Err(escape_or(e, path, &at)),
            };
        }
        self.open.insert(dir.to_owned(), cur);
        Ok(())
    }
}

/// Opens a folder without following a symlink in its last component.
fn open_dir(at: impl rustix::fd::AsFd, path: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(at, path, flags, Mode::empty())?)
}

/// A symlink or a file where a folder must be is an escape; other errors are reported as such.
fn escape_or(e: io::Error, path: &WirePath, at: &Path) -> SinkError {
    match rustix::io::Errno::from_io_error(&e) {
        Some(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            SinkError::Escape(path.to_string())
        }
        _ => io_err("cannot open folder", at)(e),
    }
}
