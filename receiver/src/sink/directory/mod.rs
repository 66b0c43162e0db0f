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
//! A transfer recorded as done is answered OK only once step 4 succeeded for it. A crash
//! between 3 and 4, or a rename that failed, leaves it *unlanded* (see `repair.rs`): landed at
//! the next start, by a repeat of its commit, or by the periodic retry, and never answered OK
//! before.
//!
//! The staging folder defaults to `<dest>/.gapsync-staging`, and whatever it is, the sink
//! proves at start that a file can be renamed from it into dest. The done log is the pipe's
//! (see `crate::pipe::replay`), in the pipe's state folder; the staging journal stays next to
//! the partials it describes, so one syncfs of their filesystem makes both durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gapsync_protocol::{Commit, ObjectAttrs, OpenFile, OriginChain, WirePath};

use super::land::{FSYNC_EACH_UP_TO, Places};
use super::{Applied, Delivered, Flushed, Sink, SinkError, io_err};
use crate::pipe::replay::{DoneLog, OpenLog};
use writer::DataWriter;

mod attrs;
pub mod config;
mod repair;
mod writer;

pub use repair::{STAGING_DIR, adopt_legacy_staging, default_staging};

#[derive(Debug)]
struct Partial {
    file: File,
    open: OpenFile,
    path: WirePath,
    hasher: blake3::Hasher,
    /// Bytes `0..hashed` are in `hasher`, in order; `None` once writes went out of order.
    hashed: Option<u64>,
    started: Instant,
    /// A link object: the symlink's target, made at commit in place of the empty partial.
    link: Option<String>,
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
    /// Transfers recorded as done whose file is not yet visible: name and delivery line.
    unlanded: BTreeMap<u64, (WirePath, Delivered)>,
    /// Unlanded transfers committed again in this frame: landed by the flush, or it fails.
    relanding: Vec<u64>,
    /// The staging folder's path relative to dest, when it lies inside dest: no name there.
    reserved: Option<String>,
    /// Said once: origin chains cannot be kept on this filesystem.
    origin_warned: bool,
}

