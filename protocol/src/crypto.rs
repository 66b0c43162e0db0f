//! Frame authentication and encryption with a pre-shared key.
//!
//! A connection key is derived with HKDF-SHA256 from the pipe's 32-byte pre-shared key and
//! the connection's identity (node, pipe, sender session, connection number, key id). The
//! receiver accepts a (session, connection) pair only if it is newer than every pair it
//! accepted before for that pipe, so a key is never used for two connections and a recorded
//! connection cannot be replayed. Each frame is sealed with ChaCha20-Poly1305 under that key,
//! the nonce being the frame's sequence number. The AEAD's associated data is the first 36
//! header bytes (magic to length), so a frame cannot be moved, renumbered or re-typed.
//!
//! `encrypt`: the payload is ciphertext, followed by the 16-byte tag. `auth-only`: the payload
//! stays readable (for sites whose inspection must read it), followed by a tag over the header
//! and the payload. The Hello is always `auth-only`: the receiver needs its fields to choose
//! the key.

use ring::{aead, hkdf};
use serde::{Deserialize, Serialize};

/// Bytes of the authentication tag appended to every payload.
pub const TAG_LEN: usize = 16;
/// Bytes of a pre-shared key.
pub const KEY_LEN: usize = 32;
/// Header bytes covered as associated data (magic through length).
pub const AAD_LEN: usize = 36;
/// Header flag: a tag follows the payload.
pub const FLAG_AUTH: u16 = 0x0001;
/// Header flag: the payload is ciphertext.
pub const FLAG_ENCRYPTED: u16 = 0x0002;

/// What a key protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protection {
    /// Integrity and secrecy (the default with a key).
    Encrypt,
    /// Integrity only: the payload crosses readable.
    AuthOnly,
}

impl Protection {
    /// The config spelling: `encrypt` or `auth-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Encrypt => "encrypt",
            Protection::AuthOnly => "auth-only",
        }
    }
}

/// Why a key file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "a key must be 32 raw bytes or 64 hex digits (e.g. from `gapsync-sender keygen` or `openssl rand -hex 32`), found {0} bytes"
    )]
    BadLength(usize),
    #[error("the key is not valid hex")]
    BadHex,
}

/// A pipe's pre-shared key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PreSharedKey([u8; KEY_LEN]);

impl std::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

impl PreSharedKey {
    /// Parses a key file's content: 32 raw bytes, or 64 hex digits with optional whitespace.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() == KEY_LEN {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(bytes);
            return Ok(Self(k));
        }
        let hex: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if hex.len() != 2 * KEY_LEN {
            return Err(KeyError::BadLength(bytes.len()));
        }
        let mut k = [0u8; KEY_LEN];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| KeyError::BadHex)?;
            k[i] = u8::from_str_radix(s, 16).map_err(|_| KeyError::BadHex)?;
        }
        Ok(Self(k))
    }

    /// The key as 64 lowercase hex digits, for writing a key file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A key from 32 bytes of randomness supplied by the caller.
    pub fn from_random(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

/// Who a connection key belongs to; every field goes into the derivation.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionId<'a> {
    pub node: &'a str,
    pub pipe: &'a str,
    pub session: u64,
    pub connection: u64,
    pub key_id: u32,
}

/// The key of one connection.
pub struct FrameKey {
    key: aead::LessSafeKey,
    protection: Protection,
}

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameKey")
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// Why a frame failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication tag mismatch: wrong key, or the frame was forged or altered")]
pub struct BadTag;

