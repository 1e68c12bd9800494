//! What the host plane read, and the `HostStatus` it makes. Pure.

use weft_schema::host::{Forward, Slot};
use weft_schema::text::last_error;
use weft_schema::{Guest, HostStatus, Overall, PortForward, SandboxStatus, Subsystem};

use super::slot::{SlotAddrs, GUEST_IP};
use crate::role::Facts;

/// What the host holds, as read for a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The uplink in use, or why there is none.
    pub uplink: Result<String, String>,
    /// The host's IPv4 forwarding.
    pub forwarding: bool,
    /// What differs in `ip weft-host`'s shared rules and chains (empty: nothing).
    pub table: Vec<String>,
    /// The spec's slots, by slot number.
    pub slots: Vec<SlotObserved>,
}

/// One slot as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotObserved {
    pub addrs: SlotAddrs,
    pub guest: Guest,
    pub guest_mac: Option<String>,
    pub egress: bool,
    /// The forwards whose rules `ip weft-host` holds.
    pub forwards: Vec<Forward>,
    /// The host end is up.
    pub up: bool,
    /// What differs from the spec, network first, then the tables' rules.
    pub network: Vec<String>,
    pub rules: Vec<String>,
}

impl SlotObserved {
    fn status(&self) -> SandboxStatus {
        let problems: Vec<&str> = self
            .network
            .iter()
            .chain(&self.rules)
            .map(String::as_str)
            .collect();
        SandboxStatus {
            slot: u32::from(self.addrs.slot.get()),
            namespace: self.addrs.namespace.clone(),
            guest: self.guest,
            guest_mac: self.guest_mac.clone(),
            host_ip: self.addrs.host_ip.to_string(),
            veth_ip: self.addrs.veth_net().to_string(),
            vpeer_ip: self.addrs.vpeer_net().to_string(),
            guest_ip: GUEST_IP.to_string(),
            up: self.up,
            egress: self.egress,
            port_forwards: self
                .forwards
                .iter()
                .map(|f| PortForward {
                    protocol: f.protocol.as_str().to_owned(),
                    host_port: f.host_port,
                    sandbox_port: f.sandbox_port,
                })
                .collect(),
            overall: if problems.is_empty() {
                Overall::Healthy
            } else {
                Overall::Degraded
            },
            last_error: last_error(&problems.join("; ")),
        }
    }
}

/// `slot 7: ...`
fn of_slot(slot: Slot, problem: &str) -> String {
    format!("slot {slot}: {problem}")
}

impl Observed {
    /// What does not match the spec, by the subsystem it is reported under: links,
    /// addresses, routes, namespaces and forwarding under `Network`, the tables' rules under
    /// `Firewall`. The uplink that cannot be resolved is not drift (nothing of ours to
    /// repair): the apply's failure says it.
    pub fn degraded(&self) -> Vec<(Subsystem, String)> {
        let mut network = Vec::new();
        let mut firewall: Vec<String> = self
            .table
            .iter()
            .map(|t| format!("table ip weft-host: {t}"))
            .collect();
        if !self.forwarding {
            network.push("forwarding is off on the host".to_owned());
        }
        for s in &self.slots {
            network.extend(s.network.iter().map(|p| of_slot(s.addrs.slot, p)));
            firewall.extend(s.rules.iter().map(|p| of_slot(s.addrs.slot, p)));
        }
        let mut out = Vec::new();
        if !network.is_empty() {
            out.push((Subsystem::Network, network.join("; ")));
        }
        if !firewall.is_empty() {
            out.push((Subsystem::Firewall, firewall.join("; ")));
        }
        out
    }
}

