//! Intake: the NATS side of the agent. Decodes specs by their headers, validates them into
//! typed values, and hands valid ones to the reconciler. Bad input never reaches it: it is
//! answered `Rejected` (when it came as a request), logged once with the reason, and shown in
//! the status `LastError`. Also answers `status.get` with the newest status, stamped now.
//!
//! Specs come from one source, never two: the plain subject, or with `--spec-source kv` the
//! pod's key in the JetStream KV bucket (see [`kv`]). `status.get` is answered either way.

pub mod kv;

use std::sync::Arc;

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use weft_emitter::{headers, stamp, Clock};
use weft_schema::codec::{decode_message, HEADER_CONTENT_TYPE, HEADER_SCHEMA};
use weft_schema::validate::ValidSpec;
use weft_schema::{ApplyReply, ApplyResult, Encoding, PodId, PodSpec, Subjects};

use crate::config::SpecSource;
use crate::reconciler::{Handle, Replier, Submission};

/// A header's value, its name matched case-insensitively (NATS keeps names as sent).
fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// The outcome of reading one spec message.
#[derive(Debug)]
pub enum Intake {
    Valid(Box<ValidSpec>, Box<PodSpec>),
    /// Did not decode or validate. `generation` is 0 when the body did not decode.
    Rejected {
        generation: u64,
        error: String,
    },
}

/// Decodes and validates one spec body. Pure: no I/O.
pub fn read_spec(
    pod: &PodId,
    content_type: Option<&str>,
    schema_version: Option<&str>,
    body: &[u8],
) -> Intake {
    match decode_message::<PodSpec>(content_type, schema_version, body) {
        Err(e) => Intake::Rejected {
            generation: 0,
            error: format!("spec rejected: {}", e.to_line()),
        },
        Ok((_, wire)) => match ValidSpec::validate(&wire, pod) {
            Ok(spec) => Intake::Valid(Box::new(spec), Box::new(wire)),
            Err(errs) => Intake::Rejected {
                generation: wire.generation,
                error: format!("generation {} rejected: {errs}", wire.generation),
            },
        },
    }
}

/// The encoding of a reply: the request's, when it named one of the two, else JSON.
fn reply_encoding(content_type: Option<&str>) -> Encoding {
    Encoding::from_content_type(content_type).unwrap_or(Encoding::Json)
}

/// Serves status.get, and specs from `source`, until the subscriptions end (or, for KV, for
/// ever: the watch is re-made after any failure).
pub async fn run<C: Clock>(
    client: Client,
    subjects: Subjects,
    source: SpecSource,
    reconciler: Handle,
    clock: Arc<C>,
) -> Result<(), async_nats::SubscribeError> {
    let mut gets = client.subscribe(subjects.status_get()).await?;
    match source {
        SpecSource::Subject => {
            let mut specs = client.subscribe(subjects.spec()).await?;
            info!(subject = %subjects.spec(), "subscribed");
            loop {
                tokio::select! {
                    Some(msg) = specs.next() => on_spec(&client, &subjects, &reconciler, msg),
                    Some(msg) = gets.next() => on_status_get(&client, &reconciler, clock.as_ref(), msg).await,
                    else => return Ok(()),
                }
            }
        }
        SpecSource::Kv => {
            let watch = kv::watch(client.clone(), subjects.clone(), reconciler.clone());
            tokio::pin!(watch);
            loop {
                tokio::select! {
                    () = &mut watch => return Ok(()),
                    Some(msg) = gets.next() => on_status_get(&client, &reconciler, clock.as_ref(), msg).await,
                    else => return Ok(()),
                }
            }
        }
    }
}

fn on_spec(client: &Client, subjects: &Subjects, reconciler: &Handle, msg: Message) {
    let content_type = header(msg.headers.as_ref(), HEADER_CONTENT_TYPE);
    let schema = header(msg.headers.as_ref(), HEADER_SCHEMA);
    let encoding = reply_encoding(content_type);
    let pod = subjects.pod();
    match read_spec(pod, content_type, schema, &msg.payload) {
        Intake::Rejected { generation, error } => {
            warn!(generation, %error, "spec rejected");
            reconciler.reject(error.clone());
            if let Some(to) = msg.reply {
                let reply = ApplyReply {
                    pod_id: pod.to_string(),
                    generation,
                    result: ApplyResult::Rejected,
                    error,
                    apply_micros: 0,
                };
                let client = client.clone();
                tokio::spawn(async move { send(&client, to, encoding, &reply).await });
            }
        }
        Intake::Valid(spec, wire) => {
            debug!(generation = spec.generation, "spec received");
            let (tx, rx) = match msg.reply {
                Some(_) => {
                    let (tx, rx) = oneshot::channel();
                    (Some(tx), Some(rx))
                }
                None => (None, None),
            };
            reconciler.submit(Submission {
                spec: *spec,
                wire: *wire,
                reply: Replier::new(tx),
            });
            // The reply waits for the apply without holding up the next message, so a burst
            // reaches the mailbox (and coalesces) while an apply runs.
            if let (Some(to), Some(rx)) = (msg.reply, rx) {
                let client = client.clone();
                tokio::spawn(async move {
                    if let Ok(reply) = rx.await {
                        send(&client, to, encoding, &reply).await;
                    }
                });
            }
        }
    }
}

async fn on_status_get<C: Clock>(client: &Client, reconciler: &Handle, clock: &C, msg: Message) {
    let Some(to) = msg.reply else { return };
    let encoding = reply_encoding(header(msg.headers.as_ref(), HEADER_CONTENT_TYPE));
    let mut status = reconciler.status().borrow().clone();
    stamp(&mut status, clock.now_unix_ms());
    send(client, to, encoding, &status).await;
}

async fn send<T: serde::Serialize>(
    client: &Client,
    to: async_nats::Subject,
    encoding: Encoding,
    value: &T,
) {
    let body = Bytes::from(encoding.encode(value));
    if let Err(e) = client
        .publish_with_headers(to, headers(encoding), body)
        .await
    {
        warn!(cause = %e, "reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodId {
        PodId::parse("web-1").unwrap()
    }

    #[test]
    fn bad_bodies_are_rejected_with_generation_0() {
        let Intake::Rejected { generation, error } = read_spec(&pod(), None, None, b"{") else {
            panic!()
        };
        assert_eq!(generation, 0);
        assert!(error.starts_with("spec rejected: invalid JSON"), "{error}");
        let Intake::Rejected { error, .. } = read_spec(&pod(), Some("text/yaml"), None, b"{}")
        else {
            panic!()
        };
        assert!(error.contains("text/yaml"), "{error}");
        let Intake::Rejected { error, .. } = read_spec(&pod(), None, Some("2"), b"{}") else {
            panic!()
        };
        assert!(error.contains("Weft-Schema"), "{error}");
    }

    #[test]
    fn invalid_specs_are_rejected_with_their_generation() {
        let body = br#"{"PodId":"web-2","Generation":9}"#;
        let Intake::Rejected { generation, error } = read_spec(&pod(), None, None, body) else {
            panic!()
        };
        assert_eq!(generation, 9);
        assert_eq!(
            error,
            "generation 9 rejected: PodId: web-2 is not this agent's pod (web-1)"
        );
    }

    #[test]
    fn replies_follow_the_request_encoding() {
        assert_eq!(
            reply_encoding(Some("application/x-bincode")),
            Encoding::Bincode
        );
        assert_eq!(reply_encoding(Some("text/plain")), Encoding::Json);
        assert_eq!(reply_encoding(None), Encoding::Json);
    }
}
