//! What weftctl's test files share: the binaries, a temporary directory, processes ended on
//! drop, and a command's output read as text.
// Each test file is its own crate and uses a part of this.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};

use serde_json::Value;

pub fn weftctl() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weftctl"))
}

/// `weft-agent`, built beside `weftctl` (`cargo test --workspace` builds it).
pub fn agent_bin() -> PathBuf {
    let agent = weftctl().with_file_name("weft-agent");
    assert!(
        agent.exists(),
        "no {}: build it first (cargo build -p weft-agent)",
        agent.display()
    );
    agent
}

/// A temporary directory (mode 0700), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("weftctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(dir)
    }

    /// Writes `body` as JSON to `name` in the directory.
    pub fn file(&self, name: &str, body: &Value) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(body).unwrap()).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process we started, killed by its pid on drop.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}
