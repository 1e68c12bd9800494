//! The reconciler: the one actor that owns every kernel socket and serialises all applies.
//!
//! It runs on its own OS thread (the sockets are blocking, and a thread is what lives in a
//! network namespace). Intake hands it specs through a [`Mailbox`] that keeps only the newest;
//! it decides (stale? re-assert? conflict?), applies each subsystem independently, reads the
//! kernel back and publishes the resulting status on a watch channel for the emitter. It is
//! written once for every [`Role`]: a pod's and a host's reconciler differ only in the spec,
//! the status and the kernel half ([`Plane`]) they drive.

pub mod drift;
pub mod mailbox;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{error, info, info_span, warn};
use weft_emitter::rate::LogGate;
use weft_schema::sign::TrustKeys;
use weft_schema::text::rfc3339;
use weft_schema::{Applicable, ApplyResult, PodId};

use crate::dataplane::events::{Hints, KernelEvents};
use crate::dataplane::{self, Failure};
use crate::intake::{read_spec, Read};
use crate::metrics;
use crate::role::{Facts, Plane, Role};
use crate::state::StateDir;
use drift::{Budgets, Drift};
pub use mailbox::{Inbox, Mailbox, Replier, Submission};
pub use status::compose;
pub(crate) use status::failure_line;
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
pub fn decide<S: Applicable + PartialEq>(applied: Option<&S>, new: &S) -> Decision {
    match applied {
        None => Decision::Apply,
        Some(a) if new.generation() > a.generation() => Decision::Apply,
        Some(a) if new.generation() < a.generation() => Decision::Stale,
        Some(a) if a == new => Decision::Reassert,
        Some(_) => Decision::Conflict,
    }
}

/// What the kernel holds, as the role's plane reads it.
type Observed<R> = <<R as Role>::Plane as Plane>::Observed;

/// The reconciler's state and its plane. Used by the actor thread, and directly by the
/// one-shot `weft-agent apply`.
#[derive(Debug)]
pub struct Reconciler<R: Role> {
    pod: PodId,
    dataplane: R::Plane,
    state: StateDir,
    applied: Option<R::Spec>,
    /// Why the newest refused spec was refused, until a later spec applies cleanly.
    rejection: Option<String>,
    /// What the kernel refused in the last apply.
    failures: Vec<Failure>,
    observed: Option<Observed<R>>,
    drift: Drift,
    budgets: Budgets,
    /// Keys a kept spec must be signed with (`--trust-keys`).
    trust: Option<Arc<TrustKeys>>,
    /// The key that signed the applied spec.
    signed_by: Option<String>,
    /// What was installed at start, before any spec (a pod's `--firewall-at-start baseline`).
    baseline: Option<Observed<R>>,
    /// Stale and conflicting specs are logged at most once a second each.
    log_gate: LogGate,
    /// Answers held until the status they change is out (see [`Self::take_answers`]).
    answers: Vec<Answer>,
    /// How long the last apply took, from its start to the kernel's acknowledgement of its
    /// last write (every change is acknowledged before the next is sent, and nothing but
    /// the return follows the last one).
    apply_micros: u64,
}

/// An answer to a spec, to send once the status it changed is published.
#[derive(Debug)]
pub struct Answer {
    reply: Replier,
    generation: u64,
    result: ApplyResult,
    error: String,
    /// `ApplyMicros`: see [`Reconciler::apply`].
    micros: u64,
}

impl Answer {
    pub fn send(self, pod: &PodId) {
        self.reply
            .send(pod, self.generation, self.result, self.error, self.micros);
    }
}

