//! Hardware profiles: the per-gate numbers both ends must agree on.
//!
//! A profile file is parsed into [`RawProfile`] (every field optional, unknown fields refused),
//! overrides from a daemon config are merged on top, and [`Profile::try_from`] checks the result,
//! reporting every problem at once.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use crate::envelope::Envelope;
use crate::frame::HEADER_LEN;
use crate::messages::ProfileSummary;

/// Smallest frame a profile may set (header plus a useful payload).
pub const MIN_FRAME_BYTES: u64 = 1024;
/// Largest frame a profile may set.
pub const MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;
/// Largest window a profile may set.
pub const MAX_WINDOW: u64 = 1024;

/// Which link carries the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// TCP through a forward or reverse isolation gate: one ack byte per frame.
    Tcp,
    /// TLS with mutual certificate authentication over a two-way network (an edge site to a
    /// cloud receiver through a firewall); the same frames and acks inside.
    Tls,
    /// UDP through a hardware data diode: nothing comes back; forward error correction and
    /// repetition instead of acknowledgements (the `udp` fields below).
    Udp,
}

/// A profile as written in TOML, before checking. Also the shape of `[profile_overrides]`.
/// Unknown keys are refused, all at once: by [`RawProfile::from_toml`] in a profile file, by the
/// daemons' config loader in `[profile_overrides]` (serde's `deny_unknown_fields` would stop at
/// the first).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RawProfile {
    pub name: Option<String>,
    pub description: Option<String>,
    pub link: Option<LinkKind>,
    pub envelope: Option<Envelope>,
    pub max_frame_bytes: Option<u64>,
    pub window: Option<u64>,
    pub ok_byte: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub ack_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub reconnect_backoff_min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub reconnect_backoff_max: Option<Duration>,
    pub socket_buffer_bytes: Option<u64>,
    pub rate_limit_mbit: Option<u64>,
    // The `udp` link's fields (see `crate::udp::profile`).
    pub mtu: Option<u64>,
    pub symbol_bytes: Option<u64>,
    pub repair_percent: Option<u64>,
    pub passes: Option<u64>,
    pub control_repeats: Option<u64>,
    pub block_symbols: Option<u64>,
    pub interleave_blocks: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub silence_alarm: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub object_deadline: Option<Duration>,
}

impl RawProfile {
    /// Parses profile TOML text, refusing every unknown key in one error.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        let mut unknown = Vec::new();
        let raw = serde_ignored::deserialize(toml::Deserializer::parse(text)?, |path| {
            unknown.push(format!("`{path}`"));
        })?;
        if unknown.is_empty() {
            Ok(raw)
        } else {
            Err(serde::de::Error::custom(format!(
                "unknown key(s) {}: remove them or correct their spelling",
                unknown.join(", ")
            )))
        }
    }

    /// `self` with every field that `overrides` sets replaced.
    pub fn merged(self, overrides: &RawProfile) -> Self {
        let o = overrides.clone();
        Self {
            name: o.name.or(self.name),
            description: o.description.or(self.description),
            link: o.link.or(self.link),
            envelope: o.envelope.or(self.envelope),
            max_frame_bytes: o.max_frame_bytes.or(self.max_frame_bytes),
            window: o.window.or(self.window),
            ok_byte: o.ok_byte.or(self.ok_byte),
            connect_timeout: o.connect_timeout.or(self.connect_timeout),
            handshake_timeout: o.handshake_timeout.or(self.handshake_timeout),
            ack_timeout: o.ack_timeout.or(self.ack_timeout),
            heartbeat_interval: o.heartbeat_interval.or(self.heartbeat_interval),
            idle_timeout: o.idle_timeout.or(self.idle_timeout),
            reconnect_backoff_min: o.reconnect_backoff_min.or(self.reconnect_backoff_min),
            reconnect_backoff_max: o.reconnect_backoff_max.or(self.reconnect_backoff_max),
            socket_buffer_bytes: o.socket_buffer_bytes.or(self.socket_buffer_bytes),
            rate_limit_mbit: o.rate_limit_mbit.or(self.rate_limit_mbit),
            mtu: o.mtu.or(self.mtu),
            symbol_bytes: o.symbol_bytes.or(self.symbol_bytes),
            repair_percent: o.repair_percent.or(self.repair_percent),
            passes: o.passes.or(self.passes),
            control_repeats: o.control_repeats.or(self.control_repeats),
            block_symbols: o.block_symbols.or(self.block_symbols),
            interleave_blocks: o.interleave_blocks.or(self.interleave_blocks),
            silence_alarm: o.silence_alarm.or(self.silence_alarm),
            object_deadline: o.object_deadline.or(self.object_deadline),
        }
    }
}

