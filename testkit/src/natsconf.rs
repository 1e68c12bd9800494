//! The nats-server configuration weft ships (`agent/deploy/nats-server.conf`), generated: one
//! user per pod with exactly the permissions CONTRACT.md v1.1 ("Least privilege") gives an
//! agent, a control-plane user, a read-only dashboard user, TLS on. The shipped file is this
//! generator's output for the example pods `web-1` and `web-2` with every credential and path
//! taken from the environment (a test checks they stay the same); the local stack and the
//! tests generate it for their own pods with values of their own.
//!
//! Besides users with nkeys or passwords, the generator writes the two other server setups
//! an agent may meet: a single token, and operator mode (JWTs, for `--nats-creds`).

use std::fmt::Write as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// A value in the configuration: written literally, or read by nats-server from the
/// environment variable named (`$NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Literal(String),
    Env(String),
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Literal(s) => format!("{s:?}"),
            Value::Env(name) => format!("${name}"),
        }
    }
}

/// How a user proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user nkey: the server holds only the public key (`U...`).
    Nkey(Value),
    /// A user name and password.
    Password { user: String, password: Value },
}

/// What a user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (whatever their reply subject).
    pub allow_responses: bool,
}

/// One user of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Written as a comment above the user.
    pub role: String,
    pub credential: Credential,
    pub permissions: Permissions,
}

/// TLS of the client port: the server's certificate and key, and the CA client certificates
/// must chain to when `verify` (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: Value,
    pub key: Value,
    pub ca: Value,
    pub verify: bool,
}

/// How clients authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Users(Vec<User>),
    /// One token for every client (no per-user permissions: nats-server has none for it).
    Token(Value),
    /// JWTs: the operator's, and each account's, preloaded (for `--nats-creds`).
    Operator {
        operator: String,
        accounts: Vec<(String, String)>,
    },
}

/// A whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// JetStream's store directory (`None`: JetStream off). The KV modes need JetStream.
    pub jetstream: Option<Value>,
    pub authorization: Authorization,
    pub tls: Option<Tls>,
    /// The largest message, headers included (nats-server's default is 1 MiB).
    pub max_payload: Option<u64>,
}

/// A message body may be 16 MiB (CONTRACT.md "Limits"); the headers (a signature included)
/// need a few hundred bytes more.
pub const WEFT_MAX_PAYLOAD: u64 = 16 * 1024 * 1024 + 4096;

fn bucket(prefix: &str, what: &str) -> String {
    format!("{}-{what}", prefix.replace('.', "-"))
}

/// Creating a consumer of spec bucket `specs` that reads key `key` only: the request names
/// the consumer (any name) and its filter (the agent's own key).
fn spec_consumer_create(specs: &str, key: &str) -> String {
    format!("$JS.API.CONSUMER.CREATE.KV_{specs}.*.$KV.{specs}.{key}")
}

/// Deleting a consumer of spec bucket `specs` by name. The client deletes its watch's
/// consumer before making it again after its server went away; without this right that
/// delete times out and the watch never comes back (the fleet benchmark lost specs that way).
/// A name cannot be matched by prefix, so any name is allowed: an agent's consumer names end
/// in a random 22-character token (its inbox's), and an agent may not list consumers, so it
/// can delete only the ones it made.
fn spec_consumer_delete(specs: &str) -> String {
    format!("$JS.API.CONSUMER.DELETE.KV_{specs}.*")
}

/// The inbox prefix of pod `pod`'s agent (`_INBOX_<pod>`), so that its user may subscribe to
/// its own inboxes only (the agent sets it; JetStream answers come there).
pub fn pod_inbox(pod: &str) -> String {
    format!("_INBOX_{pod}")
}

/// Exactly what the agent of `pod` needs (CONTRACT.md v1.1): its spec and status.get, its
/// status, answers to requests; with `--spec-source kv` a consumer of its own key of the spec
/// bucket; with `--status-kv` its own key of the status bucket. It may not create buckets.
pub fn pod_permissions(prefix: &str, pod: &str) -> Permissions {
    let (specs, status) = (bucket(prefix, "specs"), bucket(prefix, "status"));
    Permissions {
        publish: vec![
            format!("{prefix}.pod.{pod}.status"),
            format!("$JS.API.STREAM.INFO.KV_{specs}"),
            spec_consumer_create(&specs, pod),
            spec_consumer_delete(&specs),
            format!("$JS.API.DIRECT.GET.KV_{specs}.$KV.{specs}.{pod}"),
            format!("$JS.API.STREAM.INFO.KV_{status}"),
            format!("$KV.{status}.{pod}"),
        ],
        subscribe: vec![
            format!("{prefix}.pod.{pod}.spec"),
            format!("{prefix}.pod.{pod}.status.get"),
            format!("{}.>", pod_inbox(pod)),
        ],
        allow_responses: true,
    }
}

/// The inbox prefix of host `host`'s agent (`_INBOX-host-<host>`: no pod's starts so).
pub fn host_inbox(host: &str) -> String {
    format!("_INBOX-host-{host}")
}

