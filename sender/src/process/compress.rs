//! The `compress` processor's config: which codec and level a pipe asks for.
//!
//! ```toml
//! { type = "compress", codec = "zstd", level = 3 }
//! ```
//!
//! Only the checked config lives here. The wire part (negotiation in the handshake, frames
//! compressed before they are encrypted, the whole-file digest over the ORIGINAL bytes) belongs
//! to the protocol crate and PROTOCOL.md. The policy hands [`Compress`] to the link's session
//! setup; the receiver needs no config of its own (it learns the codec in the handshake).
//!
//! Levels 1-19 only: zstd's "ultra" levels 20-22 need a decoder window of up to 128 MiB per
//! transfer on the receiver, and negative (fast) levels gain little over level 1 at the rates of
//! a gate. Level 3 is zstd's own default.

use serde::Deserialize;

/// Default for `codec`: the only one.
pub const DEFAULT_CODEC: &str = "zstd";
/// Default for `level`: zstd's own default.
pub const DEFAULT_LEVEL: u8 = 3;
/// The accepted levels.
pub const LEVELS: std::ops::RangeInclusive<i64> = 1..=19;

/// `{ type = "compress", ... }` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompress {
    /// `"zstd"` (default; the only codec).
    pub codec: Option<String>,
    /// 1-19 (default 3).
    pub level: Option<i64>,
}

/// The codecs a pipe can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
}

/// A checked `compress` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compress {
    pub codec: Codec,
    /// Within [`LEVELS`].
    pub level: u8,
}

impl Compress {
    /// Checks `raw`; every problem is reported, each naming its key.
    pub fn check(raw: &RawCompress) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let codec = match raw.codec.as_deref().unwrap_or(DEFAULT_CODEC) {
            "zstd" => Some(Codec::Zstd),
            other => {
                problems.push(format!(
                    "codec {other:?} is not known: the only codec is \"zstd\""
                ));
                None
            }
        };
        let level = raw.level.unwrap_or(i64::from(DEFAULT_LEVEL));
        let level = match u8::try_from(level) {
            Ok(l) if LEVELS.contains(&level) => Some(l),
            _ => {
                problems.push(format!(
                    "level {level} is out of range: zstd levels 1-19 (1 fastest, 19 smallest; 3 is the default)"
                ));
                None
            }
        };
        match (codec, level) {
            (Some(codec), Some(level)) if problems.is_empty() => Ok(Self { codec, level }),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_zstd_level_3() {
        let c = Compress::check(&RawCompress::default()).expect("valid");
        assert_eq!(
            c,
            Compress {
                codec: Codec::Zstd,
                level: 3
            }
        );
    }

    #[test]
    fn levels_1_to_19_pass_and_others_are_refused() {
        for level in [1, 19] {
            let raw = RawCompress {
                codec: Some("zstd".into()),
                level: Some(level),
            };
            assert_eq!(Compress::check(&raw).expect("valid").level as i64, level);
        }
        for level in [0, 20, 22, -5, 300] {
            let raw = RawCompress {
                codec: None,
                level: Some(level),
            };
            let p = Compress::check(&raw).expect_err("invalid");
            assert_eq!(
                p,
                [format!(
                    "level {level} is out of range: zstd levels 1-19 (1 fastest, 19 smallest; 3 is the default)"
                )]
            );
        }
    }

    #[test]
    fn an_unknown_codec_and_a_bad_level_are_both_reported() {
        let raw = RawCompress {
            codec: Some("gzip".into()),
            level: Some(25),
        };
        let p = Compress::check(&raw).expect_err("invalid");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("codec \"gzip\" is not known"));
        assert!(p[1].starts_with("level 25"));
    }
}
