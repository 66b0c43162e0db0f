//! The directory sink: transfers are staged as `<id>.part`, their Opens recorded in the
//! staging journal (`opens.log`), verified at commit, recorded in the done log, then renamed
//! into the destination folder.
//!
//! Commit order for the group of commits of one frame (each step durable before the next):
//! 1. check each partial's size and BLAKE3 digest;
//! 2. make the partials and the staging journal durable (fsync each, or one syncfs);
//! 3. append the transfer ids to the done log and fsync it;
//! 4. rename the partials to their final names inside `dest` and make the folders durable;
//! 5. mark them finished in the staging journal.
//!
//! A crash between 3 and 4 is repaired at start: a done transfer whose partial is still staged
//! is renamed into place before any connection is accepted.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gapsync_protocol::{Commit, OpenFile, WirePath, decode_body};

use super::done_log::DoneLog;
use super::land::{FSYNC_EACH_UP_TO, Places};
use super::open_log::OpenLog;
use super::{Applied, Delivered, Sink, SinkError, io_err};

#[derive(Debug)]
struct Partial {
    file: File,
    open: OpenFile,
    path: WirePath,
    hasher: blake3::Hasher,
    /// Bytes `0..hashed` are in `hasher`, in order; `None` once writes went out of order.
    hashed: Option<u64>,
    started: Instant,
}

/// A group made durable and recorded as done: each transfer's id and name, to rename into
/// place in this order, and what each delivers.
type Committed = (Vec<(u64, WirePath)>, Vec<Delivered>);

/// A commit verified (size and digest) and waiting for the next flush.
#[derive(Debug)]
struct Staged {
    id: u64,
    partial: Partial,
    digest: [u8; 32],
}

/// Writes of at least this much data bypass the page cache (O_DIRECT) for their whole pages:
/// the diode link's blocks and the TCP link's Data records. Copying them into the page cache
/// cost about 2.5 CPU-seconds per GiB on the reference machine; writing them directly costs
/// about 0.2, and leaves nothing for the commit's fsync to flush. The partial pages at either
/// end, and smaller writes, go through the page cache.
const DIRECT_MIN: usize = 64 << 10;
const DIRECT_ALIGN: usize = 4096;

/// Data not aligned in memory (a record inside a received frame) is copied into a page-aligned
/// buffer of this many bytes at a time for its direct writes.
const BOUNCE_BYTES: usize = 1 << 20;

/// `f_type` of tmpfs: its "direct" writes still copy into memory, so there the bounce copy
/// would be pure cost.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// How long a reading of the staging folder's free space is reused for the next Opens.
const SPACE_READING_FRESH: Duration = Duration::from_secs(1);
/// Free space a reused reading must still show beyond what an Open needs.
const SPACE_HEADROOM: u64 = 256 << 20;

/// Lands one pipe's files in a destination folder.
#[derive(Debug)]
pub struct DirectorySink {
    places: Places,
    done: DoneLog,
    opens: OpenLog,
    partials: HashMap<u64, Partial>,
    staged: Vec<Staged>,
    writer: DataWriter,
    /// Folders of dest checked by Opens since the last flush, relative to dest.
    checked_dirs: HashSet<String>,
    /// The staging folder's free space as last read (less the Opens admitted since), and when.
    space: Option<(Instant, u64)>,
}

/// Writes file data: whole pages with O_DIRECT where the staging filesystem allows it, the
/// rest through the page cache.
#[derive(Debug)]
struct DataWriter {
    /// False on tmpfs, and once the staging filesystem refused a direct write.
    direct: bool,
    /// Page-aligned copies of unaligned data (allocated on first use).
    bounce: Vec<u8>,
}

impl DataWriter {
    fn new(staging: &Path) -> Self {
        let tmpfs = rustix::fs::statfs(staging).is_ok_and(|s| s.f_type as u64 == TMPFS_MAGIC);
        Self {
            direct: !tmpfs,
            bounce: Vec::new(),
        }
    }

