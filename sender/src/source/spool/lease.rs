//! Whether any process still has a spool file open for writing, asked the kernel through a
//! read lease (`fcntl(F_SETLEASE, F_RDLCK)`): Linux grants one only while no descriptor
//! anywhere has the file open for writing (or mapped shared and writable), and refuses with
//! EAGAIN otherwise. A file that is still open for writing is never taken, and never deleted
//! or moved after its delivery.
//!
//! The lease is held for microseconds: released at once when a file is taken, held only
//! across the last comparison and the removal after a delivery. A process that opens the file
//! for writing meanwhile waits until it is released (the kernel "breaks" the lease) and the
//! sender sees it. The break is signalled with SIGWINCH, set on the descriptor first, whose
//! default action is to ignore it (SIGIO, the default, would end the daemon).
//!
//! Where a lease cannot be placed (a file of another user without CAP_LEASE: EACCES; a
//! filesystem without leases, e.g. NFS, CIFS, FUSE, or `fs.leases-enable = 0`: EINVAL), the
//! settle rule alone decides, and the pipe says so once at WARN per reason.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Mutex;

/// `F_SETSIG` (asm-generic/fcntl.h, the same on every Linux architecture), which the libc
/// crate does not define for glibc targets.
const F_SETSIG: libc::c_int = 10;

/// The fcntl commands used here, all with an integer argument (or none).
#[derive(Debug, Clone, Copy)]
enum Cmd {
    SetSig(libc::c_int),
    SetLease(libc::c_int),
    GetLease,
}

/// `fcntl` with an integer argument: a safe wrapper, as neither nix nor rustix offers leases.
#[allow(unsafe_code)]
fn fcntl(fd: BorrowedFd<'_>, cmd: Cmd) -> io::Result<libc::c_int> {
    let (cmd, arg) = match cmd {
        Cmd::SetSig(sig) => (F_SETSIG, sig),
        Cmd::SetLease(kind) => (libc::F_SETLEASE, kind),
        Cmd::GetLease => (libc::F_GETLEASE, 0),
    };
    // SAFETY: `fd` is a live descriptor borrowed for the call; these three commands take an
    // int (or ignore it) and read or write no memory of the caller's.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Why the check cannot be made for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// EACCES/EPERM: the file belongs to another user and the sender lacks CAP_LEASE.
    NotOwner,
    /// EINVAL or another refusal: the filesystem has no leases (or they are disabled).
    NotSupported,
}

/// A read lease held on a file; released when dropped.
#[derive(Debug)]
pub struct Lease<'a> {
    fd: BorrowedFd<'a>,
}

impl Lease<'_> {
    /// True when a process has opened the file for writing since the lease was placed (it
    /// waits in `open` until the lease is released).
    pub fn broken(&self) -> bool {
        !fcntl(self.fd, Cmd::GetLease).is_ok_and(|kind| kind == libc::F_RDLCK)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let _ = fcntl(self.fd, Cmd::SetLease(libc::F_UNLCK));
    }
}

/// What the kernel says about writers of a file.
#[derive(Debug)]
pub enum Writers<'a> {
    /// Nobody has it open for writing; nobody can open it so without breaking this lease.
    None(Lease<'a>),
    /// Some process has it open for writing.
    Open,
    /// The check cannot be made; the error says why.
    Unknown(Unavailable, io::Error),
}

/// Asks whether any process has `file` (opened read-only) open for writing.
pub fn writers(file: &File) -> Writers<'_> {
    let fd = file.as_fd();
    if let Err(e) = fcntl(fd, Cmd::SetSig(libc::SIGWINCH)) {
        return Writers::Unknown(Unavailable::NotSupported, e);
    }
    match fcntl(fd, Cmd::SetLease(libc::F_RDLCK)) {
        Ok(_) => Writers::None(Lease { fd }),
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY) => Writers::Open,
            Some(libc::EACCES | libc::EPERM) => Writers::Unknown(Unavailable::NotOwner, e),
            _ => Writers::Unknown(Unavailable::NotSupported, e),
        },
    }
}

