//! Object attributes on a staged partial, set before the rename like the origin chain's
//! extended attribute: the sender's permission bits (`preserve_mode`) and, for a link object,
//! the symlink that replaces the empty partial at commit.
//!
//! Modes: the bits the sender sent, masked with 0o777 (set-uid, set-gid and sticky are never
//! applied) and then with this process's umask, so the receiver's group rules hold (under the
//! shipped unit's `UMask=0027` a 0755 file lands 0750: owner and group keep the executable
//! bit, "other" gets nothing, as for every landed file).

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

/// This process's umask, read once from `/proc/self/status` (reading it with `umask(2)` would
/// change it for a moment under other threads); 0o022 where it cannot be read.
pub fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// The mode a landed file gets for the sender's bits `sent`.
pub fn landed_mode(sent: u32) -> u32 {
    sent & 0o777 & !umask()
}

/// Applies the sender's permission bits to the staged partial.
pub fn apply_mode(file: &File, sent: u32) -> io::Result<()> {
    let mode = rustix::fs::Mode::from_raw_mode(landed_mode(sent) as rustix::fs::RawMode);
    rustix::fs::fchmod(file, mode).map_err(io::Error::from)
}

/// Replaces the staged (empty) partial `name` in `staging` by a symlink to `target`, through
/// a temporary name and a rename, and makes the swap durable: the rename into place then
/// moves the link itself (a rename never follows it, and never replaces a folder).
pub fn stage_link(staging: &Path, name: &str, target: &str) -> io::Result<()> {
    let dir = rustix::fs::openat(
        rustix::fs::CWD,
        staging,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let tmp = format!("{name}.link");
    match rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    rustix::fs::symlinkat(target, &dir, tmp.as_str())?;
    rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)?;
    rustix::fs::fsync(&dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bits_are_never_applied() {
        let m = landed_mode(0o7777);
        assert_eq!(m & 0o7000, 0);
        assert_eq!(m, 0o777 & !umask());
    }
}
