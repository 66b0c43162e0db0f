//! Checks of the folders a config names, made as the user running the check: what `run` would
//! otherwise only find broken later (a spool that does not exist, one the daemon cannot write).
//!
//! `check-config` must therefore run as the daemon's user, as the units' `ExecStartPre` does:
//! run as root, every folder looks writable. Under systemd the check also sees the unit's
//! sandbox (`ProtectSystem=strict`): a folder missing from `ReadWritePaths=` is read-only there.

use std::io;
use std::path::Path;

use rustix::fs::{Access, AtFlags, CWD, accessat};

/// The user and group this process runs as, by name where /etc/passwd and /etc/group know
/// them (the number otherwise, which `install` and `chown` accept too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningAs {
    pub uid: u32,
    pub user: String,
    pub group: String,
}

impl RunningAs {
    /// The effective user and group of this process.
    pub fn current() -> RunningAs {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        RunningAs {
            uid,
            user: name_of("/etc/passwd", uid).unwrap_or_else(|| uid.to_string()),
            group: name_of("/etc/group", gid).unwrap_or_else(|| gid.to_string()),
        }
    }

    /// "user gapsync (uid 998)".
    pub fn describe(&self) -> String {
        format!("user {} (uid {})", self.user, self.uid)
    }
}

/// The name with numeric id `id` in a passwd- or group-style file (`name:x:id:...`).
fn name_of(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_owned())
    })
}

/// Whether this process may list, create and remove entries in the folder `path`.
fn usable(path: &Path) -> io::Result<()> {
    let all = Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK;
    accessat(CWD, path, all, AtFlags::EACCESS).map_err(io::Error::from)
}

/// The sentence for a folder this process cannot use, with the fix.
fn not_usable(what: &str, path: &Path, e: &io::Error, mode: &str) -> String {
    let who = RunningAs::current();
    let p = path.display();
    if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) {
        return format!(
            "{what} {p} is on a read-only filesystem here; mount it read-write (under systemd, list it in the unit's ReadWritePaths=)"
        );
    }
    format!(
        "{what} {p} is not writable by {}, who runs this check ({e}); run check-config as the daemon's user, and give the folder to that user: chown {}:{} {p} && chmod {mode} {p}",
        who.describe(),
        who.user,
        who.group
    )
}

/// `install -d` for `path`, owned by this process's user and group.
fn install_command(path: &Path, mode: &str) -> String {
    let who = RunningAs::current();
    format!(
        "install -d -o {} -g {} -m {mode} {}",
        who.user,
        who.group,
        path.display()
    )
}

/// A folder that must exist already and that the daemon reads and writes: a pipe's spool or
/// landing folder. `run` does not create these: a typo would make an empty folder that nothing
/// ever reaches (or that no consumer ever reads). `mode` is the one suggested when creating it.
pub fn existing(problems: &mut Vec<String>, what: &str, path: &Path, mode: &str) {
    let p = path.display();
    match std::fs::metadata(path) {
        Err(e) if missing(&e) => problems.push(format!(
            "{what} {p} does not exist; create it: {}",
            install_command(path, mode)
        )),
        Err(e) => problems.push(unreachable(what, path, &e)),
        Ok(m) if !m.is_dir() => problems.push(format!(
            "{what} {p} is not a folder; move that file away, then create the folder: {}",
            install_command(path, mode)
        )),
        Ok(_) => {
            if let Err(e) = usable(path) {
                problems.push(not_usable(what, path, &e, mode));
            }
        }
    }
}

/// A folder the daemon creates when it is missing (state, logs, staging, sent and quarantine
/// folders): it must be a usable folder, or be creatable in the nearest folder above it that
/// exists.
pub fn creatable(problems: &mut Vec<String>, what: &str, path: &Path) {
    const MODE: &str = "0750";
    let p = path.display();
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => problems.push(format!(
            "{what} {p} is not a folder; move that file away (the daemon creates the folder)"
        )),
        Ok(_) => {
            if let Err(e) = usable(path) {
                problems.push(not_usable(what, path, &e, MODE));
            }
        }
        Err(e) if missing(&e) => {
            let Some(above) = path.ancestors().skip(1).find(|a| a.exists()) else {
                return;
            };
            let cannot = if !above.is_dir() {
                Some(format!("{} is not a folder", above.display()))
            } else {
                usable(above).err().map(|e| {
                    let who = RunningAs::current().describe();
                    format!("{who} cannot create it in {} ({e})", above.display())
                })
            };
            if let Some(cannot) = cannot {
                problems.push(format!(
                    "{what} {p} does not exist and {cannot}; create it: {}",
                    install_command(path, MODE)
                ));
            }
        }
        Err(e) => problems.push(unreachable(what, path, &e)),
    }
}

/// True when the path does not exist (or a file stands where a folder above it should be).
fn missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// The sentence for a path whose folders above cannot be searched.
fn unreachable(what: &str, path: &Path, e: &io::Error) -> String {
    format!(
        "{what} {} cannot be reached by {} ({e}); every folder above it must be searchable by that user (chmod o+x, or g+x with its group)",
        path.display(),
        RunningAs::current().describe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_folder_is_named_with_the_command_that_creates_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("spool");
        let mut p = Vec::new();
        existing(&mut p, "spool", &missing, "2770");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("does not exist") && p[0].contains("install -d -o "));
        assert!(
            p[0].ends_with(&format!("-m 2770 {}", missing.display())),
            "{}",
            p[0]
        );
        std::fs::create_dir(&missing).expect("mkdir");
        p.clear();
        existing(&mut p, "spool", &missing, "2770");
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn a_file_where_a_folder_belongs_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("spool");
        std::fs::write(&file, b"x").expect("write");
        let mut p = Vec::new();
        existing(&mut p, "spool", &file, "2770");
        creatable(&mut p, "state_dir", &file);
        creatable(&mut p, "state_dir", &file.join("below"));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().all(|m| m.contains("is not a folder")), "{p:?}");
    }

    #[test]
    fn a_folder_the_daemon_creates_may_be_missing_below_a_usable_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut p = Vec::new();
        creatable(&mut p, "state_dir", &dir.path().join("a/b/c"));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn the_running_user_has_a_name_or_a_number() {
        let me = RunningAs::current();
        assert!(!me.user.is_empty() && !me.group.is_empty());
        assert!(me.describe().contains(&me.uid.to_string()));
    }
}
