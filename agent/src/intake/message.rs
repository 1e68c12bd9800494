//! A spec as it arrived (its weft headers and its body, byte for byte) and the one pure
//! function that reads it: signature, decode, validation, in that order.
//!
//! The message is what the state directory keeps (so a kept spec is verified again at start,
//! CONTRACT.md v1.1), and what the decoding thread reads: nothing is copied out of the body.

use std::fmt;

use async_nats::HeaderMap;
use bytes::Bytes;
use weft_emitter::bus::header;
use weft_schema::codec::{decode_message, HEADER_CONTENT_TYPE, HEADER_SCHEMA};
use weft_schema::sign::{TrustKeys, HEADER_KEY, HEADER_SIGNATURE};
use weft_schema::text::{last_error, rfc3339};
use weft_schema::{Applicable, PodId, WireSpec};
use zeroize::Zeroize;

/// A spec message: the four weft headers, as sent, and the body.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SpecMessage {
    pub content_type: Option<String>,
    pub schema: Option<String>,
    pub key: Option<String>,
    pub signature: Option<String>,
    /// Holds private keys when the spec names them: wiped when the last holder drops it.
    pub body: Bytes,
}

impl fmt::Debug for SpecMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpecMessage")
            .field("content_type", &self.content_type)
            .field("schema", &self.schema)
            .field("signed", &self.signature.is_some())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl Drop for SpecMessage {
    fn drop(&mut self) {
        // Best effort: a body still shared with the client's read buffer cannot be written;
        // the buffer's next read overwrites it.
        if let Ok(mut owned) = std::mem::take(&mut self.body).try_into_mut() {
            owned.zeroize();
        }
    }
}

/// The headers of the file a kept spec is stored in, in this order.
const KEPT_HEADERS: [&str; 4] = [
    HEADER_CONTENT_TYPE,
    HEADER_SCHEMA,
    HEADER_KEY,
    HEADER_SIGNATURE,
];
/// The first line of a kept spec file.
const KEPT_MAGIC: &str = "WEFT-SPEC/1";

impl SpecMessage {
    /// A body without headers.
    pub fn with_body(body: Bytes) -> SpecMessage {
        SpecMessage {
            content_type: None,
            schema: None,
            key: None,
            signature: None,
            body,
        }
    }

    /// The message of a NATS message or KV entry.
    pub fn from_nats(headers: Option<&HeaderMap>, body: Bytes) -> SpecMessage {
        let get = |name| header(headers, name).map(str::to_owned);
        SpecMessage {
            content_type: get(HEADER_CONTENT_TYPE),
            schema: get(HEADER_SCHEMA),
            key: get(HEADER_KEY),
            signature: get(HEADER_SIGNATURE),
            body,
        }
    }

    fn values(&self) -> [&Option<String>; 4] {
        [&self.content_type, &self.schema, &self.key, &self.signature]
    }

    /// The head of the kept file: a magic line, the headers present (`Name: value`), a blank
    /// line; the body follows unchanged.
    pub fn kept_head(&self) -> String {
        let mut head = format!("{KEPT_MAGIC}\n");
        for (name, value) in KEPT_HEADERS.iter().zip(self.values()) {
            if let Some(v) = value {
                // NATS header values are single lines; anything else would break the file.
                let v: String = v.chars().filter(|c| *c != '\n' && *c != '\r').collect();
                head.push_str(&format!("{name}: {v}\n"));
            }
        }
        head.push('\n');
        head
    }

    /// Reads a kept file back.
    pub fn from_kept(bytes: Bytes) -> Result<SpecMessage, String> {
        let mut msg = SpecMessage::default();
        let mut at = 0;
        let mut first = true;
        loop {
            let end = bytes[at..]
                .iter()
                .position(|b| *b == b'\n')
                .ok_or("no blank line after the headers")?;
            let line = std::str::from_utf8(&bytes[at..at + end])
                .map_err(|_| "a header line is not UTF-8")?;
            at += end + 1;
            if first {
                if line != KEPT_MAGIC {
                    return Err(format!("does not start with {KEPT_MAGIC}"));
                }
                first = false;
                continue;
            }
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(": ")
                .ok_or("a header line without \": \"")?;
            let slot = match KEPT_HEADERS.iter().position(|h| *h == name) {
                Some(0) => &mut msg.content_type,
                Some(1) => &mut msg.schema,
                Some(2) => &mut msg.key,
                Some(3) => &mut msg.signature,
                _ => return Err(format!("unknown header {}", weft_schema::text::quote(name))),
            };
            *slot = Some(value.to_owned());
        }
        msg.body = bytes.slice(at..);
        Ok(msg)
    }
}

/// Why a spec was refused, as a log category (rejections are logged once a second each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Signature,
    Decode,
    Invalid,
    Expired,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Signature => "signature",
            Reason::Decode => "decode",
            Reason::Invalid => "invalid",
            Reason::Expired => "expired",
        }
    }
}

