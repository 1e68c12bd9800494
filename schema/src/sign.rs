//! Signed specs (CONTRACT.md v1.1 "Trust: who may change a pod").
//!
//! With `--trust-keys` the agent applies a spec only when it carries a valid Ed25519 signature
//! by one of the trusted keys, in two NATS headers:
//!
//! - `Weft-Key`: the signer's public key, standard base64 (with padding) of its 32 bytes;
//! - `Weft-Signature`: the signature, standard base64 of its 64 bytes.
//!
//! # The signed bytes
//!
//! ```text
//! "weft-spec-v1\n" + Content-Type + "\n" + Weft-Schema + "\n" + body
//! ```
//!
//! The two header values are taken exactly as sent, parameters included
//! (`application/json; charset=utf-8`); an absent header counts as `application/json` and `1`.
//! NATS clients hand header values over without the whitespace around them, so a value is
//! signed without it too. The body is signed as it travels, byte for byte: no canonical JSON is
//! needed, and bincode bodies sign the same way. The signature is plain Ed25519 (RFC 8032, not
//! the pre-hashed Ed25519ph), so Go's standard library signs with
//!
//! ```go
//! msg := append([]byte("weft-spec-v1\n"+contentType+"\n"+schema+"\n"), body...)
//! sig := ed25519.Sign(priv, msg)
//! hdr.Set("Weft-Key", base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)))
//! hdr.Set("Weft-Signature", base64.StdEncoding.EncodeToString(sig))
//! ```
//!
//! # Test vector
//!
//! The private key is the 32-byte seed of RFC 8032's test 1 (Go: `ed25519.NewKeyFromSeed`):
//!
//! ```text
//! seed (hex)      9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60
//! Weft-Key        11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
//! Content-Type    application/json
//! Weft-Schema     1
//! body            {"PodId":"web-1","Generation":1}
//! signed bytes    weft-spec-v1\napplication/json\n1\n{"PodId":"web-1","Generation":1}
//! Weft-Signature  FIPPjIpM8qX6vg77kw58FpdIr3A3C+KEqZeGTC8BxoP8bgWrQ/9HOFSonMA/Mya+/6uV9gfowKkI8UpfxRY7Bw==
//! ```
//!
//! (`\n` is one newline byte; the signed bytes are 64 bytes long.) The crate's tests check this
//! vector, and check it against `openssl pkeyutl` too.
//!
//! # Checks, in order
//!
//! A missing header is `unsigned spec`; a header that is not base64 of the right length (or a
//! key that is not a curve point) is a malformed signature; a key not in the trusted set is
//! `key <k> is not trusted`; then `signature does not verify`. The trust check comes before
//! the signature is computed, so an untrusted sender cannot make the agent hash megabytes.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use zeroize::Zeroizing;

use crate::codec::CONTENT_TYPE_JSON;
use crate::key::KeyError;
use crate::text::quote;

/// NATS header carrying the signer's public key.
pub const HEADER_KEY: &str = "Weft-Key";
/// NATS header carrying the signature.
pub const HEADER_SIGNATURE: &str = "Weft-Signature";
/// What the signed bytes start with: the purpose and version of the signature.
pub const DOMAIN: &[u8] = b"weft-spec-v1\n";

/// The parts of a message a signature covers, absent headers filled in.
fn parts<'a>(content_type: Option<&'a str>, schema: Option<&'a str>) -> [&'a [u8]; 5] {
    [
        DOMAIN,
        content_type.unwrap_or(CONTENT_TYPE_JSON).as_bytes(),
        b"\n",
        schema.unwrap_or("1").as_bytes(),
        b"\n",
    ]
}

/// The signed bytes of a message, in one buffer (for tests and other implementations; the
/// agent verifies without copying the body).
pub fn signed_bytes(content_type: Option<&str>, schema: Option<&str>, body: &[u8]) -> Vec<u8> {
    let head = parts(content_type, schema);
    let mut out = Vec::with_capacity(head.iter().map(|p| p.len()).sum::<usize>() + body.len());
    for p in head {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(body);
    out
}

/// An Ed25519 public key that signs specs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

impl VerifyingKey {
    /// Standard base64 of the 32 key bytes.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?;
        let bytes = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(VerifyingKey)
            .map_err(|_| KeyError::NotAPoint)
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.as_bytes())
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.to_base64())
    }
}

