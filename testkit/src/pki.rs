//! Test certificates, made at run time (never committed): a CA, a server certificate for
//! `nats-server` valid for every address a test's clients reach it at, and client
//! certificates for mutual TLS. Private keys are written mode 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A PEM certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority whose key signs certificates into `dir`.
pub struct Ca {
    /// The CA's certificate (PEM): what clients are given as `--nats-tls-ca`.
    pub cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert", &self.cert).finish()
    }
}

/// Every address a test reaches `nats-server` at: loopback, and the hub's end of each pod's
/// control link (`10.255.<n>.1`, see [`crate::hub`]).
pub fn server_names() -> Vec<String> {
    let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    names.extend((1..=255).map(|n| format!("10.255.{n}.1")));
    names
}

fn write_private(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

impl Ca {
    /// A new CA named `name`, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Ca> {
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem())?;
        Ok(Ca {
            cert: path,
            issuer: Issuer::new(params, key),
            dir: dir.to_owned(),
        })
    }

    /// A certificate for `names` (IP addresses or DNS names) with `usage`, signed by this CA,
    /// written to `dir/<file>.pem` and `dir/<file>-key.pem`.
    fn issue(
        &self,
        file: &str,
        common_name: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    /// A server certificate for every name in [`server_names`].
    pub fn server(&self, file: &str) -> Result<CertFiles> {
        self.server_for(file, server_names())
    }

    /// A server certificate for these names (host names or IP addresses).
    pub fn server_for(&self, file: &str, names: Vec<String>) -> Result<CertFiles> {
        self.issue(
            file,
            "nats-server",
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (mutual TLS) whose common name is `name`.
    pub fn client(&self, name: &str) -> Result<CertFiles> {
        self.issue(
            &format!("client-{name}"),
            name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}
