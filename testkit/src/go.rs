//! `weftcp`, the Go control plane in `testkit/go/weftcp`: built with Debian's Go in GOPATH mode
//! over `/usr/share/gocode` (no module downloads), run as a test's client. It is written from
//! the contract alone, so it proves weft speaks to a control plane that shares no code with it.
//! It takes the contract's NATS flags (`-nats-url`, `-nats-nkey`, `-nats-tls-ca`,
//! `-nats-tls-cert`/`-nats-tls-key`), so it connects to the stack as the shipped
//! configuration says a control plane does: TLS and its own nkey.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::stack::Stack;

const INSTALL: &str =
    "`bash .ci/deps` installs Go and nats.go (golang-go, golang-github-nats-io-go-nats-dev)";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A freshly built `weftcp` binary; its directory (binary and Go build cache) is removed on
/// drop.
#[derive(Debug)]
pub struct GoControlPlane {
    dir: PathBuf,
    bin: PathBuf,
}

impl GoControlPlane {
    /// Builds `weftcp`. Fails, saying how to install them, when Go or nats.go is missing: a
    /// test must not pass by skipping.
    pub fn build() -> Result<GoControlPlane> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/weftcp");
        // Spawning in a missing directory fails with NotFound too: say which is missing.
        if !src.is_dir() {
            bail!(
                "the Go sources are not at {} (the testkit was built from another checkout)",
                src.display()
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "weft-go-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let go = GoControlPlane {
            bin: dir.join("weftcp"),
            dir,
        };
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&go.bin)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", go.dir.join("cache"))
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("`go` is not installed: {INSTALL}")
            }
            Err(e) => return Err(e).context("spawn go build"),
        };
        if !out.status.success() {
            bail!(
                "go build of {} failed ({INSTALL}): {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(go)
    }

    /// A directory for the test's files (specs, keys, bodies), removed with the binary.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `weftcp` in the calling thread's namespace (for what needs no network).
    pub fn command(&self) -> Command {
        Command::new(&self.bin)
    }

    /// The flags `weftcp` reaches the stack's server with as identity `who` (`control` for
    /// the control plane): `-nats-url` and the identity's credential and TLS files, under the
    /// contract's flag names, which `weftcp` shares (Go's `flag` takes `--name` as `-name`).
    /// Only the URL on a plain stack.
    pub fn nats_flags(stack: &Stack, who: &str) -> Vec<String> {
        let mut flags = vec!["-nats-url".to_owned(), stack.nats_url()];
        if let Some(identity) = stack.identity(who) {
            flags.extend(identity.flags());
        }
        flags
    }

    /// `weftcp args..` inside `ns`; the output whatever the exit status (a test may expect a
    /// failure).
    pub fn run<S: AsRef<str>>(&self, ns: &Netns, args: &[S]) -> Result<Output> {
        ns.command(self.bin.to_str().context("binary path is not UTF-8")?)
            .args(args.iter().map(AsRef::as_ref))
            .output()
            .context("spawn weftcp")
    }

    /// `weftcp args..` inside `ns`, which must exit 0; returns its stdout.
    pub fn run_ok<S: AsRef<str>>(&self, ns: &Netns, args: &[S]) -> Result<String> {
        let out = self.run(ns, args)?;
        if !out.status.success() {
            let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
            bail!(
                "weftcp {} exited {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

impl Drop for GoControlPlane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
