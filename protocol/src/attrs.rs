//! Object attributes a version-2 Open may carry after its origin chain (PROTOCOL.md 4.1):
//! the file's permission bits (`preserve_mode`) and, for a symlink sent as a link
//! (`symlinks = "preserve"`), its target text. In bincode 2.0.1 `standard()` form:
//!
//! ```text
//! mode: Option<u32> (0, or 1 then a varint <= 0o7777), link: Option<String> (0, or 1 then
//! a varint length 1-4095 and the bytes: UTF-8, no NUL)
//! ```
//!
//! A link object has size 0 and no Data; the receiver decides whether to create it.

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;

/// Longest link target accepted (Linux's PATH_MAX less the NUL).
pub const MAX_LINK_TARGET: usize = 4095;
/// Highest permission bits value (set-uid, set-gid, sticky and rwx for three classes).
pub const MAX_MODE: u32 = 0o7777;

/// What an object carries besides its path, size and time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    /// The source file's permission bits (`st_mode & 0o7777`); `None`: not sent.
    pub mode: Option<u32>,
    /// The object is a symlink with this target text; `None`: a regular file.
    pub link: Option<String>,
}

impl ObjectAttrs {
    /// True when there is nothing to send (the Open then needs no extension).
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.link.is_none()
    }

    /// Decodes the wire form, which must fill `bytes` exactly; a mode over [`MAX_MODE`], an
    /// empty or over-long target, or one holding a NUL is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let attrs: Self = crate::messages::decode_body("object attributes", bytes)?;
        let bad = |reason: String| DecodeError::BadBody {
            what: "object attributes",
            reason,
        };
        if attrs.mode.is_some_and(|m| m > MAX_MODE) {
            return Err(bad(format!(
                "mode {:o} is over 7777",
                attrs.mode.unwrap_or(0)
            )));
        }
        if let Some(t) = &attrs.link {
            if t.is_empty() || t.len() > MAX_LINK_TARGET || t.contains('\0') {
                return Err(bad(format!(
                    "a link target must be 1-{MAX_LINK_TARGET} bytes without NUL, this one is {} bytes",
                    t.len()
                )));
            }
        }
        Ok(attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_modes_and_targets_are_refused() {
        let enc = |a: &ObjectAttrs| crate::messages::encode_body(a);
        let ok = ObjectAttrs {
            mode: Some(0o4755),
            link: Some("a/b".into()),
        };
        assert_eq!(ObjectAttrs::decode(&enc(&ok)), Ok(ok));
        for bad in [
            ObjectAttrs {
                mode: Some(0o10000),
                link: None,
            },
            ObjectAttrs {
                mode: None,
                link: Some(String::new()),
            },
            ObjectAttrs {
                mode: None,
                link: Some("a\0b".into()),
            },
            ObjectAttrs {
                mode: None,
                link: Some("x".repeat(MAX_LINK_TARGET + 1)),
            },
        ] {
            assert!(ObjectAttrs::decode(&enc(&bad)).is_err(), "{bad:?}");
        }
    }
}
