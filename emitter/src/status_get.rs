//! `<prefix>.pod.<pod>.status.get`: answers a request with the newest status, stamped now,
//! so a dashboard that starts up need not wait a tick.
//!
//! Whoever may publish on the subject chooses the reply subject and the rate, so: a request
//! whose reply subject is under `<prefix>.` or a `$` subject is not answered
//! ([`crate::bus::reply_allowed`]), at most [`PER_SECOND`] requests are answered in any
//! one-second window (the rest are dropped), and each refusal is logged at most once a second
//! with a count of those not logged.

use std::time::{Duration, Instant};

use async_nats::{Client, Message};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{debug, warn};
use weft_schema::codec::HEADER_CONTENT_TYPE;

use crate::bus::{header, headers, reply_allowed, reply_encoding, stamp, Clock};
use crate::fit::{self, Status};
use crate::rate::{LogGate, Window};

/// The most `status.get` requests answered in any one-second window.
pub const PER_SECOND: usize = 100;

/// Serves `subject` until the subscription ends.
pub async fn serve<C: Clock, S: Status>(
    client: Client,
    subject: String,
    prefix: String,
    status: watch::Receiver<S>,
    clock: C,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.subscribe(subject).await?;
    let mut answers = Answers {
        prefix,
        window: Window::new(PER_SECOND, Duration::from_secs(1)),
        gate: LogGate::default(),
    };
    while let Some(msg) = requests.next().await {
        let Some(to) = answers.admit(&msg, Instant::now()) else {
            continue;
        };
        let encoding = reply_encoding(header(msg.headers.as_ref(), HEADER_CONTENT_TYPE));
        let mut snapshot = status.borrow().clone();
        stamp(&mut snapshot, clock.now_unix_ms());
        let body = fit::encode_status(snapshot, encoding, client.max_payload());
        if let Err(e) = client
            .publish_with_headers(to, headers(encoding), body.into())
            .await
        {
            if let Some(skipped) = answers.gate.pass("status.get reply failed") {
                warn!(cause = %e, skipped, "status.get reply not sent");
            }
        }
    }
    Ok(())
}

/// Which requests get an answer.
#[derive(Debug)]
struct Answers {
    prefix: String,
    window: Window,
    gate: LogGate,
}

impl Answers {
    /// The subject to answer `msg` on, or `None` (logged, rate-limited).
    fn admit(&mut self, msg: &Message, now: Instant) -> Option<async_nats::Subject> {
        let to = msg.reply.clone()?;
        if !reply_allowed(&self.prefix, &to) {
            if let Some(skipped) = self.gate.pass("status.get reply subject") {
                warn!(
                    reply = %weft_schema::text::quote(&to),
                    skipped,
                    "status.get not answered: its reply subject is under the subject prefix or a system subject"
                );
            }
            return None;
        }
        if !self.window.allow(now) {
            if let Some(skipped) = self.gate.pass("status.get rate") {
                warn!(
                    skipped,
                    per_second = PER_SECOND,
                    "status.get requests dropped: more than the rate limit"
                );
            }
            return None;
        }
        debug!("status.get");
        Some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(reply: Option<&str>) -> Message {
        Message {
            subject: "weft.pod.web-1.status.get".into(),
            reply: reply.map(Into::into),
            payload: Default::default(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn only_plain_reply_subjects_within_the_rate_are_answered() {
        let mut a = Answers {
            prefix: "weft".into(),
            window: Window::new(PER_SECOND, Duration::from_secs(1)),
            gate: LogGate::default(),
        };
        let t0 = Instant::now();
        assert!(a.admit(&request(None), t0).is_none());
        assert!(a.admit(&request(Some("weft.pod.web-2.spec")), t0).is_none());
        assert!(a
            .admit(&request(Some("$KV.weft-specs.web-2")), t0)
            .is_none());
        let answered = (0..300)
            .filter(|_| a.admit(&request(Some("_INBOX.x.y")), t0).is_some())
            .count();
        assert_eq!(answered, PER_SECOND);
        assert!(a
            .admit(&request(Some("_INBOX.x.y")), t0 + Duration::from_secs(1))
            .is_some());
    }
}