/// Opens a spool file to read it: read-only, not following a symlink, and without waiting
/// on another process's write lease (EWOULDBLOCK instead).
pub fn open(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
}

/// True for an open error that means "another process holds it; try later".
pub fn is_held(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Takes `path` for sending: the open file and its `fstat`, or `None` while some process
/// still has it open for writing (or it is no longer a regular file). Where the check is
/// unavailable the file is taken, and the pipe says so once.
pub fn take(pipe: &str, path: &Path) -> io::Result<Option<(File, Metadata)>> {
    let file = match open(path) {
        Err(e) if is_held(&e) => return Ok(None),
        other => other?,
    };
    match writers(&file) {
        Writers::None(lease) => drop(lease),
        Writers::Open => return Ok(None),
        Writers::Unknown(why, e) => warn_unavailable(pipe, path, why, &e),
    }
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// Pipes and reasons already reported.
static WARNED: Mutex<Vec<(String, Unavailable)>> = Mutex::new(Vec::new());

/// Says once per pipe and reason, at WARN, that the open-for-writing check is not made.
pub fn warn_unavailable(pipe: &str, path: &Path, why: Unavailable, e: &io::Error) {
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.iter().any(|(p, w)| p == pipe && *w == why) {
        return;
    }
    warned.push((pipe.to_owned(), why));
    let fix = match why {
        Unavailable::NotOwner => {
            "the file belongs to another user and the sender lacks CAP_LEASE: give the service CAP_LEASE (AmbientCapabilities=CAP_LEASE and CapabilityBoundingSet=CAP_LEASE in its systemd unit), or have producers write elsewhere and rename files in"
        }
        Unavailable::NotSupported => {
            "the spool's filesystem does not support file leases (a network or FUSE filesystem, or sysctl fs.leases-enable = 0): put the spool on a local filesystem, or have producers write elsewhere and rename files in"
        }
    };
    tracing::warn!(pipe = %pipe, path = %path.display(), error = %e, fix, "cannot tell whether spool files are still open for writing; falling back to the settle rule alone, so a file written in place with a pause longer than settle can be sent incomplete (said once per pipe)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::time::Duration;

    #[test]
    fn a_file_open_for_writing_anywhere_is_not_taken_and_is_once_closed() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("log.csv");
        let mut w = File::create(&p).expect("create");
        w.write_all(b"first half").expect("write");
        assert!(
            take("t", &p).expect("take").is_none(),
            "still open for writing"
        );
        // A read-only descriptor elsewhere does not count.
        let _reader = File::open(&p).expect("open");
        assert!(take("t", &p).expect("take").is_none());
        w.write_all(b", second half").expect("write");
        drop(w);
        let (mut f, meta) = take("t", &p).expect("take").expect("closed: taken");
        assert_eq!(meta.len(), 23);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).expect("read");
        assert_eq!(s, "first half, second half");
        // The lease was released: a writer opens at once.
        let t0 = std::time::Instant::now();
        drop(File::options().append(true).open(&p).expect("reopen"));
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_writer_opening_while_the_lease_is_held_waits_and_is_seen() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").expect("write");
        let f = open(&p).expect("open");
        let Writers::None(lease) = writers(&f) else {
            panic!("no writer yet, and the test runs on a filesystem with leases");
        };
        assert!(!lease.broken());
        let p2 = p.clone();
        let writer = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            let mut w = File::options().append(true).open(&p2).expect("open");
            w.write_all(b"y").expect("write");
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        // The writer waits in open(); the process got the break signal and lives on.
        assert!(lease.broken(), "the opening writer breaks the lease");
        assert_eq!(std::fs::read(&p).expect("read"), b"x", "not written yet");
        drop(lease);
        let waited = writer.join().expect("writer");
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert_eq!(std::fs::read(&p).expect("read"), b"xy");
    }
}
