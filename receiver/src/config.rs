//! The receiver's config file: parsed into [`RawConfig`], then checked into [`Config`] with
//! every problem reported at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gapsync_daemon::config::{PipeKey, RawKey, abs, check_name};
use gapsync_daemon::folders;
use gapsync_daemon::logging::{LogFormat, LogTime};
use gapsync_protocol::{Profile, RawProfile};
use ipnet::IpNet;
use serde::Deserialize;

/// Default for `summary_interval`.
pub const DEFAULT_SUMMARY: Duration = Duration::from_secs(60);
/// Default for `stale_partial_after`.
pub const DEFAULT_STALE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default for `max_connections`: a few senders with several pipes each, and room to spare.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default for `done_retention`.
pub const DEFAULT_DONE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The config file as written. Unknown keys are collected and reported by
/// `gapsync_daemon::config::load` with every other problem (so no `deny_unknown_fields` here).
#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub node: Option<String>,
    pub profile: Option<String>,
    pub profiles_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub allow: Option<Vec<String>>,
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
    #[serde(default, with = "humantime_serde")]
    pub stale_partial_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub done_retention: Option<Duration>,
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub profile_overrides: RawProfile,
    /// Certificates for a profile with `link = "tls"`.
    pub tls: Option<gapsync_daemon::tls::RawTls>,
    #[serde(default)]
    pub pipe: Vec<RawPipe>,
}

#[derive(Debug, Deserialize)]
pub struct RawPipe {
    pub name: Option<String>,
    pub from: Option<String>,
    pub dest: Option<PathBuf>,
    pub staging: Option<PathBuf>,
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

/// One pipe this receiver lands: what `from` sends on `name` goes to `dest`.
#[derive(Debug, Clone)]
pub struct PipeConfig {
    pub name: String,
    pub from: String,
    pub dest: PathBuf,
    /// Partial files; on the same filesystem as `dest` so the final rename is atomic.
    pub staging: PathBuf,
    /// Keys by id (at most two: current and next).
    pub keys: Vec<PipeKey>,
    pub require_auth: bool,
    /// Nothing delivered (and no sender connected) this long raises the pipe's alarm.
    pub silence_alarm: Option<Duration>,
}

/// A checked receiver config.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub profile: Profile,
    pub listen: SocketAddr,
    pub allow: Vec<IpNet>,
    pub state_dir: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_time: LogTime,
    pub log_level: String,
    pub summary_interval: Duration,
    pub stale_partial_after: Duration,
    pub done_retention: Duration,
    /// Connections served at once; more are closed at once (bounds memory under a flood).
    pub max_connections: usize,
    /// Set when the profile's link is `tls`: this receiver's certificate, client CA required.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub pipes: Vec<PipeConfig>,
    /// Valid but risky settings (an allow-list open to every address): printed by
    /// check-config, logged at WARN at start.
    pub warnings: Vec<String>,
}

/// Checks one `[[pipe]]`, pushing every problem; `None` when it cannot be built.
fn check_pipe(p: &mut Vec<String>, label: &str, base: &Path, rp: RawPipe) -> Option<PipeConfig> {
    let name = rp.name.unwrap_or_default();
    let from = rp.from.unwrap_or_default();
    check_name(p, &format!("{label}: `name`"), &name);
    check_name(
        p,
        &format!("{label}: `from` (the sender's node name)"),
        &from,
    );
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
        p.push(format!("{label}: `require_auth = true` needs `keys`, e.g. keys = [{{ id = 1, file = \"/etc/gapsync/keys/{name}.key\" }}]"));
    }
    let Some(dest) = rp.dest.map(|d| abs(base, &d)) else {
        p.push(format!("{label}: `dest` is missing"));
        return None;
    };
    folders::existing(p, &format!("{label}: dest"), &dest, "2770");
    // Inside dest by default: the final rename never crosses a mount point. Set elsewhere,
    // the receiver proves at start that a file renames from it into dest.
    let staging = match rp.staging {
        Some(s) => {
            let s = abs(base, &s);
            folders::creatable(p, &format!("{label}: `staging`"), &s);
            s
        }
        None => crate::sink::directory::default_staging(&dest, &from, &name),
    };
    if staging == dest || dest.starts_with(&staging) {
        p.push(format!(
            "{label}: `staging` {} is dest or holds it; the receiver keeps its records there: remove `staging` (the default is <dest>/.gapsync-staging/<from>/<name>)",
            staging.display()
        ));
    }
    Some(PipeConfig {
        name,
        from,
        dest,
        staging,
        keys,
        require_auth: rp.require_auth,
        silence_alarm: rp.silence_alarm,
    })
}