    /// Writes `data` at `offset` of `file`: the whole pages it covers directly (copied into
    /// an aligned buffer first unless `data` is aligned in memory where they start), the
    /// partial pages at either end buffered.
    fn write(&mut self, file: &File, data: &[u8], offset: u64, staging: &Path) -> io::Result<()> {
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

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

impl DirectorySink {
    /// Opens the sink, repairs interrupted commits and removes partials older than `stale_after`.
    pub fn open(
        dest: &Path,
        staging: &Path,
        done_retention: Duration,
        stale_after: Duration,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dest)
            .map_err(|e| anyhow::anyhow!("cannot create dest {}: {e}", dest.display()))?;
        fs::create_dir_all(staging)
            .map_err(|e| anyhow::anyhow!("cannot create staging {}: {e}", staging.display()))?;
        same_filesystem(dest, staging)?;
        let done = DoneLog::open(&staging.join("done.log"), done_retention).map_err(|e| {
            anyhow::anyhow!("cannot open the done log in {}: {e}", staging.display())
        })?;
        let opens = OpenLog::open(&staging.join("opens.log")).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the staging journal in {}: {e}",
                staging.display()
            )
        })?;
        let places = Places {
            dest: dest.to_path_buf(),
            staging: staging.to_path_buf(),
        };
        let mut sink = Self {
            places,
            done,
            opens,
            partials: HashMap::new(),
            staged: Vec::new(),
            writer: DataWriter::new(staging),
            checked_dirs: HashSet::new(),
            space: None,
        };
        sink.recover(stale_after)?;
        Ok(sink)
    }

    fn opens_path(&self) -> PathBuf {
        self.places.staging.join("opens.log")
    }

    fn part_path(&self, id: u64) -> PathBuf {
        self.places.part_path(id)
    }

    /// Files in staging named `<id hex>.<suffix>`, by id.
    fn staged_files(&self, suffix: &str) -> std::io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.places.staging)? {
            let name = entry?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(suffix))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn recover(&mut self, stale_after: Duration) -> anyhow::Result<()> {
        // `<id>.meta` files of earlier versions move into the journal.
        let metas: Vec<PathBuf> = self
            .staged_files(".meta")?
            .into_iter()
            .map(|id| {
                let meta = self.places.staging.join(format!("{}.meta", hex(id)));
                if let Ok(open) = decode_body::<OpenFile>("meta", &fs::read(&meta)?) {
                    self.opens.insert(id, &open)?;
                }
                Ok(meta)
            })
            .collect::<std::io::Result<_>>()?;
        // Durable in the journal (one fsync) before the old files go.
        self.opens.sync()?;
        for meta in metas {
            fs::remove_file(&meta)?;
        }
        let mut finished = Vec::new();
        let mut unlanded = Vec::new();
        // In id order, so that of two versions of one name the later lands last.
        let mut ids = self.opens.ids();
        ids.sort_unstable();
        for id in ids {
            if !self.done.contains(id) {
                continue;
            }
            match self.opens.get(id) {
                Some(open) if self.part_path(id).exists() => {
                    unlanded.push((id, WirePath::parse(&open.path)?));
                }
                _ => finished.push(id),
            }
        }
        let (landed, err) = self.places.land_all(&unlanded);
        for (id, path) in &unlanded[..landed.len()] {
            tracing::info!(transfer = %hex(*id), path = %path, "finished a commit interrupted by a restart");
        }
        finished.extend(landed);
        if let Some(e) = err {
            self.opens.finish(&finished)?;
            anyhow::bail!("cannot finish a commit interrupted by a restart: {e}");
        }
        self.opens.finish(&finished)?;
        // A partial whose Open never became durable cannot be resumed: a new Open restarts it.
        for id in self.staged_files(".part")? {
            if self.opens.get(id).is_none() {
                fs::remove_file(self.part_path(id))?;
            }
        }
        self.remove_stale(stale_after)?;
        Ok(())
    }

    /// Removes partials not written to for longer than `stale_after` (abandoned transfers).
    pub fn remove_stale(&mut self, stale_after: Duration) -> std::io::Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for id in self.opens.ids() {
            // A committed partial that could not be landed waits for the next start, whatever
            // its age (its mtime is the source file's, which may be old).
            if self.done.contains(id) {
                continue;
            }
            let age = fs::metadata(self.part_path(id))
                .and_then(|m| m.modified())
                .map_or(Duration::MAX, |t| now.duration_since(t).unwrap_or_default());
            if age > stale_after {
                self.discard(id);
                removed += 1;
                tracing::info!(transfer = %hex(id), age = %humantime::format_duration(Duration::from_secs(age.as_secs())), "removed an abandoned partial transfer");
            }
        }
        Ok(removed)
    }

    /// Checks that the folders of `path` inside dest are real folders (no symlinks out),
    /// creating missing ones, and that the name itself is not a folder. Folders checked since
    /// the last flush are not checked again; the rename checks every folder anyway.
    fn prepare_target(&mut self, path: &WirePath) -> Result<(), SinkError> {
        let (dirs, _) = path.as_str().rsplit_once('/').unwrap_or(("", ""));
        if !dirs.is_empty() && !self.checked_dirs.contains(dirs) {
            let mut cur = self.places.dest.clone();
            for d in dirs.split('/') {
                cur.push(d);
                match fs::symlink_metadata(&cur) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(SinkError::Escape(path.to_string())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&cur) {
                        Ok(()) => {}
                        // Made meanwhile by someone else: it must be a folder too.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
                                return Err(SinkError::Escape(path.to_string()));
                            }
                        }
                        Err(e) => return Err(io_err("cannot create folder", &cur)(e)),
                    },
                    Err(e) => return Err(io_err("cannot inspect", &cur)(e)),
                }
            }
            self.checked_dirs.insert(dirs.to_owned());
        }
        let target = self.places.dest.join(path.as_str());
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(SinkError::Escape(path.to_string()));
        }
        Ok(())
    }

    fn digest_of(&self, p: &mut Partial, id: u64) -> Result<[u8; 32], SinkError> {
        if p.hashed == Some(p.open.size) {
            return Ok(*p.hasher.finalize().as_bytes());
        }
        let part = self.part_path(id);
        let mut h = blake3::Hasher::new();
        let f = File::open(&part).map_err(io_err("cannot read partial", &part))?;
        h.update_reader(f)
            .map_err(io_err("cannot read partial", &part))?;
        Ok(*h.finalize().as_bytes())
    }

    /// Refuses a transfer that cannot fit: `needed` more bytes, plus a margin for the folder
    /// entries and the done log.
    fn check_space(&mut self, path: &str, needed: u64) -> Result<(), SinkError> {
        const MARGIN: u64 = 1 << 20;
        let want = needed.saturating_add(MARGIN);
        // A reading of the last second, with the Opens admitted since subtracted, answers
        // while it leaves ample room; a refusal always comes from a fresh reading.
        if let Some((at, free)) = &mut self.space {
            if at.elapsed() < SPACE_READING_FRESH && *free >= want.saturating_add(SPACE_HEADROOM) {
                *free -= needed;
                return Ok(());
            }
        }
        let st = rustix::fs::statvfs(&self.places.staging)
            .map_err(|e| io_err("cannot read free space of", &self.places.staging)(e.into()))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < want {
            self.space = None;
            return Err(SinkError::NoSpace {
                path: path.to_owned(),
                needed: want,
                free,
                folder: self.places.staging.display().to_string(),
            });
        }
        self.space = Some((Instant::now(), free - needed));
        Ok(())
    }

    fn discard(&mut self, id: u64) {
        self.partials.remove(&id);
        let _ = fs::remove_file(self.part_path(id));
        let _ = self.opens.finish(&[id]);
    }

    /// Steps 1 to 3 of the commit order for the staged commits: the partials and their Opens
    /// made durable, then the done record. Returns the group to rename into place (step 4)
    /// and what each delivers, or `None` when nothing was staged.
    fn commit_group(&mut self) -> Result<Option<Committed>, SinkError> {
        // New partials' Opens reach the file at every frame (no fsync), so a receiver killed
        // mid-file resumes them.
        let opens_path = self.opens_path();
        self.opens
            .write_out()
            .map_err(io_err("cannot write", &opens_path))?;
        if self.staged.is_empty() {
            return Ok(None);
        }
        let group = std::mem::take(&mut self.staged);
        let t0 = Instant::now();
        // The partials and their Opens: one syncfs for a group, an fsync each for one or two.
        if group.len() > FSYNC_EACH_UP_TO {
            gapsync_daemon::durable::sync_filesystem(&self.places.staging).map_err(io_err(
                "cannot sync the filesystem of",
                &self.places.staging,
            ))?;
            self.opens.mark_synced();
        } else {
            for s in &group {
                let part = self.part_path(s.id);
                s.partial
                    .file
                    .sync_all()
                    .map_err(io_err("cannot fsync", &part))?;
            }
            self.opens
                .sync()
                .map_err(io_err("cannot fsync", &opens_path))?;
        }
        let t_data = t0.elapsed();
        let ids: Vec<u64> = group.iter().map(|s| s.id).collect();
        self.done
            .record_all(&ids)
            .map_err(io_err("cannot record commit in", self.done.path()))?;
        tracing::debug!(
            files = ids.len(),
            data_sync_ms = t_data.as_secs_f64() * 1e3,
            done_log_ms = (t0.elapsed() - t_data).as_secs_f64() * 1e3,
            "group commit"
        );
        let mut items = Vec::with_capacity(group.len());
        let mut delivered = Vec::with_capacity(group.len());
        for s in group {
            let Staged {
                id,
                partial,
                digest,
            } = s;
            delivered.push(Delivered {
                path: partial.open.path,
                size: partial.open.size,
                digest_hex: blake3::Hash::from_bytes(digest).to_hex().to_string(),
                elapsed: partial.started.elapsed(),
            });
            items.push((id, partial.path));
        }
        Ok(Some((items, delivered)))
    }

    /// Records landed ids in the staging journal. A failure only means the next start checks
    /// them again (each is done and no longer staged), so it is a warning.
    fn finish(&mut self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.opens.finish(ids) {
            tracing::warn!(journal = %self.opens_path().display(), error = %e, "cannot record landed files in the staging journal; the next start checks them again");
        }
    }
}

