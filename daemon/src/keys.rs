//! Pre-shared key files: generating them and loading them with a permission check.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use gapsync_protocol::crypto::{KEY_LEN, PreSharedKey};
use ring::rand::SecureRandom as _;

/// The group a key file is given by default when it exists: the daemons' own group made by
/// the Debian packages, so that a daemon running as user `gapsync` can read the key.
pub const DEFAULT_KEY_GROUP: &str = "gapsync";

/// The mode and group a new key file got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAccess {
    /// Mode 640, readable by this group (the daemon's).
    Group(String),
    /// Mode 600: no group was asked for and the default group does not exist, or the default
    /// group exists but this user may not give files to it (not root, not a member).
    OwnerOnly { reason: String },
}

/// Why `keygen` wrote no key (it leaves no file behind).
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// Bad configuration: the operator named a group that does not exist.
    #[error("group {group} does not exist (make it with `addgroup --system {group}`)")]
    NoSuchGroup { group: String },
    /// Local I/O: the file exists already (never overwritten) or its folder is not writable.
    #[error("cannot create key file {path}: {error} (an existing key is never overwritten)")]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Local I/O: writing or syncing the new file failed.
    #[error("cannot write key file {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Local I/O: the group database could not be read.
    #[error("cannot look up group {group}: {error}")]
    LookUpGroup { group: String, error: nix::Error },
    /// Local permissions: this user may not give files to the group it asked for.
    #[error(
        "cannot give key file {path} to group {group}: {error} (run keygen as root or as a member of {group})"
    )]
    GiveToGroup {
        path: PathBuf,
        group: String,
        error: std::io::Error,
    },
    /// Local I/O: the new file's mode could not be set.
    #[error("cannot chmod key file {path}: {error}")]
    Chmod {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Local system: the operating system's random generator failed.
    #[error("the operating system's random generator failed")]
    Random,
}

/// Why a key file was refused by `load`.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Bad configuration: `file` names no file.
    #[error(
        "key file {path} does not exist; make one with `gapsync-sender keygen --out {path}` and copy the same file to the other side"
    )]
    Missing { path: PathBuf },
    /// Bad configuration: others may read the key.
    #[error(
        "key file {path} is open to others (mode {mode:04o}); only the daemon's group may read it: chown root:{group} {path} && chmod 0640 {path}"
    )]
    OpenToOthers {
        path: PathBuf,
        mode: u32,
        /// The group of the user running the check, named in the fix.
        group: String,
    },
    /// Local permissions: this process may not read the file (`reached`: its folder could be
    /// searched, so the file itself is the problem).
    #[error(
        "key file {path} cannot be read by {who}, who runs this check ({error}); run check-config as the daemon's user, and let the daemon's group read it: {fix}",
        fix = unreadable_fix(path, group, *reached)
    )]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
        /// The user running the check, described (`user gapsync (uid 998)`).
        who: String,
        /// That user's group, named in the fix.
        group: String,
        reached: bool,
    },
    /// Malformed bytes: far too long to be a key.
    #[error("key file {path} is {len} bytes; a key is 32 raw bytes or 64 hex digits")]
    TooLarge { path: PathBuf, len: u64 },
    /// Malformed bytes: not a key.
    #[error("key file {path}: {error}")]
    Malformed {
        path: PathBuf,
        error: gapsync_protocol::crypto::KeyError,
    },
}

/// Writes a new random key (64 hex digits) to `out`. Never overwrites an existing file.
///
/// With `group`, the file is mode 640 and belongs to that group, or keygen fails (and leaves no
/// file). Without it, the file goes to the `gapsync` group with mode 640 when that group exists
/// and this user may chown to it (root, or a member); otherwise it stays mode 600.
pub fn keygen(out: &Path, group: Option<&str>) -> Result<KeyAccess, KeygenError> {
    let mut bytes = [0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeygenError::Random)?;
    let key = PreSharedKey::from_random(bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|error| KeygenError::Create {
            path: out.to_path_buf(),
            error,
        })?;
    let written = f
        .write_all(format!("{}\n", key.to_hex()).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|error| KeygenError::Write {
            path: out.to_path_buf(),
            error,
        })
        .and_then(|()| share_with_group(&f, out, group));
    if written.is_err() {
        let _ = std::fs::remove_file(out);
    }
    written
}

/// Gives the new key file to `group` (or the default group) with mode 640, as `keygen` says.
fn share_with_group(
    f: &std::fs::File,
    out: &Path,
    group: Option<&str>,
) -> Result<KeyAccess, KeygenError> {
    let name = group.unwrap_or(DEFAULT_KEY_GROUP);
    let found = nix::unistd::Group::from_name(name).map_err(|error| KeygenError::LookUpGroup {
        group: name.to_owned(),
        error,
    })?;
    let Some(found) = found else {
        if group.is_some() {
            return Err(KeygenError::NoSuchGroup {
                group: name.to_owned(),
            });
        }
        return Ok(KeyAccess::OwnerOnly {
            reason: format!("there is no {name} group"),
        });
    };
    if let Err(e) = std::os::unix::fs::fchown(f, None, Some(found.gid.as_raw())) {
        if group.is_some() {
            return Err(KeygenError::GiveToGroup {
                path: out.to_path_buf(),
                group: name.to_owned(),
                error: e,
            });
        }
        return Ok(KeyAccess::OwnerOnly {
            reason: format!("this user may not give files to group {name} ({e})"),
        });
    }
    f.set_permissions(std::fs::Permissions::from_mode(0o640))
        .map_err(|error| KeygenError::Chmod {
            path: out.to_path_buf(),
            error,
        })?;
    Ok(KeyAccess::Group(name.to_owned()))
}

