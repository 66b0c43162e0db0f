//! Finding a hardware profile by name or path and applying a config's overrides.

use std::path::{Path, PathBuf};

use gapsync_protocol::{Profile, RawProfile};

/// Why a hardware profile could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileFileError {
    /// Bad configuration: `profile` is a path to no file.
    #[error("profile file {path} does not exist; fix `profile`")]
    NoFile { path: PathBuf },
    /// Bad configuration: `profile` is a name found in none of the folders searched.
    #[error(
        "hardware profile `{name}` not found in {searched}; set `profile` to a path or `profiles_dir` to the folder holding {name}.toml",
        searched = list(searched)
    )]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    /// Local I/O: the file could not be read.
    #[error("cannot read profile {path}")]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// Malformed bytes: the file is not TOML of a profile.
    #[error("profile {path} is not valid")]
    Toml {
        path: PathBuf,
        #[source]
        error: toml::de::Error,
    },
    /// Bad configuration: the profile, with the config's overrides, is not usable.
    #[error("profile {path} (with the config's overrides): {error}")]
    Invalid {
        path: PathBuf,
        error: gapsync_protocol::ProfileError,
    },
}

/// `a, b, c`.
fn list(dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    shown.join(", ")
}

/// Where profiles named without a path are looked up, in order (after `profiles_dir` from the
/// config and the folder `hardware-profiles/` next to the config file).
pub const SYSTEM_PROFILE_DIRS: &[&str] = &[
    "/etc/gapsync/hardware-profiles",
    "/usr/share/gapsync/hardware-profiles",
];

/// The source checkout's profiles, searched last by debug builds only (`cargo run`, the tests),
/// so that a daemon run from a checkout finds them by name. A release binary carries no path of
/// the tree it was built in: it searches the folders above and the config's.
pub fn source_profile_dir() -> Option<PathBuf> {
    cfg!(debug_assertions)
        .then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware-profiles"))
}

/// Resolves `profile` (a name like `syskeeper-2000` or a path to a `.toml` file) to a file.
pub fn locate(
    profile: &str,
    config_dir: &Path,
    profiles_dir: Option<&Path>,
) -> Result<PathBuf, ProfileFileError> {
    if profile.contains('/') || profile.ends_with(".toml") {
        let path = config_dir.join(profile);
        if !path.is_file() {
            return Err(ProfileFileError::NoFile { path });
        }
        return Ok(path);
    }
    let mut dirs: Vec<PathBuf> = profiles_dir.map(Path::to_path_buf).into_iter().collect();
    dirs.push(config_dir.join("hardware-profiles"));
    dirs.extend(SYSTEM_PROFILE_DIRS.iter().map(PathBuf::from));
    dirs.extend(source_profile_dir());
    for d in &dirs {
        let p = d.join(format!("{profile}.toml"));
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ProfileFileError::NotFound {
        name: profile.to_owned(),
        searched: dirs,
    })
}

/// Loads, merges and checks a profile, naming the file in every error.
pub fn load(path: &Path, overrides: &RawProfile) -> Result<Profile, ProfileFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| ProfileFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let raw = RawProfile::from_toml(&text).map_err(|error| ProfileFileError::Toml {
        path: path.to_path_buf(),
        error,
    })?;
    Profile::try_from(raw.merged(overrides)).map_err(|error| ProfileFileError::Invalid {
        path: path.to_path_buf(),
        error,
    })
}

/// Reads a config file as text, naming it in the error ([`ConfigError::Read`]).
///
/// [`ConfigError::Read`]: crate::config::ConfigError::Read
pub fn read_config(path: &Path) -> Result<String, crate::config::ConfigError> {
    std::fs::read_to_string(path).map_err(|error| crate::config::ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })
}
