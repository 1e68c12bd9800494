//! The connection: [`NatsConfig::connect`] turns checked flags into a client, and [`Link`]
//! follows the connection's state, so that a refused connection is logged once per outage
//! (not once per retry) with the reason in words, and reported in the first status a working
//! connection carries.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use async_nats::rustls::client::WebPkiServerVerifier;
use async_nats::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use async_nats::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};
use async_nats::{AuthError, Client, ConnectError, ConnectErrorKind, ConnectOptions, Event};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::args::{Auth, NatsConfig};
use super::secret;
use crate::rate::LogGate;

/// A client and the state of its link to the server.
#[derive(Debug, Clone)]
pub struct Connection {
    pub client: Client,
    pub link: Link,
}

/// What the connection went through, shared by the client's event callback, the TLS
/// verifier and the auth callback (which know why an attempt failed) and the emitter (which
/// reports it).
#[derive(Clone, Default)]
pub struct Link(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    reconnected: Notify,
}

#[derive(Default)]
struct State {
    /// Why the last attempt failed, in words, when the TLS or auth code knew.
    detail: Option<String>,
    /// Since the connection was lost (or before the first one).
    outage: Option<Outage>,
    /// A refusal of the last outage, for the first status the new connection carries.
    report: Option<String>,
    /// The server's last few errors on a live connection (permission violations ...).
    server_errors: std::collections::VecDeque<String>,
    gate: LogGate,
}

/// How many server errors a [`Link`] remembers.
const SERVER_ERRORS_KEPT: usize = 16;

struct Outage {
    since: Instant,
    attempts: u64,
    /// The last failure logged in this outage: each different one is logged once.
    logged: Option<String>,
    /// A refusal (credentials, authorization, certificate) seen in this outage.
    refused: Option<String>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    /// Notified at every (re)connection: dashboards missed whatever happened meanwhile.
    pub fn reconnected(&self) -> &Notify {
        &self.0.reconnected
    }

    /// Takes the report of the last outage's refusal (`NATS refused 3 connection attempts
    /// over 4 s: ...`), once, for the next status.
    pub fn take_report(&self) -> Option<String> {
        self.lock().report.take()
    }

