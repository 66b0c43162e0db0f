//! Checks and repairs of a directory sink: that its staging folder can rename into dest at all,
//! adopting the staging folder of earlier versions, and landing the transfers recorded as done
//! whose landing a restart or a failure interrupted.
//!
//! A transfer recorded as done is answered OK only once its file is visible under its final
//! name: until then it is *unlanded*, its partial stays staged, every repeat of its commit
//! tries to land it again, and so does the periodic retry. Each landing, however late, gives
//! a `delivered` line.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use gapsync_protocol::{OpenFile, WirePath, decode_body};

use super::{DirectorySink, hex};
use crate::sink::{Delivered, Flushed, SinkError};

/// The default staging folder's name, inside dest: the final rename never crosses a mount
/// point (systemd's `ReadWritePaths=` and `StateDirectory=` each bind-mount a folder, and a
/// rename between two mounts fails with EXDEV even on one filesystem). Consumers of dest
/// ignore it, as they ignore every dot-folder.
pub const STAGING_DIR: &str = ".gapsync-staging";

/// A pipe's staging folder when its config names none: inside dest, one per pipe, since two
/// pipes may land in one dest (their transfer ids are not unique across senders).
pub fn default_staging(dest: &Path, from: &str, name: &str) -> PathBuf {
    dest.join(STAGING_DIR).join(from).join(name)
}

/// Proves that a file can be renamed from `staging` into `dest` by doing it with an empty
/// probe file. Comparing device numbers is not enough: bind mounts of one filesystem share
/// them, and the rename between them still fails.
pub(super) fn probe_rename(staging: &Path, dest: &Path) -> anyhow::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("{STAGING_DIR}.probe-{}-{nanos}", std::process::id());
    let (from, to) = (staging.join(&name), dest.join(&name));
    File::create(&from)
        .with_context(|| format!("cannot write in staging {}", staging.display()))?;
    // Never over a file of that name in dest (a landed file is never touched).
    match renameat_with(CWD, &from, CWD, &to, RenameFlags::NOREPLACE) {
        Ok(()) => {
            let _ = fs::remove_file(&to);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&from);
            anyhow::bail!(
                "a file cannot be renamed from staging {} into dest {} ({}), so no file could land atomically. \
                 Staging and dest must be on one filesystem and one mount (systemd's ReadWritePaths= and StateDirectory= mount each listed folder separately): \
                 remove `staging` from the pipe (it defaults to <dest>/{STAGING_DIR}/<from>/<name>) or set it to a folder inside dest",
                staging.display(),
                dest.display(),
                io::Error::from(e)
            )
        }
    }
}

/// Makes `staging` (and the folders above it up to `top`, when it lies below `top`) writable
/// by this user only: nobody else may remove a staged file (a consumer's clean-up job in a
/// group-writable dest, say). Group read and the setgid bit stay, so a staged file is born in
/// dest's group and consumers can read it once landed.
pub(super) fn restrict(staging: &Path, top: Option<&Path>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut dir = Some(staging);
    while let Some(d) = dir {
        let mode = fs::metadata(d)?.permissions().mode();
        let wanted = (mode & 0o2000) | 0o750;
        if mode & 0o7777 != wanted {
            fs::set_permissions(d, fs::Permissions::from_mode(wanted))?;
        }
        dir = match top {
            Some(t) if d != t && d.starts_with(t) => d.parent(),
            _ => None,
        };
    }
    Ok(())
}

/// Moves what an earlier version kept in `legacy` (the old default staging folder under
/// state_dir) into `staging`, so that no record of a delivered transfer is lost on upgrade:
/// the done log, the staging journal, the replay record, and the partials of transfers
/// recorded as done (the others are resent from the start: copying them could take long).
/// Every file is copied durably before the old folder is removed; interrupted, the next start
/// copies again (the new folder is not used before the move completes). Returns how many files
/// moved.
pub fn adopt_legacy_staging(legacy: &Path, staging: &Path) -> anyhow::Result<usize> {
    let done = crate::pipe::replay::DoneLog::open(&legacy.join("done.log"), Duration::MAX)
        .with_context(|| format!("cannot read the done log in {}", legacy.display()))?;
    let wanted = |name: &str| {
        matches!(name, "done.log" | "opens.log" | "last-connection")
            || name
                .strip_suffix(".part")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .is_some_and(|id| done.contains(id))
    };
    let files: Vec<PathBuf> = fs::read_dir(legacy)
        .with_context(|| {
            format!(
                "cannot read the earlier staging folder {}",
                legacy.display()
            )
        })?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| e.file_name().to_str().is_some_and(wanted))
        .map(|e| e.path())
        .collect();
    fs::create_dir_all(staging)
        .with_context(|| format!("cannot create staging {}", staging.display()))?;
    for from in &files {
        let name = from.file_name().unwrap_or_default();
        let to = staging.join(name);
        let tmp = staging.join(format!("{}.adopting", name.to_string_lossy()));
        let copied = fs::copy(from, &tmp).and_then(|_| File::open(&tmp)?.sync_all());
        copied
            .and_then(|()| fs::rename(&tmp, &to))
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    gapsync_daemon::durable::fsync_dir(staging)
        .with_context(|| format!("cannot fsync {}", staging.display()))?;
    fs::remove_dir_all(legacy).with_context(|| format!("cannot remove {}", legacy.display()))?;
    Ok(files.len())
}