fn same_filesystem(a: &Path, b: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let (da, db) = (fs::metadata(a)?.dev(), fs::metadata(b)?.dev());
    anyhow::ensure!(
        da == db,
        "staging {} and dest {} are on different filesystems, so files could not be renamed into place atomically; set the pipe's `staging` to a folder on the filesystem of dest",
        b.display(),
        a.display()
    );
    Ok(())
}

impl Sink for DirectorySink {
    fn open(&mut self, id: u64, open: &OpenFile) -> Result<Applied, SinkError> {
        let path = WirePath::parse(&open.path).map_err(|source| SinkError::BadName {
            name: open.path.clone(),
            source,
        })?;
        if self.done.contains(id) {
            return Ok(Applied::AlreadyCommitted);
        }
        if let Some(p) = self.partials.get(&id) {
            if p.open.path != open.path || p.open.size != open.size {
                return Err(SinkError::Reopened {
                    transfer: id,
                    old_path: p.open.path.clone(),
                    old_size: p.open.size,
                    new_path: open.path.clone(),
                    new_size: open.size,
                });
            }
            return Ok(Applied::Done);
        }
        self.prepare_target(&path)?;
        let part = self.part_path(id);
        let same = self.opens.get(id) == Some(open);
        let staged = if same {
            fs::metadata(&part).map_or(0, |m| m.len())
        } else {
            0
        };
        self.check_space(&open.path, open.size.saturating_sub(staged))?;
        if !same {
            self.opens
                .insert(id, open)
                .map_err(io_err("cannot record the open in", &self.opens_path()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(!same)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(io_err("cannot create partial", &part))?;
        self.partials.insert(
            id,
            Partial {
                file,
                open: open.clone(),
                path,
                hasher: blake3::Hasher::new(),
                hashed: Some(0),
                started: Instant::now(),
            },
        );
        Ok(Applied::Done)
    }

    fn write(&mut self, id: u64, offset: u64, data: &[u8]) -> Result<Applied, SinkError> {
        if self.done.contains(id) {
            return Ok(Applied::AlreadyCommitted);
        }
        let part = self.part_path(id);
        let p = self.partials.get_mut(&id).ok_or(SinkError::NotOpen(id))?;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > p.open.size) {
            return Err(SinkError::OutOfRange {
                offset,
                len: data.len(),
                size: p.open.size,
            });
        }
        if let Err(e) = self
            .writer
            .write(&p.file, data, offset, &self.places.staging)
        {
            if e.kind() == io::ErrorKind::StorageFull {
                let (path, needed) = (p.open.path.clone(), p.open.size - offset);
                let free = rustix::fs::statvfs(&self.places.staging)
                    .map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize));
                return Err(SinkError::NoSpace {
                    path,
                    needed,
                    free,
                    folder: self.places.staging.display().to_string(),
                });
            }
            return Err(io_err("cannot write partial", &part)(e));
        }
        p.hashed = match p.hashed {
            Some(h) if h == offset => {
                p.hasher.update(data);
                end
            }
            // A rewrite or a gap: the digest is computed from the file at commit instead.
            _ => None,
        };
        Ok(Applied::Done)
    }

