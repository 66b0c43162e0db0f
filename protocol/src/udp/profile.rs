//! The `udp` link's profile values: datagram and symbol sizes, repair, carousel, pacing and
//! the receiver's deadlines. Checked like every profile: every problem reported at once.

use std::time::Duration;

use crate::envelope::Envelope;
use crate::profile::{
    AckBytes, LinkKind, MIN_FRAME_BYTES, Profile, ProfileError, RawProfile, duration, in_range,
    required, socket_buffer,
};

use super::datagram::{HEADER_LEN, IP_UDP_OVERHEAD};

/// Largest symbols per block (bounds the receiver's memory per block).
pub const MAX_BLOCK_SYMBOLS: u64 = 8192;

/// A checked `udp` link profile.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpProfile {
    /// Link MTU in bytes: datagram plus IPv4 and UDP headers must fit it.
    pub mtu: u16,
    /// Bytes of symbol per datagram.
    pub symbol_bytes: u16,
    /// Repair symbols per pass, in percent of each block's source symbols.
    pub repair_percent: u32,
    /// Times each object is sent (carousel).
    pub passes: u8,
    /// Copies of each control message (announce, end).
    pub control_repeats: u8,
    /// Source symbols per full block.
    pub block_symbols: u32,
    /// Blocks whose symbols are interleaved with each other.
    pub interleave_blocks: u32,
    /// Pacing rate, Mbit/s of datagrams (UDP payload).
    pub rate_mbit: u64,
    /// The receiver alarms after hearing nothing for this long.
    pub silence_alarm: Duration,
    /// Added to a pass's expected duration to make its deadline at the receiver.
    pub object_deadline: Duration,
}

impl UdpProfile {
    /// Bytes per second the sender paces to.
    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_mbit * 1_000_000 / 8
    }

    /// Blocks an object may be decoding at once at the receiver: two interleave groups, so
    /// the group in flight and the stragglers of the previous one.
    pub fn max_decoding(&self) -> usize {
        2 * self.interleave_blocks as usize
    }
}

