//! The contract's NATS flags (CONTRACT.md v1.1 "NATS authentication and TLS"), as one clap
//! group that the agent and every tool flatten into their command lines, and their checked
//! form, [`NatsConfig`], made before any socket opens.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use async_nats::rustls::RootCertStore;
use async_nats::ServerAddr;
use clap::Args;

use super::secret::{self, SecretError};

/// How to reach and authenticate to NATS. A secret is always read from a file (or named by
/// an environment variable holding the file's path), never taken as a flag value, so it never
/// shows in a process list.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsArgs {
    /// NATS server URL, or a comma-separated list of a cluster's servers (nats:// or tls://).
    #[arg(long, env = "WEFT_NATS_URL", value_delimiter = ',', value_name = "URL")]
    pub nats_url: Vec<String>,
    /// A NATS credentials file (user JWT and nkey seed), readable by its owner only.
    #[arg(long, env = "WEFT_NATS_CREDS", value_name = "FILE",
          conflicts_with_all = ["nats_nkey", "nats_user", "nats_token_file"])]
    pub nats_creds: Option<PathBuf>,
    /// A file holding a user nkey seed (SU...), readable by its owner only.
    #[arg(long, env = "WEFT_NATS_NKEY", value_name = "FILE",
          conflicts_with_all = ["nats_user", "nats_token_file"])]
    pub nats_nkey: Option<PathBuf>,
    /// User name; the password comes from --nats-password-file.
    #[arg(
        long,
        env = "WEFT_NATS_USER",
        value_name = "NAME",
        requires = "nats_password_file",
        conflicts_with = "nats_token_file"
    )]
    pub nats_user: Option<String>,
    /// A file holding the password of --nats-user (one trailing newline is not part of it),
    /// readable by its owner only.
    #[arg(
        long,
        env = "WEFT_NATS_PASSWORD_FILE",
        value_name = "FILE",
        requires = "nats_user"
    )]
    pub nats_password_file: Option<PathBuf>,
    /// A file holding a token (one trailing newline is not part of it), readable by its
    /// owner only.
    #[arg(long, env = "WEFT_NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// CA bundle (PEM) the server's certificate must chain to; implies --nats-require-tls.
    #[arg(long, env = "WEFT_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --nats-tls-key.
    #[arg(
        long,
        env = "WEFT_NATS_TLS_CERT",
        value_name = "FILE",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM), readable by its owner only.
    #[arg(
        long,
        env = "WEFT_NATS_TLS_KEY",
        value_name = "FILE",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse a connection without TLS (also implied by a tls:// URL or --nats-tls-ca).
    #[arg(long, env = "WEFT_NATS_REQUIRE_TLS")]
    pub nats_require_tls: bool,
}

/// A NATS flag that cannot be used: the flag, and what is wrong, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    pub flag: &'static str,
    pub message: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.flag, self.message)
    }
}

impl std::error::Error for ArgError {}

/// How the client authenticates. Secrets stay in their files: they are checked when the
/// flags are, and read again at each connection attempt, so a rotated file is picked up by
/// the next reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    Creds(PathBuf),
    Nkey(PathBuf),
    UserPassword { user: String, file: PathBuf },
    Token(PathBuf),
}

/// A client certificate chain and its private key.
pub(crate) type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The NATS flags, checked: URLs parse, secret files exist, are well-formed and private,
/// certificates load.
#[derive(Clone)]
pub struct NatsConfig {
    pub(crate) urls: Vec<String>,
    pub(crate) auth: Auth,
    pub(crate) roots: Option<(PathBuf, RootCertStore)>,
    pub(crate) client_cert: Option<Arc<ClientCert>>,
    pub(crate) require_tls: bool,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("urls", &self.urls)
            .field("auth", &self.auth)
            .field("ca", &self.roots.as_ref().map(|(p, _)| p))
            .field("client_cert", &self.client_cert.is_some())
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

fn bad(flag: &'static str, path: &Path, e: impl fmt::Display) -> ArgError {
    ArgError {
        flag,
        message: format!("{}: {e}", path.display()),
    }
}

impl NatsArgs {
    /// Checks every flag and file; the error names the flag. Opens no socket.
    pub fn load(&self) -> Result<NatsConfig, ArgError> {
        if self.nats_url.is_empty() {
            return Err(ArgError {
                flag: "--nats-url",
                message: "is required".into(),
            });
        }
        for url in &self.nats_url {
            url.parse::<ServerAddr>().map_err(|e| ArgError {
                flag: "--nats-url",
                message: format!("{url:?} is not a NATS URL: {e}"),
            })?;
        }
        let auth = self.auth()?;
        let roots = match &self.nats_tls_ca {
            None => None,
            Some(path) => Some((path.clone(), load_roots(path)?)),
        };
        let client_cert = match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(load_client_cert(cert, key)?)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ArgError {
                    flag: "--nats-tls-key",
                    message: "is required with --nats-tls-cert".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ArgError {
                    flag: "--nats-tls-cert",
                    message: "is required with --nats-tls-key".into(),
                })
            }
        };
        let require_tls = self.nats_require_tls
            || roots.is_some()
            || self
                .nats_url
                .iter()
                .any(|u| u.trim().to_ascii_lowercase().starts_with("tls://"));
        Ok(NatsConfig {
            urls: self.nats_url.clone(),
            auth,
            roots,
            client_cert,
            require_tls,
        })
    }

    fn auth(&self) -> Result<Auth, ArgError> {
        if let Some(path) = &self.nats_creds {
            let text = secret::read(path).map_err(|e| bad("--nats-creds", path, e))?;
            secret::creds(&text).map_err(|e| bad("--nats-creds", path, e))?;
            return Ok(Auth::Creds(path.clone()));
        }
        if let Some(path) = &self.nats_nkey {
            let text = secret::read(path).map_err(|e| bad("--nats-nkey", path, e))?;
            secret::nkey_seed(&text).map_err(|e| bad("--nats-nkey", path, e))?;
            return Ok(Auth::Nkey(path.clone()));
        }
        match (&self.nats_user, &self.nats_password_file) {
            (Some(user), Some(path)) => {
                secret::password(path).map_err(|e| bad("--nats-password-file", path, e))?;
                return Ok(Auth::UserPassword {
                    user: user.clone(),
                    file: path.clone(),
                });
            }
            (Some(_), None) => {
                return Err(ArgError {
                    flag: "--nats-password-file",
                    message: "is required with --nats-user".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ArgError {
                    flag: "--nats-user",
                    message: "is required with --nats-password-file".into(),
                })
            }
            (None, None) => {}
        }
        if let Some(path) = &self.nats_token_file {
            secret::password(path).map_err(|e| bad("--nats-token-file", path, e))?;
            return Ok(Auth::Token(path.clone()));
        }
        Ok(Auth::None)
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, ArgError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("--nats-tls-ca", path, e))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad("--nats-tls-ca", path, "no usable CA certificate in it"));
    }
    Ok(roots)
}

