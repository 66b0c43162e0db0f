//! The sender's config file: parsed into [`RawConfig`], then checked into [`Config`] with every
//! problem reported at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gapsync_daemon::config::{PipeKey, RawKey, abs, check_name};
use gapsync_daemon::folders;
use gapsync_daemon::logging::{LogFormat, LogTime};
use gapsync_protocol::crypto::Protection;
use gapsync_protocol::{LinkKind, Profile, RawProfile};
use serde::Deserialize;

use crate::source::ignore::IgnoreRule;

/// Default for `summary_interval`.
pub const DEFAULT_SUMMARY: Duration = Duration::from_secs(60);
/// Default for a pipe's `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default for a pipe's `settle`: how long a file must be unchanged before a scan takes it.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// Default for a pipe's `poll_interval`.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// Default for a pipe's `alarm_after`: files waiting and nothing delivered this long is an ERROR.
pub const DEFAULT_ALARM_AFTER: Duration = Duration::from_secs(300);

/// The config file as written. Unknown keys are collected and reported by
/// `gapsync_daemon::config::load` with every other problem (so no `deny_unknown_fields` here).
#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub node: Option<String>,
    pub profile: Option<String>,
    pub profiles_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    #[serde(default)]
    pub log_format: LogFormat,
    /// `utc` (default) or `local` timestamps and summary days.
    #[serde(default)]
    pub log_time: LogTime,
    pub log_level: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub summary_interval: Option<Duration>,
    #[serde(default)]
    pub profile_overrides: RawProfile,
    /// Certificates for a profile with `link = "tls"`.
    pub tls: Option<gapsync_daemon::tls::RawTls>,
    #[serde(default)]
    pub pipe: Vec<RawPipe>,
}

/// The `tls` link's client side for one pipe.
#[derive(Debug, Clone)]
pub struct SenderTls {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// The name the receiver's certificate must carry.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

#[derive(Debug, Deserialize)]
pub struct RawPipe {
    pub name: Option<String>,
    /// This pipe's hardware profile (its link kind, frames, window); default: the top-level one.
    pub profile: Option<String>,
    /// Wins over the top-level `[profile_overrides]` for this pipe.
    pub profile_overrides: Option<RawProfile>,
    pub spool: Option<PathBuf>,
    pub gate: Option<String>,
    pub after_send: Option<AfterSend>,
    pub sent_dir: Option<PathBuf>,
    pub quarantine_dir: Option<PathBuf>,
    pub max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// On the udp link: how long files stay in `sent_dir` for a manual resend (none: forever).
    #[serde(default, with = "humantime_serde")]
    pub keep_sent_for: Option<Duration>,
    /// Pre-shared key file of this pipe (see `gapsync-sender keygen`).
    pub key_file: Option<PathBuf>,
    /// Which key id the receiver knows this key by (rotation); default 1.
    pub key_id: Option<u32>,
    /// `encrypt` (default with a key) or `auth-only`.
    pub protection: Option<Protection>,
    /// Files waiting and nothing delivered for this long: one ERROR, repeated hourly.
    #[serde(default, with = "humantime_serde")]
    pub alarm_after: Option<Duration>,
    /// Globs on file and folder names never taken from the spool (default: `DEFAULT_IGNORE`).
    pub ignore: Option<Vec<String>>,
}

/// A keyed pipe's key and what it protects.
#[derive(Debug, Clone)]
pub struct SenderAuth {
    pub key: PipeKey,
    pub protection: Protection,
}

/// What happens to a spool file once the receiver confirmed its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterSend {
    Delete,
    Move,
}