/// The name inside dest that no transfer may take: the whole `.gapsync-staging` folder when the
/// staging folder is below it, else the staging folder's path relative to dest.
fn reserved_name(dest: &Path, staging: &Path) -> Option<String> {
    if staging.starts_with(dest.join(STAGING_DIR)) {
        return Some(STAGING_DIR.to_owned());
    }
    staging
        .strip_prefix(dest)
        .ok()
        .map(|r| r.to_string_lossy().into_owned())
        .filter(|r| !r.is_empty())
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

impl DirectorySink {
    /// Opens the sink with the pipe's done log, repairs interrupted commits and removes
    /// partials older than `stale_after`.
    pub fn open(
        dest: &Path,
        staging: &Path,
        done: DoneLog,
        stale_after: Duration,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dest)
            .map_err(|e| anyhow::anyhow!("cannot create dest {}: {e}", dest.display()))?;
        fs::create_dir_all(staging)
            .map_err(|e| anyhow::anyhow!("cannot create staging {}: {e}", staging.display()))?;
        repair::probe_rename(staging, dest)?;
        if let Err(e) = repair::restrict(staging, Some(&dest.join(STAGING_DIR))) {
            tracing::warn!(staging = %staging.display(), error = %e, "cannot make the staging folder writable by this user only; anyone who may write there can remove staged data (which is then sent again)");
        }
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
            unlanded: BTreeMap::new(),
            relanding: Vec::new(),
            reserved: reserved_name(dest, staging),
            origin_warned: false,
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

    /// Removes partials not written to for longer than `stale_after` (abandoned transfers).
    pub fn remove_stale(&mut self, stale_after: Duration) -> std::io::Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for id in self.opens.ids() {
            // A committed partial that could not be landed waits for the next start, whatever
            // its age (its mtime is the source file's, which may be old).
            if self.done.contains(id) || self.unlanded.contains_key(&id) {
                continue;
            }
            let age = fs::symlink_metadata(self.part_path(id))
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

    /// Sets `origin` on the staged file, so it is there when the file is renamed into place.
    /// A filesystem without user extended attributes is said once (WARN); landing goes on.
    fn keep_origin(&mut self, file: &File, origin: &OriginChain) {
        if origin.is_empty() {
            return;
        }
        if let Err(e) = gapsync_daemon::origin::write(file, origin) {
            if !std::mem::replace(&mut self.origin_warned, true) {
                tracing::warn!(folder = %self.places.staging.display(), dest = %self.places.dest.display(), error = %e, "cannot record where files came from (extended attribute {}): files land all the same, but a sender whose spool is this folder will not see their origin, so cascades lose it and loops are not prevented; use a filesystem with user xattrs", gapsync_daemon::origin::XATTR);
            }
        }
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

impl Sink for DirectorySink {
    fn open_with_origin(
        &mut self,
        id: u64,
        open: &OpenFile,
        origin: &OriginChain,
        attrs: &ObjectAttrs,
    ) -> Result<Applied, SinkError> {
        if attrs.link.is_some() && open.size != 0 {
            return Err(SinkError::SizeMismatch {
                announced: open.size,
                committed: 0,
                staged: 0,
            });
        }
        let path = WirePath::parse(&open.path).map_err(|source| SinkError::BadName {
            name: open.path.clone(),
            source,
        })?;
        if repair::in_staging(self.reserved.as_deref(), &path) {
            return Err(repair::reserved_name(&path));
        }
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
        // A link staged by a commit that was then abandoned: made again at the next commit.
        if fs::symlink_metadata(&part).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&part).map_err(io_err("cannot remove staged link", &part))?;
        }
        let staged = if same {
            fs::symlink_metadata(&part).map_or(0, |m| m.len())
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
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&part)
            .map_err(io_err("cannot create partial", &part))?;
        self.keep_origin(&file, origin);
        if let (Some(m), None) = (attrs.mode, &attrs.link) {
            attrs::apply_mode(&file, m).map_err(io_err("cannot set the mode of", &part))?;
        }
        self.partials.insert(
            id,
            Partial {
                file,
                open: open.clone(),
                path,
                hasher: blake3::Hasher::new(),
                hashed: Some(0),
                started: Instant::now(),
                link: attrs.link.clone(),
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
        if self.unlanded.contains_key(&id) {
            // Recorded as done, not yet visible: this flush lands it, or is not answered OK.
            if !self.relanding.contains(&id) {
                self.relanding.push(id);
            }
            return Ok(Applied::Done);
        }
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
        if let Some(target) = &p.link {
            let name = super::land::part_name(id);
            attrs::stage_link(&self.places.staging, &name, target)
                .map_err(io_err("cannot stage the symlink", &part))?;
        } else {
            let mtime = UNIX_EPOCH + Duration::from_nanos(p.open.mtime_ns.max(0) as u64);
            let _ = p.file.set_modified(mtime);
        }
        self.staged.push(Staged {
            id,
            partial: p,
            digest,
        });
        Ok(Applied::Done)
    }

    fn flush(&mut self) -> Flushed {
        self.checked_dirs.clear();
        let mut out = Flushed::default();
        match self.commit_group() {
            Err(e) => out.result = Err(e),
            Ok(None) => {}
            Ok(Some((items, delivered))) => {
                let t0 = Instant::now();
                let (landed, err) = self.places.land_all(&items);
                tracing::debug!(
                    files = landed.len(),
                    landing_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "group landed"
                );
                self.finish(&landed);
                let n = landed.len();
                let mut delivered = delivered.into_iter();
                out.delivered = delivered.by_ref().take(n).collect();
                let rest = items.into_iter().skip(n).zip(delivered);
                self.keep_unlanded(rest.map(|((id, path), d)| (id, path, d)));
                if let Some(e) = err {
                    out.result = Err(e);
                }
            }
        }
        let relanding = std::mem::take(&mut self.relanding);
        if !relanding.is_empty() {
            let again = self.land_unlanded(Some(&relanding));
            out.delivered.extend(again.delivered);
            if out.result.is_ok() {
                out.result = again.result;
            }
        }
        out
    }

    fn retry_landing(&mut self) -> Flushed {
        self.land_unlanded(None)
    }

    fn is_unlanded(&self, id: u64) -> bool {
        self.unlanded.contains_key(&id)
    }

    fn unlanded(&self) -> usize {
        self.unlanded.len()
    }

    fn abandon(&mut self) {
        // Their partials stay staged: a resent Open finds them and the commit is repeated.
        self.staged.clear();
        self.relanding.clear();
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
mod tests;
