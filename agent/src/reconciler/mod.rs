//! The reconciler: the one actor that owns every kernel socket and serialises all applies.
//!
//! It runs on its own OS thread (the sockets are blocking, and a thread is what lives in a
//! network namespace). Intake hands it specs through a [`Mailbox`] that keeps only the newest;
//! it decides (stale? re-assert? conflict?), applies each subsystem independently, reads the
//! kernel back and publishes the resulting [`PodStatus`] on a watch channel for the emitter.

pub mod mailbox;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, info_span, warn};
use weft_schema::validate::ValidSpec;
use weft_schema::{ApplyResult, PodId, PodStatus};

use crate::dataplane::{self, Dataplane, Failure, Observed};
use crate::state::StateDir;
pub use mailbox::{Inbox, Mailbox, Replier, Submission};
pub use status::compose;
use status::failure_line;

/// What to do with a valid spec, given the generation already applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A newer generation (or the first): apply it.
    Apply,
    /// The same generation with the same content: apply again (each subsystem writes only
    /// what differs, so this repairs and is otherwise free).
    Reassert,
    /// An older generation: change nothing.
    Stale,
    /// The same generation with other content: refuse.
    Conflict,
}

/// The generation rules of the contract.
pub fn decide(applied: Option<&ValidSpec>, new: &ValidSpec) -> Decision {
    match applied {
        None => Decision::Apply,
        Some(a) if new.generation > a.generation => Decision::Apply,
        Some(a) if new.generation < a.generation => Decision::Stale,
        Some(a) if a == new => Decision::Reassert,
        Some(_) => Decision::Conflict,
    }
}

/// The reconciler's state and its dataplane. Used by the actor thread, and directly by the
/// one-shot `weft-agent apply`.
#[derive(Debug)]
pub struct Reconciler {
    pod: PodId,
    dataplane: Dataplane,
    state: StateDir,
    applied: Option<ValidSpec>,
    /// Why the newest refused spec was refused, until a later spec applies cleanly.
    rejection: Option<String>,
    /// What the kernel refused in the last apply.
    failures: Vec<Failure>,
    observed: Option<Observed>,
}

impl Reconciler {
    pub fn new(pod: PodId, dataplane: Dataplane, state: StateDir) -> Reconciler {
        Reconciler {
            pod,
            dataplane,
            state,
            applied: None,
            rejection: None,
            failures: Vec::new(),
            observed: None,
        }
    }

    /// Applies the spec kept in the state directory, if any: after a restart the kernel is
    /// brought back to the last applied generation before NATS is even reachable. Only what
    /// drifted is written.
    pub fn restore(&mut self) {
        let kept = match self.state.load_spec() {
            Ok(Some(kept)) => kept,
            Ok(None) => return,
            Err(e) => {
                warn!(cause = %dataplane::error_line(&e), "kept spec unreadable; waiting for one");
                return;
            }
        };
        match ValidSpec::validate(&kept, &self.pod) {
            Ok(spec) => {
                info!(generation = spec.generation, "re-asserting the kept spec");
                self.apply(spec);
            }
            Err(e) => warn!(errors = %e, "kept spec is not valid for this pod; ignored"),
        }
    }

    /// Takes one spec through the generation rules, applies it, and answers it.
    pub fn handle(&mut self, sub: Submission) {
        let generation = sub.spec.generation;
        match decide(self.applied.as_ref(), &sub.spec) {
            Decision::Stale => {
                let applied = self.applied_generation();
                info!(generation, applied, "stale spec ignored");
                sub.answer(
                    ApplyResult::Stale,
                    format!(
                        "generation {generation} is older than the applied generation {applied}"
                    ),
                );
            }
            Decision::Conflict => {
                let e = format!("generation {generation} was already applied with other content");
                warn!(generation, "spec rejected: {e}");
                self.rejection = Some(e.clone());
                sub.answer(ApplyResult::Rejected, e);
            }
            Decision::Apply | Decision::Reassert => {
                let Submission { spec, wire, reply } = sub;
                // Kept before the kernel is touched: a crash mid-apply restarts into this
                // generation, not the previous one.
                if let Err(e) = self.state.save_spec(&wire) {
                    error!(cause = %dataplane::error_line(&e), "cannot keep the spec; a restart will not restore it");
                }
                let failures = self.apply(spec);
                let (result, error) = if failures.is_empty() {
                    (ApplyResult::Applied, String::new())
                } else {
                    (ApplyResult::Failed, failure_line(&failures))
                };
                reply.send(&self.pod, generation, result, error);
            }
        }
    }

    /// Applies `spec` and reads the kernel back. Returns what failed.
    fn apply(&mut self, spec: ValidSpec) -> Vec<Failure> {
        let started = Instant::now();
        let failures = self.dataplane.apply(&spec);
        info!(
            generation = spec.generation,
            failed = failures.len(),
            micros = started.elapsed().as_micros() as u64,
            "applied"
        );
        if failures.is_empty() {
            self.rejection = None;
        }
        self.failures = failures.clone();
        self.applied = Some(spec);
        self.observe();
        failures
    }

    /// Records a spec intake refused (it did not decode or validate).
    pub fn reject(&mut self, why: String) {
        self.rejection = Some(why);
    }

    /// Reads the kernel back for the applied spec.
    pub fn observe(&mut self) {
        if let Some(spec) = &self.applied {
            self.observed = Some(self.dataplane.observe(spec));
        }
    }

