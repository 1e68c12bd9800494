//! A pod's statuses kept by JetStream, so a test can read what the agent published while the
//! test's own client was away (a server restart drops every connection at once, and whichever
//! client reconnects first would otherwise win a race against the dashboard).

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use async_nats::Client;
use weft_schema::codec::HEADER_CONTENT_TYPE;
use weft_schema::{Encoding, PodStatus};

/// A file-backed stream capturing `<prefix>.pod.<pod>.status`; it survives server restarts.
#[derive(Debug)]
pub struct StatusLog {
    stream: stream::Stream,
    subject: String,
}

impl StatusLog {
    /// Creates (or opens) stream `STATUS_<pod>`.
    pub async fn create(client: &Client, prefix: &str, pod: &str) -> Result<StatusLog> {
        let subject = format!("{prefix}.pod.{pod}.status");
        let stream = jetstream::new(client.clone())
            .get_or_create_stream(stream::Config {
                name: format!("STATUS_{pod}"),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("create the status stream")?;
        Ok(StatusLog { stream, subject })
    }

    /// The newest status in the stream, if any.
    pub async fn newest(&self) -> Result<Option<PodStatus>> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(m) => {
                let ct = m.headers.get(HEADER_CONTENT_TYPE).map(|v| v.as_str());
                Ok(Some(Encoding::from_content_type(ct)?.decode(&m.payload)?))
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout` for a status stamped at or after `since_unix_ms` (the agent's
    /// clock is this host's clock) and returns the first one seen.
    pub async fn first_since(&self, since_unix_ms: u64, timeout: Duration) -> Result<PodStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The server may still be coming up: errors are retried until the deadline.
            let last = self.newest().await;
            if let Ok(Some(s)) = &last {
                if s.published_at_unix_ms >= since_unix_ms {
                    return Ok(s.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("no status since {since_unix_ms} within {timeout:?}; last: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Milliseconds since the Unix epoch, on the clock the agent stamps statuses with.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