    fn commit(&mut self, id: u64, commit: &Commit) -> Result<Applied, SinkError> {
        if self.done.contains(id) || self.staged.iter().any(|s| s.id == id) {
            return Ok(Applied::AlreadyCommitted);
        }
        let part = self.part_path(id);
        let mut p = self.partials.remove(&id).ok_or(SinkError::NotOpen(id))?;
        let staged = p
            .file
            .metadata()
            .map_err(io_err("cannot inspect partial", &part))?
            .len();
        if staged != commit.size || p.open.size != commit.size {
            let e = SinkError::SizeMismatch {
                announced: p.open.size,
                committed: commit.size,
                staged,
            };
            self.discard(id);
            return Err(e);
        }
        let digest = self.digest_of(&mut p, id)?;
        if digest != commit.digest {
            self.discard(id);
            return Err(SinkError::DigestMismatch { path: p.open.path });
        }
        let mtime = UNIX_EPOCH + Duration::from_nanos(p.open.mtime_ns.max(0) as u64);
        let _ = p.file.set_modified(mtime);
        self.staged.push(Staged {
            id,
            partial: p,
            digest,
        });
        Ok(Applied::Done)
    }

    fn flush(&mut self) -> Result<Vec<Delivered>, SinkError> {
        self.checked_dirs.clear();
        let Some((items, mut delivered)) = self.commit_group()? else {
            return Ok(Vec::new());
        };
        let t0 = Instant::now();
        let (landed, err) = self.places.land_all(&items);
        tracing::debug!(
            files = landed.len(),
            landing_ms = t0.elapsed().as_secs_f64() * 1e3,
            "group landed"
        );
        self.finish(&landed);
        match err {
            Some(e) => Err(e),
            None => {
                delivered.truncate(landed.len());
                Ok(delivered)
            }
        }
    }

