//! The receiver's config file: parsed into [`RawConfig`], then checked into [`Config`] with
//! every problem reported at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gapsync_daemon::config::check_name;
use gapsync_daemon::logging::{LogFormat, LogTime};
use gapsync_protocol::{LinkKind, Profile, RawProfile};
use ipnet::IpNet;
use serde::Deserialize;

use crate::sink::SinkSettings;

mod pipe;

pub use pipe::{PipeConfig, RawPipe};

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
    /// The control socket (`gapsync-receiver pipes` ...); default
    /// `/run/gapsync-receiver/control.sock`.
    pub control_socket: Option<PathBuf>,
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

/// A checked receiver config.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// The top-level profile: every pipe's that names none.
    pub profile: Profile,
    pub listen: SocketAddr,
    pub allow: Vec<IpNet>,
    pub state_dir: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_time: LogTime,
    pub log_level: String,
    /// Where `pipes` and `reload` reach the running daemon.
    pub control_socket: PathBuf,
    pub summary_interval: Duration,
    pub stale_partial_after: Duration,
    pub done_retention: Duration,
    /// Connections served at once; more are closed at once (bounds memory under a flood).
    pub max_connections: usize,
    /// Set when the TCP pipes' link is `tls`: this receiver's certificate, client CA required.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub pipes: Vec<PipeConfig>,
    /// Valid but risky settings (an allow-list open to every address): printed by
    /// check-config, logged at WARN at start.
    pub warnings: Vec<String>,
}

fn check_listen(p: &mut Vec<String>, raw: Option<&str>) -> Option<SocketAddr> {
    match raw.map(str::parse::<SocketAddr>) {
        None => {
            p.push("`listen` is missing, e.g. listen = \"0.0.0.0:28101\"".into());
            None
        }
        Some(Err(e)) => {
            p.push(format!("`listen` is not an address:port ({e})"));
            None
        }
        Some(Ok(a)) => Some(a),
    }
}

/// Checks every `[[pipe]]`: each on its own, then that no two are one (same `from` and
/// `name`) or share a staging folder (each pipe's records must be its own).
fn check_pipes(
    p: &mut Vec<String>,
    base: &Path,
    profile: Option<&Profile>,
    raw: &mut RawConfig,
) -> Vec<PipeConfig> {
    if raw.pipe.is_empty() {
        p.push("no [[pipe]] is configured: add one with name, from and sink".into());
    }
    let defaults = pipe::Defaults {
        base,
        profile_name: raw.profile.as_deref(),
        profile,
        profiles_dir: raw.profiles_dir.as_deref(),
        overrides: &raw.profile_overrides,
    };
    let mut pipes: Vec<PipeConfig> = Vec::new();
    let mut seen = HashSet::new();
    for (i, rp) in std::mem::take(&mut raw.pipe).into_iter().enumerate() {
        let label = format!(
            "[[pipe]] #{} ({})",
            i + 1,
            rp.name.as_deref().unwrap_or("unnamed")
        );
        if let (Some(from), Some(name)) = (&rp.from, &rp.name) {
            if !seen.insert((from.clone(), name.clone())) {
                p.push(format!(
                    "{label}: pipe {name:?} from {from:?} is configured twice"
                ));
            }
        }
        pipes.extend(pipe::check_pipe(p, &label, &defaults, rp));
    }
    for (i, a) in pipes.iter().enumerate() {
        let SinkSettings::Directory(da) = &a.sink else {
            continue;
        };
        for b in &pipes[..i] {
            let SinkSettings::Directory(db) = &b.sink else {
                continue;
            };
            if da.staging == db.staging {
                p.push(format!(
                    "pipes {} from {} and {} from {} share the staging folder {}: give each its own `staging` (or leave it unset: the default is one per pipe)",
                    b.name, b.from, a.name, a.from, da.staging.display()
                ));
            }
        }
    }
    pipes
}

