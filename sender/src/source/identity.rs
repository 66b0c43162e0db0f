//! What a spool file was when it was taken for sending: which file (device and inode) and
//! which version of it (size, modification and change times). Compared again before the file
//! is deleted or moved after its delivery, so that a file written to after it was read is
//! kept and sent again instead of being removed with data the receiver never got.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt as _;

/// A spool file's identity and version, from `fstat`/`lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// True when both name the same file (device and inode), whatever its version.
    pub fn same_file(&self, other: &Identity) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// What differs in `now` from this identity, for a log line (`None`: nothing).
    pub fn changes(&self, now: &Identity) -> Option<String> {
        if !self.same_file(now) {
            return Some("inode (another file now has this name)".into());
        }
        let mut what = Vec::new();
        if self.size != now.size {
            what.push(format!("size {} -> {}", self.size, now.size));
        }
        if self.mtime != now.mtime {
            what.push("mtime".to_owned());
        }
        if self.ctime != now.ctime {
            // Also a change of owner, mode or links: the file is kept either way.
            what.push("ctime".to_owned());
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    fn id(p: &std::path::Path) -> Identity {
        Identity::of(&std::fs::symlink_metadata(p).expect("stat"))
    }

    /// Waits long enough for the filesystem's timestamps to tick (coarse on some).
    fn tick() {
        std::thread::sleep(Duration::from_millis(20));
    }

    #[test]
    fn every_kind_of_change_is_named_and_an_untouched_file_has_none() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.csv");
        std::fs::write(&p, b"first part").expect("write");
        let sent = id(&p);
        // Read, and stat'ed again: no change.
        let _ = std::fs::read(&p).expect("read");
        assert_eq!(sent.changes(&id(&p)), None);

        // Appended in place: size and both times.
        tick();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open");
        f.write_all(b", second part").expect("append");
        drop(f);
        assert_eq!(
            sent.changes(&id(&p)).as_deref(),
            Some("size 10 -> 23, mtime, ctime")
        );

        // Rewritten with the same size and its mtime put back (a copy tool keeping times):
        // the change time still tells.
        let before = id(&p);
        let mtime = std::fs::metadata(&p)
            .expect("stat")
            .modified()
            .expect("mtime");
        tick();
        std::fs::write(&p, b"FIRST PART, SECOND PART").expect("rewrite");
        std::fs::File::options()
            .write(true)
            .open(&p)
            .expect("open")
            .set_modified(mtime)
            .expect("set mtime");
        assert_eq!(before.changes(&id(&p)).as_deref(), Some("ctime"));

        // A mode change alone: ctime.
        let before = id(&p);
        tick();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(before.changes(&id(&p)).as_deref(), Some("ctime"));

        // Replaced by another file renamed over it, even one of the same size and times.
        let before = id(&p);
        let other = dir.path().join("other.tmp");
        std::fs::copy(&p, &other).expect("copy");
        std::fs::rename(&other, &p).expect("rename over");
        let now = id(&p);
        assert!(!before.same_file(&now));
        assert_eq!(
            before.changes(&now).as_deref(),
            Some("inode (another file now has this name)")
        );
    }
}