    /// The server's last errors on a live connection, oldest first (a permission violation
    /// reads `permissions violation for publish to "weft.pod.web-2.spec"`).
    pub fn server_errors(&self) -> Vec<String> {
        self.lock().server_errors.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records why an attempt is failing, from where it is known (TLS, auth).
    fn detail(&self, text: String) {
        self.lock().detail = Some(text);
    }

    /// Follows one client event: logs what an operator needs, once per outage.
    pub fn on_event(&self, event: &Event) {
        match event {
            Event::Connected => {
                let mut s = self.lock();
                s.detail = None;
                match s.outage.take() {
                    Some(o) if o.attempts > 0 => {
                        let secs = o.since.elapsed().as_secs_f64();
                        info!(
                            failed_attempts = o.attempts,
                            seconds = format!("{secs:.1}"),
                            "connected to NATS"
                        );
                        if let Some(why) = o.refused {
                            s.report = Some(format!(
                                "NATS refused {} connection attempt{} over {secs:.0} s before \
                                 this connection: {why}",
                                o.attempts,
                                if o.attempts == 1 { "" } else { "s" },
                            ));
                        }
                    }
                    _ => info!("connected to NATS"),
                }
                drop(s);
                self.0.reconnected.notify_one();
            }
            Event::Disconnected => {
                warn!("disconnected from NATS; reconnecting");
                self.lock().outage.get_or_insert_with(Outage::new);
            }
            Event::ClientError(async_nats::ClientError::Other(kind)) => self.attempt_failed(kind),
            Event::ServerError(err) => {
                // Permission violations and the like, on a live connection: the server's
                // words, at most once a second.
                let mut s = self.lock();
                if s.server_errors.len() == SERVER_ERRORS_KEPT {
                    s.server_errors.pop_front();
                }
                s.server_errors.push_back(err.to_string());
                if let Some(skipped) = s.gate.pass("server error") {
                    warn!(cause = %err, skipped, "NATS server error");
                }
            }
            Event::SlowConsumer(sid) => {
                let mut s = self.lock();
                if let Some(skipped) = s.gate.pass("slow consumer") {
                    warn!(
                        subscription = sid,
                        skipped, "messages dropped: a subscription's queue was full"
                    );
                }
            }
            other => info!(event = %other, "NATS"),
        }
    }

    fn attempt_failed(&self, kind: &str) {
        let mut s = self.lock();
        let detail = s.detail.take();
        let outage = s.outage.get_or_insert_with(Outage::new);
        let refused = if kind == ConnectErrorKind::AuthorizationViolation.to_string() {
            Some(
                "the server refused the credentials (authorization violation): check the \
                 user, key or token and the server's configuration"
                    .to_owned(),
            )
        } else if detail.is_some()
            || kind == ConnectErrorKind::Authentication.to_string()
            || kind == ConnectErrorKind::Tls.to_string()
        {
            // The TLS handshake's failures reach the client as an "IO error": the verifier
            // and the certificate resolver say what it was.
            // The verifier or the auth callback said why; an attempt that failed before
            // either ran keeps the reason seen last.
            Some(
                detail
                    .or_else(|| outage.refused.clone())
                    .unwrap_or_else(|| kind.to_owned()),
            )
        } else {
            None
        };
        outage.attempts += 1;
        let cause = refused.clone().unwrap_or_else(|| kind.to_owned());
        if outage.logged.as_deref() != Some(cause.as_str()) {
            if refused.is_some() {
                warn!(%cause, "NATS connection refused; retrying (logged once per outage)");
            } else {
                warn!(%cause, "NATS unreachable; retrying (logged once per outage)");
            }
            outage.logged = Some(cause);
        }
        if refused.is_some() {
            outage.refused = refused;
        }
    }
}

impl Outage {
    fn new() -> Outage {
        Outage {
            since: Instant::now(),
            attempts: 0,
            logged: None,
            refused: None,
        }
    }
}

impl NatsConfig {
    /// The server URLs, as given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Connects with these settings. `tune` adds the caller's own options (a name, pings,
    /// retries, capacities); with `retry_on_initial_connect` this returns at once and the
    /// client keeps trying in the background.
    pub async fn connect(
        &self,
        tune: impl FnOnce(ConnectOptions) -> ConnectOptions,
    ) -> Result<Connection, ConnectError> {
        let link = Link::default();
        let options = self.options(&link);
        let client = tune(options)
            // Each URL on its own: async-nats parses a single string as one URL, so a joined
            // "a,b,c" would be refused as an invalid port.
            .connect(self.urls.as_slice())
            .await?;
        Ok(Connection { client, link })
    }

    fn options(&self, link: &Link) -> ConnectOptions {
        let mut options = match &self.auth {
            Auth::None => ConnectOptions::new(),
            auth => {
                let (auth, link) = (auth.clone(), link.clone());
                ConnectOptions::with_auth_callback(move |nonce| {
                    let result = authenticate(&auth, &nonce);
                    if let Err(why) = &result {
                        link.detail(why.to_string());
                    }
                    std::future::ready(result)
                })
            }
        };
        if let Some((ca, roots)) = &self.roots {
            options = options.tls_client_config(self.tls_config(ca, roots, link));
        }
        let on_event = link.clone();
        options
            .require_tls(self.require_tls)
            .event_callback(move |event| {
                on_event.on_event(&event);
                std::future::ready(())
            })
    }

