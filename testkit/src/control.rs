//! A control plane that publishes or requests specs, and a dashboard that collects statuses
//! and waits, with a bound, for the one a test expects. Both speak the wire contract through
//! the schema crate, like a real control plane written in Rust would.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use weft_schema::codec::{HEADER_CONTENT_TYPE, HEADER_SCHEMA};
use weft_schema::{ApplyReply, Encoding, HostSpec, HostStatus, PodSpec, PodStatus};

/// The two headers of a message in `encoding`.
pub fn headers(encoding: Encoding) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_CONTENT_TYPE, encoding.content_type());
    h.insert(HEADER_SCHEMA, "1");
    h
}

/// Decodes a message body by its `Content-Type`, checking `Weft-Schema` is 1.
pub fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(
    msg: &async_nats::Message,
) -> Result<T> {
    let h = msg.headers.as_ref().context("message without headers")?;
    let ct = h.get(HEADER_CONTENT_TYPE).map(|v| v.as_str());
    anyhow::ensure!(
        h.get(HEADER_SCHEMA).map(|v| v.as_str()) == Some("1"),
        "Weft-Schema header missing or not 1"
    );
    let encoding = Encoding::from_content_type(ct)?;
    Ok(encoding.decode(&msg.payload)?)
}

/// Publishes specs as a control plane does.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub client: Client,
    pub prefix: String,
    /// The connection's state (server errors such as permission violations), when it was
    /// made through `weft_emitter::bus`.
    pub link: Option<weft_emitter::bus::Link>,
}

impl From<weft_emitter::bus::Connection> for ControlPlane {
    fn from(c: weft_emitter::bus::Connection) -> ControlPlane {
        ControlPlane {
            client: c.client,
            prefix: "weft".into(),
            link: Some(c.link),
        }
    }
}

impl ControlPlane {
    pub async fn connect(url: &str) -> Result<ControlPlane> {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(30)))
            .connect(url)
            .await
            .context("control plane connect")?;
        Ok(ControlPlane {
            client,
            prefix: "weft".into(),
            link: None,
        })
    }

    fn spec_subject(&self, pod: &str) -> String {
        format!("{}.pod.{pod}.spec", self.prefix)
    }

    /// Plain publish, no reply.
    pub async fn publish(&self, pod: &str, spec: &PodSpec, encoding: Encoding) -> Result<()> {
        self.client
            .publish_with_headers(
                self.spec_subject(pod),
                headers(encoding),
                Bytes::from(encoding.encode(spec)),
            )
            .await?;
        self.client.flush().await?;
        Ok(())
    }

    /// A request; returns the agent's `ApplyReply`.
    pub async fn request(
        &self,
        pod: &str,
        spec: &PodSpec,
        encoding: Encoding,
    ) -> Result<ApplyReply> {
        self.request_raw(
            pod,
            Some(headers(encoding)),
            Bytes::from(encoding.encode(spec)),
        )
        .await
    }

    /// A request, repeated until the agent has subscribed (NATS answers "no responders"
    /// until then) and answers, within 20 s; panics after that.
    pub async fn request_when_ready(
        &self,
        pod: &str,
        spec: &PodSpec,
        encoding: Encoding,
    ) -> ApplyReply {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout(Duration::from_secs(3), self.request(pod, spec, encoding))
                .await
            {
                Ok(Ok(r)) => return r,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("agent {pod} did not answer within 20 s: {other:?}"),
            }
        }
    }

    /// A request with any headers and body, for bad-input tests.
    pub async fn request_raw(
        &self,
        pod: &str,
        headers: Option<HeaderMap>,
        body: Bytes,
    ) -> Result<ApplyReply> {
        let subject = self.spec_subject(pod);
        let msg = match headers {
            Some(h) => self.client.request_with_headers(subject, h, body).await?,
            None => self.client.request(subject, body).await?,
        };
        decode(&msg)
    }

    /// A host spec as a request; returns the host agent's `ApplyReply`.
    pub async fn request_host(
        &self,
        host: &str,
        spec: &HostSpec,
        encoding: Encoding,
    ) -> Result<ApplyReply> {
        let msg = self
            .client
            .request_with_headers(
                format!("{}.host.{host}.spec", self.prefix),
                headers(encoding),
                Bytes::from(encoding.encode(spec)),
            )
            .await?;
        decode(&msg)
    }

    /// [`Self::request_host`] sent once, its reply awaited for up to `within` (the client's
    /// own request timeout is 30 s): the answer to this request, however long the apply
    /// takes, never a repeat's.
    pub async fn request_host_within(
        &self,
        host: &str,
        spec: &HostSpec,
        encoding: Encoding,
        within: Duration,
    ) -> Result<ApplyReply> {
        let request = async_nats::Request::new()
            .headers(headers(encoding))
            .payload(Bytes::from(encoding.encode(spec)))
            .timeout(Some(within));
        let msg = self
            .client
            .send_request(format!("{}.host.{host}.spec", self.prefix), request)
            .await?;
        decode(&msg)
    }

    /// [`Self::request_host`], repeated until the host agent has subscribed and answers,
    /// within 30 s; panics after that.
    pub async fn request_host_when_ready(
        &self,
        host: &str,
        spec: &HostSpec,
        encoding: Encoding,
    ) -> ApplyReply {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout(
                Duration::from_secs(20),
                self.request_host(host, spec, encoding),
            )
            .await
            {
                Ok(Ok(r)) => return r,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("host agent {host} did not answer within 30 s: {other:?}"),
            }
        }
    }

    /// A host's `status.get`.
    pub async fn host_status_get(&self, host: &str, encoding: Encoding) -> Result<HostStatus> {
        let msg = self
            .client
            .request_with_headers(
                format!("{}.host.{host}.status.get", self.prefix),
                headers(encoding),
                Bytes::new(),
            )
            .await?;
        decode(&msg)
    }

    /// `status.get`.
    pub async fn status_get(&self, pod: &str, encoding: Encoding) -> Result<PodStatus> {
        let msg = self
            .client
            .request_with_headers(
                format!("{}.pod.{pod}.status.get", self.prefix),
                headers(encoding),
                Bytes::new(),
            )
            .await?;
        decode(&msg)
    }
}

