//! The agent's state directory: the last applied spec, so a restart (or a start while NATS
//! is down) re-asserts it; a marker of the apply in progress, so a spec that crashes the
//! agent is not re-applied for ever; and whatever a subsystem keeps there (the WireGuard
//! key). Writes are atomic ([`atomic_file`]): a crash leaves the old file or the new one.
//!
//! The spec is kept as it arrived, headers and body byte for byte (`spec.msg`, see
//! [`SpecMessage::kept_head`]), so its signature is verified again at start. A `spec.json`
//! kept by an earlier version (the body alone, no headers) is still read.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::atomic_file;
use crate::intake::SpecMessage;

const SPEC_FILE: &str = "spec.msg";
/// The kept spec of versions before signed specs: a JSON body, no headers.
const OLD_SPEC_FILE: &str = "spec.json";
/// Present while a spec is being applied: `<generation> <attempts>`.
const APPLYING_FILE: &str = "applying";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create state directory {0}")]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("{0}: {1}")]
    Format(PathBuf, String),
    #[error("write {0}")]
    Write(PathBuf, #[source] io::Error),
}

/// An apply that was under way when the process ended: the agent crashed during it
/// `attempts` times in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applying {
    pub generation: u64,
    pub attempts: u32,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(path: &Path) -> Result<StateDir, Error> {
        fs::create_dir_all(path).map_err(|e| Error::CreateDir(path.to_owned(), e))?;
        // The directory holds a private key: keep it to its owner.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::CreateDir(path.to_owned(), e))?;
        Ok(StateDir {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The spec last applied, as it arrived, if one was kept.
    pub fn load_spec(&self) -> Result<Option<SpecMessage>, Error> {
        let file = self.path.join(SPEC_FILE);
        match fs::read(&file) {
            Ok(bytes) => SpecMessage::from_kept(Bytes::from(bytes))
                .map(Some)
                .map_err(|e| Error::Format(file, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let old = self.path.join(OLD_SPEC_FILE);
                match fs::read(&old) {
                    Ok(body) => Ok(Some(SpecMessage::with_body(Bytes::from(body)))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::Read(old, e)),
                }
            }
            Err(e) => Err(Error::Read(file, e)),
        }
    }

    /// Keeps `spec` as the last applied one.
    pub fn save_spec(&self, spec: &SpecMessage) -> Result<(), Error> {
        let file = self.path.join(SPEC_FILE);
        let head = spec.kept_head();
        atomic_file::replace_parts(&file, &[head.as_bytes(), &spec.body], 0o600)
            .map_err(|e| Error::Write(file, e))?;
        let _ = fs::remove_file(self.path.join(OLD_SPEC_FILE));
        Ok(())
    }

    /// The apply the last process did not finish, if any.
    pub fn applying(&self) -> Option<Applying> {
        let text = fs::read_to_string(self.path.join(APPLYING_FILE)).ok()?;
        let mut words = text.split_whitespace();
        Some(Applying {
            generation: words.next()?.parse().ok()?,
            attempts: words.next()?.parse().ok()?,
        })
    }

    /// Records that `generation` is about to be applied (one more attempt when the last
    /// unfinished apply was of the same generation), durably: a crash in the apply leaves it.
    pub fn begin_apply(&self, generation: u64) -> Result<Applying, Error> {
        let attempts = match self.applying() {
            Some(a) if a.generation == generation => a.attempts.saturating_add(1),
            _ => 1,
        };
        let file = self.path.join(APPLYING_FILE);
        write_private(&file, format!("{generation} {attempts}\n").as_bytes())
            .map_err(|e| Error::Write(file, e))?;
        Ok(Applying {
            generation,
            attempts,
        })
    }

    /// The apply finished (whatever the kernel said): the process did not crash in it.
    pub fn end_apply(&self) {
        let _ = fs::remove_file(self.path.join(APPLYING_FILE));
    }
}

/// Writes `contents` to a file readable by its owner only, in place.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        Dir(std::env::temp_dir().join(format!("weft-state-{tag}-{}", std::process::id())))
    }

    #[test]
    fn a_kept_spec_reads_back_with_its_headers() {
        let d = dir("kept");
        let state = StateDir::open(&d.0).unwrap();
        assert!(state.load_spec().unwrap().is_none());
        let msg = SpecMessage {
            content_type: Some("application/x-bincode".into()),
            schema: Some("1".into()),
            key: Some("key".into()),
            signature: Some("sig".into()),
            body: Bytes::from_static(b"\x05web-1\x03\x00\x00\x00\x00"),
        };
        state.save_spec(&msg).unwrap();
        assert_eq!(state.load_spec().unwrap(), Some(msg));
        let mode = fs::metadata(d.0.join(SPEC_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_old_kept_spec_is_read_as_a_body_without_headers() {
        let d = dir("old");
        let state = StateDir::open(&d.0).unwrap();
        fs::write(
            d.0.join(OLD_SPEC_FILE),
            br#"{"PodId":"web-1","Generation":2}"#,
        )
        .unwrap();
        let kept = state.load_spec().unwrap().unwrap();
        assert_eq!(kept.content_type, None);
        assert_eq!(&kept.body[..], br#"{"PodId":"web-1","Generation":2}"#);
        state.save_spec(&kept).unwrap();
        assert!(!d.0.join(OLD_SPEC_FILE).exists());
    }

    #[test]
    fn unfinished_applies_are_counted_per_generation() {
        let d = dir("applying");
        let state = StateDir::open(&d.0).unwrap();
        assert_eq!(state.applying(), None);
        assert_eq!(state.begin_apply(5).unwrap().attempts, 1);
        // A crash: nobody ends it. The next start tries again.
        assert_eq!(state.begin_apply(5).unwrap().attempts, 2);
        assert_eq!(
            state.applying(),
            Some(Applying {
                generation: 5,
                attempts: 2
            })
        );
        assert_eq!(state.begin_apply(6).unwrap().attempts, 1);
        state.end_apply();
        assert_eq!(state.applying(), None);
    }
}
