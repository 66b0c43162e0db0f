//! Where an object's origin chain (see `gapsync_protocol::origin`) is kept on disk: the
//! extended attribute `user.gapsync.origin` of the landed file, in the chain's text form
//! (`plant-a/scada,plant-b/relay`). The receiver sets it on the staged file before the final
//! rename, so a landed file has it from its first moment; a sender whose spool is another
//! pipe's landing folder reads it when it takes the file.
//!
//! rustix's `fsetxattr`/`fgetxattr` (already a dependency) do this on the open descriptor, so
//! no `xattr` crate is needed and the attribute belongs to the very file that was opened.

use std::io;
use std::os::fd::AsFd;

use gapsync_protocol::OriginChain;

/// The extended attribute holding an object's origin chain.
pub const XATTR: &str = "user.gapsync.origin";

/// Longest value read back (16 hops of two 64-byte names and separators fit well below it).
const MAX_VALUE: usize = 4096;

/// Why a chain could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum OriginXattrError {
    /// The filesystem (or its mount options) does not support user extended attributes.
    #[error("the filesystem does not support user extended attributes ({0})")]
    Unsupported(io::Error),
    #[error("cannot access the extended attribute {XATTR}: {0}")]
    Io(io::Error),
    #[error("the extended attribute {XATTR} does not hold an origin chain: {0}")]
    Malformed(String),
}

fn classify(e: rustix::io::Errno) -> OriginXattrError {
    match e {
        rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM => {
            OriginXattrError::Unsupported(e.into())
        }
        e => OriginXattrError::Io(e.into()),
    }
}

/// Sets `chain` on the open file `fd`.
pub fn write(fd: impl AsFd, chain: &OriginChain) -> Result<(), OriginXattrError> {
    let text = chain.to_string();
    rustix::fs::fsetxattr(fd, XATTR, text.as_bytes(), rustix::fs::XattrFlags::empty())
        .map_err(classify)
}

/// The chain set on the open file `fd`; empty when it has none (or its filesystem keeps no
/// user extended attributes: then nothing was ever recorded there).
pub fn read(fd: impl AsFd) -> Result<OriginChain, OriginXattrError> {
    let mut buf = vec![0u8; MAX_VALUE];
    match rustix::fs::fgetxattr(fd, XATTR, &mut buf[..]) {
        Ok(n) => {
            let text = std::str::from_utf8(buf.get(..n).unwrap_or_default())
                .map_err(|e| OriginXattrError::Malformed(e.to_string()))?;
            OriginChain::parse(text).map_err(|e| OriginXattrError::Malformed(e.to_string()))
        }
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => Ok(OriginChain::default()),
        Err(e) => Err(OriginXattrError::Io(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_round_trips_through_the_attribute_of_a_real_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::create(dir.path().join("x")).expect("create");
        assert!(read(&f).expect("no attribute").is_empty());
        let chain = OriginChain::parse("plant-a/scada,plant-b/relay").expect("chain");
        match write(&f, &chain) {
            Ok(()) => assert_eq!(read(&f).expect("read"), chain),
            // A test filesystem without user xattrs must say so, not pass silently.
            Err(OriginXattrError::Unsupported(e)) => {
                panic!("the test folder's filesystem keeps no user xattrs: {e}")
            }
            Err(e) => panic!("{e}"),
        }
        rustix::fs::fsetxattr(&f, XATTR, b"not a chain", rustix::fs::XattrFlags::empty())
            .expect("set");
        assert!(matches!(read(&f), Err(OriginXattrError::Malformed(_))));
    }
}