/// Exactly what the agent of host `host` needs: as a pod's, on `<prefix>.host.<host>.*` and
/// key `host.<host>` of the buckets.
pub fn host_permissions(prefix: &str, host: &str) -> Permissions {
    let (specs, status) = (bucket(prefix, "specs"), bucket(prefix, "status"));
    Permissions {
        publish: vec![
            format!("{prefix}.host.{host}.status"),
            format!("$JS.API.STREAM.INFO.KV_{specs}"),
            spec_consumer_create(&specs, &format!("host.{host}")),
            spec_consumer_delete(&specs),
            format!("$JS.API.DIRECT.GET.KV_{specs}.$KV.{specs}.host.{host}"),
            format!("$JS.API.STREAM.INFO.KV_{status}"),
            format!("$KV.{status}.host.{host}"),
        ],
        subscribe: vec![
            format!("{prefix}.host.{host}.spec"),
            format!("{prefix}.host.{host}.status.get"),
            format!("{}.>", host_inbox(host)),
        ],
        allow_responses: true,
    }
}

/// The control plane: publishes specs (subject and bucket), reads statuses, manages buckets;
/// of pods and hosts.
pub fn control_plane_permissions(prefix: &str) -> Permissions {
    Permissions {
        publish: vec![
            format!("{prefix}.pod.*.spec"),
            format!("{prefix}.pod.*.status.get"),
            format!("{prefix}.host.*.spec"),
            format!("{prefix}.host.*.status.get"),
            format!("$KV.{}.>", bucket(prefix, "specs")),
            "$JS.API.>".to_owned(),
        ],
        subscribe: vec![
            format!("{prefix}.pod.*.status"),
            format!("{prefix}.host.*.status"),
            "_INBOX.>".to_owned(),
        ],
        allow_responses: false,
    }
}

/// A dashboard: reads statuses of pods and hosts (subjects, `status.get`, the status
/// bucket), nothing else.
pub fn dashboard_permissions(prefix: &str) -> Permissions {
    let status = bucket(prefix, "status");
    Permissions {
        publish: vec![
            format!("{prefix}.pod.*.status.get"),
            format!("{prefix}.host.*.status.get"),
            format!("$JS.API.STREAM.INFO.KV_{status}"),
            format!("$JS.API.DIRECT.GET.KV_{status}.>"),
            format!("$JS.API.CONSUMER.CREATE.KV_{status}.>"),
        ],
        subscribe: vec![
            format!("{prefix}.pod.*.status"),
            format!("{prefix}.host.*.status"),
            "_INBOX.>".to_owned(),
        ],
        allow_responses: false,
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl ServerConfig {
    /// The configuration file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(dir) = &self.jetstream {
            let _ = writeln!(out, "jetstream {{\n  store_dir: {}\n}}\n", dir.render());
        }
        if let Some(max) = self.max_payload {
            let _ = writeln!(out, "max_payload: {max}\n");
        }
        if let Some(tls) = &self.tls {
            out.push_str("tls {\n");
            let _ = writeln!(out, "  cert_file: {}", tls.cert.render());
            let _ = writeln!(out, "  key_file: {}", tls.key.render());
            let _ = writeln!(out, "  ca_file: {}", tls.ca.render());
            let _ = writeln!(out, "  verify: {}", tls.verify);
            out.push_str("  timeout: 2\n}\n\n");
        }
        match &self.authorization {
            Authorization::Token(token) => {
                let _ = writeln!(out, "authorization {{\n  token: {}\n}}", token.render());
            }
            Authorization::Operator { operator, accounts } => {
                let _ = writeln!(out, "operator: {operator:?}");
                out.push_str("resolver: MEMORY\nresolver_preload: {\n");
                for (public, jwt) in accounts {
                    let _ = writeln!(out, "  {public}: {jwt:?}");
                }
                out.push_str("}\n");
            }
            Authorization::Users(users) => {
                out.push_str("authorization {\n  users: [\n");
                for u in users {
                    let _ = writeln!(out, "    # {}", u.role);
                    let who = match &u.credential {
                        Credential::Nkey(key) => format!("nkey: {}", key.render()),
                        Credential::Password { user, password } => {
                            format!("user: {user:?}, password: {}", password.render())
                        }
                    };
                    let p = &u.permissions;
                    let _ = writeln!(out, "    {{ {who}, permissions: {{");
                    let _ = writeln!(out, "        publish: {{ allow: {} }}", list(&p.publish));
                    let _ = writeln!(
                        out,
                        "        subscribe: {{ allow: {} }}",
                        list(&p.subscribe)
                    );
                    if p.allow_responses {
                        out.push_str("        allow_responses: true\n");
                    }
                    out.push_str("    } }\n");
                }
                out.push_str("  ]\n}\n");
            }
        }
        out
    }
}