/// An Ed25519 private key that signs specs, for control planes written in Rust. Wiped from
/// memory when dropped; its `Debug` is redacted.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// The key of a 32-byte seed (RFC 8032's private key; Go's `ed25519.NewKeyFromSeed`).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        SigningKey(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Standard base64 of the 32-byte seed (the format of a `--sign-key` file).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            BASE64
                .decode(text.trim())
                .map_err(|_| KeyError::NotBase64)?,
        );
        let seed = Zeroizing::new(
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| KeyError::WrongLength(bytes.len()))?,
        );
        Ok(Self::from_seed(&seed))
    }

    /// The seed as standard base64; handle with care.
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0.as_bytes()))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Signs a message; returns the two header values, `Weft-Key` and `Weft-Signature`.
    /// `content_type` and `schema` are the header values the message will carry (`None`: the
    /// header is left out).
    pub fn sign(&self, content_type: Option<&str>, schema: Option<&str>, body: &[u8]) -> Signed {
        let signature = self.0.sign(&signed_bytes(content_type, schema, body));
        Signed {
            key: self.verifying_key().to_base64(),
            signature: BASE64.encode(signature.to_bytes()),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(<redacted>, public {})", self.verifying_key())
    }
}

/// The values of the two signature headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// `Weft-Key`.
    pub key: String,
    /// `Weft-Signature`.
    pub signature: String,
}

/// The keys specs must be signed with (`--trust-keys`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustKeys(Vec<VerifyingKey>);

/// Why a trust-keys file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustKeysError {
    #[error("line {line}: {} is not a key: {source}", quote(text))]
    Key {
        line: usize,
        text: String,
        #[source]
        source: KeyError,
    },
    #[error("no key (one base64 Ed25519 public key per line, # comments)")]
    Empty,
}

impl TrustKeys {
    /// One base64 Ed25519 public key per line; blank lines and `#` comments (whole lines or
    /// after a key) are ignored. At least one key.
    pub fn parse(text: &str) -> Result<Self, TrustKeysError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let key = VerifyingKey::parse(line).map_err(|source| TrustKeysError::Key {
                line: i + 1,
                text: line.to_owned(),
                source,
            })?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(TrustKeysError::Empty);
        }
        Ok(TrustKeys(keys))
    }

    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        TrustKeys(keys)
    }

    pub fn keys(&self) -> &[VerifyingKey] {
        &self.0
    }

    /// Checks a message's signature headers against these keys; returns the key that signed.
    pub fn verify(
        &self,
        key: Option<&str>,
        signature: Option<&str>,
        content_type: Option<&str>,
        schema: Option<&str>,
        body: &[u8],
    ) -> Result<VerifyingKey, SignatureError> {
        let (Some(key_text), Some(sig_text)) = (key, signature) else {
            return Err(SignatureError::Unsigned(match (key, signature) {
                (None, None) => "no Weft-Key and Weft-Signature headers",
                (None, _) => "no Weft-Key header",
                _ => "no Weft-Signature header",
            }));
        };
        let key = VerifyingKey::parse(key_text)
            .map_err(|e| SignatureError::MalformedKey(quote(key_text), e))?;
        let sig = BASE64
            .decode(sig_text.trim())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .ok_or(SignatureError::MalformedSignature)?;
        if !self.0.contains(&key) {
            return Err(SignatureError::NotTrusted(key.to_base64()));
        }
        // Hashed piece by piece: a 16 MiB body is not copied to be verified.
        let mut verifier = key
            .0
            .verify_stream(&ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| SignatureError::DoesNotVerify)?;
        for part in parts(content_type, schema) {
            verifier.update(part);
        }
        verifier.update(body);
        verifier
            .finalize_and_verify()
            .map_err(|_| SignatureError::DoesNotVerify)?;
        Ok(key)
    }
}