/// Every status one agent published, with when it arrived: a pod's ([`Dashboard`]) or a
/// host's ([`HostDashboard`]).
#[derive(Debug, Clone)]
pub struct Watch<T> {
    seen: Arc<Mutex<Vec<(Instant, T)>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// The statuses of one pod.
pub type Dashboard = Watch<PodStatus>;
/// The statuses of one host.
pub type HostDashboard = Watch<HostStatus>;

impl Watch<PodStatus> {
    /// Subscribes to `<prefix>.pod.<pod>.status`.
    pub async fn watch(client: &Client, prefix: &str, pod: &str) -> Result<Dashboard> {
        Self::subject(client, format!("{prefix}.pod.{pod}.status")).await
    }
}

impl Watch<HostStatus> {
    /// Subscribes to `<prefix>.host.<host>.status`.
    pub async fn watch_host(client: &Client, prefix: &str, host: &str) -> Result<HostDashboard> {
        Self::subject(client, format!("{prefix}.host.{host}.status")).await
    }
}

impl<T> Watch<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Clone + std::fmt::Debug + Send + 'static,
{
    /// Subscribes to a status subject.
    pub async fn subject(client: &Client, subject: String) -> Result<Watch<T>> {
        let mut sub = client.subscribe(subject).await?;
        client.flush().await?;
        let dash = Watch {
            seen: Arc::default(),
            errors: Arc::default(),
        };
        let (seen, errors) = (dash.seen.clone(), dash.errors.clone());
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match decode::<T>(&msg) {
                    Ok(s) => seen.lock().unwrap().push((Instant::now(), s)),
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            }
        });
        Ok(dash)
    }

    /// All statuses so far.
    pub fn seen(&self) -> Vec<(Instant, T)> {
        self.seen.lock().unwrap().clone()
    }

    /// Statuses that did not decode (a test usually asserts this is empty).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits for a status that arrived after `since` and satisfies `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        since: Instant,
        pred: impl Fn(&T) -> bool,
    ) -> T {
        crate::wait_until_async(timeout, what, || {
            let seen = self.seen.lock().unwrap();
            let found = seen
                .iter()
                .filter(|(t, _)| *t >= since)
                .find(|(_, s)| pred(s))
                .map(|(_, s)| s.clone());
            let last = seen.last().map(|(_, s)| format!("{s:?}"));
            async move { found.ok_or_else(|| last.unwrap_or_else(|| "no status yet".into())) }
        })
        .await
    }
}