impl FrameKey {
    /// Derives the connection key.
    pub fn derive(psk: &PreSharedKey, id: ConnectionId<'_>, protection: Protection) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"gapsync frame key v1");
        let prk = salt.extract(&psk.0);
        let session = id.session.to_be_bytes();
        let connection = id.connection.to_be_bytes();
        let key_id = id.key_id.to_be_bytes();
        let info: [&[u8]; 8] = [
            id.node.as_bytes(),
            &[0],
            id.pipe.as_bytes(),
            &[0],
            &session,
            &connection,
            &key_id,
            &[0],
        ];
        let mut okm = [0u8; KEY_LEN];
        // Expanding 32 bytes with SHA-256 cannot fail (the limit is 255 x 32).
        if let Ok(o) = prk.expand(&info, Len32) {
            let _ = o.fill(&mut okm);
        }
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &okm).map(aead::LessSafeKey::new);
        Self {
            // A 32-byte key is always valid for ChaCha20-Poly1305.
            key: key.unwrap_or_else(|_| unreachable!("32-byte ChaCha20-Poly1305 key")),
            protection,
        }
    }

    /// The protection this key applies to frames other than the Hello.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    fn nonce(sequence: u64) -> aead::Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&sequence.to_be_bytes());
        aead::Nonce::assume_unique_for_key(n)
    }

    /// The flags a sealed frame of `is_hello` carries.
    pub fn flags(&self, is_hello: bool) -> u16 {
        if is_hello || self.protection == Protection::AuthOnly {
            FLAG_AUTH
        } else {
            FLAG_AUTH | FLAG_ENCRYPTED
        }
    }

    /// Seals `payload` in place (encrypting it if `flags` says so) and appends the tag.
    /// `aad` is the frame header's first 36 bytes, already carrying the final length.
    pub fn seal(&self, sequence: u64, flags: u16, aad: &[u8], payload: &mut Vec<u8>) {
        if let Some(tag) = self.seal_in_place(sequence, flags, aad, payload) {
            payload.extend_from_slice(&tag);
        }
    }

    /// Seals `body` in place (encrypting it if `flags` says so) and returns the tag; `None`
    /// only for inputs over ~256 GiB, far beyond any frame.
    pub fn seal_in_place(
        &self,
        sequence: u64,
        flags: u16,
        aad: &[u8],
        body: &mut [u8],
    ) -> Option<[u8; TAG_LEN]> {
        let nonce = Self::nonce(sequence);
        let tag = if flags & FLAG_ENCRYPTED != 0 {
            self.key
                .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), body)
        } else {
            let mut covered = Vec::with_capacity(AAD_LEN + body.len());
            covered.extend_from_slice(aad);
            covered.extend_from_slice(body);
            self.key
                .seal_in_place_separate_tag(nonce, aead::Aad::from(&covered), &mut [])
        };
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.ok()?.as_ref());
        Some(out)
    }

    /// Verifies (and decrypts) a sealed payload in place; returns the plaintext length.
    pub fn open(
        &self,
        sequence: u64,
        flags: u16,
        aad: &[u8],
        payload: &mut [u8],
    ) -> Result<usize, BadTag> {
        let plain_len = payload.len().checked_sub(TAG_LEN).ok_or(BadTag)?;
        let nonce = Self::nonce(sequence);
        let (body, tag) = payload.split_at_mut(plain_len);
        let tag = aead::Tag::try_from(&tag[..]).map_err(|_| BadTag)?;
        if flags & FLAG_ENCRYPTED != 0 {
            self.key
                .open_in_place_separate_tag(nonce, aead::Aad::from(aad), tag, body, 0..)
                .map_err(|_| BadTag)?;
        } else {
            let mut covered = Vec::with_capacity(AAD_LEN + body.len());
            covered.extend_from_slice(aad);
            covered.extend_from_slice(body);
            self.key
                .open_in_place_separate_tag(nonce, aead::Aad::from(&covered), tag, &mut [], 0..)
                .map_err(|_| BadTag)?;
        }
        Ok(plain_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(connection: u64) -> ConnectionId<'static> {
        ConnectionId {
            node: "plant-a",
            pipe: "scada",
            session: 7,
            connection,
            key_id: 1,
        }
    }

    #[test]
    fn keys_parse_from_raw_and_hex_and_never_print() {
        let raw = [7u8; 32];
        let k = PreSharedKey::parse(&raw).expect("raw");
        let hex = format!("{}\n", k.to_hex());
        assert_eq!(PreSharedKey::parse(hex.as_bytes()).expect("hex"), k);
        assert_eq!(PreSharedKey::parse(b"abc"), Err(KeyError::BadLength(3)));
        assert_eq!(PreSharedKey::parse(&[b'z'; 64]), Err(KeyError::BadHex));
        assert!(!format!("{k:?}").contains("07"));
    }

    #[test]
    fn sealed_frames_open_only_with_the_same_key_connection_and_header() {
        let psk = PreSharedKey::parse(&[1u8; 32]).expect("key");
        let aad = [3u8; AAD_LEN];
        for protection in [Protection::Encrypt, Protection::AuthOnly] {
            let k = FrameKey::derive(&psk, id(1), protection);
            let flags = k.flags(false);
            let mut p = b"secret payload".to_vec();
            k.seal(5, flags, &aad, &mut p);
            assert_eq!(p.len(), 14 + TAG_LEN);
            assert_eq!(
                &p[..14] == b"secret payload",
                protection == Protection::AuthOnly
            );
            let mut ok = p.clone();
            assert_eq!(k.open(5, flags, &aad, &mut ok), Ok(14));
            assert_eq!(&ok[..14], b"secret payload");
            // Another sequence, another connection, another header, a flipped bit: refused.
            assert_eq!(k.open(6, flags, &aad, &mut p.clone()), Err(BadTag));
            let other = FrameKey::derive(&psk, id(2), protection);
            assert_eq!(other.open(5, flags, &aad, &mut p.clone()), Err(BadTag));
            let mut aad2 = aad;
            aad2[8] ^= 1;
            assert_eq!(k.open(5, flags, &aad2, &mut p.clone()), Err(BadTag));
            let mut bad = p.clone();
            bad[0] ^= 1;
            assert_eq!(k.open(5, flags, &aad, &mut bad), Err(BadTag));
        }
    }
}