impl DirectorySink {
    /// Brings the staging folder back to a consistent state after a start: old metadata files
    /// into the journal, done transfers whose partial is still staged kept as unlanded (landed
    /// by [`DirectorySink::land_unlanded`]), partials without a durable Open removed, stale
    /// partials removed.
    pub(super) fn recover(&mut self, stale_after: Duration) -> anyhow::Result<()> {
        self.adopt_meta_files()?;
        let mut finished = Vec::new();
        // In id order, so that of two versions of one name the later lands last.
        let mut ids = self.opens.ids();
        ids.sort_unstable();
        for id in ids {
            if !self.done.contains(id) {
                continue;
            }
            match self.opens.get(id).cloned() {
                Some(open) if fs::symlink_metadata(self.part_path(id)).is_ok() => {
                    let delivered = self.delivery_of(id, &open)?;
                    let path = WirePath::parse(&open.path)?;
                    self.unlanded.insert(id, (path, delivered));
                }
                _ => finished.push(id),
            }
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

    /// `<id>.meta` files of earlier versions move into the journal.
    fn adopt_meta_files(&mut self) -> io::Result<()> {
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
            .collect::<io::Result<_>>()?;
        // Durable in the journal (one fsync) before the old files go.
        self.opens.sync()?;
        for meta in metas {
            fs::remove_file(&meta)?;
        }
        Ok(())
    }

    /// The delivery line of a staged, verified partial (its digest read back from the file).
    fn delivery_of(&self, id: u64, open: &OpenFile) -> io::Result<Delivered> {
        let mut h = blake3::Hasher::new();
        let part = self.part_path(id);
        // A staged link (a link object) has no data; it is never followed.
        if !fs::symlink_metadata(&part)?.file_type().is_symlink() {
            h.update_reader(File::open(part)?)?;
        }
        Ok(Delivered {
            path: open.path.clone(),
            size: open.size,
            digest_hex: h.finalize().to_hex().to_string(),
            elapsed: Duration::ZERO,
        })
    }

    /// Lands the unlanded transfers (those in `only`, or all), each on its own so that one
    /// that cannot land does not hold back the others. Returns those that landed and the
    /// first error; the others stay unlanded.
    pub(super) fn land_unlanded(&mut self, only: Option<&[u64]>) -> Flushed {
        let ids: Vec<u64> = self
            .unlanded
            .keys()
            .copied()
            .filter(|id| only.is_none_or(|o| o.contains(id)))
            .collect();
        let mut out = Flushed::default();
        for id in ids {
            let Some((path, delivered)) = self.unlanded.get(&id).cloned() else {
                continue;
            };
            let landed = if fs::symlink_metadata(self.part_path(id)).is_ok() {
                match self.places.land_all(&[(id, path.clone())]) {
                    (_, Some(e)) => Err(e),
                    (_, None) => Ok(()),
                }
            } else if self.places.landed_size(&path) == Some(delivered.size) {
                // Renamed before; only making the rename durable failed.
                self.places.sync_landed(&path)
            } else {
                // Its staged data vanished (removed by someone else) before it landed: it is
                // no longer recorded as done, so the sender sends it again.
                self.forget_vanished(id, &path);
                Err(SinkError::DigestMismatch {
                    path: path.to_string(),
                })
            };
            match landed {
                Ok(()) => {
                    self.unlanded.remove(&id);
                    self.finish(&[id]);
                    out.delivered.push(delivered);
                }
                Err(e) if out.result.is_ok() => out.result = Err(e),
                Err(_) => {}
            }
        }
        out
    }

    /// Forgets a transfer recorded as done whose staged partial vanished before it landed.
    fn forget_vanished(&mut self, id: u64, path: &WirePath) {
        self.unlanded.remove(&id);
        let forgot = self.done.forget(id);
        self.finish(&[id]);
        match forgot {
            Ok(()) => {
                tracing::error!(transfer = %hex(id), path = %path, "the staged data of a received file vanished from the staging folder before it could land (something removed it): the file is not delivered and the sender sends it again")
            }
            Err(e) => {
                tracing::error!(transfer = %hex(id), path = %path, error = %e, "the staged data of a received file vanished before it could land, and its done record cannot be removed: resend the file from the sender by hand")
            }
        }
    }

    /// Records a group whose landing stopped: the transfers not landed stay staged and are
    /// landed later (never answered OK before).
    pub(super) fn keep_unlanded(
        &mut self,
        rest: impl IntoIterator<Item = (u64, WirePath, Delivered)>,
    ) {
        for (id, path, delivered) in rest {
            self.unlanded.insert(id, (path, delivered));
        }
    }
}

/// True when `path` (relative to dest) names the staging folder `reserved` or lies inside it.
pub(super) fn in_staging(reserved: Option<&str>, path: &WirePath) -> bool {
    reserved.is_some_and(|r| {
        path.as_str()
            .strip_prefix(r)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The error of a name in the staging folder.
pub(super) fn reserved_name(path: &WirePath) -> SinkError {
    SinkError::Reserved(path.to_string())
}
