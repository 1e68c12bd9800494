//! The reconciler: the one actor that owns every kernel socket and serialises all applies.
//!
//! It runs on its own OS thread (the sockets are blocking, and a thread is what lives in a
//! network namespace). Intake hands it specs through a [`Mailbox`] that keeps only the newest;
//! it decides (stale? re-assert? conflict?), applies each subsystem independently, reads the
//! kernel back and publishes the resulting [`PodStatus`] on a watch channel for the emitter.

pub mod drift;
pub mod mailbox;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, info_span, warn};
use weft_schema::validate::ValidSpec;
use weft_schema::{ApplyResult, PodId, PodStatus};

use crate::dataplane::events::{Hints, KernelEvents};
use crate::dataplane::{self, Dataplane, Failure, Observed};
use crate::state::StateDir;
use drift::{Budgets, Drift};
pub use mailbox::{Inbox, Mailbox, Replier, Submission};
pub use status::compose;
use status::failure_line;
use weft_schema::text::ErrorLine;

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
    drift: Drift,
    budgets: Budgets,
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
            drift: Drift::default(),
            budgets: Budgets::new(Instant::now()),
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

    /// Learns from the kept spec which objects an earlier agent process made, without
    /// applying it, so the next apply can remove what the new spec drops (the one-shot
    /// `weft-agent apply`; the daemon re-asserts the kept spec instead, see [`Self::restore`]).
    pub fn inherit_kept(&mut self) {
        let Ok(Some(kept)) = self.state.load_spec() else {
            return;
        };
        if let Ok(spec) = ValidSpec::validate(&kept, &self.pod) {
            if let Some(wg) = &spec.wireguard {
                self.dataplane.inherit_wireguard(wg.interface.as_str());
            }
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
                warn!(generation, error = %e, "spec rejected");
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
                self.apply(spec);
                let (result, error) = if self.failures.is_empty() {
                    (ApplyResult::Applied, String::new())
                } else {
                    (ApplyResult::Failed, failure_line(&self.failures))
                };
                reply.send(&self.pod, generation, result, error);
            }
        }
    }

    /// Applies `spec` and reads the kernel back. What failed is kept in `failures`.
    fn apply(&mut self, spec: ValidSpec) {
        let started = Instant::now();
        self.failures = self.dataplane.apply(&spec);
        info!(
            generation = spec.generation,
            failed = self.failures.len(),
            micros = started.elapsed().as_micros() as u64,
            "applied"
        );
        if self.failures.is_empty() {
            self.rejection = None;
        }
        self.applied = Some(spec);
        self.observe();
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

    /// Reads the kernel back and repairs what drifted from the applied spec. `hints` are the
    /// kernel's notifications since the last check (for the drift record's change and author);
    /// `retry_failed` also re-applies subsystems whose last apply failed (an interface that
    /// was missing may have appeared). Returns when to check again when a repair was held
    /// back by its rate limit.
    pub fn check(&mut self, hints: &Hints, retry_failed: bool) -> Option<Instant> {
        let spec = self.applied.clone()?;
        let observed = self.dataplane.observe(&spec);
        let own_port = self.dataplane.rtnl_port();
        let now = Instant::now();
        let mut again: Option<Instant> = None;
        let mut wrote = false;
        for (subsystem, found) in observed.degraded() {
            let failed = self.failures.iter().any(|f| f.subsystem == subsystem);
            if failed && !retry_failed {
                continue;
            }
            if let Err(wait) = self.budgets.of(subsystem).take(now) {
                again = Some(again.map_or(now + wait, |a| a.min(now + wait)));
                continue;
            }
            wrote = true;
            let started = Instant::now();
            let failures = self.dataplane.apply_one(subsystem, &spec);
            self.failures.retain(|f| f.subsystem != subsystem);
            if !failures.is_empty() {
                for f in &failures {
                    warn!(?subsystem, error = %ErrorLine(&f.error), "repair failed");
                }
                self.failures.extend(failures);
            } else if failed {
                info!(?subsystem, "applied on retry");
            } else {
                let event = drift::event(
                    subsystem,
                    drift::change(hints, subsystem, &found),
                    drift::author(hints, subsystem, own_port),
                );
                warn!(
                    ?subsystem,
                    change = %event.change,
                    by = %event.by,
                    micros = started.elapsed().as_micros() as u64,
                    "drift repaired"
                );
                self.drift.repairs += 1;
                self.drift.last = Some(event);
            }
        }
        self.observed = Some(if wrote {
            self.dataplane.observe(&spec)
        } else {
            observed
        });
        again
    }

    /// The status as of the last observation (unstamped: the emitter stamps it).
    pub fn status(&self) -> PodStatus {
        compose(
            &self.pod,
            self.applied.as_ref().map(|s| s.generation),
            self.observed.as_ref(),
            self.rejection.as_deref(),
            &self.failures,
            &self.drift,
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
    pub fn spawn(
        pod: PodId,
        settings: dataplane::Settings,
        resync_every: Duration,
    ) -> anyhow::Result<(Handle, std::thread::JoinHandle<()>)> {
        let mailbox = Arc::new(Mailbox::new()?);
        let state = StateDir::open(&settings.state_dir)?;
        let (status_tx, status_rx) =
            watch::channel(compose(&pod, None, None, None, &[], &Drift::default()));
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
                // Opened before the kept spec is restored, so nothing that happens from here
                // on goes unnoticed.
                let events = KernelEvents::open(&settings.resolv_conf)
                    .map_err(|e| warn!(cause = %e, "no kernel events; drift is found by the periodic checks only"))
                    .ok();
                let mut rec = Reconciler::new(pod, dataplane, state);
                rec.restore();
                status_tx.send_replace(rec.status());
                run(&mut rec, &mb, events, &status_tx, resync_every);
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

    /// Asks for a fresh read of the kernel; the status watch is notified with it even when
    /// nothing changed (the emitter's tick waits for it).
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

/// The actor loop: wait for mail, a kernel event or the resync timer, then act. Periodic
/// reads come from the emitter's tick (`observe_now`), so each periodic snapshot carries a
/// read made for it; `resync_every` is the safety net for lost events, and also retries what
/// failed to apply.
fn run(
    rec: &mut Reconciler,
    mailbox: &Mailbox,
    mut events: Option<KernelEvents>,
    status: &watch::Sender<PodStatus>,
    resync_every: Duration,
) {
    let mut next_resync = Instant::now() + resync_every;
    let mut held_back: Option<Instant> = None;
    let mut fds = vec![mailbox.wake_fd()];
    if let Some(ev) = &events {
        fds.extend(ev.fds());
    }
    loop {
        let deadline = [Some(next_resync), held_back]
            .into_iter()
            .flatten()
            .min()
            .expect("the resync deadline is always set");
        wait_readable(&fds, deadline.saturating_duration_since(Instant::now()));
        let inbox = mailbox.take();
        if inbox.shutdown {
            return;
        }
        if let Some(why) = inbox.rejection {
            rec.reject(why);
        }
        if let Some(sub) = inbox.pending {
            rec.handle(sub); // reads the kernel back itself
        }
        let hints = events.as_mut().map(KernelEvents::drain).unwrap_or_default();
        let now = Instant::now();
        let touched = drift::touched(&hints, rec.dataplane.rtnl_port());
        let resync = now >= next_resync || hints.overrun;
        let requested = inbox.observe;
        let due = requested || held_back.is_some_and(|t| now >= t);
        if touched || resync || due {
            if hints.overrun {
                warn!("kernel events were lost; checking everything");
            }
            held_back = rec.check(&hints, touched || resync);
            if resync {
                next_resync = now + resync_every;
            }
        }
        let new = rec.status();
        if requested {
            // The emitter's tick is waiting for this read, changed or not.
            status.send_replace(new);
        } else {
            status.send_if_modified(|old| {
                let changed = *old != new;
                if changed {
                    *old = new;
                }
                changed
            });
        }
    }
}

/// Blocks until one of `fds` is readable or `timeout` passes.
fn wait_readable(fds: &[std::os::fd::RawFd], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfds for the duration of the call.
    // EINTR just ends the wait early.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
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
