//! Any bytes, any headers: checking a spec's signature, decoding and validating it (as a
//! `PodSpec` and as a `HostSpec`) never panics; a signature over the message verifies and any change of a byte does not; whatever
//! decodes encodes back into a body that decodes to the same value.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run decode_validate` from `schema/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_schema::codec::decode_message;
use weft_schema::sign::{SigningKey, TrustKeys};
use weft_schema::{PodId, WireSpec};

/// The first byte picks the headers, so the fuzzer explores both encodings and the header
/// checks; the rest is the body.
const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("application/json; charset=utf-8"),
    Some("application/x-bincode"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector & 3)];
    let schema = if selector & 4 == 0 { None } else { Some("1") };
    check_signatures(content_type, schema, body);
    round_trip::<weft_schema::PodSpec>(content_type, schema, body, "web-1");
    round_trip::<weft_schema::HostSpec>(content_type, schema, body, "host-a");
});

/// Decodes, encodes back, decodes again, and validates both: the same values.
fn round_trip<S>(content_type: Option<&str>, schema: Option<&str>, body: &[u8], id: &str)
where
    S: WireSpec + serde::Serialize + Clone + PartialEq + std::fmt::Debug,
    S::Valid: PartialEq + std::fmt::Debug,
{
    let Ok((encoding, spec)) = decode_message::<S>(content_type, schema, body) else {
        return;
    };
    let again: S = encoding
        .decode(&encoding.encode(&spec))
        .expect("what decoded once decodes again");
    assert_eq!(again, spec);
    let id = PodId::parse(id).expect("an id");
    // Validation is a pure function of the spec.
    let first = spec.validate_owned(&id).map_err(|e| e.to_string());
    assert_eq!(again.validate_owned(&id).map_err(|e| e.to_string()), first);
}

/// The signature check as the agent runs it, before decoding.
fn check_signatures(content_type: Option<&str>, schema: Option<&str>, body: &[u8]) {
    let key = SigningKey::from_seed(&[7; 32]);
    let trust = TrustKeys::new(vec![key.verifying_key()]);
    let signed = key.sign(content_type, schema, body);
    let verify = |k: &str, s: &str, body: &[u8]| {
        trust.verify(Some(k), Some(s), content_type, schema, body)
    };
    assert_eq!(
        verify(&signed.key, &signed.signature, body),
        Ok(key.verifying_key())
    );
    if let Some((first, rest)) = body.split_first() {
        let mut tampered = vec![first ^ 1];
        tampered.extend_from_slice(rest);
        assert!(verify(&signed.key, &signed.signature, &tampered).is_err());
    }
    // The fuzzed bytes as header values: refused, never a panic.
    let text = String::from_utf8_lossy(&body[..body.len().min(128)]);
    assert!(verify(&text, &text, body).is_err());
    assert!(verify(&signed.key, &text, body).is_err());
}
