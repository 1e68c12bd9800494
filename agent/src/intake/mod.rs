//! Intake: the NATS side of the agent's specs. Reads each spec message (signature, decode,
//! validation: [`read_spec`]) on a blocking thread, off the runtime's workers, one at a time,
//! and hands valid ones to the reconciler. Bad input never reaches it: it is answered
//! `Rejected` (when it came as a request), logged (at most once a second per reason, with a
//! count of those not logged), and shown in the status `LastError`; nothing in the kernel
//! changes.
//!
//! Specs come from one source, never two: the plain subject, or with `--spec-source kv` the
//! pod's key in the JetStream KV bucket (see [`kv`]). `status.get` is answered by the emitter
//! crate ([`weft_emitter::status_get`]).
//!
//! A request whose reply subject is under `<prefix>.` (or a `$` subject) is handled as a
//! plain publish: applied or rejected, answered nowhere, logged.

pub mod kv;
mod message;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use weft_emitter::bus::{headers, reply_allowed, reply_encoding};
use weft_emitter::fit;
use weft_emitter::rate::LogGate;
use weft_schema::sign::TrustKeys;
use weft_schema::{ApplyReply, ApplyResult, Encoding, Subjects};

use crate::config::SpecSource;
use crate::reconciler::{Handle, Replier, Submission};
pub use message::{expired, read_spec, Read, Reason, SpecMessage};

/// What intake needs besides the connection.
#[derive(Debug, Clone)]
pub struct Intake {
    pub subjects: Subjects,
    pub reconciler: Handle,
    pub trust: Option<Arc<TrustKeys>>,
}

/// Where an answer goes: the request's reply subject and encoding.
#[derive(Debug)]
struct ReplyTo {
    client: Client,
    subject: Subject,
    encoding: Encoding,
}

/// Serves specs from `source` until the subscription ends (or, for KV, for ever: the watch
/// is re-made after any failure).
pub async fn run(
    client: Client,
    intake: Intake,
    source: SpecSource,
) -> Result<(), async_nats::SubscribeError> {
    match source {
        SpecSource::Subject => {
            let mut specs = client.subscribe(intake.subjects.spec()).await?;
            info!(subject = %intake.subjects.spec(), "subscribed");
            let mut gate = LogGate::default();
            while let Some(msg) = specs.next().await {
                let reply = msg.reply.and_then(|to| {
                    if reply_allowed(intake.subjects.prefix(), &to) {
                        return Some(ReplyTo {
                            client: client.clone(),
                            subject: to,
                            encoding: reply_encoding(weft_emitter::bus::header(
                                msg.headers.as_ref(),
                                weft_schema::codec::HEADER_CONTENT_TYPE,
                            )),
                        });
                    }
                    if let Some(skipped) = gate.pass("reply subject") {
                        warn!(
                            reply = %weft_schema::text::quote(&to),
                            skipped,
                            "spec handled as a plain publish: its reply subject is under the \
                             subject prefix or a system subject, so it is not answered"
                        );
                    }
                    None
                });
                let message = SpecMessage::from_nats(msg.headers.as_ref(), msg.payload);
                intake.take(message, reply, &mut gate).await;
            }
            Ok(())
        }
        SpecSource::Kv => {
            kv::watch(client, intake).await;
            Ok(())
        }
    }
}

impl Intake {
    /// Reads one message off the runtime's workers and acts on what it is.
    async fn take(&self, message: SpecMessage, reply: Option<ReplyTo>, gate: &mut LogGate) {
        let (pod, trust) = (self.subjects.pod().clone(), self.trust.clone());
        // One message at a time: a burst waits in the subscription's small queue, so at most
        // one body is being decoded, whatever arrives.
        let read = tokio::task::spawn_blocking(move || {
            let read = read_spec(&pod, trust.as_deref(), &message);
            (message, read)
        })
        .await;
        let (message, read) = match read {
            Ok(done) => done,
            Err(e) => {
                // A panic in decoding is a bug; the spec is refused, the agent goes on.
                warn!(cause = %e, "spec decoding failed");
                return;
            }
        };
        let read = match read {
            Read::Valid { spec, .. } if expired(&spec, unix_now()).is_some() => Read::Rejected {
                generation: spec.generation,
                error: expired(&spec, unix_now()).expect("checked"),
                reason: Reason::Expired,
            },
            other => other,
        };
        self.deliver(message, read, reply, gate);
    }

    /// Hands a valid spec to the reconciler, or records and answers a rejection.
    fn deliver(
        &self,
        message: SpecMessage,
        read: Read,
        reply: Option<ReplyTo>,
        gate: &mut LogGate,
    ) {
        let pod = self.subjects.pod();
        match read {
            Read::Rejected {
                generation,
                error,
                reason,
            } => {
                drop(message);
                if let Some(skipped) = gate.pass(reason.as_str()) {
                    warn!(generation, %error, skipped, "spec rejected");
                }
                self.reconciler.reject(error.clone());
                if let Some(to) = reply {
                    let reply = ApplyReply {
                        pod_id: pod.to_string(),
                        generation,
                        result: ApplyResult::Rejected,
                        error,
                        apply_micros: 0,
                    };
                    tokio::spawn(async move { send(to, reply).await });
                }
            }
            Read::Valid { spec, signed_by } => {
                debug!(generation = spec.generation, "spec received");
                let (tx, rx) = match reply {
                    Some(to) => {
                        let (tx, rx) = oneshot::channel();
                        (Some(tx), Some((to, rx)))
                    }
                    None => (None, None),
                };
                self.reconciler.submit(Submission {
                    spec: *spec,
                    kept: message,
                    signed_by,
                    reply: Replier::new(tx),
                });
                // The reply waits for the apply without holding up the next message, so a
                // burst reaches the mailbox (and coalesces) while an apply runs.
                if let Some((to, rx)) = rx {
                    tokio::spawn(async move {
                        if let Ok(reply) = rx.await {
                            send(to, reply).await;
                        }
                    });
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn send(to: ReplyTo, mut reply: ApplyReply) {
    fit::bound_reply(&mut reply);
    let body = Bytes::from(to.encoding.encode(&reply));
    if let Err(e) = to
        .client
        .publish_with_headers(to.subject, headers(to.encoding), body)
        .await
    {
        warn!(cause = %e, "reply not sent");
    }
}