    fn abandon(&mut self) {
        // Their partials stay staged: a resent Open finds them and the commit is repeated.
        self.staged.clear();
    }

    fn partials(&self) -> usize {
        self.partials.len()
    }

    fn drop_partial(&mut self, id: u64) {
        self.discard(id);
    }

    fn housekeeping(&mut self, stale_after: Duration) -> std::io::Result<usize> {
        self.remove_stale(stale_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(root: &Path) -> DirectorySink {
        DirectorySink::open(
            &root.join("dest"),
            &root.join("staging"),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .expect("open sink")
    }

    fn commit_for(data: &[u8]) -> Commit {
        Commit {
            size: data.len() as u64,
            digest: *blake3::hash(data).as_bytes(),
        }
    }

    #[test]
    fn a_file_lands_only_at_commit_and_a_second_commit_writes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = sink(dir.path());
        let open = OpenFile {
            path: "a/b.txt".into(),
            size: 6,
            mtime_ns: 0,
        };
        s.open(1, &open).expect("open");
        s.write(1, 0, b"abc").expect("write");
        s.write(1, 3, b"def").expect("write");
        s.write(1, 3, b"def").expect("rewrite is harmless");
        let target = dir.path().join("dest/a/b.txt");
        assert!(!target.exists(), "not visible before commit");
        assert_eq!(
            s.commit(1, &commit_for(b"abcdef")).expect("commit"),
            Applied::Done
        );
        assert!(!target.exists(), "not visible before the flush");
        assert_eq!(s.flush().expect("flush").len(), 1);
        assert_eq!(fs::read(&target).expect("landed"), b"abcdef");
        fs::remove_file(&target).expect("consumer took it");
        assert_eq!(s.open(1, &open).expect("reopen"), Applied::AlreadyCommitted);
        assert_eq!(
            s.commit(1, &commit_for(b"abcdef")).expect("again"),
            Applied::AlreadyCommitted
        );
        assert!(s.flush().expect("flush").is_empty());
        assert!(
            !target.exists(),
            "a committed transfer is never written again"
        );
    }

    #[test]
    fn whole_aligned_blocks_written_directly_and_out_of_order_land_intact() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = sink(dir.path());
        let block = 2 * DIRECT_MIN;
        let data: Vec<u8> = (0..2 * block + 1000).map(|i| (i * 7 % 251) as u8).collect();
        let open = OpenFile {
            path: "big.bin".into(),
            size: data.len() as u64,
            mtime_ns: 0,
        };
        s.open(9, &open).expect("open");
        // Page-aligned copies of the blocks, as the diode receiver hands them over.
        let mut buf = vec![0u8; block + DIRECT_ALIGN];
        let at = (DIRECT_ALIGN - buf.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
        for b in [1, 0] {
            buf[at..at + block].copy_from_slice(&data[b * block..(b + 1) * block]);
            s.write(9, (b * block) as u64, &buf[at..at + block])
                .expect("direct write");
        }
        s.write(9, 2 * block as u64, &data[2 * block..])
            .expect("the unaligned tail goes through the page cache");
        // Out of order: the digest is read back from the file at commit.
        assert_lands(&mut s, dir.path(), 9, "big.bin", &data);
    }

    /// Commits transfer `id`, flushes, and checks that `name` landed holding `data`.
    fn assert_lands(s: &mut DirectorySink, root: &Path, id: u64, name: &str, data: &[u8]) {
        assert_eq!(
            s.commit(id, &commit_for(data)).expect("commit"),
            Applied::Done
        );
        assert_eq!(s.flush().expect("flush").len(), 1);
        assert_eq!(
            fs::read(root.join("dest").join(name)).expect("landed"),
            data
        );
    }

    #[test]
    fn unaligned_records_land_intact_through_the_bounce_buffer() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = sink(dir.path());
        // Records of odd sizes at odd offsets, starting one byte into their buffer, as Data
        // records sit inside a received frame; one is larger than the bounce buffer.
        let sizes = [
            DIRECT_MIN + 1,
            3,
            BOUNCE_BYTES + 5 * DIRECT_ALIGN + 17,
            DIRECT_MIN * 3 - 9,
        ];
        let total: usize = sizes.iter().sum();
        let frame: Vec<u8> = (0..=total).map(|i| (i * 13 % 241) as u8).collect();
        let data = &frame[1..];
        let open = OpenFile {
            path: "odd.bin".into(),
            size: total as u64,
            mtime_ns: 0,
        };
        s.open(4, &open).expect("open");
        let mut at = 0;
        for n in sizes {
            s.write(4, at as u64, &data[at..at + n]).expect("write");
            at += n;
        }
        assert_lands(&mut s, dir.path(), 4, "odd.bin", data);
    }

    #[test]
    fn a_digest_mismatch_discards_the_partial() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = sink(dir.path());
        s.open(
            2,
            &OpenFile {
                path: "x".into(),
                size: 3,
                mtime_ns: 0,
            },
        )
        .expect("open");
        s.write(2, 0, b"abc").expect("write");
        assert!(matches!(
            s.commit(2, &commit_for(b"abd")),
            Err(SinkError::DigestMismatch { .. })
        ));
        assert!(!dir.path().join("dest/x").exists());
        assert_eq!(
            fs::read_dir(dir.path().join("staging"))
                .expect("ls")
                .count(),
            2,
            "only done.log and opens.log are left"
        );
    }

