//! Checks shared by both daemons' config files. Each helper pushes a problem instead of
//! failing, so that a config reports every problem at once.

use std::path::{Path, PathBuf};

use gapsync_protocol::{Profile, RawProfile};

/// Names of nodes and pipes: they become folder names in the state folder.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

/// `p` resolved against the config file's folder.
pub fn abs(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Checks a node or pipe name.
pub fn check_name(problems: &mut Vec<String>, what: &str, value: &str) {
    if !valid_name(value) {
        problems.push(format!("{what} = {value:?} must be 1-64 letters, digits, '-', '_' or '.', not starting with '.'"));
    }
}

/// Finds, loads and checks the profile named in a config, with its overrides.
pub fn profile(
    problems: &mut Vec<String>,
    name: Option<&str>,
    base: &Path,
    profiles_dir: Option<&Path>,
    overrides: &RawProfile,
) -> Option<Profile> {
    let Some(name) = name else {
        problems.push("`profile` is missing: name a file in hardware-profiles/ (e.g. \"syskeeper-2000\") or give a path".into());
        return None;
    };
    crate::profiles::locate(name, base, profiles_dir)
        .and_then(|f| crate::profiles::load(&f, overrides))
        .map_err(|e| problems.push(format!("{e:#}")))
        .ok()
}

/// Checks `log_level`, defaulting to `info`.
pub fn log_level(problems: &mut Vec<String>, level: Option<String>) -> String {
    let level = level.unwrap_or_else(|| "info".into());
    if level.parse::<tracing::Level>().is_err() {
        problems.push(format!(
            "`log_level` = {level:?} must be error, warn, info, debug or trace"
        ));
    }
    level
}

/// Reads and parses a config file; on problems, one error listing all of them.
pub fn load<R: serde::de::DeserializeOwned, C>(
    path: &Path,
    check: impl FnOnce(R, &Path) -> Result<C, Vec<String>>,
) -> anyhow::Result<C> {
    let text = crate::profiles::read_config(path)?;
    let raw: R = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config {} is not valid: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    check(raw, base).map_err(|problems| {
        anyhow::anyhow!(
            "config {} has {} problem(s):\n  - {}",
            path.display(),
            problems.len(),
            problems.join("\n  - ")
        )
    })
}

/// How a config names one key: its id (current and next, for rotation) and its file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: Option<u32>,
    pub file: Option<PathBuf>,
}

/// A loaded key with its id.
#[derive(Debug, Clone)]
pub struct PipeKey {
    pub id: u32,
    pub key: gapsync_protocol::crypto::PreSharedKey,
    /// Set when the file's permissions are too open; logged at start.
    pub warning: Option<String>,
}

/// Loads one key, pushing a problem instead of failing.
pub fn key(problems: &mut Vec<String>, label: &str, base: &Path, raw: &RawKey) -> Option<PipeKey> {
    let Some(file) = &raw.file else {
        problems.push(format!("{label}: a key needs `file`"));
        return None;
    };
    let id = raw.id.unwrap_or(1);
    match crate::keys::load(&abs(base, file)) {
        Ok((key, warning)) => Some(PipeKey { id, key, warning }),
        Err(e) => {
            problems.push(format!("{label}: {e:#}"));
            None
        }
    }
}

/// Loads the `[tls]` certificates when the profile's link is `tls` (with `build` making the
/// rustls config, so every file is checked), and refuses a mismatch either way.
pub fn tls<T>(
    problems: &mut Vec<String>,
    base: &Path,
    profile: Option<&Profile>,
    raw: Option<&crate::tls::RawTls>,
    build: impl FnOnce(&crate::tls::TlsFiles) -> anyhow::Result<T>,
) -> Option<T> {
    let wants = profile.map(|p| p.link == gapsync_protocol::LinkKind::Tls);
    match (wants, raw) {
        (Some(true), None) => {
            problems.push(
                "the profile's link is `tls`: add a [tls] table with cert, key and ca (PEM files)"
                    .into(),
            );
            None
        }
        (Some(false), Some(_)) => {
            problems.push("a [tls] table is set but the profile's link is not `tls`; remove it or use a tls profile".into());
            None
        }
        (_, Some(raw)) => {
            let files = crate::tls::TlsFiles::check(problems, base, raw)?;
            build(&files)
                .map_err(|e| problems.push(format!("{e:#}")))
                .ok()
        }
        _ => None,
    }
}
