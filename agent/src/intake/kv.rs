//! `--spec-source kv`: the pod's spec is the value of key `<pod>` in the JetStream KV bucket
//! `<prefix>-specs` (a host's, of key `host.<host>`), so a spec written while the agent was
//! down is applied when it starts.
//!
//! Choices the contract leaves open:
//! - The agent creates the bucket when it is missing (file storage, history
//!   [`SPEC_HISTORY`]), so starting an agent before its control plane works.
//! - A value is decoded exactly like a message on the spec subject: by the `Content-Type` and
//!   `Weft-Schema` headers of the message that put it (a plain `kv put` has none: JSON, as the
//!   contract says for a message without headers). The watch reads the bucket's stream
//!   directly because async-nats' KV entries drop the headers.
//! - A put has no reply: a rejected value is logged and shown in the status `LastError`, as a
//!   plain publish on the subject is. Signatures (`--trust-keys`) are the put's headers.
//! - Deleting or purging the key changes nothing in the kernel: the pod keeps its last
//!   applied spec (and the state directory still holds it for restarts). The agent logs it.
//!   Removing a pod's network is a spec, not the absence of one.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use tracing::{info, warn};
use weft_emitter::bus::{header, open_bucket};
use weft_emitter::rate::LogGate;

use super::{Backlog, Intake, SpecMessage};
use crate::dataplane::error_line;
use crate::role::Role;

/// Values kept per key in a spec bucket the agent creates: a few past generations, for
/// whoever debugs a rollout.
pub const SPEC_HISTORY: i64 = 10;

/// How long a failed watch waits before it is made again.
const RETRY: Duration = Duration::from_secs(1);

/// The header JetStream KV sets on a delete or purge marker.
const KV_OPERATION: &str = "KV-Operation";

/// What one message of the bucket's stream means for the pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Operation {
    Put,
    /// A `DEL` or `PURGE` marker: the key no longer holds a spec.
    Removed(String),
}

/// Reads a message's KV operation from its headers. Pure.
pub fn operation(headers: Option<&HeaderMap>) -> Operation {
    match header(headers, KV_OPERATION) {
        Some(op) if op.eq_ignore_ascii_case("DEL") || op.eq_ignore_ascii_case("PURGE") => {
            Operation::Removed(op.to_ascii_uppercase())
        }
        _ => Operation::Put,
    }
}

/// Watches the pod's key for ever: first its newest value, then every change. Any failure
/// (no server yet, JetStream away, the consumer lost, no permission) is logged and the watch
/// made again; the generations make a re-delivered value harmless (the same content is
/// re-asserted). A failure that lasts is reported in the status `LastError`.
pub(crate) async fn watch<R: Role>(client: Client, intake: &Intake<R>, backlog: &Backlog) {
    let bucket = intake.subjects.spec_bucket();
    let key = intake.subjects.key();
    let mut failing = false;
    let mut gate = LogGate::default();
    loop {
        match watch_once(&client, intake, backlog, &mut failing, &mut gate).await {
            Ok(()) => warn!(bucket, key, "spec KV watch ended; watching again"),
            Err(e) => {
                // An agent started before NATS fails here every second: say it once.
                if !failing {
                    let mut cause = error_line(e.as_ref());
                    // A refused JetStream request is only a timeout to the client; the server
                    // said why on the side.
                    if let Some(said) = intake.link.server_errors().into_iter().rev().find(|e| {
                        e.to_lowercase().contains("permissions violation")
                            && e.contains(&format!("KV_{bucket}"))
                    }) {
                        cause = format!("{cause} (the server said: {said})");
                    }
                    warn!(bucket, key, %cause, "spec KV watch failed; retrying every second");
                    // Connected, the server refused (no bucket and no right to create it, no
                    // permission): a dashboard should see it. Before a connection it is the
                    // outage, which the connection's own reports cover.
                    if client.connection_state() == async_nats::connection::State::Connected {
                        intake
                            .reconciler
                            .reject(weft_schema::text::last_error(&format!(
                                "spec KV bucket {bucket} unusable: {cause}"
                            )));
                    }
                }
                failing = true;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn watch_once<R: Role>(
    client: &Client,
    intake: &Intake<R>,
    backlog: &Backlog,
    failing: &mut bool,
    gate: &mut LogGate,
) -> Result<(), async_nats::Error> {
    let bucket = &intake.subjects.spec_bucket();
    let key = intake.subjects.key();
    let key = key.as_str();
    let js = jetstream::new(client.clone());
    let store = open_bucket(&js, bucket, SPEC_HISTORY).await?;
    // An ordered push consumer on the key's subject: the newest value first, then changes,
    // re-created by the client from the last sequence it saw when heartbeats stop.
    let stream = js.get_stream(format!("KV_{bucket}")).await?;
    let mut messages = stream
        .create_consumer(consumer::push::OrderedConfig {
            // Named, so the request names the filter too
            // ($JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>) and a server can let a pod
            // create consumers of its own key only.
            name: Some(format!(
                "weft-spec-{}-{}",
                key.replace('.', "-"),
                client.new_inbox().rsplit('.').next().unwrap_or("0")
            )),
            deliver_subject: client.new_inbox(),
            description: Some(format!("weft-agent spec watch for {key}")),
            filter_subject: format!("$KV.{bucket}.{key}"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    drop(store);
    info!(bucket, key, "watching spec KV");
    *failing = false;
    while let Some(msg) = messages.next().await {
        match msg {
            Ok(msg) => {
                let revision = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                if let Operation::Removed(op) = operation(msg.headers.as_ref()) {
                    warn!(
                        bucket,
                        key,
                        revision,
                        operation = op,
                        "spec key removed; the kernel keeps the last applied spec"
                    );
                    continue;
                }
                let message = SpecMessage::from_nats(msg.headers.as_ref(), msg.payload.clone());
                drop(msg);
                backlog.push(message, None, gate);
            }
            Err(e) => {
                warn!(bucket, key, cause = %error_line(&e), "spec KV watch interrupted");
                tokio::time::sleep(RETRY / 4).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_and_purge_markers_are_removals() {
        let mut h = HeaderMap::new();
        assert_eq!(operation(None), Operation::Put);
        assert_eq!(operation(Some(&h)), Operation::Put);
        h.insert("KV-Operation", "DEL");
        assert_eq!(operation(Some(&h)), Operation::Removed("DEL".into()));
        let mut h = HeaderMap::new();
        h.insert("kv-operation", "purge");
        assert_eq!(operation(Some(&h)), Operation::Removed("PURGE".into()));
    }
}
