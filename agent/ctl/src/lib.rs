//! `weft_client`: the control plane's and the dashboard's side of the weft contract, for
//! Rust programs; `weftctl` is built on it and nothing else.
//!
//! - [`Client`]: a NATS connection (made from the contract's flags, auth and TLS, through
//!   [`weft_emitter::bus::NatsConfig`], the code the agent itself connects with) and a
//!   subject prefix. It publishes specs ([`Client::publish`]), sends them as requests and
//!   waits for the [`ApplyReply`] ([`Client::apply`]), asks an agent for its status
//!   ([`Client::status_get`]), reads the `<prefix>-status` bucket ([`Client::stored`]) and
//!   follows the status subjects ([`Client::watch`]); the same for host agents
//!   ([`Client::host_status_get`], [`Client::stored_hosts`], [`Client::watch_hosts`]).
//! - [`Spec`]: a spec's body as it will travel, byte for byte, with its headers; signed with
//!   [`weft_schema::sign::SigningKey`] ([`Spec::signed`]), so the signature covers exactly
//!   what is sent.
//! - [`fleet`]: the last status of every pod and host, with staleness (three status intervals), as
//!   table rows for `weftctl status`, `weftctl watch` and the dashboard page.
//!
//! It lives beside the agent (`agent/ctl/`) because it is the agent's other half: it speaks
//! the agent's subjects and headers through the agent's own NATS code, and `weftctl` checks
//! specs with the agent's own reading of them (`--dry-run`).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use weft_client::{Client, Spec, Target};
//! use weft_emitter::bus::NatsArgs;
//! use weft_schema::sign::SigningKey;
//!
//! let nats = NatsArgs { nats_url: vec!["nats://127.0.0.1:4222".into()], ..Default::default() };
//! let client = Client::connect(&nats.load()?, "weft", "my-control-plane").await?;
//! let key = SigningKey::generate();
//! let spec = Spec::json(r#"{"PodId":"web-1","Generation":7}"#).signed(&key);
//! let web_1 = Target::pod("web-1").map_err(anyhow::Error::msg)?;
//! let reply = client.apply(&web_1, &spec, Duration::from_secs(10)).await?;
//! println!("{:?}: {}", reply.result, reply.error);
//! let status = client.status_get("web-1", Duration::from_secs(2)).await?;
//! println!("generation {} is {:?}", status.observed_generation, status.overall);
//! # Ok(())
//! # }
//! ```

pub mod fleet;

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use weft_emitter::bus::{self, Connection, NatsConfig};
use weft_schema::codec::{decode_message, CONTENT_TYPE_JSON, HEADER_CONTENT_TYPE, HEADER_SCHEMA};
use weft_schema::sign::{SigningKey, HEADER_KEY, HEADER_SIGNATURE};
use weft_schema::subject::check_prefix;
use weft_schema::{ApplyReply, Encoding, HostStatus, PodId, PodStatus, SCHEMA_VERSION};

