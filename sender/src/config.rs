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

use crate::process::{Processors, RawProcessor};
use crate::schedule::{RawSchedule, Schedule};
use crate::source::spool::config::{AfterSend, RawSpool, Symlinks};
use crate::source::{SourceConfig, SourceContext, SourceSettings};

/// Default for `summary_interval`.
pub const DEFAULT_SUMMARY: Duration = Duration::from_secs(60);
/// Default for a pipe's `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
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
    /// The control socket (`pipes`, `pipe stop|start`, `reload`); default
    /// `/run/gapsync-sender/control.sock`.
    pub control_socket: Option<PathBuf>,
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
    pub gate: Option<String>,
    /// Where the pipe's objects come from: `{ type = "spool", path = "...", ... }`.
    pub source: Option<SourceConfig>,
    /// Send what is already there when the pipe is created (default true).
    pub history: Option<bool>,
    /// Send what arrives afterwards (default true).
    pub realtime: Option<bool>,
    /// Send objects that arrived through gapsync too (default false).
    pub forward_received: Option<bool>,
    /// The processors, in order (`crate::process`).
    pub processors: Option<Vec<RawProcessor>>,
    /// When the pipe may send (windows) and when its source runs (cron).
    pub schedule: Option<RawSchedule>,
    pub quarantine_dir: Option<PathBuf>,
    pub max_attempts: Option<u32>,
    /// Pre-shared key file of this pipe (see `gapsync-sender keygen`).
    pub key_file: Option<PathBuf>,
    /// Which key id the receiver knows this key by (rotation); default 1.
    pub key_id: Option<u32>,
    /// `encrypt` (default with a key) or `auth-only`.
    pub protection: Option<Protection>,
    /// Files waiting and nothing delivered for this long: one ERROR, repeated hourly.
    #[serde(default, with = "humantime_serde")]
    pub alarm_after: Option<Duration>,
    // The shorthand for a spool source (`spool` is its `path`): see `RawPipe::spool_shorthand`.
    pub spool: Option<PathBuf>,
    pub after_send: Option<AfterSend>,
    pub sent_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub keep_sent_for: Option<Duration>,
    pub ignore: Option<Vec<String>>,
    pub symlinks: Option<Symlinks>,
    pub preserve_mode: Option<bool>,
}

impl RawPipe {
    /// The flat spool keys as a spool source; `None` when none is set.
    fn spool_shorthand(&mut self) -> Option<RawSpool> {
        let raw = RawSpool {
            path: self.spool.take(),
            after_send: self.after_send.take(),
            sent_dir: self.sent_dir.take(),
            settle: self.settle.take(),
            poll_interval: self.poll_interval.take(),
            ignore: self.ignore.take(),
            keep_sent_for: self.keep_sent_for.take(),
            symlinks: self.symlinks.take(),
            preserve_mode: self.preserve_mode.take(),
            unknown: Default::default(),
        };
        let set = raw.path.is_some()
            || raw.after_send.is_some()
            || raw.sent_dir.is_some()
            || raw.settle.is_some()
            || raw.poll_interval.is_some()
            || raw.ignore.is_some()
            || raw.keep_sent_for.is_some()
            || raw.symlinks.is_some()
            || raw.preserve_mode.is_some();
        set.then_some(raw)
    }
}

/// A keyed pipe's key and what it protects.
#[derive(Debug, Clone)]
pub struct SenderAuth {
    pub key: PipeKey,
    pub protection: Protection,
}

