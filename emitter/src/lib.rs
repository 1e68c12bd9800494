//! The status emitter: turns the newest observed status (a pod's [`PodStatus`], a host's
//! [`weft_schema::HostStatus`]: any [`fit::Status`]) into published snapshots.
//!
//! It publishes at once when the observed status changes (an apply, a drift repair, a
//! reconnect), and otherwise every `interval`, so a dashboard never waits longer than one
//! interval for a sign of life. `PublishedAtUnix` and `PublishedAtUnixMs` are stamped just
//! before each publish and nowhere else. A failed publish is logged and folded into the next
//! snapshot (`Overall: Degraded`, `LastError`); the emitter never stops on an error. Every
//! snapshot fits the server's `max_payload` ([`fit`]).
//!
//! The crate is also the NATS side shared by the agent and tools: [`bus`] (headers, stamp,
//! clock, buckets, the connection and its flags), [`status_get`] (answers
//! `status.get`, where DESIGN.md puts it), [`rate`] (limits on what the bus can provoke).

pub mod bus;
pub mod fit;
pub mod rate;
pub mod status_get;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use tokio::sync::watch;
use tracing::{debug, warn};
use weft_schema::text::ErrorLine;
use weft_schema::Encoding;
#[cfg(doc)]
use weft_schema::PodStatus;

use bus::{headers, open_bucket, stamp, Clock, Link};
pub use fit::Status;

/// Somewhere snapshots go: a NATS subject in production, a buffer in timing tests.
pub trait Sink: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    fn publish(
        &self,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The largest message the sink takes, headers included (0: not known yet).
    fn max_payload(&self) -> usize;

    /// A standing problem of the sink to report in each snapshot while it lasts.
    fn problem(&self) -> Option<String> {
        None
    }
}

/// Publishes on a subject of a NATS connection.
#[derive(Clone, Debug)]
pub struct NatsSink {
    pub client: async_nats::Client,
    pub subject: String,
}

impl Sink for NatsSink {
    type Error = async_nats::PublishError;

    async fn publish(&self, headers: HeaderMap, body: bytes::Bytes) -> Result<(), Self::Error> {
        self.client
            .publish_with_headers(self.subject.clone(), headers, body)
            .await
    }

    fn max_payload(&self) -> usize {
        self.client.max_payload()
    }
}

/// One encoded snapshot, as it left for the subject.
pub type Snapshot = (HeaderMap, bytes::Bytes);

/// A sink that also hands every snapshot to a KV mirror ([`mirror_to_kv`]) without waiting
/// for it: a JetStream put waits for an acknowledgement, and a slow or absent JetStream must
/// never hold up the plain status (the one that says "I am alive" after a reconnect).
#[derive(Debug)]
pub struct Mirrored<S> {
    pub primary: S,
    /// `None`: no mirror, the primary alone.
    pub mirror: Option<watch::Sender<Option<Snapshot>>>,
    /// Why the mirror fails, while it does ([`mirror_to_kv`] sets it).
    pub mirror_problem: MirrorProblem,
}

/// Why the status KV mirror fails, while it does.
pub type MirrorProblem = std::sync::Arc<std::sync::Mutex<Option<String>>>;

impl<S: Sink> Sink for Mirrored<S> {
    type Error = S::Error;

    async fn publish(&self, headers: HeaderMap, body: bytes::Bytes) -> Result<(), Self::Error> {
        if let Some(mirror) = &self.mirror {
            mirror.send_replace(Some((headers.clone(), body.clone())));
        }
        self.primary.publish(headers, body).await
    }

    fn max_payload(&self) -> usize {
        self.primary.max_payload()
    }

