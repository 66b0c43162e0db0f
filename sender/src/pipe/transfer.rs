//! One file in flight: which frame comes next, what the receiver acknowledged, and the
//! whole-file digest computed in the same pass as the reads.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use gapsync_protocol::{
    Commit, FrameKind, ObjectAttrs, OpenFile, OriginChain, encode_body, encode_open_ext,
};

use crate::source::identity::Identity;

/// Modification time in nanoseconds since the Unix epoch (0 when unknown).
pub fn mtime_ns(meta: &Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Upper bound of an encoded Commit body (a varint size and the 32-byte digest).
pub const COMMIT_BODY_MAX: usize = 48;

/// The file in `slot`, reopened by `path` if it was closed after a full read.
fn opened<'a>(slot: &'a mut Option<File>, path: &Path) -> io::Result<&'a File> {
    match slot {
        Some(f) => Ok(f),
        None => Ok(slot.insert(File::open(path)?)),
    }
}

/// A file being sent.
#[derive(Debug)]
pub struct Transfer {
    pub id: u64,
    pub rel: String,
    pub fs_path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// The file's identity and version when it was taken (from `fstat` of `file`): compared
    /// before the Commit is sent and before the file is removed after its delivery.
    pub ident: Identity,
    /// Open while bytes remain to be read; closed once the whole file was read and hashed, so
    /// that files waiting for their acknowledgement hold no descriptor. Reopened by path if
    /// a reconnect makes it resend data.
    file: Option<File>,
    /// Bytes `0..acked` were acknowledged as written by the receiver.
    pub acked: u64,
    next: u64,
    open_sent: bool,
    /// The encoded Open, sized before it is sent and sent again after a reconnect.
    open_body: Vec<u8>,
    commit_sent: bool,
    hasher: blake3::Hasher,
    hashed: u64,

    pub started: Instant,
    /// The `acked` value last written to the in-flight record.
    pub persisted_acked: u64,
    pub persisted_at: Instant,
    /// Data bytes put on the wire, resends included.
    pub bytes_sent: u64,
}

/// The bytes an object carries: a file's size; 0 for a link (its target is in the Open).
pub fn object_size(meta: &std::fs::Metadata, attrs: &ObjectAttrs) -> u64 {
    if attrs.link.is_some() { 0 } else { meta.len() }
}

impl Transfer {
    /// Starts (or resumes at `acked`) sending `file`, which crossed the hops of `origin`
    /// before (its Open carries them; a non-empty chain needs a version-2 connection).
    pub fn new(
        id: u64,
        rel: String,
        fs_path: PathBuf,
        file: File,
        meta: &Metadata,
        acked: u64,
        (origin, attrs): (&OriginChain, &ObjectAttrs),
    ) -> Self {
        let size = object_size(meta, attrs);
        let open = OpenFile {
            path: rel.clone(),
            size,
            mtime_ns: mtime_ns(meta),
        };
        let open_body = encode_open_ext(&open, origin, attrs);
        Self {
            id,
            rel,
            fs_path,
            size,
            mtime_ns: mtime_ns(meta),
            ident: Identity::of(meta),
            file: Some(file),
            acked: acked.min(size),
            next: acked.min(size),
            open_sent: false,
            open_body,
            commit_sent: false,
            hasher: blake3::Hasher::new(),
            hashed: 0,

            started: Instant::now(),
            persisted_acked: acked,
            persisted_at: Instant::now(),
            bytes_sent: 0,
        }
    }

    /// After a reconnect: resend the Open, then everything not acknowledged.
    pub fn rewind(&mut self) {
        self.next = self.acked;
        self.open_sent = false;
        self.commit_sent = false;
    }

    /// True when every frame of this transfer has been sent.
    pub fn fully_sent(&self) -> bool {
        self.commit_sent
    }

    /// What the next record of this transfer is, and the body length of an Open or Commit
    /// (a Data record fits any room); `None` when everything was sent.
    pub fn next_kind(&self) -> Option<(FrameKind, usize)> {
        if !self.open_sent {
            Some((FrameKind::Open, self.open_body.len()))
        } else if self.next < self.size {
            Some((FrameKind::Data, 0))
        } else if !self.commit_sent {
            Some((FrameKind::Commit, COMMIT_BODY_MAX))
        } else {
            None
        }
    }

    /// Data bytes not yet sent.
    pub fn unsent(&self) -> u64 {
        self.size - self.next
    }