/// One pipe: files in `spool` go to `gate`.
#[derive(Debug, Clone)]
pub struct PipeConfig {
    pub name: String,
    /// The pipe's checked profile (with the overrides): which link it starts.
    pub profile: Profile,
    pub spool: PathBuf,
    pub gate: String,
    pub after_send: AfterSend,
    pub sent_dir: PathBuf,
    /// How long sent files stay in `sent_dir` (udp link); `None`: until removed by hand.
    pub keep_sent_for: Option<Duration>,
    pub quarantine_dir: PathBuf,
    pub max_attempts: u32,
    pub settle: Duration,
    pub poll_interval: Duration,
    /// Where this pipe's in-flight records live.
    pub state_dir: PathBuf,
    /// The pipe's key; `None` for an unauthenticated pipe.
    pub auth: Option<SenderAuth>,
    /// Set when the profile's link is `tls`.
    pub tls: Option<SenderTls>,
    /// Files waiting and nothing delivered this long raises the pipe's alarm.
    pub alarm_after: Duration,
    /// Names the spool never takes.
    pub ignore: IgnoreRule,
}

/// A checked sender config.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// The top-level profile, the default of pipes that name none; `None` when every pipe
    /// names its own and none is set.
    pub profile: Option<Profile>,
    pub state_dir: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_time: LogTime,
    pub log_level: String,
    pub summary_interval: Duration,
    pub pipes: Vec<PipeConfig>,
}

impl Config {
    /// Where and how to log.
    pub fn log_settings(&self) -> gapsync_daemon::cli::LogSettings {
        gapsync_daemon::cli::LogSettings {
            dir: self.log_dir.clone(),
            format: self.log_format,
            time: self.log_time,
            level: self.log_level.clone(),
        }
    }

    /// Loads and checks `path`, reporting every problem at once.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        gapsync_daemon::config::load(path, Self::check)
    }

    fn check(raw: RawConfig, base: &Path) -> Result<Config, Vec<String>> {
        let mut p = Vec::new();
        let node = raw.node.unwrap_or_default();
        check_name(&mut p, "`node`", &node);
        let profiles = Profiles {
            base,
            dir: raw.profiles_dir.as_deref(),
            name: raw.profile.as_deref(),
            overrides: &raw.profile_overrides,
        };
        // The top-level profile is needed by every pipe that names none.
        let default = (raw.profile.is_some() || raw.pipe.iter().any(|rp| rp.profile.is_none()))
            .then(|| profiles.load(&mut p, raw.profile.as_deref(), &raw.profile_overrides))
            .flatten();
        let (state_dir, log_dir) =
            gapsync_daemon::config::state_and_log_dirs(&mut p, base, raw.state_dir, raw.log_dir);
        let level = gapsync_daemon::config::log_level(&mut p, raw.log_level);
        if raw.pipe.is_empty() {
            p.push("no [[pipe]] is configured: add one with name, spool and gate".into());
        }
        let pipe_profiles: Vec<Option<Profile>> = (raw.pipe.iter().enumerate())
            .map(|(i, rp)| profiles.of_pipe(&mut p, &pipe_label(i, rp), rp, default.as_ref()))
            .collect();
        let ctx = PipeContext {
            base,
            state_dir: state_dir.as_deref(),
            tls_config: tls_client(&mut p, base, &pipe_profiles, raw.tls.as_ref()),
            tls_name: raw.tls.as_ref().and_then(|t| t.server_name.clone()),
        };
        let pipes = ctx.pipes(&mut p, raw.pipe, pipe_profiles);
        drop(ctx);
        match (p.is_empty(), state_dir) {
            (true, Some(state_dir)) => Ok(Config {
                node,
                profile: default,
                state_dir,
                log_dir,
                log_format: raw.log_format,
                log_time: raw.log_time,
                log_level: level,
                summary_interval: raw.summary_interval.unwrap_or(DEFAULT_SUMMARY),
                pipes,
            }),
            _ => Err(p),
        }
    }
}

/// "[[pipe]] #2 (scada)": how problems name a pipe.
fn pipe_label(i: usize, rp: &RawPipe) -> String {
    format!(
        "[[pipe]] #{} ({})",
        i + 1,
        rp.name.as_deref().unwrap_or("unnamed")
    )
}

