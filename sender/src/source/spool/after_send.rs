//! The last step of a spool file: after its delivery it is deleted or moved only if it is
//! still the version that was sent (same inode, size, mtime and ctime) and no process has it
//! open for writing. Otherwise it stays in the spool and is sent again as a new version.
//!
//! ```text
//!  open (read-only) -> read lease (no writer can open it now) -> fstat == identity sent?
//!      -> the name still leads to it? -> delete / move -> was the lease broken meanwhile?
//! ```

use std::io;
use std::path::Path;

use super::lease::{self, Writers};
use crate::source::Disposal;
use crate::source::identity::Identity;

/// Runs `dispose` (the pipe's `after_send` action on `path`) if the file is still the one
/// `sent` describes and nobody writes to it; the lease is held across the comparison and the
/// action, so a writer opening the file meanwhile waits and is noticed.
pub fn dispose_if_unchanged(
    pipe: &str,
    rel: &str,
    path: &Path,
    sent: &Identity,
    dispose: impl FnOnce() -> io::Result<&'static str>,
) -> Disposal {
    let file = match lease::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Disposal::Gone,
        Err(e) if lease::is_held(&e) => return Disposal::Busy,
        Err(e) => return Disposal::Failed(e),
    };
    let lease = match lease::writers(&file) {
        Writers::None(lease) => Some(lease),
        Writers::Open => return Disposal::Busy,
        Writers::Unknown(why, e) => {
            lease::warn_unavailable(pipe, path, why, &e);
            None
        }
    };
    let now = match file.metadata() {
        Ok(m) => Identity::of(&m),
        Err(e) => return Disposal::Failed(e),
    };
    if let Some(what) = sent.changes(&now) {
        return Disposal::Changed(what);
    }
    // The name may have been given to another file since it was opened.
    match std::fs::symlink_metadata(path) {
        Ok(m) if Identity::of(&m).same_file(&now) => {}
        Ok(_) => return Disposal::Changed("inode (another file now has this name)".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Disposal::Gone,
        Err(e) => return Disposal::Failed(e),
    }
    let done = dispose();
    if let (Ok(what), Some(lease)) = (&done, &lease) {
        if lease.broken() {
            // It opened the name before it was removed: its writes go to the file we moved
            // (or deleted), not to a new one in the spool.
            tracing::error!(
                pipe,
                path = rel,
                spool_file = *what,
                "a process opened the spool file for writing just as it was removed after its delivery; what it writes now goes to the removed file and is not sent (producers should write elsewhere and rename files in, or not reopen a file once closed)"
            );
        }
    }
    drop(lease);
    match done {
        Ok(what) => Disposal::Done(what),
        Err(e) => Disposal::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn identity(p: &Path) -> Identity {
        Identity::of(&std::fs::metadata(p).expect("stat"))
    }

    fn delete(p: &Path) -> impl FnOnce() -> io::Result<&'static str> + '_ {
        move || std::fs::remove_file(p).map(|()| "deleted")
    }

    #[test]
    fn an_unchanged_closed_file_is_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.csv");
        std::fs::write(&p, b"whole").expect("write");
        let sent = identity(&p);
        let r = dispose_if_unchanged("t", "a.csv", &p, &sent, delete(&p));
        assert!(matches!(r, Disposal::Done("deleted")), "{r:?}");
        assert!(!p.exists());
        let r = dispose_if_unchanged("t", "a.csv", &p, &sent, delete(&p));
        assert!(matches!(r, Disposal::Gone), "{r:?}");
    }

    #[test]
    fn a_file_written_to_after_it_was_sent_is_kept_and_the_change_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.csv");
        std::fs::write(&p, b"first part").expect("write");
        let sent = identity(&p);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open");
        w.write_all(b", more").expect("append");
        // Still open for writing: kept, and not compared yet.
        let r = dispose_if_unchanged("t", "a.csv", &p, &sent, delete(&p));
        assert!(matches!(r, Disposal::Busy), "{r:?}");
        drop(w);
        let r = dispose_if_unchanged("t", "a.csv", &p, &sent, delete(&p));
        let Disposal::Changed(what) = r else {
            panic!("{r:?}")
        };
        assert!(what.starts_with("size 10 -> 16"), "{what}");
        assert_eq!(std::fs::read(&p).expect("kept"), b"first part, more");
    }

    #[test]
    fn a_file_replaced_under_its_name_is_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.csv");
        std::fs::write(&p, b"v1").expect("write");
        let sent = identity(&p);
        std::fs::write(dir.path().join("n.tmp"), b"v2").expect("write");
        std::fs::rename(dir.path().join("n.tmp"), &p).expect("rename in");
        let r = dispose_if_unchanged("t", "a.csv", &p, &sent, delete(&p));
        assert!(
            matches!(r, Disposal::Changed(ref w) if w.starts_with("inode")),
            "{r:?}"
        );
        assert_eq!(std::fs::read(&p).expect("kept"), b"v2");
    }
}
