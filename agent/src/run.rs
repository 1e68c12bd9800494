//! The daemon and the one-shot apply, as library functions: `main` only parses the command
//! line and waits for a signal, and tests drive these directly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tracing::{info, info_span, warn, Instrument};
use weft_emitter::{mirror_to_kv, stamp, Clock, Emitter, Mirrored, NatsSink, SystemClock};
use weft_schema::validate::ValidSpec;
use weft_schema::{Encoding, PodId, PodSpec, PodStatus, Subjects};

use crate::config::{ApplyArgs, DaemonArgs, KernelArgs, WireGuardMode};
use crate::dataplane::{self, wireguard, Dataplane};
use crate::intake;
use crate::reconciler::{Handle, Reconciler, Replier, Submission};
use crate::state::StateDir;

/// How long shutdown waits for the last status and replies to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

fn settings(kernel: &KernelArgs) -> dataplane::Settings {
    dataplane::Settings {
        state_dir: kernel.state_dir.clone(),
        resolv_conf: kernel.resolv_conf.clone(),
        wireguard: match kernel.wireguard {
            WireGuardMode::Auto => wireguard::Mode::Auto,
            WireGuardMode::Kernel => wireguard::Mode::Kernel,
            WireGuardMode::Userspace => wireguard::Mode::Userspace,
        },
    }
}

/// Runs the agent until `shutdown` completes. The kept spec is applied before NATS is
/// reached; the connection is retried forever in the background, and the subscriptions are
/// made (and re-made by the client after an outage) once it is up. Kernel state stays in
/// place when this returns.
pub async fn run(args: DaemonArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let pod = args.pod_id.clone().context("--pod-id is required")?;
    let subjects = Subjects::new(&args.subject_prefix, pod.clone());
    let (reconciler, thread) =
        Handle::spawn(pod.clone(), settings(&args.kernel), args.resync_interval)?;

    // A reconnect publishes a fresh status at once: dashboards missed whatever happened
    // while the link was down.
    let publish_now = Arc::new(Notify::new());
    let on_event = publish_now.clone();
    let client = async_nats::ConnectOptions::new()
        .name(format!("weft-agent {pod}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // A dead link must be noticed within 15 s. async-nats gives up on the connection at
        // the third ping tick with pings outstanding: 3 x 4 s = 12 s, with margin.
        .ping_interval(Duration::from_secs(4))
        .event_callback(move |event| {
            let on_event = on_event.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("connected to NATS");
                        on_event.notify_one();
                    }
                    async_nats::Event::Disconnected => warn!("disconnected from NATS"),
                    other => info!(event = %other, "NATS"),
                }
            }
        })
        // Each URL on its own: async-nats parses a single string as one URL, so a joined
        // "a,b,c" would be refused as an invalid port.
        .connect(args.nats_url.as_slice())
        .await
        .context("NATS URL")?;

    let clock = Arc::new(SystemClock);
    let sink = NatsSink {
        client: client.clone(),
        subject: subjects.status(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let status = reconciler.status();
    let mirror = args.status_kv.then(|| {
        let (mirror, latest) = tokio::sync::watch::channel(None);
        tokio::spawn(
            mirror_to_kv(
                async_nats::jetstream::new(client.clone()),
                subjects.status_bucket(),
                pod.to_string(),
                latest,
            )
            .instrument(info_span!("status_kv")),
        );
        mirror
    });
    let emitter = Emitter {
        sink: Mirrored {
            primary: sink,
            mirror,
        },
        clock: SystemClock,
        encoding: args.status_encoding,
        interval: args.status_interval,
        refresh: Some({
            let reconciler = reconciler.clone();
            Arc::new(move || reconciler.observe_now())
        }),
    };
    let emitter = tokio::spawn(
        emitter
            .run(status, publish_now, stopped(stop_rx.clone()))
            .instrument(info_span!("emitter")),
    );
    let intake = tokio::spawn(
        intake::run(
            client.clone(),
            subjects,
            args.spec_source,
            reconciler.clone(),
            clock,
        )
        .instrument(info_span!("intake")),
    );

    shutdown.await;
    info!("stopping; kernel state stays in place");
    intake.abort();
    let _ = stop_tx.send(true);
    let _ = emitter.await;
    reconciler.shutdown();
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("reconciler thread panicked"))?;
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await;
    Ok(())
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
    #[error("spec rejected: {0}")]
    Invalid(weft_schema::ValidationErrors),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// `weft-agent apply SPEC.json`: applies the spec in this network namespace, without NATS,
/// and returns the resulting status, read back from the kernel and stamped.
pub fn apply_once(args: &ApplyArgs) -> Result<PodStatus, ApplyOnceError> {
    let body = std::fs::read(&args.spec).map_err(|e| ApplyOnceError::Read(args.spec.clone(), e))?;
    let wire: PodSpec = Encoding::Json
        .decode(&body)
        .map_err(|e| ApplyOnceError::Decode(args.spec.clone(), e))?;
    let pod = PodId::parse(&wire.pod_id).map_err(ApplyOnceError::PodId)?;
    let spec = ValidSpec::validate(&wire, &pod).map_err(ApplyOnceError::Invalid)?;
    let settings = settings(&args.kernel);
    let state = StateDir::open(&settings.state_dir).map_err(anyhow::Error::from)?;
    let dataplane = Dataplane::open(&settings).map_err(anyhow::Error::from)?;
    let mut rec = Reconciler::new(pod, dataplane, state);
    rec.inherit_kept();
    rec.handle(Submission {
        spec,
        wire,
        reply: Replier::new(None),
    });
    let mut status = rec.status();
    stamp(&mut status, SystemClock.now_unix_ms());
    rec.shutdown();
    Ok(status)
}