    /// Appends the next record's body to `buf` and returns its kind and offset, or `None` when
    /// everything was sent. Data records carry at most `chunk` bytes.
    pub fn next_frame(
        &mut self,
        chunk: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<Option<(FrameKind, u64)>> {
        if !self.open_sent {
            self.open_sent = true;
            buf.extend_from_slice(&self.open_body);
            return Ok(Some((FrameKind::Open, 0)));
        }
        if self.next < self.size {
            self.hash_up_to(self.next)?;
            let len = (self.size - self.next).min(chunk as u64) as usize;
            let start = buf.len();
            buf.resize(start + len, 0);
            let body = &mut buf[start..];
            opened(&mut self.file, &self.fs_path)?.read_exact_at(body, self.next)?;
            if self.hashed == self.next {
                self.hasher.update(body);
                self.hashed += len as u64;
            }
            let offset = self.next;
            self.next += len as u64;
            self.bytes_sent += len as u64;
            if self.next == self.size && self.hashed == self.size {
                self.file = None;
            }
            return Ok(Some((FrameKind::Data, offset)));
        }
        if !self.commit_sent {
            self.hash_up_to(self.size)?;
            // Closed here too: a transfer resumed with every byte acknowledged reads its file
            // only to hash it, here.
            self.file = None;
            self.commit_sent = true;
            let commit = Commit {
                size: self.size,
                digest: *self.hasher.finalize().as_bytes(),
            };
            buf.extend_from_slice(&encode_body(&commit));
            return Ok(Some((FrameKind::Commit, 0)));
        }
        Ok(None)
    }

    /// Hashes bytes not yet hashed below `upto` (after a restart resumed past them).
    fn hash_up_to(&mut self, upto: u64) -> io::Result<()> {
        const STEP: u64 = 1 << 20;
        let mut scratch = Vec::new();
        while self.hashed < upto {
            let len = (upto - self.hashed).min(STEP) as usize;
            scratch.resize(len, 0);
            opened(&mut self.file, &self.fs_path)?.read_exact_at(&mut scratch, self.hashed)?;
            self.hasher.update(&scratch);
            self.hashed += len as u64;
        }
        Ok(())
    }

    /// Records an acknowledgement; true when it was the commit's (the file is delivered).
    pub fn on_ack(&mut self, kind: FrameKind, offset: u64, len: u32) -> bool {
        match kind {
            FrameKind::Data => {
                self.acked = self.acked.max(offset + u64::from(len));
                false
            }
            FrameKind::Commit => true,
            _ => false,
        }
    }

    /// True when the file under its name is still the one taken, in the same version (inode,
    /// size, mtime, ctime).
    pub fn unchanged(&self) -> bool {
        std::fs::symlink_metadata(&self.fs_path).is_ok_and(|m| Identity::of(&m) == self.ident)
    }

    /// The whole-file digest (hex), once everything was hashed.
    pub fn digest_hex(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gapsync_protocol::decode_body;

    fn transfer(data: &[u8], acked: u64) -> (tempfile::TempDir, Transfer) {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        std::fs::write(&p, data).expect("write");
        let f = File::open(&p).expect("open");
        let meta = f.metadata().expect("meta");
        (
            dir,
            Transfer::new(
                7,
                "f".into(),
                p,
                f,
                &meta,
                acked,
                (&OriginChain::default(), &ObjectAttrs::default()),
            ),
        )
    }

    fn frames(t: &mut Transfer, chunk: usize) -> Vec<(FrameKind, u64, Vec<u8>)> {
        let mut buf = Vec::new();
        std::iter::from_fn(|| {
            buf.clear();
            t.next_frame(chunk, &mut buf)
                .expect("read")
                .map(|(k, o)| (k, o, buf.clone()))
        })
        .collect()
    }

    #[test]
    fn the_largest_commit_body_fits_its_bound() {
        let c = Commit {
            size: u64::MAX,
            digest: [0xff; 32],
        };
        assert!(encode_body(&c).len() <= COMMIT_BODY_MAX);
    }

    #[test]
    fn frames_are_open_data_commit_with_the_digest_of_the_whole_file() {
        let data: Vec<u8> = (0..25u8).collect();
        let (_d, mut t) = transfer(&data, 0);
        let f = frames(&mut t, 10);
        let kinds: Vec<_> = f.iter().map(|x| (x.0, x.1)).collect();
        assert_eq!(
            kinds,
            [
                (FrameKind::Open, 0),
                (FrameKind::Data, 0),
                (FrameKind::Data, 10),
                (FrameKind::Data, 20),
                (FrameKind::Commit, 0)
            ]
        );
        let c: Commit = decode_body("commit", &f[4].2).expect("commit");
        assert_eq!(c.digest, *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn a_fully_read_file_is_closed_and_reopened_for_a_resend() {
        let data: Vec<u8> = (0..25u8).collect();
        let (dir, mut t) = transfer(&data, 0);
        let first = frames(&mut t, 10);
        assert!(
            t.file.is_none(),
            "no descriptor held while waiting for the answer"
        );
        // A reconnect before any answer: everything again, read through a new descriptor.
        t.rewind();
        let again = frames(&mut t, 10);
        assert_eq!(again, first);
        assert!(t.file.is_none());
        // Removed from the spool in the meantime: the resend says so instead of sending.
        t.rewind();
        std::fs::remove_file(dir.path().join("f")).expect("rm");
        let mut buf = Vec::new();
        assert!(t.next_frame(10, &mut buf).expect("open").is_some());
        let e = t.next_frame(10, &mut buf).expect_err("gone");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_resumed_transfer_sends_only_the_rest_and_still_has_the_full_digest() {
        let data: Vec<u8> = (0..25u8).collect();
        let (_d, mut t) = transfer(&data, 20);
        let f = frames(&mut t, 10);
        assert_eq!(f.len(), 3, "open, the last 5 bytes, commit");
        assert_eq!(f[1].1, 20);
        let c: Commit = decode_body("commit", &f[2].2).expect("commit");
        assert_eq!(c.digest, *blake3::hash(&data).as_bytes());
        t.on_ack(FrameKind::Data, 20, 5);
        t.rewind();
        assert_eq!(
            frames(&mut t, 10).len(),
            2,
            "after a reconnect: open and commit only"
        );
    }

    #[test]
    fn an_empty_file_is_open_then_commit() {
        let (_d, mut t) = transfer(b"", 0);
        let kinds: Vec<_> = frames(&mut t, 10).into_iter().map(|x| x.0).collect();
        assert_eq!(kinds, [FrameKind::Open, FrameKind::Commit]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use gapsync_protocol::decode_body;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever is acknowledged before each reconnect, the receiver's copy (rebuilt from the
        /// Data frames) ends up equal to the file, and the Commit always carries the digest of
        /// the whole file. After a reconnect nothing below the acknowledged offset is resent.
        #[test]
        fn resume_after_any_cuts_rebuilds_the_file(
            len in 0usize..5000,
            chunk in 1usize..700,
            cuts in proptest::collection::vec((0usize..40, any::<bool>()), 0..6),
            restart_at in proptest::option::of(0usize..5000),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let dir = tempfile::tempdir().expect("tmp");
            let p = dir.path().join("f");
            std::fs::write(&p, &data).expect("write");
            let open = || { let f = File::open(&p).expect("open"); let m = f.metadata().expect("meta"); (f, m) };
            let (f, m) = open();
            // A restart resumes from a persisted offset (possibly inside a chunk).
            let start = restart_at.map_or(0, |r| r.min(len));
            let mut t = Transfer::new(1, "f".into(), p.clone(), f, &m, start as u64, (&OriginChain::default(), &ObjectAttrs::default()));
            let mut copy = data.clone();
            copy[start..].fill(0);
            let mut buf = Vec::new();
            let mut committed = None;
            for (frames_before_cut, ack_all) in cuts.into_iter().chain(std::iter::once((usize::MAX, true))) {
                let mut sent = Vec::new();
                for _ in 0..frames_before_cut {
                    buf.clear();
                    match t.next_frame(chunk, &mut buf).expect("read") {
                        Some((FrameKind::Data, off)) => {
                            prop_assert!(off >= t.acked, "resent below the acknowledged offset");
                            copy[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
                            sent.push((off, buf.len() as u32));
                        }
                        Some((FrameKind::Commit, _)) => committed = Some(decode_body::<gapsync_protocol::Commit>("commit", &buf).expect("body")),
                        Some(_) => {}
                        None => break,
                    }
                }
                let acked = if ack_all { sent.len() } else { sent.len() / 2 };
                for (off, l) in &sent[..acked] {
                    t.on_ack(FrameKind::Data, *off, *l);
                }
                t.rewind();
            }
            prop_assert_eq!(&copy, &data);
            let c = committed.expect("the last round runs to the commit");
            prop_assert_eq!(c.digest, *blake3::hash(&data).as_bytes());
        }
    }
}
