//! Checks shared by both daemons' config files. Each helper pushes a problem instead of
//! failing, so that a config reports every problem at once.

use std::path::{Path, PathBuf};

use gapsync_protocol::{Profile, RawProfile};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Local I/O (or a wrong `--config`): the file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// Malformed bytes: not TOML, or a value of the wrong type.
    #[error("config {path} is not valid: {error}")]
    Toml {
        path: PathBuf,
        error: toml::de::Error,
    },
    /// Bad configuration: every problem found (unknown keys first), one per line.
    #[error(
        "config {path} has {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    )]
    Problems {
        path: PathBuf,
        problems: Vec<String>,
    },
}

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
        .map_err(|e| problems.push(crate::with_causes(&e)))
        .ok()
}

/// Checks `log_level`, defaulting to `info`.
/// Checks a daemon's `state_dir` (required) and `log_dir` (optional), made absolute against
/// `base`: each must be a usable folder or creatable. Returns them as absolute paths.
pub fn state_and_log_dirs(
    problems: &mut Vec<String>,
    base: &Path,
    state_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let state_dir = state_dir.map(|d| abs(base, &d));
    match &state_dir {
        None => {
            problems.push("`state_dir` is missing, e.g. state_dir = \"/var/lib/gapsync\"".into())
        }
        Some(d) => crate::folders::creatable(problems, "`state_dir`", d),
    }
    let log_dir = log_dir.map(|d| abs(base, &d));
    if let Some(d) = &log_dir {
        crate::folders::creatable(problems, "`log_dir`", d);
    }
    (state_dir, log_dir)
}

pub fn log_level(problems: &mut Vec<String>, level: Option<String>) -> String {
    let level = level.unwrap_or_else(|| "info".into());
    if level.parse::<tracing::Level>().is_err() {
        problems.push(format!(
            "`log_level` = {level:?} must be error, warn, info, debug or trace"
        ));
    }
    level
}

/// Reads and parses a config file; on problems, one error listing all of them, every unknown
/// key included.
///
/// The raw config structs do not use serde's `deny_unknown_fields`, which stops at the first
/// unknown key: every key the structs do not take is collected here instead (serde_ignored)
/// and reported with the other problems, so one run of check-config shows them all.
pub fn load<R: serde::de::DeserializeOwned, C>(
    path: &Path,
    check: impl FnOnce(R, &Path) -> Result<C, Vec<String>>,
) -> Result<C, ConfigError> {
    let text = crate::profiles::read_config(path)?;
    let not_valid = |error| ConfigError::Toml {
        path: path.to_path_buf(),
        error,
    };
    let mut unknown = Vec::new();
    let de = toml::Deserializer::parse(&text).map_err(not_valid)?;
    let raw: R =
        serde_ignored::deserialize(de, |p| unknown.push(unknown_key(&p))).map_err(not_valid)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let problems = match check(raw, base) {
        Ok(config) if unknown.is_empty() => return Ok(config),
        Ok(_) => unknown,
        Err(problems) => unknown.into_iter().chain(problems).collect(),
    };
    Err(ConfigError::Problems {
        path: path.to_path_buf(),
        problems,
    })
}

/// "unknown key `spoool` in [[pipe]] #1: ..." for a key no config struct takes.
pub fn unknown_key(path: &serde_ignored::Path<'_>) -> String {
    enum Seg {
        Key(String),
        Index(usize),
    }
    fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
        use serde_ignored::Path as P;
        match path {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(Seg::Index(*index));
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(Seg::Key(key.clone()));
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out);
            }
        }
    }
    let mut segs = Vec::new();
    walk(path, &mut segs);
    let key = match segs.pop() {
        Some(Seg::Key(k)) => k,
        Some(Seg::Index(i)) => format!("#{}", i + 1),
        None => String::new(),
    };
    let mut place = Vec::new();
    let mut it = segs.into_iter().peekable();
    while let Some(seg) = it.next() {
        match (seg, it.peek()) {
            (Seg::Key(k), Some(Seg::Index(i))) => {
                let n = i + 1;
                it.next();
                place.push(if place.is_empty() {
                    format!("[[{k}]] #{n}")
                } else {
                    format!("{k} #{n}")
                });
            }
            (Seg::Key(k), _) => place.push(if place.is_empty() {
                format!("[{k}]")
            } else {
                k
            }),
            (Seg::Index(i), _) => place.push(format!("#{}", i + 1)),
        }
    }
    let place = if place.is_empty() {
        String::new()
    } else {
        format!(" in {}", place.join(", "))
    };
    format!("unknown key `{key}`{place}: remove it or correct its spelling")
}

/// How a config names one key: its id (current and next, for rotation) and its file. Unknown
/// keys are reported by [`load`].
#[derive(Debug, Clone, serde::Deserialize)]
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
            problems.push(format!("{label}: {}", crate::with_causes(&e)));
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
    build: impl FnOnce(&crate::tls::TlsFiles) -> Result<T, crate::tls::TlsError>,
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
                .map_err(|e| problems.push(crate::with_causes(&e)))
                .ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_problem_shows_its_cause() {
        let dir = tempfile::tempdir().expect("tmp");
        // Not UTF-8: the file is found, and reading it as text fails.
        let q = dir.path().join("q.toml");
        std::fs::write(&q, [0xff, 0xfe]).expect("write");
        let mut problems = Vec::new();
        let got = profile(
            &mut problems,
            Some("q.toml"),
            dir.path(),
            None,
            &RawProfile::default(),
        );
        assert!(got.is_none());
        assert_eq!(
            problems,
            [format!(
                "cannot read profile {}: stream did not contain valid UTF-8",
                q.display()
            )]
        );
    }
}
