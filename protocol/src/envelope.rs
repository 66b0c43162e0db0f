//! The E-language text envelope for reverse isolation gates.
//!
//! A reverse gate only passes State Grid "E language" text (Q/GDW 215-2008). Every frame is
//! sent as:
//!
//! ```text
//! <!System=GAPSYNC Version=1.0 Code=UTF-8 Data=1.0!>\n
//! <block:=Free>\n
//! BASE64(header || payload)\n
//! </block:=Free>\n
//! ```
//! Base64 is the standard alphabet with padding (RFC 4648 section 4), one line, no wrapping.
//! The one-byte reply is not wrapped.

use base64::Engine as _;
use std::io::Write as _;

/// How frames are put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Envelope {
    /// Frames are written as they are.
    Raw,
    /// Every frame is wrapped in the E-language text envelope.
    ELanguage,
}

/// Everything before the base64 text of one frame.
pub const E_PREFIX: &[u8] = b"<!System=GAPSYNC Version=1.0 Code=UTF-8 Data=1.0!>\n<block:=Free>\n";
/// Everything after the base64 text of one frame.
pub const E_SUFFIX: &[u8] = b"\n</block:=Free>\n";

/// Number of base64 characters for `raw_len` bytes (with padding).
pub fn base64_len(raw_len: usize) -> usize {
    raw_len.div_ceil(3).saturating_mul(4)
}

/// Bytes on the wire for a frame of `frame_len` bytes (header + payload) in `envelope`.
pub fn wire_len(envelope: Envelope, frame_len: usize) -> usize {
    match envelope {
        Envelope::Raw => frame_len,
        Envelope::ELanguage => E_PREFIX.len() + base64_len(frame_len) + E_SUFFIX.len(),
    }
}

pub(crate) fn wrap(head: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(wire_len(Envelope::ELanguage, head.len() + payload.len()));
    out.extend_from_slice(E_PREFIX);
    {
        let mut enc = base64::write::EncoderWriter::new(
            &mut *out,
            &base64::engine::general_purpose::STANDARD,
        );
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(head);
        let _ = enc.write_all(payload);
        let _ = enc.finish();
    }
    out.extend_from_slice(E_SUFFIX);
}

/// Decodes the base64 text of one envelope block into `out`.
pub(crate) fn unwrap_text(text: &[u8], out: &mut Vec<u8>) -> Result<(), base64::DecodeError> {
    out.clear();
    base64::engine::general_purpose::STANDARD.decode_vec(text, out)
}
