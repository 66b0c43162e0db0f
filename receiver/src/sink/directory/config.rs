//! The directory sink's config: `sink = { type = "directory", path = "...", staging = "..." }`,
//! or the shorthand `dest = "..."` (and `staging`) directly in the `[[pipe]]`.

use std::path::{Path, PathBuf};

use gapsync_daemon::config::abs;
use gapsync_daemon::folders;
use serde::Deserialize;

/// The keys of a `type = "directory"` sink, as written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DirectoryConfig {
    /// The landing folder (the shorthand's `dest`).
    pub path: Option<PathBuf>,
    /// Partial files; on the same filesystem and mount as `path`.
    pub staging: Option<PathBuf>,
}

/// A checked directory sink: where files land and where they are staged until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySettings {
    pub dest: PathBuf,
    /// Partial files; on the same filesystem as `dest` so the final rename is atomic.
    pub staging: PathBuf,
}

impl DirectoryConfig {
    /// Checks the sink of pipe `name` from `from`, pushing every problem; `key` names the
    /// folder key in messages (`sink.path` or the shorthand's `dest`).
    pub fn check(
        self,
        p: &mut Vec<String>,
        label: &str,
        key: &str,
        base: &Path,
        (from, name): (&str, &str),
    ) -> Option<DirectorySettings> {
        let Some(dest) = self.path.map(|d| abs(base, &d)) else {
            p.push(format!(
                "{label}: `{key}` is missing (the folder files land in)"
            ));
            return None;
        };
        folders::existing(p, &format!("{label}: {key}"), &dest, "2770");
        // Inside dest by default: the final rename never crosses a mount point. Set elsewhere,
        // the receiver proves at start that a file renames from it into dest.
        let staging = match self.staging {
            Some(s) => {
                let s = abs(base, &s);
                folders::creatable(p, &format!("{label}: `staging`"), &s);
                s
            }
            None => super::default_staging(&dest, from, name),
        };
        if staging == dest || dest.starts_with(&staging) {
            p.push(format!(
                "{label}: `staging` {} is the landing folder or holds it; the receiver keeps its records there: remove `staging` (the default is <dest>/.gapsync-staging/<from>/<name>)",
                staging.display()
            ));
        }
        Some(DirectorySettings { dest, staging })
    }
}
