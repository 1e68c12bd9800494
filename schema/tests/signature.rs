//! The signing rule of `weft_schema::sign`, checked against an independent implementation:
//! OpenSSL's Ed25519 signs the documented test vector's bytes and must produce the signature
//! the rustdoc (and a Go control plane following it) states.

use std::process::Command;

use weft_schema::sign::{signed_bytes, SigningKey, TrustKeys};

const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const BODY: &[u8] = br#"{"PodId":"web-1","Generation":1}"#;
const SIGNATURE: &str =
    "FIPPjIpM8qX6vg77kw58FpdIr3A3C+KEqZeGTC8BxoP8bgWrQ/9HOFSonMA/Mya+/6uV9gfowKkI8UpfxRY7Bw==";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn openssl_signs_the_vector_as_documented() {
    let dir = std::env::temp_dir().join(format!("weft-sigvec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): a fixed 16-byte prefix.
    let mut der = hex("302e020100300506032b657004220420");
    der.extend(hex(SEED_HEX));
    let (key, msg) = (dir.join("key.der"), dir.join("msg"));
    std::fs::write(&key, &der).unwrap();
    std::fs::write(&msg, signed_bytes(None, None, BODY)).unwrap();
    let out = Command::new("openssl")
        .args(["pkeyutl", "-sign", "-keyform", "DER", "-rawin", "-inkey"])
        .arg(&key)
        .arg("-in")
        .arg(&msg)
        .output()
        .expect("openssl (installed by .ci/deps)");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use base64::Engine as _;
    let theirs = base64::engine::general_purpose::STANDARD.encode(&out.stdout);
    assert_eq!(theirs, SIGNATURE);

    let seed: [u8; 32] = hex(SEED_HEX).try_into().unwrap();
    let ours = SigningKey::from_seed(&seed).sign(Some("application/json"), Some("1"), BODY);
    assert_eq!(ours.signature, SIGNATURE);
    let trust = TrustKeys::parse(&ours.key).unwrap();
    trust
        .verify(Some(&ours.key), Some(&theirs), None, None, BODY)
        .expect("OpenSSL's signature verifies");
}