    /// The status as of the last observation (unstamped: the emitter stamps it).
    pub fn status(&self) -> PodStatus {
        compose(
            &self.pod,
            self.applied.as_ref().map(|s| s.generation),
            self.observed.as_ref(),
            self.rejection.as_deref(),
            &self.failures,
        )
    }

    fn applied_generation(&self) -> u64 {
        self.applied.as_ref().map_or(0, |s| s.generation)
    }

    pub fn shutdown(&mut self) {
        self.dataplane.shutdown();
    }
}

/// The actor's side of the reconciler: send it specs and rejections, watch its status.
#[derive(Debug, Clone)]
pub struct Handle {
    mailbox: Arc<Mailbox>,
    status: watch::Receiver<PodStatus>,
}

impl Handle {
    /// Starts the reconciler thread: opens the dataplane there (its sockets must be created
    /// on the thread that uses them), restores the kept spec, then serves the mailbox.
    /// `observe_every` is how often the kernel is read back without a change.
    pub fn spawn(
        pod: PodId,
        settings: dataplane::Settings,
        observe_every: Duration,
    ) -> anyhow::Result<(Handle, std::thread::JoinHandle<()>)> {
        let mailbox = Arc::new(Mailbox::new()?);
        let state = StateDir::open(&settings.state_dir)?;
        let (status_tx, status_rx) = watch::channel(compose(&pod, None, None, None, &[]));
        let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
        let mb = mailbox.clone();
        let thread = std::thread::Builder::new()
            .name("reconciler".into())
            .spawn(move || {
                let _span = info_span!("reconciler", pod = %pod).entered();
                let dataplane = match Dataplane::open(&settings) {
                    Ok(d) => {
                        let _ = opened_tx.send(Ok(()));
                        d
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let mut rec = Reconciler::new(pod, dataplane, state);
                rec.restore();
                status_tx.send_replace(rec.status());
                run(&mut rec, &mb, &status_tx, observe_every);
                rec.shutdown();
            })?;
        opened_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("reconciler thread died while opening"))??;
        Ok((
            Handle {
                mailbox,
                status: status_rx,
            },
            thread,
        ))
    }

    /// Hands a valid spec over; a spec it displaces is answered `Stale` at once.
    pub fn submit(&self, sub: Submission) {
        if let Some(lost) = self.mailbox.update(|inbox| inbox.offer(sub)) {
            let generation = lost.spec.generation;
            info!(generation, "spec superseded before it was applied");
            lost.answer(
                ApplyResult::Stale,
                format!(
                    "generation {generation} was superseded by a newer spec before it was applied"
                ),
            );
        }
    }

    /// Records a refused spec in the status.
    pub fn reject(&self, why: String) {
        self.mailbox.update(|inbox| inbox.rejection = Some(why));
    }

    /// Asks for a fresh read of the kernel.
    pub fn observe_now(&self) {
        self.mailbox.update(|inbox| inbox.observe = true);
    }

    /// Stops the thread after the apply in progress, if any. Kernel state stays.
    pub fn shutdown(&self) {
        self.mailbox.update(|inbox| inbox.shutdown = true);
    }

    /// The newest status (unstamped).
    pub fn status(&self) -> watch::Receiver<PodStatus> {
        self.status.clone()
    }
}

/// The actor loop: wait for mail or the observation timer, then act.
fn run(
    rec: &mut Reconciler,
    mailbox: &Mailbox,
    status: &watch::Sender<PodStatus>,
    observe_every: Duration,
) {
    let mut next_observe = Instant::now() + observe_every;
    loop {
        wait_readable(
            mailbox.wake_fd(),
            next_observe.saturating_duration_since(Instant::now()),
        );
        let inbox = mailbox.take();
        if inbox.shutdown {
            return;
        }
        let mut observe = inbox.observe || Instant::now() >= next_observe;
        if let Some(why) = inbox.rejection {
            rec.reject(why);
        }
        if let Some(sub) = inbox.pending {
            rec.handle(sub); // reads the kernel back itself
            observe = false;
            next_observe = Instant::now() + observe_every;
        }
        if observe {
            rec.observe();
            next_observe = Instant::now() + observe_every;
        }
        let new = rec.status();
        status.send_if_modified(|old| {
            let changed = *old != new;
            if changed {
                *old = new;
            }
            changed
        });
    }
}

/// Blocks until `fd` is readable or `timeout` passes.
fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call. EINTR just ends the wait early.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::PodSpec;

    fn spec(generation: u64, comment: &str) -> ValidSpec {
        let wire: PodSpec = serde_json::from_value(serde_json::json!({
            "PodId": "p", "Generation": generation,
            "Firewall": {"Ingress": [{"Protocol": "tcp", "Ports": ["22"], "Comment": comment}]}
        }))
        .unwrap();
        ValidSpec::validate(&wire, &PodId::parse("p").unwrap()).unwrap()
    }

    #[test]
    fn generations_order_specs() {
        assert_eq!(decide(None, &spec(1, "a")), Decision::Apply);
        assert_eq!(decide(Some(&spec(1, "a")), &spec(2, "a")), Decision::Apply);
        assert_eq!(decide(Some(&spec(2, "a")), &spec(1, "a")), Decision::Stale);
        assert_eq!(
            decide(Some(&spec(2, "a")), &spec(2, "a")),
            Decision::Reassert
        );
        assert_eq!(
            decide(Some(&spec(2, "a")), &spec(2, "b")),
            Decision::Conflict
        );
    }
}
