//! The pod role: a `PodSpec` in, a `PodStatus` out, the pod's [`Dataplane`] in between.

use std::path::Path;

use weft_schema::validate::ValidSpec;
use weft_schema::{Overall, PodSpec, PodStatus, Subsystem};

use super::{Facts, Plane, Role};
use crate::config::FirewallAtStart;
use crate::dataplane::events::{Hints, KernelEvents};
use crate::dataplane::{Dataplane, Failure, Observed, OpenError, Settings};
use crate::reconciler::compose;

/// The agent of one pod.
#[derive(Debug)]
pub enum Pod {}

impl Role for Pod {
    const NAME: &'static str = "pod";
    type Wire = PodSpec;
    type Spec = ValidSpec;
    type Status = PodStatus;
    type Plane = Dataplane;

    fn compose(facts: Facts<'_, Observed>) -> PodStatus {
        let mut status = compose(
            facts.id,
            facts.generation,
            facts.observed,
            facts.rejection,
            facts.failures,
            facts.drift,
        );
        status.signed_by = facts.signed_by;
        if facts.before_spec && status.overall == Overall::Healthy {
            status.overall = Overall::Pending; // a baseline is not a spec
        }
        status
    }
}

impl Plane for Dataplane {
    type Spec = ValidSpec;
    type Observed = Observed;
    type Settings = Settings;

    fn open(settings: &Settings) -> Result<Dataplane, OpenError> {
        Dataplane::open(settings)
    }

    fn state_dir(settings: &Settings) -> &Path {
        &settings.state_dir
    }

    /// The resync tick's check reads every table back whole, not only what the nftables
    /// generation says changed.
    fn woken(&mut self, _hints: &Hints, resync: bool) {
        if resync {
            self.distrust();
        }
    }

    fn events(&self) -> std::io::Result<KernelEvents> {
        KernelEvents::open(self.resolv_conf())
    }

    fn apply(&mut self, spec: &ValidSpec) -> Vec<Failure> {
        Dataplane::apply(self, spec)
    }

    fn apply_one(&mut self, subsystem: Subsystem, spec: &ValidSpec) -> Vec<Failure> {
        Dataplane::apply_one(self, subsystem, spec)
    }

    fn observe(&mut self, spec: &ValidSpec) -> Observed {
        Dataplane::observe(self, spec)
    }

    fn degraded(observed: &Observed) -> Vec<(Subsystem, String)> {
        observed.degraded()
    }

    /// With `--firewall-at-start baseline`: the baseline firewall (policy drop), so a pod is
    /// closed from its first second.
    fn before_any_spec(&mut self) -> Option<Result<Observed, Failure>> {
        if self.firewall_at_start() != FirewallAtStart::Baseline {
            return None;
        }
        Some(
            self.apply_baseline_firewall()
                .map(|firewall| Observed {
                    network: None,
                    firewall,
                    wireguard: None,
                })
                .map_err(|error| Failure {
                    subsystem: Subsystem::Firewall,
                    error,
                }),
        )
    }

    fn rtnl_port(&self) -> u32 {
        Dataplane::rtnl_port(self)
    }

    fn shutdown(&mut self) {
        Dataplane::shutdown(self)
    }
}