/// One pipe: objects of its source go through its link to `gate`.
#[derive(Debug, Clone)]
pub struct PipeConfig {
    pub name: String,
    /// The pipe's checked profile (with the overrides): which link it starts.
    pub profile: Profile,
    pub gate: String,
    pub source: SourceSettings,
    /// Send what is there when the pipe is created (`crate::process::history`).
    pub history: bool,
    /// Send what arrives later (`crate::process::history`).
    pub realtime: bool,
    /// Send objects that arrived through gapsync (their origin chain is not empty). Default
    /// false: a folder that is both a landing folder and a spool (two-way) then never sends
    /// back what it received. Files without a chain (everything an earlier version or a
    /// producer wrote) are sent either way, so old configs behave as before; a relay in a
    /// cascade sets it to true.
    pub forward_received: bool,
    /// The checked processors (filter, compress, rate_limit), in order.
    pub processors: Processors,
    /// The pipe's checked schedule; `None`: always open, no cron.
    pub schedule: Option<Schedule>,
    pub quarantine_dir: PathBuf,
    pub max_attempts: u32,
    /// Where this pipe's in-flight records live.
    pub state_dir: PathBuf,
    /// The pipe's key; `None` for an unauthenticated pipe.
    pub auth: Option<SenderAuth>,
    /// Set when the profile's link is `tls`.
    pub tls: Option<SenderTls>,
    /// Files waiting and nothing delivered this long raises the pipe's alarm.
    pub alarm_after: Duration,
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
    /// The control socket the daemon serves and the commands use.
    pub control_socket: PathBuf,
    /// The `[tls]` table as written, so that a reload sees when it changed.
    pub tls_written: String,
    /// Each `[[pipe]]` table as written (keys sorted), by name, so that a reload sees which
    /// pipes changed.
    pub pipes_written: std::collections::BTreeMap<String, String>,
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
        let mut config = gapsync_daemon::config::load(path, Self::check)?;
        config.pipes_written = pipes_written(path);
        Ok(config)
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
        let control_socket = gapsync_daemon::control::socket_path(
            base,
            raw.control_socket.as_deref(),
            "gapsync-sender",
        );
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
                control_socket,
                tls_written: format!("{:?}", raw.tls),
                pipes_written: Default::default(),
            }),
            _ => Err(p),
        }
    }
}

/// Each `[[pipe]]` table of the (already checked) file as TOML text with sorted keys, by name.
fn pipes_written(path: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let table: toml::Table = toml::from_str(&text).unwrap_or_default();
    let pipes = table.get("pipe").and_then(toml::Value::as_array);
    (pipes.into_iter().flatten())
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?.to_owned();
            Some((name, p.to_string()))
        })
        .collect()
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
    let deciding = known()
        .find(|pr| pr.link == LinkKind::Tls)
        .or(known().next());
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

/// `gate` must be host:port.
fn check_gate(p: &mut Vec<String>, label: &str, gate: &str) {
    if gate
        .rsplit_once(':')
        .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
    {
        p.push(format!("{label}: `gate` = {gate:?} must be host:port of the gate (or the receiver), e.g. \"192.0.2.131:28101\""));
    }
}

/// The pipe's source: `source = { type = ... }` or the flat spool keys, not both.
fn source(
    p: &mut Vec<String>,
    label: &str,
    rp: &mut RawPipe,
    cx: &SourceContext,
) -> Option<SourceSettings> {
    let flat = rp.spool_shorthand();
    let raw = match (rp.source.take(), flat) {
        (Some(_), Some(_)) => {
            p.push(format!("{label}: both `source = {{ ... }}` and the flat spool keys (spool, after_send, sent_dir, settle, poll_interval, ignore, keep_sent_for, symlinks, preserve_mode) are set; keep one form"));
            return None;
        }
        (Some(source), None) => source,
        (None, Some(flat)) => SourceConfig::Spool(flat),
        (None, None) => SourceConfig::Spool(RawSpool::default()),
    };
    raw.check(p, label, cx)
}

/// The pipe's checked `processors`; a `compress` step on a udp (diode) pipe is refused.
fn processors(
    p: &mut Vec<String>,
    name: &str,
    raw: Option<Vec<RawProcessor>>,
    profile: Option<&Profile>,
) -> Option<Processors> {
    let checked = match Processors::check(name, &raw.unwrap_or_default()) {
        Ok(c) => c,
        Err(problems) => {
            p.extend(problems);
            return None;
        }
    };
    if let (Some(pr), Some(_)) = (profile, checked.compress()) {
        if pr.link == LinkKind::Udp {
            p.push(format!("pipe {name}: processors: `compress` is not available on a udp (diode) pipe (profile {:?}): the diode's datagrams cover fixed byte ranges of the file and carry no compression (PROTOCOL.md section 8); remove the compress step", pr.name));
            return None;
        }
    }
    Some(checked)
}

