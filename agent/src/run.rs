//! The daemon and the one-shot apply, as library functions: `main` only parses the command
//! line and waits for a signal, and tests drive these directly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::ConnectOptions;
use bytes::Bytes;
use tracing::{info, info_span, Instrument};
use weft_emitter::bus::{stamp, Clock, Connection, SystemClock};
use weft_emitter::{mirror_to_kv, status_get, Emitter, Mirrored, NatsSink};
use weft_schema::{PodId, PodSpec, PodStatus, Role as Kind, Subjects};

use crate::config::{pod_settings, ApplyArgs, Config, FirewallAtStart};
use crate::dataplane::Dataplane;
use crate::intake::{self, read_spec, Intake, Read, SpecMessage};
use crate::metrics;
use crate::reconciler::{Handle, Reconciler, Replier, Start, Submission};
use crate::role::{Plane, Pod, Role};
use crate::state::StateDir;

/// How long shutdown waits for the last status and replies to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// Messages that may wait in each subscription's queue (async-nats's default is 65,536);
/// more are dropped by the client and logged ("slow consumer"). Intake empties its queue at
/// once into a backlog bounded in bytes (`intake::BACKLOG_BYTES`), and `status.get` is
/// answered or dropped at once, so the queues stay short: a queue fills only with what the
/// client reads in one go, which is many small messages (a burst of 1,000 small specs fits)
/// or few large ones (a read is 64 KiB). A publisher that outruns even that loses messages,
/// the newest included: a control plane that needs each spec to arrive sends requests.
pub const SUBSCRIPTION_CAPACITY: usize = 1024;

/// The inbox prefix of an agent: `_INBOX_<pod>` for a pod, `_INBOX-host-<host>` for a host
/// (no pod's prefix starts so, and ids have no `.`, so a server can let each agent read its
/// own inboxes only).
pub fn inbox_prefix(subjects: &Subjects) -> String {
    match subjects.role() {
        Kind::Pod => format!("_INBOX_{}", subjects.pod()),
        Kind::Host => format!("_INBOX-host-{}", subjects.pod()),
    }
}

/// The agent's own connection options, added to the NATS flags': retried for ever from the
/// start (the agent does not need NATS to start), a dead link noticed within 15 s, small
/// subscription queues.
pub fn connect_options(subjects: &Subjects) -> impl FnOnce(ConnectOptions) -> ConnectOptions {
    let name = match subjects.role() {
        Kind::Pod => format!("weft-agent {}", subjects.pod()),
        Kind::Host => format!("weft-agent host {}", subjects.pod()),
    };
    let inbox = inbox_prefix(subjects);
    move |options| {
        options
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            // async-nats gives up on the connection at the third ping tick with pings
            // outstanding: 3 x 4 s = 12 s, with margin.
            .ping_interval(Duration::from_secs(4))
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            // Its own inboxes, so a server can let each pod read its inboxes only
            // (agent/deploy/nats-server.conf).
            .custom_inbox_prefix(inbox)
    }
}

