//! Any bytes, any headers: decoding and validating a spec never panics, and whatever decodes
//! encodes back into a body that decodes to the same value.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run decode_validate` from `schema/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_schema::codec::decode_message;
use weft_schema::{PodId, PodSpec, ValidSpec};

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
    let Ok((encoding, spec)) = decode_message::<PodSpec>(content_type, schema, body) else {
        return;
    };
    let again: PodSpec = encoding
        .decode(&encoding.encode(&spec))
        .expect("what decoded once decodes again");
    assert_eq!(again, spec);
    let pod = PodId::parse("web-1").expect("a pod id");
    let first = ValidSpec::validate(&spec, &pod);
    // Validation is a pure function of the spec.
    assert_eq!(ValidSpec::validate(&again, &pod), first);
});
