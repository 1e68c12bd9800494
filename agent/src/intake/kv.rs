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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use tracing::{debug, info, warn};
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
///
/// Beside the watch, the key's newest value is read directly every [`READ_EVERY`] and handed
/// on when it is newer than anything the watch delivered: the watch is the fast path, the
/// read the guarantee. A watch can stall without a word: after a server loss its consumer is
/// made again, and nats-server 2.9 may place the new one on the lost server, where the
/// request waits for ever (the fleet benchmark saw a quarter of the pods on the lost node
/// stuck for minutes while the value sat in the bucket's other replicas).
pub(crate) async fn watch<R: Role>(client: Client, intake: &Intake<R>, backlog: &Backlog) {
    let newest = AtomicU64::new(0);
    let stalled = AtomicBool::new(false);
    futures::future::join(
        watch_loop(&client, intake, backlog, &newest, &stalled),
        read_loop(&client, intake, backlog, &newest, &stalled),
    )
    .await;
}

/// How often the key's newest value is read directly.
pub const READ_EVERY: Duration = Duration::from_secs(10);
/// After a reconnection or a stalled watch, while its consumer is being made again: read this
/// often ...
const READ_AFTER_RECONNECT: Duration = Duration::from_secs(2);
/// ... for this long.
const FAST_READS_FOR: Duration = Duration::from_secs(30);

/// Reads the key's newest value every [`READ_EVERY`] (at once and then every
/// [`READ_AFTER_RECONNECT`] for a while after the connection came back or the watch said it
/// stalled); hands it on when its stream sequence is above `newest` (the newest the watch or
/// this loop handed on).
async fn read_loop<R: Role>(
    client: &Client,
    intake: &Intake<R>,
    backlog: &Backlog,
    newest: &AtomicU64,
    stalled: &AtomicBool,
) {
    let bucket = intake.subjects.spec_bucket();
    let key = intake.subjects.key();
    let subject = format!("$KV.{bucket}.{key}");
    let js = jetstream::new(client.clone());
    let mut gate = LogGate::default();
    let mut said = false;
    let mut next_read = tokio::time::Instant::now() + READ_EVERY;
    let mut fast_until = None;
    let mut was_connected = true;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tokio::time::Instant::now();
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        if connected && !was_connected {
            fast_until = Some(now + FAST_READS_FOR);
            next_read = now + READ_AFTER_RECONNECT;
        }
        if stalled.swap(false, Ordering::Relaxed) {
            fast_until = Some(now + FAST_READS_FOR);
            next_read = now;
        }
        was_connected = connected;
        if now < next_read || !connected {
            continue;
        }
        next_read = now
            + match fast_until {
                Some(until) if now < until => READ_AFTER_RECONNECT,
                _ => READ_EVERY,
            };
        let read = async {
            // One request: the stream's name is all a direct get needs, not its info.
            let stream = js.get_stream_no_info(format!("KV_{bucket}")).await?;
            Ok::<_, async_nats::Error>(stream.direct_get_last_for_subject(&subject).await?)
        };
        match read.await {
            Ok(msg) => {
                said = false;
                if newest.fetch_max(msg.sequence, Ordering::Relaxed) >= msg.sequence {
                    continue;
                }
                if let Operation::Removed(_) = operation(Some(&msg.headers)) {
                    continue;
                }
                info!(
                    bucket,
                    key,
                    revision = msg.sequence,
                    "spec KV read found a value the watch had not delivered"
                );
                backlog.push(
                    SpecMessage::from_nats(Some(&msg.headers), msg.payload),
                    None,
                    &mut gate,
                );
            }
            // No value yet, or the bucket away: the watch reports outages.
            Err(e) => {
                if !said {
                    debug!(bucket, key, cause = %error_line(e.as_ref()), "spec KV read failed");
                }
                said = true;
            }
        }
    }
}

async fn watch_loop<R: Role>(
    client: &Client,
    intake: &Intake<R>,
    backlog: &Backlog,
    newest: &AtomicU64,
    stalled: &AtomicBool,
) {
    let bucket = intake.subjects.spec_bucket();
    let key = intake.subjects.key();
    let mut failing = false;
    let mut gate = LogGate::default();
    loop {
        match watch_once(
            client,
            intake,
            backlog,
            newest,
            stalled,
            &mut failing,
            &mut gate,
        )
        .await
        {
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
    newest: &AtomicU64,
    stalled: &AtomicBool,
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
            // create consumers of its own key only. The name ends in a random token (an
            // inbox's): after a server loss the client deletes the old consumer by name before
            // making it again, a deletion a server can only allow for any name, so only the
            // agent that made a consumer knows the name that deletes it.
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
                newest.fetch_max(revision, Ordering::Relaxed);
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
                stalled.store(true, Ordering::Relaxed);
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
