//! One `[[pipe]]` of the receiver's config: who sends it (`from`), its sink, its profile (the
//! receiver's by default; its own `profile_overrides` win over the top-level ones) and keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gapsync_daemon::config::{PipeKey, RawKey, check_name};
use gapsync_protocol::{LinkKind, Profile, RawProfile};
use serde::Deserialize;

use crate::sink::directory::config::DirectoryConfig;
use crate::sink::{SinkConfig, SinkSettings};

#[derive(Debug, Deserialize)]
pub struct RawPipe {
    pub name: Option<String>,
    pub from: Option<String>,
    /// `{ type = "directory", path = "...", staging = "..." }`; kept as a TOML value so that
    /// [`SinkConfig::parse`] can report every key its type does not take.
    pub sink: Option<toml::Value>,
    /// Shorthand for a directory sink: `dest` (its path) and `staging`.
    pub dest: Option<PathBuf>,
    pub staging: Option<PathBuf>,
    /// The pipe's profile (default: the receiver's `profile`).
    pub profile: Option<String>,
    /// Wins over the top-level `[profile_overrides]` for this pipe.
    pub profile_overrides: Option<RawProfile>,
    /// The pipe's keys: the current one and, during a rotation, the next.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Refuse senders that present no key.
    #[serde(default)]
    pub require_auth: bool,
    /// Nothing arrived on the pipe for this long: one ERROR, repeated hourly (none: off).
    #[serde(default, with = "humantime_serde")]
    pub silence_alarm: Option<Duration>,
}

/// One pipe this receiver lands: what `from` sends on `name` goes to `sink`.
#[derive(Debug, Clone)]
pub struct PipeConfig {
    pub name: String,
    pub from: String,
    pub sink: SinkSettings,
    /// The pipe's checked profile: its link kind, frames, acks.
    pub profile: Profile,
    /// Keys by id (at most two: current and next).
    pub keys: Vec<PipeKey>,
    pub require_auth: bool,
    /// Nothing delivered (and no sender connected) this long raises the pipe's alarm.
    pub silence_alarm: Option<Duration>,
}

impl PipeConfig {
    /// The pipe's link kind (from its profile).
    pub fn link(&self) -> LinkKind {
        self.profile.link
    }
}

/// What every pipe inherits from the top level.
pub struct Defaults<'a> {
    pub base: &'a Path,
    pub profile_name: Option<&'a str>,
    /// The top-level profile as loaded (`None` when it failed: already reported).
    pub profile: Option<&'a Profile>,
    pub profiles_dir: Option<&'a Path>,
    pub overrides: &'a RawProfile,
}

/// Checks one `[[pipe]]`, pushing every problem; `None` when it cannot be built.
pub fn check_pipe(
    p: &mut Vec<String>,
    label: &str,
    defaults: &Defaults<'_>,
    rp: RawPipe,
) -> Option<PipeConfig> {
    let name = rp.name.clone().unwrap_or_default();
    let from = rp.from.clone().unwrap_or_default();
    check_name(p, &format!("{label}: `name`"), &name);
    check_name(
        p,
        &format!("{label}: `from` (the sender's node name)"),
        &from,
    );
    let keys = check_keys(p, label, defaults.base, &rp);
    let profile = pipe_profile(p, label, defaults, &rp);
    let sink = check_sink(p, label, defaults.base, (&from, &name), &rp)?;
    Some(PipeConfig {
        name,
        from,
        sink,
        profile: profile?,
        keys,
        require_auth: rp.require_auth,
        silence_alarm: rp.silence_alarm,
    })
}

fn check_keys(p: &mut Vec<String>, label: &str, base: &Path, rp: &RawPipe) -> Vec<PipeKey> {
    if rp.keys.len() > 2 {
        p.push(format!(
            "{label}: {} keys configured; a pipe holds at most two (current and next)",
            rp.keys.len()
        ));
    }
    let keys: Vec<PipeKey> = rp
        .keys
        .iter()
        .filter_map(|k| gapsync_daemon::config::key(p, label, base, k))
        .collect();
    if keys.len() == 2 && keys[0].id == keys[1].id {
        p.push(format!(
            "{label}: both keys have id {}; give the next key a new id",
            keys[0].id
        ));
    }
    if rp.require_auth && rp.keys.is_empty() {
        let name = rp.name.as_deref().unwrap_or("NAME");
        p.push(format!("{label}: `require_auth = true` needs `keys`, e.g. keys = [{{ id = 1, file = \"/etc/gapsync/keys/{name}.key\" }}]"));
    }
    keys
}

/// The pipe's profile: the top-level one unless the pipe names another or overrides values
/// (its own `profile_overrides` over the top-level ones).
fn pipe_profile(
    p: &mut Vec<String>,
    label: &str,
    d: &Defaults<'_>,
    rp: &RawPipe,
) -> Option<Profile> {
    if rp.profile.is_none() && rp.profile_overrides.is_none() {
        return d.profile.cloned();
    }
    let name = rp.profile.as_deref().or(d.profile_name);
    let overrides = match &rp.profile_overrides {
        Some(own) => d.overrides.clone().merged(own),
        None => d.overrides.clone(),
    };
    let mut problems = Vec::new();
    let profile =
        gapsync_daemon::config::profile(&mut problems, name, d.base, d.profiles_dir, &overrides);
    p.extend(problems.into_iter().map(|e| format!("{label}: {e}")));
    profile
}

/// The pipe's sink: the `sink` table, or the shorthand `dest` (and `staging`); not both.
fn check_sink(
    p: &mut Vec<String>,
    label: &str,
    base: &Path,
    names: (&str, &str),
    rp: &RawPipe,
) -> Option<SinkSettings> {
    match (&rp.sink, rp.dest.is_some() || rp.staging.is_some()) {
        (Some(_), true) => {
            p.push(format!(
                "{label}: both `sink` and the shorthand `dest`/`staging` are set; keep one (sink = {{ type = \"directory\", path = ..., staging = ... }} or dest = ...)"
            ));
            None
        }
        (Some(value), false) => {
            SinkConfig::parse(p, label, value.clone())?.check(p, label, base, names)
        }
        (None, _) if rp.dest.is_none() => {
            p.push(format!(
                "{label}: no sink: add sink = {{ type = \"directory\", path = \"/srv/gapsync/inbox/{}\" }} (or the shorthand dest = ...)",
                names.1
            ));
            None
        }
        (None, _) => {
            let raw = DirectoryConfig {
                path: rp.dest.clone(),
                staging: rp.staging.clone(),
            };
            raw.check(p, label, "dest", base, names)
                .map(SinkSettings::Directory)
        }
    }
}