impl<R: Role> Reconciler<R> {
    pub fn new(pod: PodId, dataplane: R::Plane, state: StateDir) -> Reconciler<R> {
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
            trust: None,
            signed_by: None,
            baseline: None,
            log_gate: LogGate::default(),
            answers: Vec::new(),
            apply_micros: 0,
        }
    }

    /// The answers of the specs handled since the last call. The actor sends them after it
    /// published the status, so a control plane that asks for the status once it has its
    /// answer sees what the answer says.
    pub fn take_answers(&mut self) -> Vec<Answer> {
        std::mem::take(&mut self.answers)
    }

    fn answer(&mut self, reply: Replier, generation: u64, result: ApplyResult, error: String) {
        let micros = match result {
            ApplyResult::Applied | ApplyResult::Failed => self.apply_micros,
            ApplyResult::Rejected | ApplyResult::Stale => 0,
        };
        self.answers.push(Answer {
            reply,
            generation,
            result,
            error,
            micros,
        });
    }

    /// Checks kept and incoming specs against these keys.
    pub fn trusting(mut self, trust: Option<Arc<TrustKeys>>) -> Reconciler<R> {
        self.trust = trust;
        self
    }

    /// Applies the spec kept in the state directory, if any: after a restart the kernel is
    /// brought back to the last applied generation before NATS is even reachable. Only what
    /// drifted is written. The kept spec is verified again (signature, decode, validation)
    /// first, and not applied when the agent crashed while applying it twice in a row. With
    /// nothing applied, installs what the plane installs before any spec (a pod's baseline
    /// firewall with `--firewall-at-start baseline`).
    pub fn restore(&mut self) {
        self.restore_kept();
        if self.applied.is_some() {
            return;
        }
        match self.dataplane.before_any_spec() {
            None => {}
            Some(Ok(observed)) => {
                info!("installed what holds before any spec; waiting for a spec");
                self.baseline = Some(observed);
            }
            Some(Err(failure)) => {
                error!(error = %ErrorLine(&failure.error), subsystem = ?failure.subsystem, "not installed before the first spec");
                self.failures = vec![failure];
            }
        }
    }

    fn restore_kept(&mut self) {
        let dir = self.state.path().display().to_string();
        let kept = match self.state.load_spec() {
            Ok(Some(kept)) => kept,
            Ok(None) => return,
            Err(e) => {
                let e = dataplane::error_line(&e);
                warn!(cause = %e, "kept spec unreadable; waiting for a new spec");
                self.rejection = Some(format!("kept spec unreadable: {e}; waiting for a new spec"));
                return;
            }
        };
        let (spec, signed_by) = match read_spec::<R::Wire>(&self.pod, self.trust.as_deref(), &kept)
        {
            Read::Valid { spec, signed_by } => (*spec, signed_by),
            Read::Rejected { error, .. } => {
                let line = format!(
                    "kept spec in {dir} does not verify ({error}); not applied, waiting for a new spec"
                );
                warn!(error = %line, "kept spec not applied");
                self.rejection = Some(line);
                return;
            }
        };
        drop(kept);
        if let Some(a) = self.state.applying() {
            if a.generation == spec.generation() && a.attempts >= 2 {
                let line = format!(
                    "kept spec generation {} crashed the agent; waiting for a new spec",
                    spec.generation()
                );
                error!(attempts = a.attempts, error = %line, "kept spec not applied");
                self.rejection = Some(line);
                return;
            }
        }
        info!(generation = spec.generation(), "re-asserting the kept spec");
        self.signed_by = signed_by;
        self.apply(spec);
    }

    /// Takes one spec through the generation rules, applies it, and answers it.
    pub fn handle(&mut self, sub: Submission<R::Spec>) {
        let generation = sub.spec.generation();
        match decide(self.applied.as_ref(), &sub.spec) {
            Decision::Stale => {
                let applied = self.applied_generation();
                if let Some(skipped) = self.log_gate.pass("stale") {
                    info!(generation, applied, skipped, "stale spec ignored");
                }
                metrics::spec_handled(ApplyResult::Stale);
                self.answer(
                    sub.reply,
                    generation,
                    ApplyResult::Stale,
                    format!(
                        "generation {generation} is older than the applied generation {applied}"
                    ),
                );
            }
            Decision::Conflict => {
                let e = format!("generation {generation} was already applied with other content");
                if let Some(skipped) = self.log_gate.pass("conflict") {
                    warn!(generation, error = %e, skipped, "spec rejected");
                }
                self.rejection = Some(e.clone());
                metrics::spec_rejected("conflict");
                self.answer(sub.reply, generation, ApplyResult::Rejected, e);
            }
            Decision::Apply | Decision::Reassert => {
                let Submission {
                    spec,
                    kept,
                    signed_by,
                    reply,
                } = sub;
                // Kept before the kernel is touched: a crash mid-apply restarts into this
                // generation, not the previous one.
                if let Err(e) = self.state.save_spec(&kept) {
                    error!(cause = %dataplane::error_line(&e), "cannot keep the spec; a restart will not restore it");
                }
                // The body may hold private keys: not held longer than needed.
                drop(kept);
                self.signed_by = signed_by;
                self.apply(spec);
                let (result, error) = if self.failures.is_empty() {
                    (ApplyResult::Applied, String::new())
                } else {
                    (ApplyResult::Failed, failure_line(&self.failures))
                };
                self.answer(reply, generation, result, error);
            }
        }
    }

    /// Applies `spec` and reads the kernel back. What failed is kept in `failures`. The state
    /// directory records the apply while it runs: if the process dies in it, the next start
    /// knows.
    fn apply(&mut self, spec: R::Spec) {
        if let Err(e) = self.state.begin_apply(spec.generation()) {
            warn!(cause = %dataplane::error_line(&e), "cannot record the apply; a crash in it would not be noticed");
        }
        #[cfg(debug_assertions)]
        injected_fault(spec.generation());
        let started = Instant::now();
        self.failures = self.dataplane.apply(&spec);
        self.apply_micros = started.elapsed().as_micros() as u64;
        self.state.end_apply();
        self.baseline = None;
        info!(
            generation = spec.generation(),
            failed = self.failures.len(),
            micros = self.apply_micros,
            "applied"
        );
        if self.failures.is_empty() {
            self.rejection = None;
        }
        metrics::spec_desired(spec.generation());
        metrics::spec_handled(if self.failures.is_empty() {
            ApplyResult::Applied
        } else {
            ApplyResult::Failed
        });
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
        for (subsystem, found) in R::Plane::degraded(&observed) {
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
                    drift::author(hints, subsystem, own_port, &found),
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
                metrics::drift_repaired(subsystem);
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
    pub fn status(&self) -> R::Status {
        let expired = self.expired(unix_now());
        let rejection = match (self.rejection.as_deref(), expired.as_deref()) {
            (Some(r), Some(e)) => Some(format!("{r}; {e}")),
            (r, e) => r.or(e).map(str::to_owned),
        };
        R::compose(Facts {
            id: &self.pod,
            generation: self.applied.as_ref().map(|s| s.generation()),
            observed: self.observed.as_ref().or(self.baseline.as_ref()),
            rejection: rejection.as_deref(),
            failures: &self.failures,
            drift: &self.drift,
            signed_by: self.trust.as_ref().and(self.signed_by.clone()),
            before_spec: self.baseline.is_some(),
        })
    }

    /// `spec expired at ...` once the applied spec is past its `NotAfterUnix`: the kernel
    /// keeps it, the status says so until a fresh spec arrives.
    fn expired(&self, now_unix: u64) -> Option<String> {
        let not_after = self.applied.as_ref()?.not_after_unix()?;
        (now_unix > not_after).then(|| {
            format!(
                "spec expired at {} (NotAfterUnix {not_after}); the kernel keeps it until a \
                 fresh spec arrives",
                rfc3339(not_after)
            )
        })
    }

    /// When the applied spec expires, if it has not yet.
    fn expiry_deadline(&self) -> Option<Instant> {
        let not_after = self.applied.as_ref()?.not_after_unix()?;
        let now = unix_now();
        (now <= not_after).then(|| {
            Instant::now() + Duration::from_secs((not_after - now).saturating_add(1).min(1 << 32))
        })
    }

    fn applied_generation(&self) -> u64 {
        self.applied.as_ref().map_or(0, |s| s.generation())
    }

    pub fn shutdown(&mut self) {
        self.dataplane.shutdown();
    }
}

impl Reconciler<crate::role::Pod> {
    /// Learns from the kept spec which objects an earlier agent process made, without
    /// applying it, so the next apply can remove what the new spec drops (the one-shot
    /// `weft-agent apply`; the daemon re-asserts the kept spec instead, see [`Self::restore`]).
    pub fn inherit_kept(&mut self) {
        let Ok(Some(kept)) = self.state.load_spec() else {
            return;
        };
        if let Read::Valid { spec, .. } = read_spec::<weft_schema::PodSpec>(&self.pod, None, &kept)
        {
            if let Some(wg) = &spec.wireguard {
                self.dataplane.inherit_wireguard(wg.interface.as_str());
            }
        }
    }
}

/// How the reconciler starts.
#[derive(Debug, Clone)]
pub struct Start {
    /// Full resync with the kernel at least this often.
    pub resync_every: Duration,
    /// Keys specs (the kept one included) must be signed with.
    pub trust: Option<Arc<TrustKeys>>,
}

/// The actor's side of the reconciler: send it specs and rejections, watch its status.
#[derive(Debug)]
pub struct Handle<R: Role> {
    id: PodId,
    mailbox: Arc<Mailbox<R::Spec>>,
    status: watch::Receiver<R::Status>,
}

impl<R: Role> Clone for Handle<R> {
    fn clone(&self) -> Self {
        Handle {
            id: self.id.clone(),
            mailbox: self.mailbox.clone(),
            status: self.status.clone(),
        }
    }
}

impl<R: Role> Handle<R> {
    /// Starts the reconciler thread: opens the plane there (its sockets must be created on
    /// the thread that uses them), restores the kept spec, then serves the mailbox.
    pub fn spawn(
        pod: PodId,
        settings: <R::Plane as Plane>::Settings,
        start: Start,
    ) -> anyhow::Result<(Handle<R>, std::thread::JoinHandle<()>)> {
        let mailbox = Arc::new(Mailbox::new()?);
        let state = StateDir::open(R::Plane::state_dir(&settings))?;
        let (status_tx, status_rx) = watch::channel(R::compose(Facts {
            id: &pod,
            generation: None,
            observed: None,
            rejection: None,
            failures: &[],
            drift: &Drift::default(),
            signed_by: None,
            before_spec: false,
        }));
        let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
        let mb = mailbox.clone();
        let id = pod.clone();
        let thread = std::thread::Builder::new()
            .name("reconciler".into())
            .spawn(move || {
                let _span = info_span!("reconciler", role = R::NAME, id = %pod).entered();
                let dataplane = match R::Plane::open(&settings) {
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
                let events = dataplane
                    .events()
                    .map_err(|e| warn!(cause = %e, "no kernel events; drift is found by the periodic checks only"))
                    .ok();
                let mut rec = Reconciler::<R>::new(pod, dataplane, state).trusting(start.trust);
                rec.restore();
                status_tx.send_replace(rec.status());
                run(&mut rec, &mb, events, &status_tx, start.resync_every);
                rec.shutdown();
            })?;
        opened_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("reconciler thread died while opening"))??;
        Ok((
            Handle {
                id,
                mailbox,
                status: status_rx,
            },
            thread,
        ))
    }

    /// Hands a valid spec over; a spec it displaces is answered `Stale` at once.
    pub fn submit(&self, sub: Submission<R::Spec>) {
        if let Some(lost) = self.mailbox.update(|inbox| inbox.offer(sub)) {
            let generation = lost.spec.generation();
            metrics::spec_handled(ApplyResult::Stale);
            info!(generation, "spec superseded before it was applied");
            lost.answer(
                &self.id,
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

    /// Wakes the loop without asking anything of it (`/healthz` watches it go round).
    pub fn ping(&self) {
        self.mailbox.update(|_| ());
    }

    /// Stops the thread after the apply in progress, if any. Kernel state stays.
    pub fn shutdown(&self) {
        self.mailbox.update(|inbox| inbox.shutdown = true);
    }

    /// The newest status (unstamped).
    pub fn status(&self) -> watch::Receiver<R::Status> {
        self.status.clone()
    }
}

/// The actor loop: wait for mail, a kernel event or the resync timer, then act. Periodic
/// reads come from the emitter's tick (`observe_now`), so each periodic snapshot carries a
/// read made for it; `resync_every` is the safety net for lost events, and also retries what
/// failed to apply.
fn run<R: Role>(
    rec: &mut Reconciler<R>,
    mailbox: &Mailbox<R::Spec>,
    mut events: Option<KernelEvents>,
    status: &watch::Sender<R::Status>,
    resync_every: Duration,
) {
    let mut next_resync = Instant::now() + resync_every;
    let mut held_back: Option<Instant> = None;
    let mut fds = vec![mailbox.wake_fd()];
    if let Some(ev) = &events {
        fds.extend(ev.fds());
    }
    loop {
        let deadline = [Some(next_resync), held_back, rec.expiry_deadline()]
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
        rec.dataplane.woken(&hints, resync);
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
        let pod = rec.pod.clone();
        for answer in rec.take_answers() {
            answer.send(&pod);
        }
        metrics::reconciler_turned();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fault for tests, in debug builds only: `WEFT_FAULT_PANIC_AT_GENERATION=N` panics in the
/// apply of generation N, which must end the process with a non-zero status and, twice in a
/// row, keep the kept spec from being applied at the next start.
#[cfg(debug_assertions)]
fn injected_fault(generation: u64) {
    let wanted = std::env::var("WEFT_FAULT_PANIC_AT_GENERATION").ok();
    if wanted.and_then(|v| v.parse::<u64>().ok()) == Some(generation) {
        panic!("injected fault in the apply of generation {generation}");
    }
    // `WEFT_FAULT_HANG_AT_GENERATION=N`: the apply of generation N never returns, as a
    // kernel call that blocks for ever would (what `/healthz` must notice).
    let hang = std::env::var("WEFT_FAULT_HANG_AT_GENERATION").ok();
    if hang.and_then(|v| v.parse::<u64>().ok()) == Some(generation) {
        warn!(generation, "injected fault: this apply hangs");
        loop {
            std::thread::park();
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
    use weft_schema::validate::ValidSpec;
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