/// The OK and FAIL reply bytes of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckBytes {
    pub ok: u8,
    pub fail: u8,
}

/// A checked profile: every value is present and in range. For `link = "udp"` the gate fields
/// (frame, window, ack byte, TCP timeouts) hold neutral values that nothing reads, and `udp`
/// holds the link's values; for the other links `udp` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    pub link: LinkKind,
    pub envelope: Envelope,
    /// Largest frame, header included, before any envelope.
    pub max_frame_bytes: u32,
    /// Frames that may be unacknowledged at once; 1 is stop-and-wait.
    pub window: NonZeroU32,
    pub ack: AckBytes,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub ack_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub idle_timeout: Duration,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    pub socket_buffer_bytes: Option<u32>,
    pub rate_limit_mbit: Option<u64>,
    pub udp: Option<crate::udp::UdpProfile>,
}

/// Every problem found in a profile, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct ProfileError {
    pub problems: Vec<String>,
}

impl Profile {
    /// Largest file payload in one Data frame.
    pub fn chunk_size(&self) -> usize {
        self.max_frame_bytes as usize - HEADER_LEN
    }

    /// The values sent in the handshake and compared by the receiver.
    pub fn summary(&self) -> ProfileSummary {
        ProfileSummary {
            name: self.name.clone(),
            max_frame_bytes: self.max_frame_bytes,
            window: self.window.get(),
            ok_byte: self.ack.ok,
            envelope: self.envelope,
            heartbeat_ms: self.heartbeat_interval.as_millis() as u64,
            ack_timeout_ms: self.ack_timeout.as_millis() as u64,
        }
    }
}

pub(crate) fn required<T>(problems: &mut Vec<String>, field: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        problems.push(format!("`{field}` is missing"));
    }
    value
}

pub(crate) fn in_range(
    problems: &mut Vec<String>,
    field: &str,
    value: Option<u64>,
    lo: u64,
    hi: u64,
) -> Option<u64> {
    let v = required(problems, field, value)?;
    if v < lo || v > hi {
        problems.push(format!("`{field}` = {v} is outside {lo}..={hi}"));
        return None;
    }
    Some(v)
}

pub(crate) fn duration(
    problems: &mut Vec<String>,
    field: &str,
    value: Option<Duration>,
) -> Option<Duration> {
    let v = required(problems, field, value)?;
    if v.is_zero() {
        problems.push(format!("`{field}` must be longer than 0s"));
        return None;
    }
    Some(v)
}

/// Checks the optional `socket_buffer_bytes`.
pub(crate) fn socket_buffer(problems: &mut Vec<String>, value: Option<u64>) -> Option<u32> {
    match value {
        Some(v) if !(4096..=1 << 30).contains(&v) => {
            problems.push(format!(
                "`socket_buffer_bytes` = {v} is outside 4096..=1073741824"
            ));
            None
        }
        v => v.map(|v| v as u32),
    }
}

impl TryFrom<RawProfile> for Profile {
    type Error = ProfileError;

