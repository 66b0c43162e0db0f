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

/// Loads a key file. Returns the key and, if the file is readable by group or others, a
/// warning for the log.
pub fn load(path: &Path) -> anyhow::Result<(PreSharedKey, Option<String>)> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))?;
    if meta.len() > 1024 {
        anyhow::bail!(
            "key file {} is {} bytes; a key is 32 raw bytes or 64 hex digits",
            path.display(),
            meta.len()
        );
    }
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))?;
    let key = PreSharedKey::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "key file {} is readable by group or others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )
    });
    Ok((key, warning))
}
