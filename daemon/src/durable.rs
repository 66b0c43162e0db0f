//! Writes that survive a power cut: write a temporary file, fsync it, rename it over the target
//! and fsync the folder.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::Path;

/// Fsyncs a folder so that renames and creations inside it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes everything written to the filesystem holding `path` durable (syncfs): one call for a
/// whole group of files, folders and renames. It also flushes other writers' data on that
/// filesystem, so it is used for groups, not for single files.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    rustix::fs::syncfs(File::open(path)?).map_err(io::Error::from)
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent folder"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Creates `dir` and its parents, then fsyncs its parent so the folder itself is durable.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("gapsync-durable-{}", std::process::id()));
        create_dir_durable(&dir).expect("mkdir");
        let p = dir.join("state");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(fs::read_dir(&dir).expect("ls").count(), 1);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
