//! Finding a hardware profile by name or path and applying a config's overrides.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gapsync_protocol::{Profile, RawProfile};

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
) -> anyhow::Result<PathBuf> {
    if profile.contains('/') || profile.ends_with(".toml") {
        let p = config_dir.join(profile);
        anyhow::ensure!(
            p.is_file(),
            "profile file {} does not exist; fix `profile`",
            p.display()
        );
        return Ok(p);
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
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    anyhow::bail!(
        "hardware profile `{profile}` not found in {}; set `profile` to a path or `profiles_dir` to the folder holding {profile}.toml",
        searched.join(", ")
    )
}

/// Loads, merges and checks a profile, naming the file in every error.
pub fn load(path: &Path, overrides: &RawProfile) -> anyhow::Result<Profile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read profile {}", path.display()))?;
    let raw = RawProfile::from_toml(&text)
        .with_context(|| format!("profile {} is not valid", path.display()))?;
    Profile::try_from(raw.merged(overrides)).map_err(|e| {
        anyhow::anyhow!(
            "profile {} (with the config's overrides): {e}",
            path.display()
        )
    })
}

/// Reads a config file as text, naming it in the error.
pub fn read_config(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))
}