/// A postgres source's objects must all be sent: the state moves past each one as it is
/// read, so one held back is never read again.
fn table_pipe_rules(p: &mut Vec<String>, name: &str, rp: &RawPipe) {
    let why = "the postgres source records each table object as read when it spills it, so an object not sent is never read again and its rows are lost";
    if (rp.processors.iter().flatten()).any(|r| matches!(r, RawProcessor::Filter(_))) {
        p.push(format!("pipe {name}: a `filter` processor cannot be used with a postgres source ({why}); choose the tables in [[pipe.source.table]] instead (compress and rate_limit are fine)"));
    }
    for (key, off) in [("realtime", rp.realtime), ("history", rp.history)] {
        if off == Some(false) {
            p.push(format!("pipe {name}: `{key} = false` cannot be used with a postgres source ({why}); remove it"));
        }
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
        mut rp: RawPipe,
        profile: Option<&Profile>,
    ) -> Option<PipeConfig> {
        let name = rp.name.take().unwrap_or_default();
        check_name(p, &format!("{label}: `name`"), &name);
        let gate = rp.gate.take().unwrap_or_default();
        check_gate(p, label, &gate);
        if rp.max_attempts == Some(0) {
            p.push(format!("{label}: `max_attempts` must be at least 1"));
        }
        let quarantine_dir = rp.quarantine_dir.take().map(|d| abs(self.base, &d));
        if let Some(d) = &quarantine_dir {
            folders::creatable(p, &format!("{label}: `quarantine_dir`"), d);
        }
        let pipe_state = self.state_dir.map(|d| d.join("sender").join(&name));
        let cx = SourceContext {
            base: self.base,
            pipe_state: pipe_state.as_deref(),
            diode: profile.is_some_and(|pr| pr.link == LinkKind::Udp),
        };
        let source = source(p, label, &mut rp, &cx);
        if let Some(SourceSettings::Postgres(_)) = &source {
            table_pipe_rules(p, &name, &rp);
        }
        let processors = processors(p, &name, rp.processors.take(), profile);
        let auth = self.auth(p, label, rp.key_file, rp.key_id, rp.protection);
        let tls = match profile {
            Some(pr) if pr.link == LinkKind::Tls => self.tls(p, label, &gate),
            _ => None,
        };
        let schedule = rp
            .schedule
            .take()
            .and_then(|raw| Schedule::check(&name, &raw).map_err(|e| p.extend(e)).ok());
        let pipe_state = pipe_state?;
        Some(PipeConfig {
            profile: profile?.clone(),
            source: source?,
            history: rp.history.unwrap_or(true),
            realtime: rp.realtime.unwrap_or(true),
            forward_received: rp.forward_received.unwrap_or(false),
            processors: processors?,
            schedule,
            quarantine_dir: quarantine_dir.unwrap_or_else(|| pipe_state.join("quarantine")),
            max_attempts: rp.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            state_dir: pipe_state,
            alarm_after: rp.alarm_after.unwrap_or(DEFAULT_ALARM_AFTER),
            auth,
            tls,
            name,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `pipes` (TOML of `[[pipe]]` tables) under a top-level config with a loopback
    /// profile; the spool folders named `spool` and `spool2` exist.
    fn load(top: &str, pipes: &str) -> (tempfile::TempDir, Result<Config, String>) {
        let d = tempfile::tempdir().expect("tempdir");
        for s in ["spool", "spool2"] {
            std::fs::create_dir_all(d.path().join(s)).expect("spool");
        }
        let text = format!(
            "node = \"n\"\nprofile = \"loopback\"\nprofiles_dir = {:?}\nstate_dir = \"state\"\n{top}\n{pipes}",
            gapsync_tests::profiles_dir().display().to_string()
        );
        let path = d.path().join("sender.toml");
        std::fs::write(&path, text).expect("write");
        let r = Config::load(&path).map_err(|e| format!("{e:#}"));
        (d, r)
    }

    #[test]
    fn the_source_table_and_the_flat_shorthand_give_the_same_spool() {
        let (_d, table) = load(
            "",
            "[[pipe]]\nname = \"p\"\ngate = \"h:1\"\nsource = { type = \"spool\", path = \"spool\", after_send = \"move\", settle = \"3s\" }\n",
        );
        let (_e, flat) = load(
            "",
            "[[pipe]]\nname = \"p\"\ngate = \"h:1\"\nspool = \"spool\"\nafter_send = \"move\"\nsettle = \"3s\"\n",
        );
        for c in [table.expect("table form"), flat.expect("flat form")] {
            let s = c.pipes[0].source.spool().expect("a spool");
            assert!(s.path.ends_with("spool"));
            assert_eq!(s.after_send, AfterSend::Move);
            assert_eq!(s.settle, Duration::from_secs(3));
            let pc = &c.pipes[0];
            assert!(pc.history && pc.realtime && !pc.forward_received);
        }
    }

    #[test]
    fn both_forms_in_one_pipe_and_unknown_source_keys_are_reported_together() {
        let (_d, r) = load(
            "",
            "[[pipe]]\nname = \"p\"\ngate = \"h:1\"\nspool = \"spool\"\nsource = { type = \"spool\", path = \"spool\" }\n\
             [[pipe]]\nname = \"q\"\ngate = \"h:1\"\nsource = { type = \"spool\", path = \"spool2\", pathh = 1, settel = \"1s\" }\n",
        );
        let e = r.expect_err("refused");
        assert!(
            e.contains("#1 (p): both `source = { ... }` and the flat spool keys"),
            "{e}"
        );
        assert!(
            e.contains("unknown key `pathh` in [[pipe]] #2 (q) `source`"),
            "{e}"
        );
        assert!(e.contains("unknown key `settel`"), "{e}");
    }

    #[test]
    fn a_pipe_names_its_own_profile_and_its_overrides_win_over_the_top_level_ones() {
        let (_d, r) = load(
            "[profile_overrides]\nwindow = 3\nack_timeout = \"7s\"\n",
            "[[pipe]]\nname = \"a\"\ngate = \"h:1\"\nspool = \"spool\"\n\
             [[pipe]]\nname = \"b\"\ngate = \"h:1\"\nspool = \"spool2\"\nprofile_overrides = { window = 5 }\n",
        );
        let c = r.expect("valid");
        let [a, b] = &c.pipes[..] else {
            panic!("two pipes")
        };
        assert_eq!((a.profile.window.get(), b.profile.window.get()), (3, 5));
        assert_eq!(b.profile.ack_timeout, Duration::from_secs(7));
        let (_e, r) = load(
            "",
            "[[pipe]]\nname = \"c\"\ngate = \"h:1\"\nprofile = \"udp-loopback\"\nsource = { type = \"spool\", path = \"spool\", keep_sent_for = \"1d\" }\n\
             processors = [{ type = \"filter\", include = [\"*.csv\"] }]\nschedule = { windows = [\"22:30-06:00\"], timezone = \"UTC\" }\nforward_received = false\n",
        );
        let c = r.expect("valid");
        let u = &c.pipes[0];
        assert_eq!(
            (c.profile.as_ref().map(|p| p.link), u.profile.link),
            (Some(LinkKind::Tcp), LinkKind::Udp)
        );
        assert_eq!(
            u.source.spool().map(|s| s.after_send),
            Some(AfterSend::Move),
            "a diode keeps what it sent"
        );
        assert!(!u.forward_received && u.processors.filter().is_some() && u.schedule.is_some());
    }

    #[test]
    fn a_postgres_pipe_refuses_what_would_drop_table_objects() {
        let src = "source = { type = \"postgres\", connection = \"host=/tmp dbname=x\", table = [{ name = \"public.a\", mode = \"snapshot\" }] }";
        let (_d, r) = load(
            "",
            &format!(
                "[[pipe]]\nname = \"pg\"\ngate = \"h:1\"\nrealtime = false\nhistory = false\n\
             processors = [{{ type = \"filter\", include = [\"*\"] }}, {{ type = \"compress\" }}]\n{src}\n\
             [[pipe]]\nname = \"ok\"\ngate = \"h:1\"\nprocessors = [{{ type = \"compress\" }}, {{ type = \"rate_limit\", bytes_per_second = 1000 }}]\n{src}\n"
            ),
        );
        let e = r.expect_err("refused");
        for want in [
            "pipe pg: a `filter` processor cannot be used with a postgres source",
            "pipe pg: `realtime = false` cannot be used with a postgres source",
            "pipe pg: `history = false` cannot be used with a postgres source",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
        assert!(
            !e.contains("pipe ok"),
            "compress and rate_limit are fine: {e}"
        );
    }

    #[test]
    fn processor_problems_are_reported_with_the_others_and_compress_is_refused_on_udp() {
        let (_d, r) = load(
            "",
            "[[pipe]]\nname = \"a\"\ngate = \"nohost\"\nspool = \"spool\"\nprocessors = [{ type = \"compress\", level = 30 }, { type = \"rate_limit\", bytes_per_second = 0 }]\n\
             [[pipe]]\nname = \"d\"\ngate = \"h:1\"\nprofile = \"udp-loopback\"\nspool = \"spool2\"\nprocessors = [{ type = \"compress\" }]\n",
        );
        let e = r.expect_err("refused");
        assert!(e.contains("#1 (a): `gate`"), "{e}");
        assert!(
            e.contains("pipe a: processors[0] (compress): level 30"),
            "{e}"
        );
        assert!(
            e.contains("pipe a: processors[1] (rate_limit): bytes_per_second = 0"),
            "{e}"
        );
        assert!(
            e.contains("pipe d: processors: `compress` is not available on a udp (diode) pipe"),
            "{e}"
        );
        let (_e, r) = load(
            "",
            "[[pipe]]\nname = \"t\"\ngate = \"h:1\"\nspool = \"spool\"\nprocessors = [{ type = \"compress\", level = 5 }, { type = \"rate_limit\", bytes_per_second = 1000 }]\n",
        );
        let c = r.expect("valid");
        let p = &c.pipes[0].processors;
        assert_eq!(p.compress().map(|c| c.level), Some(5));
        assert!(p.limit_after_compress());
    }

    #[test]
    fn symlinks_and_preserve_mode_are_read_in_both_forms_and_refused_on_udp() {
        let (_d, r) = load(
            "",
            "[[pipe]]\nname = \"a\"\ngate = \"h:1\"\nspool = \"spool\"\nsymlinks = \"preserve\"\npreserve_mode = true\n\
             [[pipe]]\nname = \"b\"\ngate = \"h:1\"\nsource = { type = \"spool\", path = \"spool2\" }\n",
        );
        let c = r.expect("valid");
        let (a, b) = (c.pipes[0].source.spool(), c.pipes[1].source.spool());
        assert_eq!(
            a.map(|s| (s.symlinks, s.preserve_mode)),
            Some((Symlinks::Preserve, true))
        );
        assert_eq!(
            b.map(|s| (s.symlinks, s.preserve_mode)),
            Some((Symlinks::Skip, false))
        );
        let (_e, r) = load(
            "",
            "[[pipe]]\nname = \"u\"\ngate = \"h:1\"\nprofile = \"udp-loopback\"\nsource = { type = \"spool\", path = \"spool\", symlinks = \"preserve\", preserve_mode = true }\n",
        );
        let e = r.expect_err("refused");
        assert!(
            e.contains("(u): `symlinks = \"preserve\"` needs a tcp or tls link"),
            "{e}"
        );
        assert!(
            e.contains("(u): `preserve_mode = true` needs a tcp or tls link"),
            "{e}"
        );
    }
}