/// The `[tls]` table's client config, required when a pipe's profile has `link = "tls"`.
fn tls_client(
    p: &mut Vec<String>,
    base: &Path,
    pipe_profiles: &[Option<Profile>],
    raw: Option<&gapsync_daemon::tls::RawTls>,
) -> Option<std::sync::Arc<rustls::ClientConfig>> {
    let known = || pipe_profiles.iter().flatten();
    // The profile that decides whether [tls] is needed: a tls one if any pipe has one.
    let deciding = known().find(|pr| pr.link == LinkKind::Tls).or(known().next());
    gapsync_daemon::config::tls(p, base, deciding, raw, |f| f.client_config())
}

/// Where profiles are found, and the top-level choice and overrides.
struct Profiles<'a> {
    base: &'a Path,
    dir: Option<&'a Path>,
    name: Option<&'a str>,
    overrides: &'a RawProfile,
}

impl Profiles<'_> {
    fn load(&self, p: &mut Vec<String>, name: Option<&str>, o: &RawProfile) -> Option<Profile> {
        gapsync_daemon::config::profile(p, name, self.base, self.dir, o)
    }

    /// A pipe's profile: its own `profile` (default: the top-level one) with the top-level
    /// `[profile_overrides]` and then its own `profile_overrides`, which win.
    fn of_pipe(
        &self,
        p: &mut Vec<String>,
        label: &str,
        rp: &RawPipe,
        default: Option<&Profile>,
    ) -> Option<Profile> {
        if rp.profile.is_none() && rp.profile_overrides.is_none() {
            // Problems with the top-level profile are reported once, not per pipe.
            return default.cloned();
        }
        let name = rp.profile.as_deref().or(self.name);
        let own = rp.profile_overrides.clone().unwrap_or_default();
        let overrides = self.overrides.clone().merged(&own);
        let mut q = Vec::new();
        let profile = self.load(&mut q, name, &overrides);
        p.extend(q.into_iter().map(|e| format!("{label}: {e}")));
        profile
    }
}

/// What every pipe's check needs from the rest of the config.
struct PipeContext<'a> {
    base: &'a Path,
    state_dir: Option<&'a Path>,
    tls_config: Option<std::sync::Arc<rustls::ClientConfig>>,
    tls_name: Option<String>,
}

