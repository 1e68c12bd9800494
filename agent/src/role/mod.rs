//! The roles an agent plays: a pod's (its interface, firewall and overlay) or a host's (its
//! sandbox slots). Intake, the reconciler actor, the emitter, the kept spec, signatures, the
//! crash-loop guard and drift repair are written once, over [`Role`]; a role brings its
//! spec, its status and the kernel half it drives ([`Plane`]).

mod host;
mod pod;

use std::fmt::Debug;
use std::path::Path;

use weft_schema::{Applicable, PodId, Subsystem, WireSpec};

use crate::dataplane::events::{Hints, KernelEvents};
use crate::dataplane::{Failure, OpenError};
use crate::reconciler::drift::Drift;

pub use host::Host;
pub use pod::Pod;

/// One role: its spec (as written and as validated), its status, its kernel half.
pub trait Role: Sized + 'static {
    /// For logs and the reconciler's span: `pod`, `host`.
    const NAME: &'static str;
    /// The spec as the control plane writes it.
    type Wire: WireSpec<Valid = Self::Spec> + Send + 'static;
    /// The spec validated: what the reconciler applies and keeps.
    type Spec: Applicable + Clone + PartialEq + Debug + Send + Sync + 'static;
    /// What the agent publishes.
    type Status: crate::metrics::Scraped;
    /// The kernel half.
    type Plane: Plane<Spec = Self::Spec>;

    /// The status, unstamped (the emitter stamps it), from what the reconciler knows.
    fn compose(facts: Facts<'_, <Self::Plane as Plane>::Observed>) -> Self::Status;
}

/// What the reconciler knows, for [`Role::compose`].
#[derive(Debug)]
pub struct Facts<'a, O> {
    pub id: &'a PodId,
    /// The generation applied, if any.
    pub generation: Option<u64>,
    /// The last read of the kernel (or what was installed before any spec).
    pub observed: Option<&'a O>,
    /// Why the newest refused spec was refused (with the applied spec's expiry).
    pub rejection: Option<&'a str>,
    /// What the kernel refused in the last apply.
    pub failures: &'a [Failure],
    pub drift: &'a Drift,
    /// The key that signed the applied spec (`None` without `--trust-keys`).
    pub signed_by: Option<String>,
    /// Only what was installed before any spec is observed: a healthy read is `Pending`.
    pub before_spec: bool,
}

/// The kernel half of a role: the sockets and subsystems, on the reconciler's thread.
pub trait Plane: Debug + Sized {
    type Spec;
    /// What the kernel holds, as read for a spec.
    type Observed: Clone + PartialEq + Debug + Send;
    /// Where the plane keeps and writes things.
    type Settings: Clone + Debug + Send + 'static;

    /// Opens the sockets in the calling thread's namespace. Changes nothing in the kernel.
    fn open(settings: &Self::Settings) -> Result<Self, OpenError>;
    /// The state directory (the kept spec, the crash-loop marker).
    fn state_dir(settings: &Self::Settings) -> &Path;
    /// The notifications that wake a drift check, opened on the reconciler's thread.
    fn events(&self) -> std::io::Result<KernelEvents>;
    /// Makes the kernel match `spec`, each part on its own; returns what failed.
    fn apply(&mut self, spec: &Self::Spec) -> Vec<Failure>;
    /// Makes the parts reported as `subsystem` match `spec`, writing only what differs.
    fn apply_one(&mut self, subsystem: Subsystem, spec: &Self::Spec) -> Vec<Failure>;
    /// Reads back what the kernel holds for `spec`.
    fn observe(&mut self, spec: &Self::Spec) -> Self::Observed;
    /// The parts of a read that do not match the desired state, with what differs.
    fn degraded(observed: &Self::Observed) -> Vec<(Subsystem, String)>;
    /// What to install before any spec is known (a pod's baseline firewall), read back;
    /// `None` when there is nothing to do.
    fn before_any_spec(&mut self) -> Option<Result<Self::Observed, Failure>>;
    /// The netlink port of the rtnetlink socket the plane writes through (our own changes
    /// carry it, so they are not taken for someone else's).
    fn rtnl_port(&self) -> u32;
    /// Stops what lives only in this process. Kernel state stays.
    fn shutdown(&mut self);

    /// What woke the reconciler: the kernel's notifications since the last wake, and whether
    /// a full resync is due. A plane that keeps what it read learns here what to read again.
    fn woken(&mut self, _hints: &Hints, _resync: bool) {}
}