    #[test]
    fn a_partial_resumes_across_a_restart_and_an_interrupted_commit_is_finished() {
        let dir = tempfile::tempdir().expect("tmp");
        let open = OpenFile {
            path: "r.bin".into(),
            size: 4,
            mtime_ns: 0,
        };
        {
            let mut s = sink(dir.path());
            s.open(3, &open).expect("open");
            s.write(3, 0, b"ab").expect("write");
        }
        let mut s = sink(dir.path());
        s.open(3, &open).expect("reopen keeps the partial");
        s.write(3, 2, b"cd").expect("resume at 2");
        s.commit(3, &commit_for(b"abcd")).expect("commit");
        assert_eq!(s.flush().expect("flush").len(), 1);
        assert_eq!(
            fs::read(dir.path().join("dest/r.bin")).expect("landed"),
            b"abcd"
        );

        // Simulate a crash after the done record and before the rename.
        s.open(
            4,
            &OpenFile {
                path: "late.bin".into(),
                size: 1,
                mtime_ns: 0,
            },
        )
        .expect("open");
        s.write(4, 0, b"z").expect("write");
        s.done.record_all(&[4]).expect("record");
        drop(s);
        let _s = sink(dir.path());
        assert_eq!(
            fs::read(dir.path().join("dest/late.bin")).expect("recovered"),
            b"z"
        );
    }

