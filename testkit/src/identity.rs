//! Who a NATS client is: its credentials and TLS files, as the contract's flags (for the
//! agent and tools) and as a connection through the same code the agent uses
//! (`weft_emitter::bus`). Secrets are written to files mode 0600, as the agent requires.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use weft_emitter::bus::{Connection, NatsArgs};

use crate::pki::CertFiles;

/// How a client authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// A user nkey seed file (`--nats-nkey`).
    Nkey(PathBuf),
    /// `--nats-user` and `--nats-password-file`.
    Password {
        user: String,
        file: PathBuf,
    },
    /// `--nats-token-file`.
    Token(PathBuf),
    /// `--nats-creds`.
    Creds(PathBuf),
}

/// A client's credentials and TLS files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub auth: Auth,
    /// `--nats-tls-ca`.
    pub ca: Option<PathBuf>,
    /// `--nats-tls-cert` and `--nats-tls-key`.
    pub client_cert: Option<CertFiles>,
}

/// Writes a secret file readable by its owner only.
pub fn write_secret(path: &Path, text: &str) -> Result<PathBuf> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path.to_owned())
}

impl Identity {
    /// The contract's flags for this identity (without `--nats-url`).
    pub fn flags(&self) -> Vec<String> {
        let mut f: Vec<String> = Vec::new();
        let path = |p: &PathBuf| p.display().to_string();
        match &self.auth {
            Auth::None => {}
            Auth::Nkey(p) => f.extend(["--nats-nkey".into(), path(p)]),
            Auth::Password { user, file } => f.extend([
                "--nats-user".into(),
                user.clone(),
                "--nats-password-file".into(),
                path(file),
            ]),
            Auth::Token(p) => f.extend(["--nats-token-file".into(), path(p)]),
            Auth::Creds(p) => f.extend(["--nats-creds".into(), path(p)]),
        }
        if let Some(ca) = &self.ca {
            f.extend(["--nats-tls-ca".into(), path(ca)]);
        }
        if let Some(c) = &self.client_cert {
            f.extend([
                "--nats-tls-cert".into(),
                path(&c.cert),
                "--nats-tls-key".into(),
                path(&c.key),
            ]);
        }
        f
    }

    /// The flags parsed as a tool parses them.
    pub fn nats_args(&self, url: &str) -> Result<NatsArgs> {
        #[derive(Parser)]
        struct Tool {
            #[command(flatten)]
            nats: NatsArgs,
        }
        let mut argv = vec!["tool".to_owned(), "--nats-url".into(), url.to_owned()];
        argv.extend(self.flags());
        Ok(Tool::try_parse_from(argv)?.nats)
    }

    /// Connects as this identity (30 s request timeout, the given inbox prefix, if any),
    /// through `weft_emitter::bus`; fails when the first connection does.
    pub async fn connect(&self, url: &str, inbox: Option<String>) -> Result<Connection> {
        let config = self
            .nats_args(url)?
            .load()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = self.name.clone();
        config
            .connect(move |o| {
                let o = o
                    .name(name)
                    .request_timeout(Some(Duration::from_secs(30)))
                    .connection_timeout(Duration::from_secs(5));
                match inbox {
                    Some(prefix) => o.custom_inbox_prefix(prefix),
                    None => o,
                }
            })
            .await
            .with_context(|| format!("connect as {} to {url}", self.name))
    }
}