/// One TCP listener and one UDP socket serve the pipes. The TCP listener speaks tcp or tls,
/// and frames (envelope, frame size, reply bytes) before the Hello names the pipe, so its
/// pipes must agree on those; the UDP socket's worker decodes with one set of udp values.
/// Everything else (window, timeouts, rates, the profile's name) may differ per pipe.
fn check_links(p: &mut Vec<String>, pipes: &[PipeConfig]) {
    let (udp, tcp): (Vec<&PipeConfig>, Vec<&PipeConfig>) =
        pipes.iter().partition(|c| c.link() == LinkKind::Udp);
    if let Some(first) = tcp.first() {
        for c in &tcp[1..] {
            let (a, b) = (&first.profile, &c.profile);
            if a.link != b.link {
                p.push(format!(
                    "pipe {} uses link {} and pipe {} link {}: one TCP listener speaks either tcp or tls; give every tcp-kind pipe of this receiver the same link (run a second receiver for the other)",
                    first.name, link_name(a.link), c.name, link_name(b.link)
                ));
            } else if (a.envelope, a.max_frame_bytes, a.ack)
                != (b.envelope, b.max_frame_bytes, b.ack)
            {
                p.push(format!(
                    "pipes {} (profile {}) and {} (profile {}) frame differently (envelope, max_frame_bytes or ok_byte): the tcp pipes of one receiver share one listener, which reads frames before it knows the pipe; give them the same values",
                    first.name, a.name, c.name, b.name
                ));
            }
        }
    }
    if let Some(first) = udp.first() {
        for c in udp[1..]
            .iter()
            .filter(|c| c.profile.udp != first.profile.udp)
        {
            p.push(format!(
                "pipes {} (profile {}) and {} (profile {}) have different udp values: the udp pipes of one receiver share one socket and decoder; give them the same udp values",
                first.name, first.profile.name, c.name, c.profile.name
            ));
        }
    }
}

/// A link kind as the config writes it.
pub fn link_name(link: LinkKind) -> &'static str {
    match link {
        LinkKind::Tcp => "tcp",
        LinkKind::Tls => "tls",
        LinkKind::Udp => "udp",
    }
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
        Ok(gapsync_daemon::config::load(path, Self::check)?)
    }

    fn check(mut raw: RawConfig, base: &Path) -> Result<Config, Vec<String>> {
        let mut p = Vec::new();
        let node = raw.node.take().unwrap_or_default();
        check_name(&mut p, "`node`", &node);
        let profile = gapsync_daemon::config::profile(
            &mut p,
            raw.profile.as_deref(),
            base,
            raw.profiles_dir.as_deref(),
            &raw.profile_overrides,
        );
        let listen = check_listen(&mut p, raw.listen.as_deref());
        let mut warnings = Vec::new();
        let allow = check_allow(&mut p, &mut warnings, raw.allow.take());
        let (state_dir, log_dir) = gapsync_daemon::config::state_and_log_dirs(
            &mut p,
            base,
            raw.state_dir.take(),
            raw.log_dir.take(),
        );
        let level = gapsync_daemon::config::log_level(&mut p, raw.log_level.take());
        if raw.max_connections == Some(0) {
            p.push("`max_connections` must be at least 1".into());
        }
        let pipes = check_pipes(&mut p, base, profile.as_ref(), &mut raw);
        check_links(&mut p, &pipes);
        // The TCP listener's profile decides whether it speaks TLS.
        let tcp = pipes.iter().find(|c| c.link() != LinkKind::Udp);
        let tls_profile = tcp.map(|c| &c.profile).or(profile.as_ref());
        let tls = gapsync_daemon::config::tls(&mut p, base, tls_profile, raw.tls.as_ref(), |f| {
            f.server_config()
        });
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
                control_socket: gapsync_daemon::control::socket_path(
                    base,
                    raw.control_socket.as_deref(),
                    "gapsync-receiver",
                ),
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

    /// The profile of the pipes served by the TCP listener (tcp or tls), if any.
    pub fn tcp_profile(&self) -> Option<&Profile> {
        self.pipes
            .iter()
            .find(|c| c.link() != LinkKind::Udp)
            .map(|c| &c.profile)
    }

    /// The profile of the pipes served by the UDP socket, if any.
    pub fn udp_profile(&self) -> Option<&Profile> {
        self.pipes
            .iter()
            .find(|c| c.link() == LinkKind::Udp)
            .map(|c| &c.profile)
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

#[cfg(test)]
mod tests;