/// The host's status, unstamped. `LastError` says, in this order: why the newest refused
/// spec was refused; what the kernel refused in the last apply; what differs now.
pub fn compose(facts: Facts<'_, Observed>) -> HostStatus {
    let observed = facts.observed;
    let degraded = observed.map(|o| {
        let mut parts: Vec<String> = Vec::new();
        if let Err(why) = &o.uplink {
            parts.push(format!("Uplink: {why}"));
        }
        parts.extend(o.degraded().into_iter().map(|(_, what)| what));
        parts.join("; ")
    });
    let last = if let Some(r) = facts.rejection {
        r.to_owned()
    } else if !facts.failures.is_empty() {
        crate::reconciler::failure_line(facts.failures)
    } else {
        degraded.unwrap_or_default()
    };
    let overall = if !last.is_empty() {
        Overall::Degraded
    } else if facts.generation.is_none() || facts.before_spec {
        Overall::Pending
    } else {
        Overall::Healthy
    };
    HostStatus {
        host_id: facts.id.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        observed_generation: facts.generation.unwrap_or(0),
        overall,
        last_error: last_error(&last),
        published_at_unix: 0,
        published_at_unix_ms: 0,
        drift_repairs: facts.drift.repairs,
        last_drift: facts.drift.last.clone(),
        signed_by: facts.signed_by,
        uplink: observed.and_then(|o| o.uplink.clone().ok()),
        forwarding: observed.is_some_and(|o| o.forwarding),
        sandboxes: observed
            .map(|o| o.slots.iter().map(SlotObserved::status).collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::host::slot::Addressing;
    use crate::reconciler::drift::Drift;
    use weft_schema::host::L4;
    use weft_schema::PodId;

    fn slot(n: u32, network: &[&str]) -> SlotObserved {
        let addressing = Addressing {
            host_range: "10.11.0.0/16".parse().unwrap(),
            veth_range: "10.12.0.0/16".parse().unwrap(),
            netns_prefix: "weft-sb-".into(),
        };
        SlotObserved {
            addrs: addressing.slot(Slot::new(n).unwrap()),
            guest: Guest::Tap,
            guest_mac: Some("02:fc:00:00:00:05".into()),
            egress: true,
            forwards: vec![Forward {
                protocol: L4::Tcp,
                host_port: 8080,
                sandbox_port: 80,
            }],
            up: network.is_empty(),
            network: network.iter().map(|s| (*s).to_owned()).collect(),
            rules: vec![],
        }
    }

    fn facts<'a>(
        id: &'a PodId,
        drift: &'a Drift,
        observed: Option<&'a Observed>,
    ) -> Facts<'a, Observed> {
        Facts {
            id,
            generation: Some(3),
            observed,
            rejection: None,
            failures: &[],
            drift,
            signed_by: None,
            before_spec: false,
        }
    }

    #[test]
    fn a_healthy_host_is_the_contracts_example() {
        let id = PodId::parse("host-a").unwrap();
        let drift = Drift::default();
        let o = Observed {
            uplink: Ok("eth0".into()),
            forwarding: true,
            table: vec![],
            slots: vec![slot(7, &[])],
        };
        let s = compose(facts(&id, &drift, Some(&o)));
        let mut example: HostStatus = weft_schema::Encoding::Json
            .decode(include_bytes!(
                "../../../../schema/tests/fixtures/contract_host_status.json"
            ))
            .unwrap();
        example.agent_version = env!("CARGO_PKG_VERSION").into();
        example.published_at_unix = 0;
        example.published_at_unix_ms = 0;
        assert_eq!(s, example);
    }

    #[test]
    fn what_differs_is_named_where_it_is() {
        let id = PodId::parse("host-a").unwrap();
        let drift = Drift::default();
        let o = Observed {
            uplink: Err("no IPv4 default route".into()),
            forwarding: false,
            table: vec!["rule missing in chain forward".into()],
            slots: vec![slot(7, &[]), slot(9, &["link weft-v9 is down"])],
        };
        let s = compose(facts(&id, &drift, Some(&o)));
        assert_eq!(s.overall, Overall::Degraded);
        assert_eq!(
            s.last_error,
            "Uplink: no IPv4 default route; forwarding is off on the host; slot 9: link \
             weft-v9 is down; table ip weft-host: rule missing in chain forward"
        );
        assert_eq!(s.uplink, None);
        assert_eq!(s.sandboxes[0].overall, Overall::Healthy);
        assert_eq!(s.sandboxes[1].overall, Overall::Degraded);
        assert_eq!(s.sandboxes[1].last_error, "link weft-v9 is down");
        assert_eq!(
            o.degraded(),
            [
                (
                    Subsystem::Network,
                    "forwarding is off on the host; slot 9: link weft-v9 is down".to_owned()
                ),
                (
                    Subsystem::Firewall,
                    "table ip weft-host: rule missing in chain forward".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn before_any_spec_the_host_is_pending_and_empty() {
        let id = PodId::parse("host-a").unwrap();
        let drift = Drift::default();
        let mut f = facts(&id, &drift, None);
        f.generation = None;
        let s = compose(f);
        assert_eq!(s.overall, Overall::Pending);
        assert_eq!((s.uplink, s.forwarding), (None, false));
        assert!(s.sandboxes.is_empty());
    }
}
