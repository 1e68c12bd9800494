//! Intake: the NATS side of the agent's specs. Messages are taken off the subscription at
//! once into a backlog bounded in bytes ([`BACKLOG_BYTES`]: when a burst overflows it, the
//! oldest waiting messages are dropped unread, and a request among them is answered `Stale`);
//! each is then read (signature, decode, validation: [`read_spec`]) on a blocking thread, off
//! the runtime's workers, one at a time, and valid ones are handed to the reconciler, whose
//! mailbox keeps the newest generation. Bad input never reaches it: it is answered
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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{oneshot, Notify};
use tracing::{debug, info, warn};
use weft_emitter::bus::{headers, reply_allowed, reply_encoding};
use weft_emitter::fit;
use weft_emitter::rate::LogGate;
use weft_schema::codec::MAX_BODY_BYTES;
use weft_schema::sign::TrustKeys;
use weft_schema::{Applicable, ApplyReply, ApplyResult, Encoding, Subjects};

use crate::config::SpecSource;
use crate::reconciler::{Handle, Replier, Submission};
use crate::role::Role;
pub use message::{expired, read_spec, Read, Reason, SpecMessage};

/// What intake needs besides the connection.
#[derive(Debug)]
pub struct Intake<R: Role> {
    pub subjects: Subjects,
    pub reconciler: Handle<R>,
    pub trust: Option<Arc<TrustKeys>>,
    /// The connection's state: what the server refused, to say why a JetStream call failed.
    pub link: weft_emitter::bus::Link,
}

/// The most bytes of spec bodies waiting to be read: two of the largest.
pub const BACKLOG_BYTES: usize = 2 * MAX_BODY_BYTES;
/// The most spec messages waiting to be read, whatever their size.
pub const BACKLOG_MESSAGES: usize = 4096;

/// Where an answer goes: the request's reply subject and encoding.
#[derive(Debug)]
pub(crate) struct ReplyTo {
    client: Client,
    subject: Subject,
    encoding: Encoding,
    pod: String,
}

/// A message waiting to be read, and where its answer goes.
type Waiting = (SpecMessage, Option<ReplyTo>);

/// Messages waiting to be read, newest last, and their bodies' bytes.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    waiting: Mutex<(VecDeque<Waiting>, usize)>,
    arrived: Notify,
}

impl Backlog {
    /// Adds a message; drops (and answers) the oldest ones while the backlog is over its
    /// bounds. The newest is never dropped.
    pub(crate) fn push(&self, message: SpecMessage, reply: Option<ReplyTo>, gate: &mut LogGate) {
        let mut dropped = Vec::new();
        {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            w.1 += message.body.len();
            w.0.push_back((message, reply));
            while w.0.len() > 1 && (w.1 > BACKLOG_BYTES || w.0.len() > BACKLOG_MESSAGES) {
                let (old, reply) = w.0.pop_front().expect("more than one");
                w.1 -= old.body.len();
                dropped.push(reply);
            }
        }
        if !dropped.is_empty() {
            if let Some(skipped) = gate.pass("backlog") {
                warn!(
                    dropped = dropped.len(),
                    skipped,
                    "specs dropped unread: newer ones arrived faster than they could be read"
                );
            }
            for to in dropped.into_iter().flatten() {
                let reply = ApplyReply {
                    pod_id: String::new(),
                    generation: 0,
                    result: ApplyResult::Stale,
                    error: "dropped unread: newer specs arrived while it waited".into(),
                    apply_micros: 0,
                };
                tokio::spawn(send(to, reply));
            }
        }
        self.arrived.notify_one();
    }

    /// The oldest waiting message, when there is one.
    async fn next(&self) -> Waiting {
        loop {
            {
                let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((message, reply)) = w.0.pop_front() {
                    w.1 -= message.body.len();
                    return (message, reply);
                }
            }
            self.arrived.notified().await;
        }
    }
}

/// Serves specs from `source` until the subscription ends (or, for KV, for ever: the watch
/// is re-made after any failure).
pub async fn run<R: Role>(
    client: Client,
    intake: Intake<R>,
    source: SpecSource,
) -> Result<(), async_nats::SubscribeError> {
    let backlog = Backlog::default();
    let reading = async {
        let mut gate = LogGate::default();
        loop {
            let (message, reply) = backlog.next().await;
            intake.take(message, reply, &mut gate).await;
        }
    };
    tokio::pin!(reading);
    match source {
        SpecSource::Subject => {
            let mut specs = client.subscribe(intake.subjects.spec()).await?;
            info!(subject = %intake.subjects.spec(), "subscribed");
            let mut gate = LogGate::default();
            loop {
                let msg = tokio::select! {
                    msg = specs.next() => match msg {
                        Some(msg) => msg,
                        None => return Ok(()),
                    },
                    () = &mut reading => unreachable!("reading never ends"),
                };
                let reply = msg.reply.and_then(|to| {
                    if reply_allowed(intake.subjects.prefix(), &to) {
                        return Some(ReplyTo {
                            client: client.clone(),
                            pod: intake.subjects.pod().to_string(),
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
                backlog.push(message, reply, &mut gate);
            }
        }
        SpecSource::Kv => {
            tokio::select! {
                () = kv::watch(client, &intake, &backlog) => Ok(()),
                () = &mut reading => unreachable!("reading never ends"),
            }
        }
    }
}

impl<R: Role> Intake<R> {
    /// Reads one message off the runtime's workers and acts on what it is.
    pub(crate) async fn take(
        &self,
        message: SpecMessage,
        reply: Option<ReplyTo>,
        gate: &mut LogGate,
    ) {
        let (pod, trust) = (self.subjects.pod().clone(), self.trust.clone());
        // One message at a time: a burst waits in the subscription's small queue, so at most
        // one body is being decoded, whatever arrives.
        let read = tokio::task::spawn_blocking(move || {
            let read = read_spec::<R::Wire>(&pod, trust.as_deref(), &message);
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
            Read::Valid { spec, .. } if expired(&*spec, unix_now()).is_some() => Read::Rejected {
                generation: spec.generation(),
                error: expired(&*spec, unix_now()).expect("checked"),
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
        read: Read<R::Spec>,
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
                crate::metrics::spec_rejected(reason.as_str());
                crate::metrics::spec_desired(generation);
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
                debug!(generation = spec.generation(), "spec received");
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
    if reply.pod_id.is_empty() {
        reply.pod_id = to.pod.clone();
    }
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
