//! Writing file data into a partial: whole pages with O_DIRECT where the staging filesystem
//! allows it, the rest through the page cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// Writes of at least this much data bypass the page cache (O_DIRECT) for their whole pages:
/// the diode link's blocks and the TCP link's Data records. Copying them into the page cache
/// cost about 2.5 CPU-seconds per GiB on the reference machine; writing them directly costs
/// about 0.2, and leaves nothing for the commit's fsync to flush. The partial pages at either
/// end, and smaller writes, go through the page cache.
pub(super) const DIRECT_MIN: usize = 64 << 10;
pub(super) const DIRECT_ALIGN: usize = 4096;

/// Data not aligned in memory (a record inside a received frame) is copied into a page-aligned
/// buffer of this many bytes at a time for its direct writes.
pub(super) const BOUNCE_BYTES: usize = 1 << 20;

/// `f_type` of tmpfs: its "direct" writes still copy into memory, so there the bounce copy
/// would be pure cost.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Writes file data: whole pages with O_DIRECT where the staging filesystem allows it, the
/// rest through the page cache.
#[derive(Debug)]
pub(super) struct DataWriter {
    /// False on tmpfs, and once the staging filesystem refused a direct write.
    direct: bool,
    /// Page-aligned copies of unaligned data (allocated on first use).
    bounce: Vec<u8>,
}

impl DataWriter {
    pub(super) fn new(staging: &Path) -> Self {
        let tmpfs = rustix::fs::statfs(staging).is_ok_and(|s| s.f_type as u64 == TMPFS_MAGIC);
        Self {
            direct: !tmpfs,
            bounce: Vec::new(),
        }
    }

    /// Writes `data` at `offset` of `file`: the whole pages it covers directly (copied into
    /// an aligned buffer first unless `data` is aligned in memory where they start), the
    /// partial pages at either end buffered.
    pub(super) fn write(
        &mut self,
        file: &File,
        data: &[u8],
        offset: u64,
        staging: &Path,
    ) -> io::Result<()> {
        if !self.direct || data.len() < DIRECT_MIN {
            return file.write_all_at(data, offset);
        }
        let head = (DIRECT_ALIGN - (offset % DIRECT_ALIGN as u64) as usize) % DIRECT_ALIGN;
        let pages = (data.len() - head) / DIRECT_ALIGN * DIRECT_ALIGN;
        let (head_data, rest) = data.split_at(head);
        let (body, tail) = rest.split_at(pages);
        let body_at = offset + head as u64;
        file.write_all_at(head_data, offset)?;
        if body.as_ptr().addr() % DIRECT_ALIGN == 0 {
            direct_or_buffered(&mut self.direct, file, body, body_at, staging)?;
        } else {
            if self.bounce.is_empty() {
                self.bounce = vec![0; BOUNCE_BYTES + DIRECT_ALIGN];
            }
            let at = (DIRECT_ALIGN - self.bounce.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
            let mut done = 0;
            for chunk in body.chunks(BOUNCE_BYTES) {
                let aligned = &mut self.bounce[at..at + chunk.len()];
                aligned.copy_from_slice(chunk);
                direct_or_buffered(&mut self.direct, file, aligned, body_at + done, staging)?;
                done += chunk.len() as u64;
            }
        }
        file.write_all_at(tail, body_at + pages as u64)
    }
}

/// One direct write of aligned `data` while `direct` holds; buffered, and `direct` cleared,
/// if the filesystem refuses it.
fn direct_or_buffered(
    direct: &mut bool,
    file: &File,
    data: &[u8],
    offset: u64,
    staging: &Path,
) -> io::Result<()> {
    if !*direct {
        return file.write_all_at(data, offset);
    }
    match write_direct(file, data, offset) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            tracing::info!(staging = %staging.display(), "the staging filesystem refuses direct writes; writing through the page cache");
            *direct = false;
            file.write_all_at(data, offset)
        }
        other => other,
    }
}

/// Writes `data` at `offset` with O_DIRECT set for just this write, so that every other read
/// and write of the file stays buffered.
fn write_direct(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(file)?;
    fcntl_setfl(file, flags | OFlags::DIRECT)?;
    let written = file.write_all_at(data, offset);
    fcntl_setfl(file, flags)?;
    written
}