/// The gate links' fields, each with whether `raw` sets it.
fn gate_fields(raw: &RawProfile) -> [(&'static str, bool); 9] {
    [
        ("max_frame_bytes", raw.max_frame_bytes.is_some()),
        ("window", raw.window.is_some()),
        ("ok_byte", raw.ok_byte.is_some()),
        ("connect_timeout", raw.connect_timeout.is_some()),
        ("handshake_timeout", raw.handshake_timeout.is_some()),
        ("ack_timeout", raw.ack_timeout.is_some()),
        ("idle_timeout", raw.idle_timeout.is_some()),
        ("reconnect_backoff_min", raw.reconnect_backoff_min.is_some()),
        ("reconnect_backoff_max", raw.reconnect_backoff_max.is_some()),
    ]
}

/// The udp link's fields, each with whether `raw` sets it.
fn udp_fields(raw: &RawProfile) -> [(&'static str, bool); 9] {
    [
        ("mtu", raw.mtu.is_some()),
        ("symbol_bytes", raw.symbol_bytes.is_some()),
        ("repair_percent", raw.repair_percent.is_some()),
        ("passes", raw.passes.is_some()),
        ("control_repeats", raw.control_repeats.is_some()),
        ("block_symbols", raw.block_symbols.is_some()),
        ("interleave_blocks", raw.interleave_blocks.is_some()),
        ("silence_alarm", raw.silence_alarm.is_some()),
        ("object_deadline", raw.object_deadline.is_some()),
    ]
}

/// A tcp or tls profile must not carry the udp link's fields.
pub(crate) fn refuse_udp_fields(raw: &RawProfile, p: &mut Vec<String>) {
    for (name, set) in udp_fields(raw) {
        if set {
            p.push(format!("`{name}` is only for `link = \"udp\"`; remove it"));
        }
    }
}

/// Checks a `link = "udp"` profile.
pub(crate) fn check(raw: RawProfile) -> Result<Profile, ProfileError> {
    let p = &mut Vec::new();
    for (name, set) in gate_fields(&raw) {
        if set {
            p.push(format!(
                "`{name}` has no meaning on a udp link (nothing comes back through a diode); remove it"
            ));
        }
    }
    if raw.envelope.is_some_and(|e| e != Envelope::Raw) {
        p.push("`envelope` must be \"raw\" on a udp link".into());
    }
    let name = required(p, "name", raw.name.clone());
    let mtu = in_range(p, "mtu", raw.mtu, 576, 65535);
    let symbol = in_range(p, "symbol_bytes", raw.symbol_bytes, 64, 65000);
    if let (Some(m), Some(s)) = (mtu, symbol) {
        let need = s + (HEADER_LEN + crate::crypto::TAG_LEN + IP_UDP_OVERHEAD) as u64;
        if need > m {
            p.push(format!("`symbol_bytes` = {s} does not fit the `mtu` of {m}: a datagram needs {need} bytes (symbol + {HEADER_LEN}-byte header + 16-byte tag + 28 bytes of IP and UDP); use at most {}", m.saturating_sub(need - s)));
        }
    }
    let repair = in_range(p, "repair_percent", raw.repair_percent, 1, 400);
    let passes = in_range(p, "passes", raw.passes, 1, 16);
    let repeats = in_range(p, "control_repeats", raw.control_repeats, 1, 32);
    let block = in_range(p, "block_symbols", raw.block_symbols, 1, MAX_BLOCK_SYMBOLS);
    let interleave = in_range(p, "interleave_blocks", raw.interleave_blocks, 1, 64);
    let rate = in_range(p, "rate_limit_mbit", raw.rate_limit_mbit, 1, 400_000);
    let heartbeat = duration(p, "heartbeat_interval", raw.heartbeat_interval);
    let silence = duration(p, "silence_alarm", raw.silence_alarm);
    let deadline = duration(p, "object_deadline", raw.object_deadline);
    if let (Some(h), Some(s)) = (heartbeat, silence) {
        if s <= h {
            p.push(format!(
                "`silence_alarm` ({}) must be longer than `heartbeat_interval` ({}), or a healthy idle link alarms",
                humantime::format_duration(s),
                humantime::format_duration(h)
            ));
        }
    }
    let socket_buffer_bytes = socket_buffer(p, raw.socket_buffer_bytes);
    let (
        Some(name),
        Some(mtu),
        Some(symbol),
        Some(repair),
        Some(passes),
        Some(repeats),
        Some(block),
        Some(interleave),
        Some(rate),
        Some(heartbeat),
        Some(silence),
        Some(deadline),
    ) = (
        name, mtu, symbol, repair, passes, repeats, block, interleave, rate, heartbeat, silence,
        deadline,
    )
    else {
        return Err(ProfileError {
            problems: std::mem::take(p),
        });
    };
    if !p.is_empty() {
        return Err(ProfileError {
            problems: std::mem::take(p),
        });
    }
    Ok(Profile {
        name,
        description: raw.description,
        link: LinkKind::Udp,
        envelope: Envelope::Raw,
        max_frame_bytes: MIN_FRAME_BYTES as u32,
        window: std::num::NonZeroU32::MIN,
        ack: AckBytes {
            ok: 0x00,
            fail: 0xFF,
        },
        connect_timeout: heartbeat,
        handshake_timeout: heartbeat,
        ack_timeout: heartbeat,
        heartbeat_interval: heartbeat,
        idle_timeout: silence,
        reconnect_backoff_min: heartbeat,
        reconnect_backoff_max: heartbeat,
        socket_buffer_bytes,
        rate_limit_mbit: Some(rate),
        udp: Some(UdpProfile {
            mtu: mtu as u16,
            symbol_bytes: symbol as u16,
            repair_percent: repair as u32,
            passes: passes as u8,
            control_repeats: repeats as u8,
            block_symbols: block as u32,
            interleave_blocks: interleave as u32,
            rate_mbit: rate,
            silence_alarm: silence,
            object_deadline: deadline,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "u"
        link = "udp"
        mtu = 1500
        symbol_bytes = 1400
        repair_percent = 10
        passes = 1
        control_repeats = 3
        block_symbols = 1024
        interleave_blocks = 8
        rate_limit_mbit = 750
        heartbeat_interval = "5s"
        silence_alarm = "12s"
        object_deadline = "10s"
    "#;

    #[test]
    fn a_udp_profile_parses_and_refuses_gate_fields() {
        let raw = RawProfile::from_toml(GOOD).expect("toml");
        let p = Profile::try_from(raw.clone()).expect("valid");
        let u = p.udp.expect("udp values");
        assert_eq!(u.rate_bytes_per_s(), 93_750_000);
        let bad = raw.merged(&RawProfile {
            ok_byte: Some(0),
            symbol_bytes: Some(1430),
            ..RawProfile::default()
        });
        let err = Profile::try_from(bad).expect_err("two problems");
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[1].contains("use at most 1404"), "{err}");
    }

    #[test]
    fn a_tcp_profile_refuses_udp_fields() {
        let raw = RawProfile {
            name: Some("t".into()),
            link: Some(LinkKind::Tcp),
            passes: Some(2),
            ..RawProfile::default()
        };
        let err = Profile::try_from(raw).expect_err("problems");
        assert!(
            err.problems
                .iter()
                .any(|e| e.contains("`passes` is only for"))
        );
    }
}