/// The configuration shipped in `agent/deploy/nats-server.conf`: pods `web-1` and `web-2`,
/// host `host-a`, a control plane and a dashboard, each with a user nkey, TLS on; every key and path comes
/// from the environment when nats-server reads the file.
pub fn shipped() -> ServerConfig {
    let env = |name: &str| Value::Env(name.to_owned());
    let mut users: Vec<User> = ["web-1", "web-2"]
        .iter()
        .map(|pod| User {
            role: format!("pod {pod}: its own spec, status and status.get only"),
            credential: Credential::Nkey(env(&format!(
                "WEFT_NKEY_{}",
                pod.to_uppercase().replace('-', "_")
            ))),
            permissions: pod_permissions("weft", pod),
        })
        .collect();
    users.push(User {
        role: "host host-a: its own HostSpec, HostStatus and status.get only".into(),
        credential: Credential::Nkey(env("WEFT_NKEY_HOST_A")),
        permissions: host_permissions("weft", "host-a"),
    });
    users.push(User {
        role: "control plane: publishes specs, reads statuses, manages the buckets".into(),
        credential: Credential::Nkey(env("WEFT_NKEY_CONTROL")),
        permissions: control_plane_permissions("weft"),
    });
    users.push(User {
        role: "dashboard: reads statuses only".into(),
        credential: Credential::Nkey(env("WEFT_NKEY_DASHBOARD")),
        permissions: dashboard_permissions("weft"),
    });
    ServerConfig {
        jetstream: Some(env("WEFT_NATS_STORE")),
        authorization: Authorization::Users(users),
        tls: Some(Tls {
            cert: env("WEFT_NATS_TLS_CERT"),
            key: env("WEFT_NATS_TLS_KEY"),
            ca: env("WEFT_NATS_TLS_CA"),
            verify: false,
        }),
        max_payload: Some(WEFT_MAX_PAYLOAD),
    }
}

/// The text of `agent/deploy/nats-server.conf`: [`shipped`] with a header saying how to use
/// it.
pub fn shipped_file() -> String {
    let header = "\
# nats-server configuration for weft (CONTRACT.md v1.1 \"Trust: who may change a pod\").
#
# Generated by weft_testkit::natsconf::shipped_file() for the example pods web-1 and web-2
# and the example host host-a; agent/tests/trust_nats.rs runs nats-server with this very
# file, and checks that it is what the generator writes. For other pods and hosts, generate
# yours the same way (one user per pod with pod_permissions(prefix, pod), one per host with
# host_permissions(prefix, host)).
#
# Every key and path comes from the environment:
#   WEFT_NKEY_WEB_1, WEFT_NKEY_WEB_2     each pod's user nkey (public, U...); the agent holds
#                                        the seed (--nats-nkey FILE, mode 0600)
#   WEFT_NKEY_HOST_A                     the host agent's user nkey
#   WEFT_NKEY_CONTROL, WEFT_NKEY_DASHBOARD
#   WEFT_NATS_TLS_CERT, WEFT_NATS_TLS_KEY  the server's certificate and key (PEM)
#   WEFT_NATS_TLS_CA                       the CA of client certificates (mutual TLS: set
#                                        verify: true)
#   WEFT_NATS_STORE                        JetStream's store directory
# Agents set their inbox prefix to _INBOX_<pod> (a host's to _INBOX-host-<host>), the only
# inboxes their user may read. Agents may not create the KV buckets: with --spec-source kv or --status-kv, the control plane
# creates <prefix>-specs and <prefix>-status first.
# max_payload allows a 16 MiB spec (the contract's bound) and its headers.

";
    format!("{header}{}", shipped().render())
}

/// A user nkey pair for tests: (seed, public key).
pub fn user_nkey() -> (String, String) {
    let pair = nkeys::KeyPair::new_user();
    (
        pair.seed().expect("a new pair has a seed"),
        pair.public_key(),
    )
}

/// Operator mode for `--nats-creds`: an operator, one account, and users of it with the
/// given permissions. Returns the server's authorization and each user's creds file text.
pub fn operator_mode(users: &[(&str, Permissions)]) -> (Authorization, Vec<String>) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "weft-test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "weft",
        serde_json::json!({
            "type": "account", "version": 2,
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1}
        }),
    );
    let creds = users
        .iter()
        .map(|(name, p)| {
            let user = nkeys::KeyPair::new_user();
            let mut claims = serde_json::json!({
                "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1,
                "pub": {"allow": p.publish}, "sub": {"allow": p.subscribe}
            });
            if p.allow_responses {
                claims["resp"] = serde_json::json!({"max": 1, "ttl": 0});
            }
            let user_jwt = jwt(&account, &user.public_key(), name, claims);
            format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed().expect("a new pair has a seed")
            )
        })
        .collect();
    (
        Authorization::Operator {
            operator: operator_jwt,
            accounts: vec![(account.public_key(), account_jwt)],
        },
        creds,
    )
}

/// A NATS JWT: `sub` described by `nats`, issued and signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, sub: &str, name: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{:X}{:X}", now, std::process::id()),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": sub,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = issuer.sign(signed.as_bytes()).expect("an nkey pair signs");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}