    fn try_from(raw: RawProfile) -> Result<Self, ProfileError> {
        if raw.link == Some(LinkKind::Udp) {
            return crate::udp::profile::check(raw);
        }
        let p = &mut Vec::new();
        crate::udp::profile::refuse_udp_fields(&raw, p);
        let name = required(p, "name", raw.name);
        let link = required(p, "link", raw.link);
        let envelope = required(p, "envelope", raw.envelope);
        let frame = in_range(
            p,
            "max_frame_bytes",
            raw.max_frame_bytes,
            MIN_FRAME_BYTES,
            MAX_FRAME_BYTES,
        );
        let window = in_range(p, "window", raw.window, 1, MAX_WINDOW);
        let ok = match required(p, "ok_byte", raw.ok_byte) {
            Some(0x00) => Some(AckBytes {
                ok: 0x00,
                fail: 0xFF,
            }),
            Some(0xFF) => Some(AckBytes {
                ok: 0xFF,
                fail: 0x00,
            }),
            Some(v) => {
                p.push(format!("`ok_byte` = {v:#x} must be 0x00 or 0xFF: a gate passes only an all-zero or all-one byte"));
                None
            }
            None => None,
        };
        let connect = duration(p, "connect_timeout", raw.connect_timeout);
        let handshake = duration(p, "handshake_timeout", raw.handshake_timeout);
        let ack = duration(p, "ack_timeout", raw.ack_timeout);
        let heartbeat = duration(p, "heartbeat_interval", raw.heartbeat_interval);
        let idle = duration(p, "idle_timeout", raw.idle_timeout);
        let bmin = duration(p, "reconnect_backoff_min", raw.reconnect_backoff_min);
        let bmax = duration(p, "reconnect_backoff_max", raw.reconnect_backoff_max);
        if let (Some(h), Some(a), Some(i)) = (heartbeat, ack, idle) {
            if i <= h + a {
                p.push(format!(
                    "`idle_timeout` ({}) must be longer than `heartbeat_interval` + `ack_timeout` ({}), or the receiver cuts healthy idle connections",
                    humantime::format_duration(i), humantime::format_duration(h + a)
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (bmin, bmax) {
            if lo > hi {
                p.push("`reconnect_backoff_min` is longer than `reconnect_backoff_max`".to_owned());
            }
        }
        let socket_buffer_bytes = socket_buffer(p, raw.socket_buffer_bytes);
        if raw.rate_limit_mbit == Some(0) {
            p.push("`rate_limit_mbit` = 0 would never send; leave it out for no limit".to_owned());
        }
        if !p.is_empty() {
            return Err(ProfileError {
                problems: std::mem::take(p),
            });
        }
        // Every Option below was checked above: a None pushed a problem and returned early.
        let (Some(name), Some(link), Some(envelope), Some(frame), Some(window), Some(ack_bytes)) =
            (name, link, envelope, frame, window, ok)
        else {
            return Err(ProfileError {
                problems: vec!["internal: unchecked field".into()],
            });
        };
        let (
            Some(connect),
            Some(handshake),
            Some(ack),
            Some(heartbeat),
            Some(idle),
            Some(bmin),
            Some(bmax),
        ) = (connect, handshake, ack, heartbeat, idle, bmin, bmax)
        else {
            return Err(ProfileError {
                problems: vec!["internal: unchecked duration".into()],
            });
        };
        Ok(Profile {
            name,
            description: raw.description,
            link,
            envelope,
            max_frame_bytes: frame as u32,
            window: NonZeroU32::new(window as u32).unwrap_or(NonZeroU32::MIN),
            ack: ack_bytes,
            connect_timeout: connect,
            handshake_timeout: handshake,
            ack_timeout: ack,
            heartbeat_interval: heartbeat,
            idle_timeout: idle,
            reconnect_backoff_min: bmin,
            reconnect_backoff_max: bmax,
            socket_buffer_bytes,
            rate_limit_mbit: raw.rate_limit_mbit,
            udp: None,
        })
    }
}

/// Fuzz body: parses arbitrary text as a profile.
pub fn fuzz_profile(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(raw) = RawProfile::from_toml(text) {
            let _ = Profile::try_from(raw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "t"
        link = "tcp"
        envelope = "raw"
        max_frame_bytes = 1048576
        window = 1
        ok_byte = 0x00
        connect_timeout = "5s"
        handshake_timeout = "10s"
        ack_timeout = "10s"
        heartbeat_interval = "30s"
        idle_timeout = "60s"
        reconnect_backoff_min = "1s"
        reconnect_backoff_max = "60s"
    "#;

    #[test]
    fn a_complete_profile_parses() {
        let p = Profile::try_from(RawProfile::from_toml(GOOD).expect("toml")).expect("valid");
        assert_eq!(p.ack, AckBytes { ok: 0, fail: 0xFF });
        assert_eq!(p.chunk_size(), (1 << 20) - HEADER_LEN);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let raw = RawProfile::from_toml(GOOD)
            .expect("toml")
            .merged(&RawProfile {
                window: Some(0),
                ok_byte: Some(1),
                idle_timeout: Some(Duration::from_secs(5)),
                ..RawProfile::default()
            });
        let err = Profile::try_from(raw).expect_err("three problems");
        assert_eq!(err.problems.len(), 3, "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_all_in_one_error() {
        let e = RawProfile::from_toml("windw = 3\nwindow = 2\nmtuu = 1500\n")
            .expect_err("unknown keys")
            .to_string();
        assert!(e.contains("`windw`") && e.contains("`mtuu`"), "{e}");
        assert!(!e.contains("`window`"), "{e}");
    }

    #[test]
    fn overrides_replace_single_fields() {
        let raw = RawProfile::from_toml(GOOD).expect("toml");
        let merged = raw.merged(&RawProfile {
            window: Some(8),
            ..RawProfile::default()
        });
        assert_eq!(merged.window, Some(8));
        assert_eq!(merged.max_frame_bytes, Some(1048576));
        fuzz_profile(GOOD.as_bytes());
    }
}
