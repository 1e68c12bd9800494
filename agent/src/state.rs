//! The agent's state directory: the last applied spec, so a restart (or a start while NATS
//! is down) re-asserts it, and whatever a subsystem keeps there (the WireGuard key).
//! Writes are atomic ([`atomic_file`]): a crash leaves the old file or the new one.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use weft_schema::{Encoding, PodSpec};

use crate::atomic_file;

const SPEC_FILE: &str = "spec.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create state directory {0}")]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("decode {0}")]
    Decode(PathBuf, #[source] weft_schema::DecodeError),
    #[error("write {0}")]
    Write(PathBuf, #[source] io::Error),
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

    /// The spec last applied, if one was kept.
    pub fn load_spec(&self) -> Result<Option<PodSpec>, Error> {
        let file = self.path.join(SPEC_FILE);
        match fs::read(&file) {
            Ok(bytes) => Encoding::Json
                .decode(&bytes)
                .map(Some)
                .map_err(|e| Error::Decode(file, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Read(file, e)),
        }
    }

    /// Keeps `spec` as the last applied one.
    pub fn save_spec(&self, spec: &PodSpec) -> Result<(), Error> {
        let body = serde_json::to_vec_pretty(spec).expect("PodSpec serializes");
        let file = self.path.join(SPEC_FILE);
        atomic_file::replace(&file, &body, 0o600).map_err(|e| Error::Write(file, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_spec_reads_back() {
        let dir = std::env::temp_dir().join(format!("weft-state-test-{}", std::process::id()));
        let state = StateDir::open(&dir).unwrap();
        assert!(state.load_spec().unwrap().is_none());
        let spec = PodSpec {
            pod_id: "web-1".into(),
            generation: 3,
            not_after_unix: None,
            network: None,
            firewall: Some(Default::default()),
            wireguard: None,
        };
        state.save_spec(&spec).unwrap();
        assert_eq!(state.load_spec().unwrap(), Some(spec));
        let mode = fs::metadata(dir.join(SPEC_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