/// Runs the agent until `shutdown` completes. The kept spec is applied before NATS is
/// reached; `bus` keeps retrying its connection in the background, and the subscriptions are
/// made (and re-made by the client after an outage) once it is up. Kernel state stays in
/// place when this returns.
///
/// Returns an error when a part of the agent stops by itself (the reconciler thread
/// panicked, a task ended): the process should exit non-zero, and a supervisor restart it.
pub async fn run<R: Role>(
    config: Config<<R::Plane as Plane>::Settings>,
    bus: Connection,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Connection { client, link } = bus;
    // Bound before anything starts: an address in use is a clear error at start.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?,
        ),
        None => None,
    };
    let subjects = config.subjects.clone();
    let pod = subjects.pod().clone();
    let (reconciler, thread) = Handle::<R>::spawn(
        pod.clone(),
        config.settings.clone(),
        Start {
            resync_every: config.resync_interval,
            trust: config.trust.clone(),
        },
    )?;
    let reconciler_thread = tokio::task::spawn_blocking(move || thread.join());
    tokio::pin!(reconciler_thread);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mirror_problem = weft_emitter::MirrorProblem::default();
    let mirror = config.status_kv.then(|| {
        let (mirror, latest) = tokio::sync::watch::channel(None);
        tokio::spawn(
            mirror_to_kv(
                async_nats::jetstream::new(client.clone()),
                subjects.status_bucket(),
                subjects.key(),
                latest,
                mirror_problem.clone(),
            )
            .instrument(info_span!("status_kv")),
        );
        mirror
    });
    let emitter = Emitter {
        sink: Mirrored {
            primary: metrics::Counted(NatsSink {
                client: client.clone(),
                subject: subjects.status(),
            }),
            mirror,
            mirror_problem,
        },
        clock: SystemClock,
        encoding: config.status_encoding,
        interval: config.status_interval,
        refresh: Some({
            let reconciler = reconciler.clone();
            Arc::new(move || reconciler.observe_now())
        }),
    };
    let mut emitter = tokio::spawn(
        emitter
            .run(reconciler.status(), link.clone(), stopped(stop_rx.clone()))
            .instrument(info_span!("emitter")),
    );
    let mut status_get = tokio::spawn(
        status_get::serve(
            client.clone(),
            subjects.status_get(),
            subjects.prefix().to_owned(),
            reconciler.status(),
            SystemClock,
        )
        .instrument(info_span!("status_get")),
    );
    let (reconciler_for_metrics, client_for_metrics) = (reconciler.clone(), client.clone());
    let mut intake = tokio::spawn(
        intake::run(
            client.clone(),
            Intake {
                subjects: subjects.clone(),
                reconciler: reconciler.clone(),
                trust: config.trust.clone(),
                link: link.clone(),
            },
            config.spec_source,
        )
        .instrument(info_span!("intake")),
    );

    let mut metrics_server = tokio::spawn(async move {
        match metrics_listener {
            Some(listener) => {
                info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics, /healthz, /readyz");
                metrics::endpoints::Endpoints::new(reconciler_for_metrics, Some(client_for_metrics))
                    .serve(listener)
                    .instrument(info_span!("metrics"))
                    .await
            }
            None => std::future::pending().await,
        }
    });
    let reconciler_ended =
        |joined: Result<std::thread::Result<()>, tokio::task::JoinError>| match joined {
            Ok(Err(panic)) => format!("the reconciler panicked: {}", panic_text(panic.as_ref())),
            _ => "the reconciler stopped".to_owned(),
        };
    let failed = tokio::select! {
        () = shutdown => None,
        joined = &mut reconciler_thread => Some(reconciler_ended(joined)),
        ended = &mut intake => Some(format!("intake stopped: {}", ended_text(ended))),
        ended = &mut status_get => Some(format!("status.get stopped: {}", ended_text(ended))),
        _ = &mut emitter => Some("the emitter stopped".to_owned()),
        _ = &mut metrics_server => Some("the metrics server stopped".to_owned()),
    };
    if let Some(mut why) = failed {
        // The emitter ends when the reconciler's status channel closes: name the cause.
        if !why.starts_with("the reconciler") {
            if let Ok(joined) =
                tokio::time::timeout(Duration::from_millis(500), &mut reconciler_thread).await
            {
                why = reconciler_ended(joined);
            }
        }
        // No clean stop: the process is to exit non-zero at once (kernel state stays).
        anyhow::bail!(why);
    }
    info!("stopping; kernel state stays in place");
    intake.abort();
    status_get.abort();
    metrics_server.abort();
    let _ = stop_tx.send(true);
    let _ = emitter.await;
    reconciler.shutdown();
    match reconciler_thread.await? {
        Ok(()) => {}
        Err(panic) => anyhow::bail!("the reconciler panicked: {}", panic_text(panic.as_ref())),
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await;
    Ok(())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn ended_text<E: std::fmt::Display>(
    ended: Result<Result<(), E>, tokio::task::JoinError>,
) -> String {
    match ended {
        Ok(Ok(())) => "its subscription ended".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Why a one-shot apply did not get as far as the kernel.
#[derive(Debug, thiserror::Error)]
pub enum ApplyOnceError {
    #[error("read {0}")]
    Read(std::path::PathBuf, #[source] std::io::Error),
    #[error("{0} is not a PodSpec")]
    Decode(std::path::PathBuf, #[source] weft_schema::DecodeError),
    #[error("PodId: {0}")]
    PodId(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// `weft-agent apply SPEC.json`: applies the spec in this network namespace, without NATS,
/// and returns the resulting status, read back from the kernel and stamped.
pub fn apply_once(args: &ApplyArgs) -> Result<PodStatus, ApplyOnceError> {
    let body = std::fs::read(&args.spec).map_err(|e| ApplyOnceError::Read(args.spec.clone(), e))?;
    let mut kept = SpecMessage::with_body(Bytes::from(body));
    kept.content_type = Some(weft_schema::codec::CONTENT_TYPE_JSON.into());
    let wire: weft_schema::PodSpec = weft_schema::Encoding::Json
        .decode(&kept.body)
        .map_err(|e| ApplyOnceError::Decode(args.spec.clone(), e))?;
    let pod = PodId::parse(&wire.pod_id).map_err(ApplyOnceError::PodId)?;
    drop(wire);
    let spec = match read_spec::<PodSpec>(&pod, None, &kept) {
        Read::Valid { spec, .. } => *spec,
        Read::Rejected { error, .. } => return Err(ApplyOnceError::Invalid(error)),
    };
    let settings = pod_settings(&args.kernel, FirewallAtStart::Kept);
    let state = StateDir::open(&settings.state_dir).map_err(anyhow::Error::from)?;
    let dataplane = Dataplane::open(&settings).map_err(anyhow::Error::from)?;
    let mut rec = Reconciler::<Pod>::new(pod, dataplane, state);
    rec.inherit_kept();
    rec.handle(Submission {
        spec,
        kept,
        signed_by: None,
        reply: Replier::new(None),
    });
    let mut status = rec.status();
    stamp(&mut status, SystemClock.now_unix_ms());
    rec.shutdown();
    Ok(status)
}