    fn problem(&self) -> Option<String> {
        self.mirror_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How long a failed mirror put waits before it tries the newest snapshot again.
const MIRROR_RETRY: Duration = Duration::from_secs(1);

/// Mirrors the newest snapshot into key `key` of bucket `bucket` (created with history 1 when
/// missing: only the newest status matters) until `latest`'s sender is gone. Snapshots that
/// arrive while a put is in flight are skipped for the newest one. The value is the body as
/// published on the subject, and the message keeps both headers, so a stream reader sees the
/// encoding; plain KV readers (which see no headers) should leave `--status-encoding` at JSON.
///
/// A failure on a working connection (no bucket and no right to create it, no right to put)
/// is set in `problem` until a put succeeds, for the statuses to report, and logged once per
/// distinct cause.
pub async fn mirror_to_kv(
    js: jetstream::Context,
    bucket: String,
    key: String,
    mut latest: watch::Receiver<Option<Snapshot>>,
    problem: MirrorProblem,
) {
    let subject = format!("$KV.{bucket}.{key}");
    let mut opened = false;
    let mut logged: Option<String> = None;
    let set = |p: Option<String>| *problem.lock().unwrap_or_else(|e| e.into_inner()) = p;
    loop {
        if latest.changed().await.is_err() {
            return;
        }
        loop {
            let Some((headers, body)) = latest.borrow_and_update().clone() else {
                break;
            };
            match put(&js, &bucket, &mut opened, &subject, headers, body).await {
                Ok(()) => {
                    set(None);
                    logged = None;
                    break;
                }
                Err(e) => {
                    let cause = ErrorLine(e.as_ref()).to_string();
                    if logged.as_deref() != Some(cause.as_str()) {
                        warn!(bucket, %cause, "status KV mirror failed; retrying every second");
                        logged = Some(cause.clone());
                    }
                    if js.client().connection_state() == async_nats::connection::State::Connected {
                        set(Some(format!(
                            "status KV mirror to bucket {bucket} failed: {cause}"
                        )));
                    }
                    tokio::time::sleep(MIRROR_RETRY).await;
                }
            }
        }
    }
}

/// One mirror put, acknowledged by JetStream.
async fn put(
    js: &jetstream::Context,
    bucket: &str,
    opened: &mut bool,
    subject: &str,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<(), async_nats::Error> {
    if !*opened {
        open_bucket(js, bucket, 1).await?;
        *opened = true;
    }
    js.publish_with_headers(subject.to_owned(), headers, body)
        .await?
        .await?;
    Ok(())
}

/// The emitter's settings.
#[derive(Clone)]
pub struct Emitter<S, C> {
    pub sink: S,
    pub clock: C,
    pub encoding: Encoding,
    /// The longest time between two snapshots.
    pub interval: Duration,
    /// Asks for a fresh read of the kernel; called at each tick, so the periodic snapshot
    /// carries what the kernel holds now (WireGuard handshakes and counters move on their
    /// own), and the tick is the one thing that paces periodic snapshots.
    pub refresh: Option<Refresh>,
}

impl<S: std::fmt::Debug, C: std::fmt::Debug> std::fmt::Debug for Emitter<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("sink", &self.sink)
            .field("clock", &self.clock)
            .field("encoding", &self.encoding)
            .field("interval", &self.interval)
            .field("refresh", &self.refresh.is_some())
            .finish()
    }
}

/// See [`Emitter::refresh`].
pub type Refresh = std::sync::Arc<dyn Fn() + Send + Sync>;

/// How long a tick waits for the fresh read it asked for before it publishes what it has: a
/// read-back takes about a millisecond, but a long apply must not hold up the heartbeat.
pub const REFRESH_WAIT: Duration = Duration::from_millis(250);

impl<S: Sink, C: Clock> Emitter<S, C> {
    /// Runs until `shutdown` completes. `status` carries the newest observed status; a
    /// (re)connection of `link` publishes a snapshot at once without a change, carrying the
    /// refusals the connection met before, if any.
    pub async fn run<T: Status>(
        self,
        mut status: watch::Receiver<T>,
        link: Link,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut publish_error: Option<String> = None;
        let mut published: u64 = 0;
        loop {
            let mut snapshot = status.borrow_and_update().clone();
            let past = [
                publish_error
                    .take()
                    .map(|e| format!("status publish failed: {e}")),
                link.take_report(),
            ];
            for line in past.into_iter().flatten() {
                snapshot.degrade(&line);
            }
            stamp(&mut snapshot, self.clock.now_unix_ms());
            let generation = snapshot.observed_generation();
            let overall = snapshot.overall();
            let body = fit::encode_status(snapshot, self.encoding, self.sink.max_payload());
            match self.sink.publish(headers(self.encoding), body.into()).await {
                Ok(()) => {
                    published += 1;
                    debug!(published, generation, ?overall, "status published");
                }
                Err(err) => {
                    warn!(cause = %err, "status publish failed");
                    publish_error = Some(err.to_string());
                }
            }
            // The interval restarts after every publish: a snapshot that went out because of
            // a change counts as this interval's sign of life.
            tokio::select! {
                _ = &mut shutdown => return,
                changed = status.changed() => {
                    if changed.is_err() {
                        return; // the reconciler is gone: the agent is stopping
                    }
                }
                _ = link.reconnected().notified() => {}
                _ = tokio::time::sleep(self.interval) => {
                    if let Some(refresh) = &self.refresh {
                        refresh();
                        let _ = tokio::time::timeout(REFRESH_WAIT, status.changed()).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::SystemClock;
    use std::sync::{Arc, Mutex};
    use weft_schema::codec::{HEADER_CONTENT_TYPE, HEADER_SCHEMA};
    use weft_schema::{Overall, PodStatus};

    /// A sink that records what it was given, with tokio's (paused) time of each publish.
    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<Mutex<Vec<(tokio::time::Instant, PodStatus)>>>,
        fail_next: Arc<Mutex<bool>>,
    }

    #[derive(Debug)]
    struct Refused;

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("server refused")
        }
    }

    impl std::error::Error for Refused {}

    impl Sink for Recorder {
        type Error = Refused;

        async fn publish(&self, headers: HeaderMap, body: bytes::Bytes) -> Result<(), Refused> {
            if std::mem::take(&mut *self.fail_next.lock().unwrap()) {
                return Err(Refused);
            }
            let encoding =
                Encoding::from_content_type(headers.get(HEADER_CONTENT_TYPE).map(|v| v.as_str()))
                    .unwrap();
            assert_eq!(headers.get(HEADER_SCHEMA).unwrap().as_str(), "1");
            let status: PodStatus = encoding.decode(&body).unwrap();
            self.seen
                .lock()
                .unwrap()
                .push((tokio::time::Instant::now(), status));
            Ok(())
        }

        fn max_payload(&self) -> usize {
            0
        }
    }

    /// A clock that follows tokio's paused time from a fixed epoch.
    struct PausedClock(tokio::time::Instant);

    impl Clock for PausedClock {
        fn now_unix_ms(&self) -> u64 {
            1_763_779_200_000 + self.0.elapsed().as_millis() as u64
        }
    }

    fn pending() -> PodStatus {
        PodStatus {
            pod_id: "web-1".into(),
            agent_version: "0.1.0".into(),
            observed_generation: 0,
            overall: Overall::Pending,
            last_error: String::new(),
            published_at_unix: 0,
            published_at_unix_ms: 0,
            drift_repairs: 0,
            last_drift: None,
            signed_by: None,
            network: None,
            firewall: None,
            wireguard: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_every_interval_and_at_once_on_change() {
        let rec = Recorder::default();
        let (tx, rx) = watch::channel(pending());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let start = tokio::time::Instant::now();
        let emitter = Emitter {
            sink: rec.clone(),
            clock: PausedClock(start),
            encoding: Encoding::Bincode,
            interval: Duration::from_secs(5),
            refresh: None,
        };
        let task = tokio::spawn(emitter.run(rx, Link::default(), async {
            let _ = stop_rx.await;
        }));

        tokio::time::sleep(Duration::from_millis(12_500)).await;
        // At 0, 5 and 10 s.
        assert_eq!(rec.seen.lock().unwrap().len(), 3);

        // A change at 12.5 s goes out at once, and the next tick is 5 s after it.
        tx.send_modify(|s| {
            s.observed_generation = 7;
            s.overall = Overall::Healthy;
        });
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        {
            let seen = rec.seen.lock().unwrap();
            let at: Vec<u128> = seen.iter().map(|(t, _)| (*t - start).as_millis()).collect();
            assert_eq!(at, vec![0, 5_000, 10_000, 12_500, 17_500]);
            assert_eq!(seen[3].1.observed_generation, 7);
            // Stamped just before publishing, from the injected clock.
            assert_eq!(seen[3].1.published_at_unix_ms, 1_763_779_212_500);
            assert_eq!(seen[3].1.published_at_unix, 1_763_779_212);
            assert_eq!(seen[4].1.published_at_unix_ms, 1_763_779_217_500);
        }
        stop_tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_publish_is_folded_into_the_next_snapshot() {
        let rec = Recorder::default();
        *rec.fail_next.lock().unwrap() = true;
        let (_tx, rx) = watch::channel(pending());
        let start = tokio::time::Instant::now();
        let emitter = Emitter {
            sink: rec.clone(),
            clock: PausedClock(start),
            encoding: Encoding::Json,
            interval: Duration::from_secs(1),
            refresh: None,
        };
        let task = tokio::spawn(emitter.run(
            rx,
            Link::default(),
            tokio::time::sleep(Duration::from_millis(2_500)),
        ));
        task.await.unwrap();
        let seen = rec.seen.lock().unwrap();
        // 0 s failed, 1 s carries the failure, 2 s is clean again.
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1.overall, Overall::Degraded);
        assert_eq!(
            seen[0].1.last_error,
            "status publish failed: server refused"
        );
        assert_eq!(seen[1].1.overall, Overall::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn each_tick_publishes_one_fresh_read() {
        let rec = Recorder::default();
        let (tx, rx) = watch::channel(pending());
        let tx = Arc::new(tx);
        let reads = Arc::new(Mutex::new(0u64));
        // The "reconciler": every refresh is a new read (a counter moved), sent right away.
        let refresh: Refresh = {
            let (tx, reads) = (tx.clone(), reads.clone());
            Arc::new(move || {
                let mut n = reads.lock().unwrap();
                *n += 1;
                let n = *n;
                tx.send_modify(|s| s.drift_repairs = n);
            })
        };
        let start = tokio::time::Instant::now();
        let emitter = Emitter {
            sink: rec.clone(),
            clock: PausedClock(start),
            encoding: Encoding::Json,
            interval: Duration::from_secs(2),
            refresh: Some(refresh),
        };
        let task = tokio::spawn(emitter.run(
            rx,
            Link::default(),
            tokio::time::sleep(Duration::from_millis(6_500)),
        ));
        task.await.unwrap();
        let seen = rec.seen.lock().unwrap();
        let at: Vec<u128> = seen.iter().map(|(t, _)| (*t - start).as_millis()).collect();
        // Once at start, then once per tick, each carrying the read made for it.
        assert_eq!(at, vec![0, 2_000, 4_000, 6_000]);
        let reads: Vec<u64> = seen.iter().map(|(_, s)| s.drift_repairs).collect();
        assert_eq!(reads, vec![0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn notify_publishes_without_a_change() {
        let rec = Recorder::default();
        let (_tx, rx) = watch::channel(pending());
        let link = Link::default();
        let emitter = Emitter {
            sink: rec.clone(),
            clock: SystemClock,
            encoding: Encoding::Json,
            interval: Duration::from_secs(60),
            refresh: None,
        };
        let task =
            tokio::spawn(emitter.run(rx, link.clone(), tokio::time::sleep(Duration::from_secs(2))));
        tokio::time::sleep(Duration::from_secs(1)).await;
        link.reconnected().notify_one();
        task.await.unwrap();
        assert_eq!(rec.seen.lock().unwrap().len(), 2);
    }
}
