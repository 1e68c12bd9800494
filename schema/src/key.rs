//! WireGuard keys. Private and preshared keys never reach a log line, a status, a reply or a
//! `Debug` print: their types redact themselves, and wipe their bytes when dropped.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Base64 of exactly 32 bytes, as a regular expression: 43 characters and one `=`, the last
/// character carrying 4 bits and two zero bits (the decoder refuses non-zero trailing bits).
pub const KEY_PATTERN: &str = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";

/// A secret string as it travels on the wire (a base64 private or preshared key).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
// The control plane writes it; nothing the agent sends ever carries one.
#[schemars(extend("pattern" = KEY_PATTERN, "writeOnly" = true))]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret text; handle with care.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a key string is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base64")]
    NotBase64,
    #[error("{0} bytes, a key is 32")]
    WrongLength(usize),
    #[error("not an Ed25519 public key")]
    NotAPoint,
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    // The decoded bytes may be a private key: wiped once copied out.
    let bytes = zeroize::Zeroizing::new(BASE64.decode(text).map_err(|_| KeyError::NotBase64)?);
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(PublicKey)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard private or preshared key. Its `Debug` is redacted, it has no `Display`, and
/// its bytes are wiped when it is dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(SecretKey)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(bytes)
    }

    /// The key bytes; handle with care.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as base64; handle with care.
    pub fn expose_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_debug_print() {
        let s = Secret::new("c2VjcmV0");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let k = SecretKey::from_bytes([7; 32]);
        assert!(!format!("{k:?}").contains("Bw"));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert_eq!(PublicKey::parse("!!"), Err(KeyError::NotBase64));
        assert_eq!(PublicKey::parse("AAAA"), Err(KeyError::WrongLength(3)));
        let k = PublicKey([1; 32]);
        assert_eq!(PublicKey::parse(&k.to_base64()), Ok(k));
    }
}