/// Checks `allow`: missing or empty refuses every sender (an error), a network holding every
/// address (0.0.0.0/0, ::/0) is a warning.
fn check_allow(
    p: &mut Vec<String>,
    warnings: &mut Vec<String>,
    raw: Option<Vec<String>>,
) -> Vec<IpNet> {
    const EXAMPLE: &str =
        "list the networks that may connect (the gate's address), e.g. allow = [\"10.1.2.0/24\"]";
    let Some(list) = raw else {
        p.push(format!(
            "`allow` is not set: the receiver would refuse every sender; {EXAMPLE}"
        ));
        return Vec::new();
    };
    if list.is_empty() {
        p.push(format!(
            "`allow` is empty: the receiver would refuse every sender; {EXAMPLE}"
        ));
    }
    let mut allow = Vec::new();
    for a in list {
        match a
            .parse::<IpNet>()
            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => {
                if n.prefix_len() == 0 {
                    warnings.push(format!("`allow` holds {n}: any address may connect, not only the gate; list the gate's address instead"));
                }
                allow.push(n);
            }
            Err(_) => p.push(format!(
                "`allow` entry {a:?} is not a network (CIDR like 10.1.2.0/24) or an address"
            )),
        }
    }
    allow
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
        let profile = gapsync_daemon::config::profile(
            &mut p,
            raw.profile.as_deref(),
            base,
            raw.profiles_dir.as_deref(),
            &raw.profile_overrides,
        );
        let listen = match raw.listen.as_deref().map(str::parse::<SocketAddr>) {
            None => {
                p.push("`listen` is missing, e.g. listen = \"0.0.0.0:28101\"".into());
                None
            }
            Some(Err(e)) => {
                p.push(format!("`listen` is not an address:port ({e})"));
                None
            }
            Some(Ok(a)) => Some(a),
        };
        let mut warnings = Vec::new();
        let allow = check_allow(&mut p, &mut warnings, raw.allow);
        let (state_dir, log_dir) =
            gapsync_daemon::config::state_and_log_dirs(&mut p, base, raw.state_dir, raw.log_dir);
        let level = gapsync_daemon::config::log_level(&mut p, raw.log_level);
        if raw.pipe.is_empty() {
            p.push("no [[pipe]] is configured: add one with name, from and dest".into());
        }
        let tls =
            gapsync_daemon::config::tls(&mut p, base, profile.as_ref(), raw.tls.as_ref(), |f| {
                f.server_config()
            });
        if raw.max_connections == Some(0) {
            p.push("`max_connections` must be at least 1".into());
        }
        let mut pipes = Vec::new();
        let mut seen = HashSet::new();
        for (i, rp) in raw.pipe.into_iter().enumerate() {
            let label = format!(
                "[[pipe]] #{} ({})",
                i + 1,
                rp.name.as_deref().unwrap_or("unnamed")
            );
            let key = (rp.from.clone(), rp.name.clone());
            if let (Some(from), Some(name)) = &key {
                if !seen.insert(key.clone()) {
                    p.push(format!(
                        "{label}: pipe {name:?} from {from:?} is configured twice"
                    ));
                }
            }
            pipes.extend(check_pipe(&mut p, &label, base, rp));
        }
        // Each pipe's records (done log, journal) must be its own.
        for (i, a) in pipes.iter().enumerate() {
            if let Some(b) = pipes[..i].iter().find(|b| b.staging == a.staging) {
                p.push(format!(
                    "pipes {} from {} and {} from {} share the staging folder {}: give each its own `staging` (or leave it unset: the default is one per pipe)",
                    b.name, b.from, a.name, a.from, a.staging.display()
                ));
            }
        }
        match (p.is_empty(), profile, listen, state_dir) {
            (true, Some(profile), Some(listen), Some(state_dir)) => Ok(Config {
                node,
                profile,
                listen,
                allow,
                state_dir,
                log_dir,
                log_format: raw.log_format,
                log_time: raw.log_time,
                log_level: level,
                summary_interval: raw.summary_interval.unwrap_or(DEFAULT_SUMMARY),
                stale_partial_after: raw.stale_partial_after.unwrap_or(DEFAULT_STALE),
                done_retention: raw.done_retention.unwrap_or(DEFAULT_DONE_RETENTION),
                max_connections: raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
                tls,
                pipes,
                warnings,
            }),
            _ => Err(p),
        }
    }

    /// True when `ip` is in one of the allowed networks.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&ip))
    }
}