fn load_client_cert(cert: &Path, key: &Path) -> Result<ClientCert, ArgError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("--nats-tls-cert", cert, e))?;
    if chain.is_empty() {
        return Err(bad("--nats-tls-cert", cert, "no certificate in it"));
    }
    let text = secret::read(key).map_err(|e| bad("--nats-tls-key", key, e))?;
    let key_der = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|_| {
        bad(
            "--nats-tls-key",
            key,
            SecretError::Malformed("no PEM private key in it"),
        )
    })?;
    Ok((chain, key_der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    fn parse(args: &[&str]) -> Result<NatsArgs, clap::Error> {
        let mut all = vec!["tool"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.nats)
    }

    #[test]
    fn pairs_are_required_and_methods_exclusive() {
        let url = ["--nats-url", "nats://127.0.0.1:4222"];
        let with = |extra: &[&str]| {
            let mut v = url.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        let e = with(&["--nats-user", "a"]).unwrap_err().to_string();
        assert!(e.contains("--nats-password-file"), "{e}");
        let e = with(&["--nats-password-file", "/x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--nats-user"), "{e}");
        let e = with(&["--nats-tls-cert", "/x"]).unwrap_err().to_string();
        assert!(e.contains("--nats-tls-key"), "{e}");
        let e = with(&["--nats-tls-key", "/x"]).unwrap_err().to_string();
        assert!(e.contains("--nats-tls-cert"), "{e}");
        let e = with(&["--nats-creds", "/a", "--nats-nkey", "/b"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--nats-nkey") && e.contains("--nats-creds"),
            "{e}"
        );
        let e = with(&[
            "--nats-token-file",
            "/a",
            "--nats-user",
            "u",
            "--nats-password-file",
            "/p",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--nats-token-file"), "{e}");
    }

    #[test]
    fn urls_and_files_are_checked_before_any_socket() {
        let e = parse(&["--nats-url", "nats://a:b:c"])
            .unwrap()
            .load()
            .unwrap_err();
        assert_eq!(e.flag, "--nats-url");
        let e = parse(&[
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--nats-token-file",
            "/nonexistent/weft-token",
        ])
        .unwrap()
        .load()
        .unwrap_err();
        assert_eq!(e.flag, "--nats-token-file");
        assert!(e
            .to_string()
            .starts_with("--nats-token-file /nonexistent/weft-token: "));
        let e = parse(&[
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--nats-tls-ca",
            "/nonexistent/ca.pem",
        ])
        .unwrap()
        .load()
        .unwrap_err();
        assert_eq!(e.flag, "--nats-tls-ca");
    }

    #[test]
    fn tls_is_required_by_a_tls_url_or_a_ca() {
        let c = parse(&["--nats-url", "nats://127.0.0.1:4222"])
            .unwrap()
            .load()
            .unwrap();
        assert!(!c.require_tls);
        let c = parse(&["--nats-url", "nats://127.0.0.1:4222,tls://127.0.0.1:4223"])
            .unwrap()
            .load()
            .unwrap();
        assert!(c.require_tls);
        let c = parse(&["--nats-url", "nats://127.0.0.1:4222", "--nats-require-tls"])
            .unwrap()
            .load()
            .unwrap();
        assert!(c.require_tls);
    }
}