    fn tls_config(
        &self,
        ca: &std::path::Path,
        roots: &rustls::RootCertStore,
        link: &Link,
    ) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
                .build()
                .expect("a root store with at least one CA makes a verifier");
        let verifier = Arc::new(Recording {
            inner,
            ca: ca.display().to_string(),
            link: link.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match self.client_cert.as_deref() {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .expect("the client certificate and key were checked with the flags"),
            None => {
                builder.with_client_cert_resolver(Arc::new(NoCertificate { link: link.clone() }))
            }
        }
    }
}

/// No client certificate, and a [`Link`] told when a server asks for one (mutual TLS): the
/// handshake then fails as an "IO error" that would say nothing.
#[derive(Debug)]
struct NoCertificate {
    link: Link,
}

impl rustls::client::ResolvesClientCert for NoCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.link.detail(
            "the server asks for a client certificate (mutual TLS) and none is configured \
             (--nats-tls-cert, --nats-tls-key)"
                .into(),
        );
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// Reads the secret again (a rotated file is picked up by the next attempt) and answers the
/// server's nonce.
fn authenticate(auth: &Auth, nonce: &[u8]) -> Result<async_nats::Auth, AuthError> {
    let mut out = async_nats::Auth::new();
    let failed = |flag: &str, path: &std::path::Path, e: secret::SecretError| {
        AuthError::new(format!("cannot use {flag} {}: {e}", path.display()))
    };
    match auth {
        Auth::None => {}
        Auth::UserPassword { user, file } => {
            let password =
                secret::password(file).map_err(|e| failed("--nats-password-file", file, e))?;
            out.username = Some(user.clone());
            out.password = Some(password.to_string());
        }
        Auth::Token(file) => {
            let token = secret::password(file).map_err(|e| failed("--nats-token-file", file, e))?;
            out.token = Some(token.to_string());
        }
        Auth::Nkey(file) => {
            let text = secret::read(file).map_err(|e| failed("--nats-nkey", file, e))?;
            let pair = secret::nkey_seed(&text).map_err(|e| failed("--nats-nkey", file, e))?;
            out.nkey = Some(pair.public_key());
            out.signature = Some(sign(&pair, nonce)?);
        }
        Auth::Creds(file) => {
            let text = secret::read(file).map_err(|e| failed("--nats-creds", file, e))?;
            let (jwt, pair) = secret::creds(&text).map_err(|e| failed("--nats-creds", file, e))?;
            out.jwt = Some(jwt.to_string());
            out.signature = Some(sign(&pair, nonce)?);
        }
    }
    Ok(out)
}

fn sign(pair: &nkeys::KeyPair, nonce: &[u8]) -> Result<Vec<u8>, AuthError> {
    pair.sign(nonce)
        .map_err(|_| AuthError::new("cannot sign the server's nonce with the nkey"))
}

/// The standard certificate verifier, which also tells the [`Link`] why it refused a server:
/// the client's own error says only "TLS error".
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    ca: String,
    link: Link,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| {
                self.link.detail(format!(
                    "the server's certificate is not trusted ({e}; --nats-tls-ca {})",
                    self.ca
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_outage_is_reported_once_after_it_ends() {
        let link = Link::default();
        link.on_event(&Event::ClientError(async_nats::ClientError::Other(
            ConnectErrorKind::Io.to_string(),
        )));
        link.detail("the server's certificate is not trusted (x)".into());
        for _ in 0..3 {
            link.on_event(&Event::ClientError(async_nats::ClientError::Other(
                ConnectErrorKind::Tls.to_string(),
            )));
        }
        assert_eq!(link.take_report(), None, "nothing before a connection");
        link.on_event(&Event::Connected);
        let report = link.take_report().unwrap();
        assert_eq!(
            report,
            "NATS refused 4 connection attempts over 0 s before this connection: the server's \
             certificate is not trusted (x)"
        );
        assert_eq!(link.take_report(), None, "once");

        // An outage of a server that is simply down is not a refusal.
        link.on_event(&Event::Disconnected);
        link.on_event(&Event::ClientError(async_nats::ClientError::Other(
            ConnectErrorKind::Io.to_string(),
        )));
        link.on_event(&Event::Connected);
        assert_eq!(link.take_report(), None);
    }
}