/// What reading one spec message gave: the valid spec `S`, or why not.
#[derive(Debug)]
pub enum Read<S> {
    Valid {
        spec: Box<S>,
        /// The key that signed it, when signatures are checked.
        signed_by: Option<String>,
    },
    /// Did not verify, decode or validate. `generation` is 0 when the body was not decoded.
    /// `error` is at most 1 KiB.
    Rejected {
        generation: u64,
        error: String,
        reason: Reason,
    },
}

/// Checks the signature (when `trust` is set) before anything reads the body, then decodes
/// and validates a spec of type `W` (a `PodSpec`, a `HostSpec`) for the agent `pod`. Pure:
/// no I/O; the body is parsed once.
pub fn read_spec<W: WireSpec>(
    pod: &PodId,
    trust: Option<&TrustKeys>,
    msg: &SpecMessage,
) -> Read<W::Valid> {
    let (ct, schema) = (msg.content_type.as_deref(), msg.schema.as_deref());
    let signed_by = match trust {
        None => None,
        Some(trust) => match trust.verify(
            msg.key.as_deref(),
            msg.signature.as_deref(),
            ct,
            schema,
            &msg.body,
        ) {
            Ok(key) => Some(key.to_base64()),
            Err(e) => {
                return Read::Rejected {
                    generation: 0,
                    error: last_error(&format!("spec rejected: {e}")),
                    reason: Reason::Signature,
                }
            }
        },
    };
    let wire: W = match decode_message(ct, schema, &msg.body) {
        Ok((_, wire)) => wire,
        Err(e) => {
            return Read::Rejected {
                generation: 0,
                error: last_error(&format!("spec rejected: {}", e.to_line())),
                reason: Reason::Decode,
            }
        }
    };
    let generation = wire.generation();
    // Consumed: the wire strings of each rule are freed as it is validated.
    match wire.validate_owned(pod) {
        Ok(spec) => Read::Valid {
            spec: Box::new(spec),
            signed_by,
        },
        Err(errs) => Read::Rejected {
            generation,
            error: last_error(&format!("generation {generation} rejected: {errs}")),
            reason: Reason::Invalid,
        },
    }
}