    #[test]
    fn a_group_lands_together_and_an_abandoned_group_lands_nothing_until_repeated() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = sink(dir.path());
        let put = |s: &mut DirectorySink, id: u64, name: &str| {
            let data = name.as_bytes();
            let open = OpenFile {
                path: format!("g{}/{name}", id % 3),
                size: data.len() as u64,
                mtime_ns: 0,
            };
            s.open(id, &open).expect("open");
            s.write(id, 0, data).expect("write");
            s.commit(id, &commit_for(data)).expect("commit")
        };
        for id in 10..15 {
            assert_eq!(put(&mut s, id, &format!("f{id}")), Applied::Done);
        }
        s.abandon();
        assert!(s.flush().expect("nothing staged").is_empty());
        let visible = (0..3)
            .filter_map(|g| fs::read_dir(dir.path().join(format!("dest/g{g}"))).ok())
            .map(|d| d.count())
            .sum::<usize>();
        assert_eq!(visible, 0, "nothing of an abandoned group is visible");
        // The sender repeats the group (same ids): the staged partials are reopened.
        for id in 10..15 {
            assert_eq!(put(&mut s, id, &format!("f{id}")), Applied::Done);
        }
        assert_eq!(
            put(&mut s, 10, "f10"),
            Applied::AlreadyCommitted,
            "a commit repeated in one group"
        );
        let landed = s.flush().expect("flush");
        assert_eq!(landed.len(), 5);
        for id in 10..15 {
            let p = dir.path().join(format!("dest/g{}/f{id}", id % 3));
            assert_eq!(fs::read(&p).expect("landed"), format!("f{id}").as_bytes());
        }
        drop(s);
        let s = sink(dir.path());
        assert!(
            (10..15).all(|id| s.done.contains(id)),
            "the group is in the done log"
        );
    }

    #[test]
    fn abandoned_partials_are_removed_and_recent_ones_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = sink(dir.path());
        s.open(
            5,
            &OpenFile {
                path: "old".into(),
                size: 2,
                mtime_ns: 0,
            },
        )
        .expect("open");
        s.write(5, 0, b"a").expect("write");
        assert_eq!(
            s.housekeeping(Duration::from_secs(3600)).expect("scan"),
            0,
            "recent partial kept"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.housekeeping(Duration::from_millis(10)).expect("scan"), 1);
        assert_eq!(s.partials(), 0);
        assert!(
            matches!(s.write(5, 1, b"b"), Err(SinkError::NotOpen(5))),
            "a sender coming back reopens it"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("staging"))
                .expect("ls")
                .count(),
            2,
            "only done.log and opens.log are left"
        );
    }

    #[test]
    fn names_that_escape_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = sink(dir.path());
        std::os::unix::fs::symlink("/tmp", dir.path().join("dest/link")).expect("symlink");
        for name in ["../evil", "/etc/x", "link/evil"] {
            let r = s.open(
                9,
                &OpenFile {
                    path: name.into(),
                    size: 1,
                    mtime_ns: 0,
                },
            );
            assert!(
                matches!(r, Err(SinkError::BadName { .. } | SinkError::Escape(_))),
                "{name}: {r:?}"
            );
        }
        let r = s.write(9, 0, b"x");
        assert!(matches!(r, Err(SinkError::NotOpen(9))));
        s.open(
            10,
            &OpenFile {
                path: "o".into(),
                size: 1,
                mtime_ns: 0,
            },
        )
        .expect("open");
        assert!(matches!(
            s.write(10, 1, b"x"),
            Err(SinkError::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_folder_swapped_for_a_symlink_or_a_name_taken_by_a_folder_before_the_rename_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        let mut s = sink(dir.path());
        for (id, name) in [(1, "sub/a.txt"), (2, "b.txt"), (3, "sub2/deep/c.txt")] {
            let open = OpenFile {
                path: name.into(),
                size: 2,
                mtime_ns: 0,
            };
            assert_eq!(s.open(id, &open).expect("open"), Applied::Done);
            s.write(id, 0, b"hi").expect("write");
        }
        // After the Opens checked them: a folder becomes a symlink out, a name becomes a folder.
        let dest = dir.path().join("dest");
        fs::remove_dir(dest.join("sub")).expect("rmdir");
        std::os::unix::fs::symlink(&outside, dest.join("sub")).expect("symlink");
        fs::create_dir(dest.join("b.txt")).expect("mkdir");
        for id in [1, 2] {
            s.commit(id, &commit_for(b"hi")).expect("commit");
            let r = s.flush();
            assert!(matches!(r, Err(SinkError::Escape(_))), "{id}: {r:?}");
            s.abandon();
        }
        assert_eq!(
            fs::read_dir(&outside).expect("ls").count(),
            0,
            "nothing written outside"
        );
        assert!(dest.join("b.txt").is_dir());
        // A deeper name in a fresh folder still lands.
        s.commit(3, &commit_for(b"hi")).expect("commit");
        assert_eq!(s.flush().expect("flush").len(), 1);
        assert_eq!(fs::read(dest.join("sub2/deep/c.txt")).expect("read"), b"hi");
        // The two refused ones are committed (their partials carry the source's 1970 mtime):
        // housekeeping keeps them, and once the names are free a restart lands them.
        assert_eq!(
            s.housekeeping(Duration::from_secs(60))
                .expect("housekeeping"),
            0
        );
        drop(s);
        fs::remove_file(dest.join("sub")).expect("rm symlink");
        fs::remove_dir(dest.join("b.txt")).expect("rmdir");
        let _s = sink(dir.path());
        assert_eq!(fs::read(dest.join("sub/a.txt")).expect("read"), b"hi");
        assert_eq!(fs::read(dest.join("b.txt")).expect("read"), b"hi");
        assert_eq!(fs::read_dir(&outside).expect("ls").count(), 0);
    }
}
