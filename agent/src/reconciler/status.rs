//! Folding what the reconciler knows into a `PodStatus`. Pure: the kernel was read before.

use weft_schema::text::{last_error, ErrorLine};
use weft_schema::{Overall, PodId, PodStatus};

use super::drift::Drift;
use crate::dataplane::{Failure, Observed};

/// The status of the pod, unstamped (`PublishedAt*` are 0: the emitter stamps them).
///
/// `Overall` is `Pending` until a spec was applied (unless one was rejected: then
/// `Degraded`), `Healthy` when every managed subsystem is, and `Degraded` otherwise.
/// `LastError` says, in this order: why the newest refused spec was refused; what the kernel
/// refused in the last apply; which subsystem is degraded and why.
pub fn compose(
    pod: &PodId,
    applied_generation: Option<u64>,
    observed: Option<&Observed>,
    rejection: Option<&str>,
    failures: &[Failure],
    drift: &Drift,
) -> PodStatus {
    let (network, firewall, wireguard) = match observed {
        Some(o) => (
            o.network.clone(),
            Some(o.firewall.clone()),
            o.wireguard.clone(),
        ),
        None => (None, None, None),
    };
    let degraded_subsystem = [
        network
            .as_ref()
            .map(|s| ("Network", s.overall, &s.last_error)),
        firewall
            .as_ref()
            .map(|s| ("Firewall", s.overall, &s.last_error)),
        wireguard
            .as_ref()
            .map(|s| ("WireGuard", s.overall, &s.last_error)),
    ]
    .into_iter()
    .flatten()
    .find(|(_, overall, _)| *overall != Overall::Healthy);

    let last_error = if let Some(r) = rejection {
        r.to_owned()
    } else if !failures.is_empty() {
        failure_line(failures)
    } else if let Some((name, _, err)) = degraded_subsystem {
        format!("{name}: {err}")
    } else {
        String::new()
    };
    let overall = if !last_error.is_empty() {
        Overall::Degraded
    } else if applied_generation.is_none() {
        Overall::Pending
    } else {
        Overall::Healthy
    };
    PodStatus {
        pod_id: pod.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        observed_generation: applied_generation.unwrap_or(0),
        overall,
        last_error,
        published_at_unix: 0,
        published_at_unix_ms: 0,
        drift_repairs: drift.repairs,
        last_drift: drift.last.clone(),
        signed_by: None,
        network,
        firewall,
        wireguard,
    }
}

/// `Network: interface eth9 does not exist; WireGuard: ...`: where each error becomes text,
/// once, bounded as a `LastError` must be.
pub(crate) fn failure_line(failures: &[Failure]) -> String {
    let line = failures
        .iter()
        .map(|f| format!("{:?}: {}", f.subsystem, ErrorLine(&f.error)))
        .collect::<Vec<_>>()
        .join("; ");
    last_error(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::{FirewallStatus, NetworkStatus, Subsystem};

    fn none() -> Drift {
        Drift::default()
    }

    fn pod() -> PodId {
        PodId::parse("web-1").unwrap()
    }

    fn firewall(overall: Overall, err: &str) -> FirewallStatus {
        FirewallStatus {
            overall,
            last_error: err.into(),
            table_present: true,
            ingress_rules: 1,
            egress_rules: 0,
            ruleset_hash: "ab".into(),
            input_dropped: None,
            egress_dropped: None,
        }
    }

    fn observed(fw: FirewallStatus, net: Option<NetworkStatus>) -> Observed {
        Observed {
            network: net,
            firewall: fw,
            wireguard: None,
        }
    }

    #[test]
    fn before_any_spec_everything_is_pending_and_null() {
        let s = compose(&pod(), None, None, None, &[], &none());
        assert_eq!(s.overall, Overall::Pending);
        assert_eq!(s.observed_generation, 0);
        assert!(s.network.is_none() && s.firewall.is_none() && s.wireguard.is_none());
        assert_eq!(s.last_error, "");
    }

    #[test]
    fn a_rejection_before_any_spec_is_degraded_at_generation_0() {
        let s = compose(
            &pod(),
            None,
            None,
            Some("generation 3 rejected: PodId: x"),
            &[],
            &none(),
        );
        assert_eq!(s.overall, Overall::Degraded);
        assert_eq!(s.observed_generation, 0);
        assert_eq!(s.last_error, "generation 3 rejected: PodId: x");
    }

    #[test]
    fn healthy_when_every_subsystem_is() {
        let o = observed(firewall(Overall::Healthy, ""), None);
        let s = compose(&pod(), Some(7), Some(&o), None, &[], &none());
        assert_eq!(s.overall, Overall::Healthy);
        assert_eq!(s.observed_generation, 7);
        assert!(s.network.is_none());
    }

    #[test]
    fn errors_are_named_at_their_level() {
        let net = NetworkStatus {
            overall: Overall::Degraded,
            last_error: "interface eth9 does not exist".into(),
            interface: "eth9".into(),
            up: false,
            addresses: vec![],
            gateway: None,
            mtu: 0,
            addresses6: vec![],
            gateway6: None,
        };
        let o = observed(firewall(Overall::Healthy, ""), Some(net));
        let failed = [Failure {
            subsystem: Subsystem::Network,
            error: crate::dataplane::link::Error::NoInterface(
                weft_schema::validate::IfName::parse("eth9").unwrap(),
            )
            .into(),
        }];
        let s = compose(&pod(), Some(7), Some(&o), None, &failed, &none());
        assert_eq!(s.overall, Overall::Degraded);
        assert_eq!(s.last_error, "Network: interface eth9 does not exist");
        assert_eq!(s.network.as_ref().unwrap().overall, Overall::Degraded);
        assert_eq!(s.firewall.as_ref().unwrap().overall, Overall::Healthy);

        // Drift seen by an observation, with a clean last apply, still surfaces at the top.
        let o = observed(firewall(Overall::Degraded, "table missing"), None);
        let s = compose(&pod(), Some(7), Some(&o), None, &[], &none());
        assert_eq!(s.last_error, "Firewall: table missing");
    }
}