/// `Some(error)` when `spec` arrives after its `NotAfterUnix`.
pub fn expired<S: Applicable>(spec: &S, now_unix: u64) -> Option<String> {
    let not_after = spec.not_after_unix()?;
    (now_unix > not_after).then(|| {
        format!(
            "generation {} rejected: expired at {} (NotAfterUnix {not_after})",
            spec.generation(),
            rfc3339(not_after)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::sign::SigningKey;
    use weft_schema::validate::ValidSpec;
    use weft_schema::PodSpec;

    fn pod() -> PodId {
        PodId::parse("web-1").unwrap()
    }

    fn message(body: &[u8]) -> SpecMessage {
        SpecMessage::with_body(Bytes::copy_from_slice(body))
    }

    fn rejected(read: Read<ValidSpec>) -> (u64, String, Reason) {
        match read {
            Read::Rejected {
                generation,
                error,
                reason,
            } => (generation, error, reason),
            Read::Valid { .. } => panic!("valid"),
        }
    }

    #[test]
    fn bad_bodies_are_rejected_with_generation_0() {
        let (generation, error, reason) =
            rejected(read_spec::<PodSpec>(&pod(), None, &message(b"{")));
        assert_eq!((generation, reason), (0, Reason::Decode));
        assert!(error.starts_with("spec rejected: invalid JSON"), "{error}");
        let mut yaml = message(b"{}");
        yaml.content_type = Some("text/yaml".into());
        let (_, error, _) = rejected(read_spec::<PodSpec>(&pod(), None, &yaml));
        assert!(error.contains("\"text/yaml\""), "{error}");
        let mut v2 = message(b"{}");
        v2.schema = Some("2".into());
        let (_, error, _) = rejected(read_spec::<PodSpec>(&pod(), None, &v2));
        assert!(error.contains("Weft-Schema"), "{error}");
    }

    #[test]
    fn invalid_specs_are_rejected_with_their_generation() {
        let read = read_spec::<PodSpec>(
            &pod(),
            None,
            &message(br#"{"PodId":"web-2","Generation":9}"#),
        );
        assert_eq!(
            rejected(read),
            (
                9,
                "generation 9 rejected: PodId: web-2 is not this agent's pod (web-1)".into(),
                Reason::Invalid
            )
        );
    }

    #[test]
    fn signatures_are_checked_before_the_body_is_read() {
        let key = SigningKey::from_seed(&[3; 32]);
        let trust = TrustKeys::new(vec![key.verifying_key()]);
        // Not even JSON: the signature is what is refused.
        let (generation, error, reason) =
            rejected(read_spec::<PodSpec>(&pod(), Some(&trust), &message(b"{")));
        assert_eq!((generation, reason), (0, Reason::Signature));
        assert_eq!(
            error,
            "spec rejected: unsigned spec (no Weft-Key and Weft-Signature headers)"
        );
        let body = br#"{"PodId":"web-1","Generation":3}"#;
        let signed = key.sign(None, None, body);
        let mut msg = message(body);
        msg.key = Some(signed.key.clone());
        msg.signature = Some(signed.signature);
        match read_spec::<PodSpec>(&pod(), Some(&trust), &msg) {
            Read::Valid { spec, signed_by } => {
                assert_eq!(spec.generation, 3);
                assert_eq!(signed_by, Some(signed.key));
            }
            other => panic!("{other:?}"),
        }
        // Without trust keys nothing is checked, and nobody is named.
        match read_spec::<PodSpec>(&pod(), None, &msg) {
            Read::Valid { signed_by, .. } => assert_eq!(signed_by, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_host_spec_is_read_by_the_same_rules() {
        let host = PodId::parse("host-a").unwrap();
        let key = SigningKey::from_seed(&[5; 32]);
        let trust = TrustKeys::new(vec![key.verifying_key()]);
        let body = br#"{"HostId":"host-a","Generation":2,"NotAfterUnix":1763779200,
            "Sandboxes":[{"Slot":7,"Guest":"tap"}]}"#;
        let signed = key.sign(None, None, body);
        let mut msg = message(body);
        msg.key = Some(signed.key.clone());
        msg.signature = Some(signed.signature);
        match read_spec::<weft_schema::HostSpec>(&host, Some(&trust), &msg) {
            Read::Valid { spec, signed_by } => {
                assert_eq!(spec.sandboxes.len(), 1);
                assert_eq!(signed_by, Some(signed.key));
                assert!(expired(&*spec, 1_763_779_201).is_some());
            }
            other => panic!("{other:?}"),
        }
        // Unsigned, tampered, another host's, a pod's spec: refused as a pod's would be.
        let (_, error, reason) =
            match read_spec::<weft_schema::HostSpec>(&host, Some(&trust), &message(body)) {
                Read::Rejected {
                    generation,
                    error,
                    reason,
                } => (generation, error, reason),
                other => panic!("{other:?}"),
            };
        assert_eq!(reason, Reason::Signature);
        assert!(error.contains("unsigned spec"), "{error}");
        let mut tampered = msg.clone();
        tampered.body = Bytes::from(String::from_utf8_lossy(body).replace('7', "8"));
        assert!(matches!(
            read_spec::<weft_schema::HostSpec>(&host, Some(&trust), &tampered),
            Read::Rejected {
                reason: Reason::Signature,
                ..
            }
        ));
        match read_spec::<weft_schema::HostSpec>(&PodId::parse("host-b").unwrap(), None, &msg) {
            Read::Rejected { error, .. } => assert_eq!(
                error,
                "generation 2 rejected: HostId: host-a is not this agent's host (host-b)"
            ),
            other => panic!("{other:?}"),
        }
        match read_spec::<weft_schema::HostSpec>(
            &host,
            None,
            &message(br#"{"PodId":"host-a","Generation":1}"#),
        ) {
            Read::Rejected { reason, .. } => assert_eq!(reason, Reason::Decode),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_is_checked_against_the_time_of_arrival() {
        let read = read_spec::<PodSpec>(
            &pod(),
            None,
            &message(br#"{"PodId":"web-1","Generation":4,"NotAfterUnix":1763779200}"#),
        );
        let Read::Valid { spec, .. } = read else {
            panic!()
        };
        assert_eq!(expired(&*spec, 1_763_779_200), None);
        assert_eq!(
            expired(&*spec, 1_763_779_201).unwrap(),
            "generation 4 rejected: expired at 2025-11-22T02:40:00Z (NotAfterUnix 1763779200)"
        );
    }

    #[test]
    fn kept_files_hold_headers_and_body_exactly() {
        let msg = SpecMessage {
            content_type: Some("application/json; charset=utf-8".into()),
            schema: None,
            key: Some("k".into()),
            signature: Some("s".into()),
            body: Bytes::from_static(b"{\n\"PodId\": 1}\n\n"),
        };
        let mut file = msg.kept_head().into_bytes();
        file.extend_from_slice(&msg.body);
        assert!(file.starts_with(b"WEFT-SPEC/1\nContent-Type: application/json; charset=utf-8\n"));
        assert_eq!(SpecMessage::from_kept(Bytes::from(file)).unwrap(), msg);
        assert!(SpecMessage::from_kept(Bytes::from_static(b"{\"PodId\":1}")).is_err());
        assert!(
            SpecMessage::from_kept(Bytes::from_static(b"WEFT-SPEC/1\nX-Other: 1\n\n{}")).is_err()
        );
    }
}