/// What went wrong talking to NATS or reading an answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to NATS")]
    Connect(#[source] async_nats::ConnectError),
    #[error("{0:?} is not a subject prefix")]
    Prefix(String),
    #[error("publish on {0}")]
    Publish(String, #[source] async_nats::PublishError),
    #[error("flush {0}")]
    Flush(String, #[source] async_nats::client::FlushError),
    #[error("no answer on {0} within {1:?}")]
    NoAnswer(String, Duration),
    #[error("nobody answers on {0} (no agent subscribed)")]
    NoResponders(String),
    #[error("request on {0}")]
    Request(String, #[source] async_nats::RequestError),
    #[error("the answer on {0} does not decode")]
    Decode(String, #[source] weft_schema::DecodeError),
    #[error("subscribe to {0}")]
    Subscribe(String, #[source] async_nats::SubscribeError),
    #[error("read bucket {0}")]
    Bucket(String, #[source] async_nats::Error),
}

/// Whose spec subject a spec goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `pod` (or `host` for the host role).
    role: &'static str,
    id: PodId,
}

impl Target {
    /// A pod agent: `<prefix>.pod.<id>.spec`.
    pub fn pod(id: &str) -> Result<Target, String> {
        Ok(Target {
            role: "pod",
            id: PodId::parse(id)?,
        })
    }

    /// A host agent: `<prefix>.host.<id>.spec` (CONTRACT.md "Host role"; ids are spelled as
    /// pod ids).
    pub fn host(id: &str) -> Result<Target, String> {
        Ok(Target {
            role: "host",
            id: PodId::parse(id)?,
        })
    }

    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// `pod` or `host`.
    pub fn role(&self) -> &'static str {
        self.role
    }

    fn subject(&self, prefix: &str, what: &str) -> String {
        format!("{prefix}.{}.{}.{what}", self.role, self.id)
    }
}

/// A spec as it will travel: the body byte for byte, and its headers.
#[derive(Clone, PartialEq, Eq)]
pub struct Spec {
    body: Bytes,
    content_type: String,
    /// `Weft-Key` and `Weft-Signature`, when signed.
    signature: Option<(String, String)>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may carry private keys.
        f.debug_struct("Spec")
            .field("content_type", &self.content_type)
            .field("body_bytes", &self.body.len())
            .field("signed", &self.signature.is_some())
            .finish()
    }
}

impl Spec {
    /// A JSON body, sent as it is (the agent reads it with the same bytes a signature
    /// covers: no re-encoding).
    pub fn json(body: impl Into<Bytes>) -> Spec {
        Spec {
            body: body.into(),
            content_type: CONTENT_TYPE_JSON.to_owned(),
            signature: None,
        }
    }

    /// A body in `encoding`.
    pub fn encoded(body: impl Into<Bytes>, encoding: Encoding) -> Spec {
        Spec {
            body: body.into(),
            content_type: encoding.content_type().to_owned(),
            signature: None,
        }
    }

    /// Signed by `key` over the headers it will carry and the body as it is.
    pub fn signed(mut self, key: &SigningKey) -> Spec {
        let schema = SCHEMA_VERSION.to_string();
        let s = key.sign(Some(&self.content_type), Some(&schema), &self.body);
        self.signature = Some((s.key, s.signature));
        self
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The headers the message carries: `Content-Type`, `Weft-Schema`, and the signature's
    /// two when signed.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_CONTENT_TYPE, self.content_type.as_str());
        h.insert(HEADER_SCHEMA, SCHEMA_VERSION.to_string().as_str());
        if let Some((key, signature)) = &self.signature {
            h.insert(HEADER_KEY, key.as_str());
            h.insert(HEADER_SIGNATURE, signature.as_str());
        }
        h
    }
}

/// A NATS connection and the subject prefix its agents use.
#[derive(Debug, Clone)]
pub struct Client {
    connection: Connection,
    prefix: String,
}

impl Client {
    /// Connects with the contract's NATS settings (`NatsArgs::load`); fails when the first
    /// attempt does, naming why (refused credentials, an untrusted certificate ...).
    pub async fn connect(nats: &NatsConfig, prefix: &str, name: &str) -> Result<Client, Error> {
        check_prefix(prefix).map_err(|_| Error::Prefix(prefix.to_owned()))?;
        let name = name.to_owned();
        let connection = nats
            .connect(move |o| {
                o.name(name)
                    .connection_timeout(Duration::from_secs(5))
                    // Requests carry their own timeouts (`apply`, `status_get`).
                    .request_timeout(None)
            })
            .await
            .map_err(Error::Connect)?;
        Ok(Client {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    /// A client on a connection made elsewhere.
    pub fn on(connection: Connection, prefix: &str) -> Result<Client, Error> {
        check_prefix(prefix).map_err(|_| Error::Prefix(prefix.to_owned()))?;
        Ok(Client {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.connection.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Publishes `spec` on the target's spec subject, without waiting for an answer (the
    /// status will say what became of it). Returns once the server has it.
    pub async fn publish(&self, target: &Target, spec: &Spec) -> Result<(), Error> {
        let subject = target.subject(&self.prefix, "spec");
        let client = &self.connection.client;
        client
            .publish_with_headers(subject.clone(), spec.headers(), spec.body.clone())
            .await
            .map_err(|e| Error::Publish(subject.clone(), e))?;
        client.flush().await.map_err(|e| Error::Flush(subject, e))
    }

    /// Sends `spec` as a request and waits up to `timeout` for the agent's [`ApplyReply`]
    /// (it comes once the spec was applied, refused or found stale).
    pub async fn apply(
        &self,
        target: &Target,
        spec: &Spec,
        timeout: Duration,
    ) -> Result<ApplyReply, Error> {
        let subject = target.subject(&self.prefix, "spec");
        self.request(subject, spec.headers(), spec.body.clone(), timeout)
            .await
    }

    /// `status.get`: the agent's status now.
    pub async fn status_get(&self, pod: &str, timeout: Duration) -> Result<PodStatus, Error> {
        let subject = format!("{}.pod.{pod}.status.get", self.prefix);
        self.request(subject, bus::headers(Encoding::Json), Bytes::new(), timeout)
            .await
    }

    /// `status.get` of a host agent: its [`HostStatus`] now.
    pub async fn host_status_get(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<HostStatus, Error> {
        let subject = format!("{}.host.{host}.status.get", self.prefix);
        self.request(subject, bus::headers(Encoding::Json), Bytes::new(), timeout)
            .await
    }

    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<T, Error> {
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(body)
            .timeout(Some(timeout));
        let msg = self
            .connection
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::TimedOut => Error::NoAnswer(subject.clone(), timeout),
                async_nats::RequestErrorKind::NoResponders => Error::NoResponders(subject.clone()),
                _ => Error::Request(subject.clone(), e),
            })?;
        decode(&subject, msg.headers.as_ref(), &msg.payload)
    }

    /// The last status every pod mirrored into the `<prefix>-status` bucket (agents run with
    /// `--status-kv`), each decoded by the headers it was put with. A bucket that does not
    /// exist holds nothing.
    pub async fn stored(&self) -> Result<Vec<PodStatus>, Error> {
        let bucket = format!("{}-status", self.prefix.replace('.', "-"));
        let mut out = Vec::new();
        for (key, headers, body) in self.bucket_values(&bucket).await? {
            if key.starts_with(HOST_KEY) {
                continue;
            }
            if let Ok(status) = decode(&key, Some(&headers), &body) {
                out.push(status);
            }
        }
        Ok(out)
    }

    /// The last status every host agent mirrored into the `<prefix>-status` bucket, under
    /// its key `host.<host>` (a pod id has no dot, so the two never meet).
    pub async fn stored_hosts(&self) -> Result<Vec<HostStatus>, Error> {
        let bucket = format!("{}-status", self.prefix.replace('.', "-"));
        let mut out = Vec::new();
        for (key, headers, body) in self.bucket_values(&bucket).await? {
            if !key.starts_with(HOST_KEY) {
                continue;
            }
            if let Ok(status) = decode(&key, Some(&headers), &body) {
                out.push(status);
            }
        }
        Ok(out)
    }

    /// The newest value of every key of `bucket`, with the headers it was put with. The
    /// keys are listed by the stream's info (no consumer: a reading user such as the
    /// shipped dashboard user may ask for stream info and direct gets only).
    async fn bucket_values(&self, bucket: &str) -> Result<Vec<(String, HeaderMap, Bytes)>, Error> {
        let fail = |e: async_nats::Error| Error::Bucket(bucket.to_owned(), e);
        let js = async_nats::jetstream::new(self.connection.client.clone());
        let Ok(stream) = js.get_stream(format!("KV_{bucket}")).await else {
            return Ok(Vec::new()); // no bucket, nothing stored
        };
        let prefix = format!("$KV.{bucket}.");
        let mut subjects = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| fail(e.into()))?;
        let mut names = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry.map_err(|e| fail(e.into()))?;
            names.push(subject);
        }
        names.sort();
        let mut out = Vec::new();
        for subject in names {
            let Ok(msg) = stream.direct_get_last_for_subject(subject.as_str()).await else {
                continue; // purged meanwhile
            };
            // A delete or purge leaves a marker without a body.
            if msg.payload.is_empty() {
                continue;
            }
            let key = subject.strip_prefix(&prefix).unwrap_or(&subject).to_owned();
            out.push((key, msg.headers, msg.payload));
        }
        Ok(out)
    }

    /// The generation the control plane last wrote for each agent in the `<prefix>-specs`
    /// bucket (`--spec-source kv`), by key: a pod id, or `host.<host>` for a host. Only `Generation` is read, from JSON values; a
    /// bucket that does not exist, or that this user may not read, gives nothing (within two
    /// seconds).
    pub async fn wanted(&self) -> std::collections::BTreeMap<String, u64> {
        // A user without the right gets no answer at all (the server drops the request),
        // so this waits a bounded time, not JetStream's request timeout.
        tokio::time::timeout(Duration::from_secs(2), self.read_wanted())
            .await
            .unwrap_or_default()
    }

    async fn read_wanted(&self) -> std::collections::BTreeMap<String, u64> {
        #[derive(serde::Deserialize)]
        struct Generation {
            #[serde(rename = "Generation")]
            generation: u64,
        }
        let bucket = format!("{}-specs", self.prefix.replace('.', "-"));
        let values = self.bucket_values(&bucket).await.unwrap_or_default();
        values
            .into_iter()
            .filter_map(|(key, _, body)| {
                serde_json::from_slice::<Generation>(&body)
                    .ok()
                    .map(|g| (key, g.generation))
            })
            .collect()
    }

    /// Every status published on `<prefix>.pod.*.status` from now on, decoded (a message
    /// that does not decode is skipped).
    pub async fn watch(&self) -> Result<impl Stream<Item = PodStatus> + Unpin, Error> {
        self.follow(format!("{}.pod.*.status", self.prefix)).await
    }

    /// Every status published on `<prefix>.host.*.status` from now on, decoded.
    pub async fn watch_hosts(&self) -> Result<impl Stream<Item = HostStatus> + Unpin, Error> {
        self.follow(format!("{}.host.*.status", self.prefix)).await
    }

    async fn follow<T: serde::de::DeserializeOwned>(
        &self,
        subject: String,
    ) -> Result<impl Stream<Item = T> + Unpin, Error> {
        let sub = self
            .connection
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::Subscribe(subject.clone(), e))?;
        Ok(sub.filter_map(move |msg| {
            let status = decode::<T>(&msg.subject, msg.headers.as_ref(), &msg.payload).ok();
            std::future::ready(status)
        }))
    }
}

/// How a host's keys begin in the status and spec buckets (`host.<host>`).
pub const HOST_KEY: &str = "host.";

/// Decodes a weft message by its headers (none: JSON).
fn decode<T: serde::de::DeserializeOwned>(
    from: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<T, Error> {
    let ct = bus::header(headers, HEADER_CONTENT_TYPE);
    let schema = bus::header(headers, HEADER_SCHEMA);
    decode_message(ct, schema, body)
        .map(|(_, v)| v)
        .map_err(|e| Error::Decode(from.to_owned(), e))
}
