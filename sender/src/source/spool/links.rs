//! Symlinks of a spool with `symlinks = "preserve"`: a link is sent as an object of kind link
//! (its target text in the Open, size 0, no data) and never followed. Once delivered it is
//! removed (or moved) only if it is still the link that was sent (same inode and times).

use std::fs::{self, File, Metadata};
use std::io;
use std::path::Path;

use crate::source::Disposal;
use crate::source::identity::Identity;

/// The link at `path`, opened to be sent: an empty anonymous file to read (the object has no
/// data), the link's own `lstat`, and its target. `Ok(None)` when `path` is not a link any
/// more (it is then found again as what it is).
pub fn take(path: &Path) -> io::Result<Option<(File, Metadata, String)>> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_symlink() {
        return Ok(None);
    }
    let target = fs::read_link(path)?;
    let target = target.into_os_string().into_string().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the link's target is not valid UTF-8, so it cannot be sent",
        )
    })?;
    let empty = rustix::fs::memfd_create("gapsync-link", rustix::fs::MemfdFlags::CLOEXEC)?;
    Ok(Some((File::from(empty), meta, target)))
}

/// True when `path` is a symlink now (not followed).
pub fn is_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Runs `dispose` on the delivered link at `path` if it is still the one `sent` describes.
pub fn dispose_if_unchanged(
    path: &Path,
    sent: &Identity,
    dispose: impl FnOnce() -> io::Result<&'static str>,
) -> Disposal {
    let now = match fs::symlink_metadata(path) {
        Ok(m) => Identity::of(&m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Disposal::Gone,
        Err(e) => return Disposal::Failed(e),
    };
    if let Some(what) = sent.changes(&now) {
        return Disposal::Changed(what);
    }
    match dispose() {
        Ok(what) => Disposal::Done(what),
        Err(e) => Disposal::Failed(e),
    }
}
