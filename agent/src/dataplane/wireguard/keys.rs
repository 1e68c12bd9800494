//! The pod's own WireGuard key when the spec leaves `PrivateKey` null: generated once, kept in
//! `<state_dir>/wireguard.key` (mode 0600, written atomically) and reused across restarts, so
//! peers configured with our public key keep working after the agent restarts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand_core::OsRng;
use weft_schema::key::{PublicKey, SecretKey};
use zeroize::Zeroizing;

use crate::atomic_file;

/// The file name of the generated key inside the state directory.
pub const KEY_FILE: &str = "wireguard.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("create state directory {0}")]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("read key file {0}")]
    Read(PathBuf, #[source] io::Error),
    // The cause is deliberately not the file's content: it is a secret.
    #[error("key file {0} does not hold a base64 key of 32 bytes")]
    Malformed(PathBuf),
    #[error("write key file {0}")]
    Write(PathBuf, #[source] io::Error),
}

/// The public key of a private key.
pub fn public_key(secret: &SecretKey) -> PublicKey {
    let secret = x25519_dalek::StaticSecret::from(*secret.expose());
    PublicKey(*x25519_dalek::PublicKey::from(&secret).as_bytes())
}

/// A fresh private key from the OS random source.
pub fn generate() -> SecretKey {
    let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    SecretKey::from_bytes(secret.to_bytes())
}

/// The key kept in `state_dir`, `None` when there is none yet. Reads only.
pub fn load(state_dir: &Path) -> Result<Option<SecretKey>, KeyFileError> {
    let path = state_dir.join(KEY_FILE);
    // The file's text is the key: wiped once parsed.
    match fs::read_to_string(&path).map(Zeroizing::new) {
        Ok(text) => SecretKey::parse(text.trim())
            .map(Some)
            .map_err(|_| KeyFileError::Malformed(path.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyFileError::Read(path, e)),
    }
}

/// The key kept in `state_dir`, generated and stored there first if there is none.
pub fn load_or_generate(state_dir: &Path) -> Result<SecretKey, KeyFileError> {
    if let Some(key) = load(state_dir)? {
        return Ok(key);
    }
    fs::create_dir_all(state_dir).map_err(|e| KeyFileError::CreateDir(state_dir.to_owned(), e))?;
    let key = generate();
    let path = state_dir.join(KEY_FILE);
    write_atomically(&path, &key).map_err(|e| KeyFileError::Write(path.clone(), e))?;
    Ok(key)
}

/// Keeps the key as base64 in a file of mode 0600 (never readable by others, not even for
/// an instant), replaced atomically, so a crash leaves either no key or the whole key.
fn write_atomically(path: &Path, key: &SecretKey) -> io::Result<()> {
    // Room for the text up front: a reallocation would leave a copy of the key behind.
    let mut text = Zeroizing::new(String::with_capacity(48));
    BASE64.encode_string(key.expose(), &mut text);
    text.push('\n');
    atomic_file::replace(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "weft-wg-keys-{tag}-{}-{}",
            std::process::id(),
            rand_core::RngCore::next_u64(&mut OsRng)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_once_then_reused_with_mode_0600() {
        let dir = temp_dir("reuse");
        let first = load_or_generate(&dir).unwrap();
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_generate(&dir).unwrap();
        assert_eq!(public_key(&first), public_key(&second));
        assert_eq!(first, second);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loading_never_generates() {
        let dir = temp_dir("load");
        assert_eq!(load(&dir).unwrap(), None);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
        let key = load_or_generate(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(key));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_state_dir_is_created() {
        let dir = temp_dir("create").join("nested/state");
        load_or_generate(&dir).unwrap();
        assert!(dir.join(KEY_FILE).exists());
        fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn a_malformed_key_file_is_an_error_that_does_not_print_it() {
        let dir = temp_dir("bad");
        fs::write(dir.join(KEY_FILE), "not-a-key-but-a-secret").unwrap();
        let err = load_or_generate(&dir).unwrap_err();
        assert!(matches!(err, KeyFileError::Malformed(_)));
        assert!(!format!("{err} {err:?}").contains("not-a-key"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_key_matches_the_rfc7748_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let secret =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        let public = public_key(&SecretKey::from_bytes(secret.try_into().unwrap()));
        assert_eq!(
            hex::encode(public.0),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