/// Loads a key file. Refuses one that others may read (any "other" permission bit: 0640
/// root:gapsync is right, 0644 is not) and one this process cannot read, naming the fix.
/// Returns the key and, if the file is writable by its group, a warning for the log.
pub fn load(path: &Path) -> Result<(PreSharedKey, Option<String>), KeyFileError> {
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| cannot_read(path, e, false))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(KeyFileError::OpenToOthers {
            path: path.to_path_buf(),
            mode,
            group: crate::folders::RunningAs::current().group,
        });
    }
    if meta.len() > 1024 {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| cannot_read(path, e, true))?;
    let key = PreSharedKey::parse(&bytes).map_err(|error| KeyFileError::Malformed {
        path: path.to_path_buf(),
        error,
    })?;
    let warning = (mode & 0o020 != 0).then(|| {
        format!("key file {p} is writable by its group (mode {mode:04o}); run chmod 0640 {p}")
    });
    Ok((key, warning))
}

/// The error for a key file this process cannot open, with what to do; `reached` when its
/// folder could be searched (so the file itself is the problem).
fn cannot_read(path: &Path, error: std::io::Error, reached: bool) -> KeyFileError {
    if error.kind() == std::io::ErrorKind::NotFound {
        return KeyFileError::Missing {
            path: path.to_path_buf(),
        };
    }
    let who = crate::folders::RunningAs::current();
    KeyFileError::Unreadable {
        path: path.to_path_buf(),
        error,
        who: who.describe(),
        group: who.group,
        reached,
    }
}

/// The commands that let the daemon's group `g` read the key file `path` (and, unless
/// `reached`, search its folder).
fn unreadable_fix(path: &Path, g: &str, reached: bool) -> String {
    let p = path.display();
    if reached {
        format!("chown root:{g} {p} && chmod 0640 {p}")
    } else {
        let dir = path.parent().unwrap_or(Path::new("/")).display();
        format!(
            "chown root:{g} {dir} && chmod 0750 {dir}, and chown root:{g} {p} && chmod 0640 {p}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn a_key_given_to_a_group_is_mode_640_and_in_that_group() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("k.key");
        // Any user may give its own files to its primary group.
        let gid = nix::unistd::getgid();
        let group = nix::unistd::Group::from_gid(gid)
            .expect("getgrgid")
            .expect("the primary group has a name");
        let access = keygen(&out, Some(&group.name)).expect("keygen");
        assert_eq!(access, KeyAccess::Group(group.name.clone()));
        assert_eq!(mode(&out), 0o640);
        assert_eq!(std::fs::metadata(&out).expect("meta").gid(), gid.as_raw());
        let (_, warning) = load(&out).expect("load");
        assert_eq!(warning, None, "group read is what the daemon's user needs");
    }

    #[test]
    fn an_unknown_group_is_an_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("k.key");
        let e = keygen(&out, Some("no-such-group-gapsync-test")).expect_err("refused");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn an_existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("k.key");
        std::fs::write(&out, "keep").expect("write");
        assert!(keygen(&out, None).is_err());
        assert_eq!(std::fs::read_to_string(&out).expect("read"), "keep");
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("k.key");
        keygen(&out, None).expect("keygen");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load(&out).expect_err("refused").to_string();
        assert!(
            e.contains("open to others") && e.contains("chmod 0640"),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_key_names_who_checked_and_the_fix() {
        let unreadable = |reached| KeyFileError::Unreadable {
            path: PathBuf::from("/etc/gapsync/keys/a.key"),
            error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            who: "user gapsync (uid 998)".into(),
            group: "gapsync".into(),
            reached,
        };
        assert_eq!(
            unreadable(true).to_string(),
            "key file /etc/gapsync/keys/a.key cannot be read by user gapsync (uid 998), who runs this check (permission denied); run check-config as the daemon's user, and let the daemon's group read it: chown root:gapsync /etc/gapsync/keys/a.key && chmod 0640 /etc/gapsync/keys/a.key"
        );
        assert!(
            unreadable(false).to_string().ends_with(
                "read it: chown root:gapsync /etc/gapsync/keys && chmod 0750 /etc/gapsync/keys, and chown root:gapsync /etc/gapsync/keys/a.key && chmod 0640 /etc/gapsync/keys/a.key"
            ),
            "{}",
            unreadable(false)
        );
    }
}
