//! Pre-shared key files: generating them and loading them with a permission check.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use gapsync_protocol::crypto::{KEY_LEN, PreSharedKey};
use ring::rand::SecureRandom as _;

/// Writes a new random key (64 hex digits) to `out`, readable by its owner only. Never
/// overwrites an existing file.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the operating system's random generator failed"))?;
    let key = PreSharedKey::from_random(bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create key file {}: {e} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    f.write_all(format!("{}\n", key.to_hex()).as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Loads a key file. Refuses one that others may read (any "other" permission bit: 0640
/// root:gapsync is right, 0644 is not) and one this process cannot read, naming the fix.
/// Returns the key and, if the file is writable by its group, a warning for the log.
pub fn load(path: &Path) -> anyhow::Result<(PreSharedKey, Option<String>)> {
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| cannot_read(path, &e, false))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        anyhow::bail!(
            "key file {p} is open to others (mode {mode:04o}); only the daemon's group may read it: chown root:{g} {p} && chmod 0640 {p}",
            g = crate::folders::RunningAs::current().group
        );
    }
    if meta.len() > 1024 {
        anyhow::bail!(
            "key file {p} is {} bytes; a key is 32 raw bytes or 64 hex digits",
            meta.len()
        );
    }
    let bytes = std::fs::read(path).map_err(|e| cannot_read(path, &e, true))?;
    let key = PreSharedKey::parse(&bytes).map_err(|e| anyhow::anyhow!("key file {p}: {e}"))?;
    let warning = (mode & 0o020 != 0).then(|| {
        format!("key file {p} is writable by its group (mode {mode:04o}); run chmod 0640 {p}")
    });
    Ok((key, warning))
}

/// The error for a key file this process cannot open, with what to do; `reached` when its
/// folder could be searched (so the file itself is the problem).
fn cannot_read(path: &Path, e: &std::io::Error, reached: bool) -> anyhow::Error {
    let p = path.display();
    if e.kind() == std::io::ErrorKind::NotFound {
        return anyhow::anyhow!(
            "key file {p} does not exist; make one with `gapsync-sender keygen --out {p}` and copy the same file to the other side"
        );
    }
    let who = crate::folders::RunningAs::current();
    let g = &who.group;
    let fix = if reached {
        format!("chown root:{g} {p} && chmod 0640 {p}")
    } else {
        let dir = path.parent().unwrap_or(Path::new("/")).display();
        format!(
            "chown root:{g} {dir} && chmod 0750 {dir}, and chown root:{g} {p} && chmod 0640 {p}"
        )
    };
    anyhow::anyhow!(
        "key file {p} cannot be read by {}, who runs this check ({e}); run check-config as the daemon's user, and let the daemon's group read it: {fix}",
        who.describe()
    )
}
