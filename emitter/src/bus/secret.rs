//! Secrets read from files: a password, a token, an nkey seed, a credentials file. Each file
//! must be readable by its owner only, is at most [`MAX_BYTES`], and its contents are wiped
//! from memory when dropped. Errors never quote a secret.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use zeroize::Zeroizing;

/// The largest secret file read (a credentials file is about 1 KiB).
pub const MAX_BYTES: u64 = 64 * 1024;

/// Why a secret file cannot be used. The text names the problem, never the contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Read(String),
    #[error("mode {0:04o} lets group or others at it (chmod 600)")]
    TooOpen(u32),
    #[error("larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("not UTF-8 text")]
    NotText,
    #[error("empty")]
    Empty,
    #[error("{0}")]
    Malformed(&'static str),
}

/// Reads a secret file whole, refusing one that group or others may read or change.
pub fn read(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    let file = File::open(path).map_err(|e| SecretError::Read(e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| SecretError::Read(e.to_string()))?;
    if !meta.is_file() {
        return Err(SecretError::Read("not a regular file".into()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen(mode));
    }
    if meta.len() > MAX_BYTES {
        return Err(SecretError::TooLarge);
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SecretError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(SecretError::TooLarge);
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::NotText)?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// A password or token: the file's text without one trailing newline.
pub fn password(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    let mut text = read(path)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(SecretError::Empty);
    }
    if text.contains(['\n', '\r']) {
        return Err(SecretError::Malformed("more than one line"));
    }
    Ok(text)
}

/// A user nkey seed (`SU...`), checked to be one.
pub fn nkey_seed(text: &str) -> Result<nkeys::KeyPair, SecretError> {
    let seed = text.trim();
    if !seed.starts_with("SU") {
        return Err(SecretError::Malformed("not a user nkey seed (SU...)"));
    }
    nkeys::KeyPair::from_seed(seed)
        .map_err(|_| SecretError::Malformed("not a user nkey seed (SU...)"))
}

/// The user JWT and the key pair of a NATS credentials file:
///
/// ```text
/// -----BEGIN NATS USER JWT-----
/// eyJ0eXAiOiJKV1Qi...
/// ------END NATS USER JWT------
/// ...
/// -----BEGIN USER NKEY SEED-----
/// SUAM...
/// ------END USER NKEY SEED------
/// ```
pub fn creds(text: &str) -> Result<(Zeroizing<String>, nkeys::KeyPair), SecretError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("---") && line.contains("BEGIN") {
            if let Some(value) = lines.find(|l| !l.is_empty()) {
                blocks.push(value);
            }
        }
    }
    let [jwt, seed, ..] = blocks[..] else {
        return Err(SecretError::Malformed(
            "not a NATS credentials file (a user JWT block and a seed block)",
        ));
    };
    if jwt.split('.').count() != 3 {
        return Err(SecretError::Malformed(
            "the first block is not a JWT (header.claims.signature)",
        ));
    }
    Ok((Zeroizing::new(jwt.to_owned()), nkey_seed(seed)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("weft-secret-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn file(&self, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn one_trailing_newline_is_not_part_of_a_password() {
        let d = Dir::new("pw");
        assert_eq!(
            password(&d.file("a", "s3cret\n", 0o600)).unwrap().as_str(),
            "s3cret"
        );
        assert_eq!(
            password(&d.file("b", "s3cret\n\n", 0o600)).unwrap_err(),
            SecretError::Malformed("more than one line")
        );
        assert_eq!(
            password(&d.file("c", " spaced ", 0o400)).unwrap().as_str(),
            " spaced "
        );
        assert_eq!(
            password(&d.file("d", "\n", 0o600)).unwrap_err(),
            SecretError::Empty
        );
    }

    #[test]
    fn files_others_can_read_are_refused() {
        let d = Dir::new("mode");
        let e = password(&d.file("a", "x", 0o644)).unwrap_err();
        assert_eq!(e, SecretError::TooOpen(0o644));
        assert_eq!(
            e.to_string(),
            "mode 0644 lets group or others at it (chmod 600)"
        );
        assert_eq!(
            password(&d.file("b", "x", 0o620)).unwrap_err(),
            SecretError::TooOpen(0o620)
        );
        assert!(matches!(
            password(&d.0.join("missing")).unwrap_err(),
            SecretError::Read(_)
        ));
    }

    #[test]
    fn seeds_and_creds_are_checked() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        assert_eq!(
            nkey_seed(&format!("{seed}\n")).unwrap().public_key(),
            user.public_key()
        );
        assert!(nkey_seed("SUAAAA").is_err());
        assert!(nkey_seed(&nkeys::KeyPair::new_account().seed().unwrap()).is_err());
        let creds_text = format!(
            "-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        let (jwt, kp) = creds(&creds_text).unwrap();
        assert_eq!(jwt.as_str(), "aaa.bbb.ccc");
        assert_eq!(kp.public_key(), user.public_key());
        assert!(creds("just text").is_err());
        let no_jwt = creds_text.replace("aaa.bbb.ccc", "nojwt");
        assert!(creds(&no_jwt).is_err());
    }
}