/// Why a spec's signature was refused. The messages are the contract's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned spec ({0})")]
    Unsigned(&'static str),
    #[error("malformed signature: Weft-Key {0} is not a key")]
    MalformedKey(String, #[source] KeyError),
    #[error("malformed signature: Weft-Signature is not base64 of 64 bytes")]
    MalformedSignature,
    #[error("key {0} is not trusted")]
    NotTrusted(String),
    #[error("signature does not verify")]
    DoesNotVerify,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed of RFC 8032 section 7.1, test 1.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const BODY: &[u8] = br#"{"PodId":"web-1","Generation":1}"#;
    const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    const SIGNATURE: &str =
        "FIPPjIpM8qX6vg77kw58FpdIr3A3C+KEqZeGTC8BxoP8bgWrQ/9HOFSonMA/Mya+/6uV9gfowKkI8UpfxRY7Bw==";

    fn seed() -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&SEED[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn the_documented_vector_holds() {
        let key = SigningKey::from_seed(&seed());
        let bytes = signed_bytes(Some("application/json"), Some("1"), BODY);
        assert_eq!(bytes.len(), 64);
        assert_eq!(
            bytes,
            b"weft-spec-v1\napplication/json\n1\n{\"PodId\":\"web-1\",\"Generation\":1}"
        );
        let signed = key.sign(Some("application/json"), Some("1"), BODY);
        assert_eq!(signed.key, KEY);
        assert_eq!(signed.signature, SIGNATURE);
        // Absent headers sign as their defaults.
        assert_eq!(key.sign(None, None, BODY), signed);
        let trust = TrustKeys::parse(&format!("# the control plane\n{KEY}\n")).unwrap();
        assert_eq!(
            trust.verify(Some(KEY), Some(SIGNATURE), None, None, BODY),
            Ok(key.verifying_key())
        );
    }

    #[test]
    fn every_refusal_says_which() {
        let key = SigningKey::from_seed(&seed());
        let other = SigningKey::from_seed(&[7; 32]);
        let trust = TrustKeys::new(vec![key.verifying_key()]);
        let s = key.sign(None, None, BODY);
        let check = |k: Option<&str>, sig: Option<&str>, ct: Option<&str>, body: &[u8]| {
            trust
                .verify(k, sig, ct, None, body)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            check(None, None, None, BODY),
            "unsigned spec (no Weft-Key and Weft-Signature headers)"
        );
        assert_eq!(
            check(Some(&s.key), None, None, BODY),
            "unsigned spec (no Weft-Signature header)"
        );
        assert_eq!(
            check(Some("AAAA"), Some(&s.signature), None, BODY),
            "malformed signature: Weft-Key \"AAAA\" is not a key"
        );
        assert_eq!(
            check(Some(&s.key), Some("AAAA"), None, BODY),
            "malformed signature: Weft-Signature is not base64 of 64 bytes"
        );
        let o = other.sign(None, None, BODY);
        assert_eq!(
            check(Some(&o.key), Some(&o.signature), None, BODY),
            format!("key {} is not trusted", o.key)
        );
        // One byte of the body, or a header value, changed.
        let mut tampered = BODY.to_vec();
        tampered[30] = b'2';
        assert_eq!(
            check(Some(&s.key), Some(&s.signature), None, &tampered),
            "signature does not verify"
        );
        assert_eq!(
            check(
                Some(&s.key),
                Some(&s.signature),
                Some("application/json; charset=utf-8"),
                BODY
            ),
            "signature does not verify"
        );
        // A trusted key's signature over another message.
        let elsewhere = key.sign(None, None, b"{}");
        assert_eq!(
            check(Some(&s.key), Some(&elsewhere.signature), None, BODY),
            "signature does not verify"
        );
    }

    #[test]
    fn trust_files_name_the_bad_line() {
        let err = TrustKeys::parse("# keys\n\nnot-a-key\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: \"not-a-key\" is not a key: not base64"
        );
        assert_eq!(TrustKeys::parse("# none\n"), Err(TrustKeysError::Empty));
        let two = format!(
            "{KEY} # current\n{}\n",
            SigningKey::from_seed(&[1; 32]).verifying_key()
        );
        assert_eq!(TrustKeys::parse(&two).unwrap().keys().len(), 2);
    }

    #[test]
    fn signing_keys_round_trip_and_never_print() {
        let key = SigningKey::generate();
        let again = SigningKey::parse(&key.expose_base64()).unwrap();
        assert_eq!(again.verifying_key(), key.verifying_key());
        assert!(!format!("{key:?}").contains(key.expose_base64().as_str()));
    }
}