impl PipeContext<'_> {
    /// Checks every `[[pipe]]` (with its profile, `None` if it has none that loads).
    fn pipes(
        &self,
        p: &mut Vec<String>,
        raw: Vec<RawPipe>,
        profiles: Vec<Option<Profile>>,
    ) -> Vec<PipeConfig> {
        let mut pipes = Vec::new();
        let mut names = HashSet::new();
        for (i, (rp, profile)) in raw.into_iter().zip(profiles).enumerate() {
            let label = pipe_label(i, &rp);
            if let Some(name) = &rp.name {
                if !names.insert(name.clone()) {
                    p.push(format!("{label}: pipe name {name:?} is used twice"));
                }
            }
            pipes.extend(self.pipe(p, &label, rp, profile.as_ref()));
        }
        pipes
    }

    /// Checks one `[[pipe]]`, pushing every problem; `None` when it cannot be built.
    fn pipe(
        &self,
        p: &mut Vec<String>,
        label: &str,
        rp: RawPipe,
        profile: Option<&Profile>,
    ) -> Option<PipeConfig> {
        let base = self.base;
        let diode = profile.is_some_and(|pr| pr.link == LinkKind::Udp);
        let name = rp.name.unwrap_or_default();
        check_name(p, &format!("{label}: `name`"), &name);
        let gate = rp.gate.unwrap_or_default();
        if gate
            .rsplit_once(':')
            .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
        {
            p.push(format!("{label}: `gate` = {gate:?} must be host:port of the gate (or the receiver), e.g. \"192.0.2.131:28101\""));
        }
        if rp.keep_sent_for.is_some() && !diode {
            p.push(format!("{label}: `keep_sent_for` is only for the udp link (on a gate link the receiver confirms every file)"));
        }
        if rp.max_attempts == Some(0) {
            p.push(format!("{label}: `max_attempts` must be at least 1"));
        }
        let sent_dir = rp.sent_dir.map(|d| abs(base, &d));
        let quarantine_dir = rp.quarantine_dir.map(|d| abs(base, &d));
        for (key, dir) in [("sent_dir", &sent_dir), ("quarantine_dir", &quarantine_dir)] {
            if let Some(d) = dir {
                folders::creatable(p, &format!("{label}: `{key}`"), d);
            }
        }
        let Some(spool) = rp.spool.map(|d| abs(base, &d)) else {
            p.push(format!("{label}: `spool` is missing"));
            return None;
        };
        folders::existing(p, &format!("{label}: spool"), &spool, "2770");
        let ignore = match rp.ignore {
            None => IgnoreRule::default(),
            Some(globs) => IgnoreRule::new(&globs).unwrap_or_else(|bad| {
                p.extend(bad.into_iter().map(|b| format!("{label}: `ignore`: {b}")));
                IgnoreRule::default()
            }),
        };
        let auth = self.auth(p, label, rp.key_file, rp.key_id, rp.protection);
        let tls = match profile {
            Some(pr) if pr.link == LinkKind::Tls => self.tls(p, label, &gate),
            _ => None,
        };
        let pipe_state = self.state_dir?.join("sender").join(&name);
        Some(PipeConfig {
            profile: profile?.clone(),
            after_send: rp.after_send.unwrap_or(if diode {
                // Nothing confirms arrival on a diode: keep what was sent for a resend.
                AfterSend::Move
            } else {
                AfterSend::Delete
            }),
            sent_dir: sent_dir.unwrap_or_else(|| pipe_state.join("sent")),
            quarantine_dir: quarantine_dir.unwrap_or_else(|| pipe_state.join("quarantine")),
            keep_sent_for: rp.keep_sent_for,
            max_attempts: rp.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            settle: rp.settle.unwrap_or(DEFAULT_SETTLE),
            poll_interval: rp.poll_interval.unwrap_or(DEFAULT_POLL),
            state_dir: pipe_state,
            alarm_after: rp.alarm_after.unwrap_or(DEFAULT_ALARM_AFTER),
            ignore,
            auth,
            tls,
            name,
            spool,
            gate,
        })
    }

    /// The pipe's key and protection.
    fn auth(
        &self,
        p: &mut Vec<String>,
        label: &str,
        key_file: Option<PathBuf>,
        key_id: Option<u32>,
        protection: Option<Protection>,
    ) -> Option<SenderAuth> {
        match (key_file, protection) {
            (Some(file), protection) => {
                let raw = RawKey {
                    id: key_id,
                    file: Some(file),
                };
                gapsync_daemon::config::key(p, label, self.base, &raw).map(|key| SenderAuth {
                    key,
                    protection: protection.unwrap_or(Protection::Encrypt),
                })
            }
            (None, Some(_)) => {
                p.push(format!("{label}: `protection` needs a `key_file`"));
                None
            }
            (None, None) => None,
        }
    }

    /// The `tls` link's client config and the name the receiver's certificate must carry.
    fn tls(&self, p: &mut Vec<String>, label: &str, gate: &str) -> Option<SenderTls> {
        let config = self.tls_config.as_ref()?;
        let host = self.tls_name.clone().unwrap_or_else(|| {
            gate.rsplit_once(':').map_or(gate.to_owned(), |(h, _)| {
                h.trim_matches(['[', ']']).to_owned()
            })
        });
        match rustls::pki_types::ServerName::try_from(host.clone()) {
            Ok(server_name) => Some(SenderTls {
                config: config.clone(),
                server_name,
            }),
            Err(_) => {
                p.push(format!(
                    "{label}: {host:?} is not a valid TLS server name; set [tls] server_name"
                ));
                None
            }
        }
    }
}
