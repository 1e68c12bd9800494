//! The NATS side shared by the agent's intake and emitter and by tools: the headers every
//! weft message carries, the publication stamp and its clock, key-value buckets, which reply
//! subjects may be answered, and the connection itself ([`NatsArgs`]: the contract's NATS
//! flags, auth and TLS; [`Connection`]: a client and the state of its link).

mod args;
mod connect;
mod secret;

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use tracing::info;
use weft_schema::codec::{HEADER_CONTENT_TYPE, HEADER_SCHEMA};
use weft_schema::{Encoding, SCHEMA_VERSION};

use crate::fit::Status;

pub use args::{ArgError, NatsArgs, NatsConfig};
pub use connect::{Connection, Link};
/// A secret file read as the NATS flags read theirs (bounded, private to its owner), for
/// tools' other secrets (`weftctl --sign-key`).
pub use secret::{read as read_secret, SecretError};

/// Where the time comes from; tests inject their own.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Stamps a snapshot with the publication time.
pub fn stamp<S: Status>(status: &mut S, now_unix_ms: u64) {
    status.stamp(now_unix_ms);
}

/// The two headers every weft message carries.
pub fn headers(encoding: Encoding) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_CONTENT_TYPE, encoding.content_type());
    h.insert(HEADER_SCHEMA, SCHEMA_VERSION.to_string().as_str());
    h
}

/// A header's first value, its name matched case-insensitively (NATS keeps names as sent).
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// The encoding of a reply: the request's, when it named one of the two, else JSON.
pub fn reply_encoding(content_type: Option<&str>) -> Encoding {
    Encoding::from_content_type(content_type).unwrap_or(Encoding::Json)
}

/// Whether a request's reply subject may be answered. Never a subject under `<prefix>.` (a
/// request could otherwise make the agent publish onto another pod's spec subject), nor a
/// `$` system subject (`$KV.<prefix>-specs.<pod>` is another pod's spec too; no weft reply
/// goes to JetStream). Inboxes (`_INBOX.`) and other plain subjects are fine.
pub fn reply_allowed(prefix: &str, reply: &str) -> bool {
    let under_prefix = reply
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'));
    !(under_prefix || reply.starts_with('$'))
}

/// Why a KV bucket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("create bucket {0}")]
    Create(String, #[source] jetstream::context::CreateStreamError),
    #[error("open bucket {0}")]
    Open(String, #[source] jetstream::context::KeyValueError),
}

/// The stream of KV bucket `name` with `history` values per key and `replicas` copies: the
/// settings `create_key_value` would use.
///
/// The stream is created directly rather than through `create_key_value`: async-nats 0.51's
/// `create_key_value` first reads the account info, whose reply from nats-server 2.9 it
/// cannot parse ("data did not match any variant of untagged enum").
pub fn bucket_stream(name: &str, history: i64, replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: history,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Opens bucket `name`, creating it (file storage, `history` values per key, one replica)
/// when it does not exist yet. Creating is idempotent on the server: agents racing to create
/// the same bucket with the same settings all succeed. A control plane that wants replicas
/// creates the bucket first ([`bucket_stream`]).
pub async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    history: i64,
) -> Result<kv::Store, BucketError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_stream(bucket_stream(name, history, 1))
        .await
        .map_err(|e| BucketError::Create(name.to_owned(), e))?;
    info!(bucket = name, history, "created KV bucket");
    js.get_key_value(name)
        .await
        .map_err(|e| BucketError::Open(name.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_never_go_under_the_prefix_or_to_system_subjects() {
        assert!(reply_allowed("weft", "_INBOX.abc.def"));
        assert!(reply_allowed("weft", "weftish.reply"));
        assert!(!reply_allowed("weft", "weft.pod.web-2.spec"));
        assert!(!reply_allowed("weft", "weft.anything"));
        assert!(!reply_allowed("a.b", "a.b.pod.x.spec"));
        assert!(reply_allowed("a.b", "a.bc"));
        assert!(!reply_allowed("weft", "$KV.weft-specs.web-2"));
        assert!(!reply_allowed(
            "weft",
            "$JS.API.STREAM.DELETE.KV_weft-specs"
        ));
    }

    #[test]
    fn headers_are_found_whatever_their_case() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/x-bincode");
        assert_eq!(
            header(Some(&h), HEADER_CONTENT_TYPE),
            Some("application/x-bincode")
        );
        assert_eq!(header(Some(&h), "Weft-Schema"), None);
        assert_eq!(header(None, "Weft-Schema"), None);
        assert_eq!(
            reply_encoding(header(Some(&h), HEADER_CONTENT_TYPE)),
            Encoding::Bincode
        );
        assert_eq!(reply_encoding(Some("text/plain")), Encoding::Json);
    }
}
