//! Validation of a [`HostSpec`]: typed values in one pass, or every field that is wrong.
//! Sandboxes are sorted by slot and each one's forwards by protocol and host port, so equal
//! intent compares equal whatever order the control plane wrote it in.

use std::collections::HashMap;

use super::spec::{HostSpec, PortForwardSpec, SandboxSpec};
use super::status::Guest;
use super::HostId;
use crate::text::quote;
use crate::validate::{check_generation, check_id, within, IfName, ValidationErrors};

/// The bounds of the host role; a spec over one is rejected with the bound in the message.
pub mod limits {
    pub const SANDBOXES: usize = 4_096;
    pub const PORT_FORWARDS: usize = 64;
    /// Slots are 1 to 16383: a /18 holds a host address for each, a /17 a /31 for each.
    pub const SLOT_MAX: u32 = 16_383;
}

/// A slot number, 1 to 16383.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u16);

impl Slot {
    pub fn new(n: u32) -> Result<Slot, String> {
        if (1..=limits::SLOT_MAX).contains(&n) {
            Ok(Slot(n as u16))
        } else {
            Err(format!("{n} is not a slot (1-{})", limits::SLOT_MAX))
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub fn parse(text: &str) -> Result<L4, String> {
        match text {
            "tcp" => Ok(L4::Tcp),
            "udp" => Ok(L4::Udp),
            other => Err(format!("{} is not a protocol (tcp or udp)", quote(other))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// A host port forwarded to a guest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    pub protocol: L4,
    pub host_port: u16,
    pub sandbox_port: u16,
}

/// One sandbox of a valid spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub slot: Slot,
    pub guest: Guest,
    pub egress: bool,
    /// Sorted by protocol and host port.
    pub port_forwards: Vec<Forward>,
}

/// A host spec that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidHostSpec {
    pub host_id: HostId,
    pub generation: u64,
    pub not_after_unix: Option<u64>,
    /// `None`: the interface of the IPv4 default route.
    pub uplink: Option<IfName>,
    /// Sorted by slot; slots unique.
    pub sandboxes: Vec<Sandbox>,
}

impl ValidHostSpec {
    /// Validates a whole spec for the agent of host `host`.
    pub fn validate(spec: &HostSpec, host: &HostId) -> Result<ValidHostSpec, ValidationErrors> {
        Self::validate_owned(spec.clone(), host)
    }

    /// [`Self::validate`], consuming the spec.
    pub fn validate_owned(
        spec: HostSpec,
        host: &HostId,
    ) -> Result<ValidHostSpec, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let host_id = check_id(&mut errs, "HostId", &spec.host_id, host, "host");
        check_generation(&mut errs, spec.generation);
        let uplink = spec
            .uplink
            .as_deref()
            .and_then(|u| IfName::parse(u).map_err(|e| errs.push("Uplink", e)).ok());
        let mut sandboxes = Vec::new();
        if within(
            &mut errs,
            "Sandboxes",
            spec.sandboxes.len(),
            limits::SANDBOXES,
        ) {
            let mut slots: HashMap<Slot, usize> = HashMap::new();
            // (protocol, host port) -> where it was first forwarded.
            let mut host_ports: HashMap<(L4, u16), (usize, usize)> = HashMap::new();
            for (i, s) in spec.sandboxes.iter().enumerate() {
                let path = format!("Sandboxes[{i}]");
                let Some(sandbox) = sandbox(&mut errs, &path, s, i, &mut host_ports) else {
                    continue;
                };
                if let Some(first) = slots.insert(sandbox.slot, i) {
                    errs.push(
                        format!("{path}.Slot"),
                        format!("{} is already the slot of Sandboxes[{first}]", sandbox.slot),
                    );
                    continue;
                }
                sandboxes.push(sandbox);
            }
        }
        sandboxes.sort_unstable_by_key(|s| s.slot);
        match (host_id, errs.total) {
            (Some(host_id), 0) => Ok(ValidHostSpec {
                host_id,
                generation: spec.generation,
                not_after_unix: spec.not_after_unix,
                uplink,
                sandboxes,
            }),
            _ => Err(errs),
        }
    }

    /// The sandbox of `slot`, if the spec has it.
    pub fn sandbox(&self, slot: Slot) -> Option<&Sandbox> {
        self.sandboxes
            .binary_search_by_key(&slot, |s| s.slot)
            .ok()
            .map(|i| &self.sandboxes[i])
    }
}

fn sandbox(
    errs: &mut ValidationErrors,
    path: &str,
    spec: &SandboxSpec,
    index: usize,
    host_ports: &mut HashMap<(L4, u16), (usize, usize)>,
) -> Option<Sandbox> {
    let before = errs.total;
    let slot = Slot::new(spec.slot)
        .map_err(|e| errs.push(format!("{path}.Slot"), e))
        .ok();
    let guest = match spec.guest.as_str() {
        "tap" => Some(Guest::Tap),
        "veth" => Some(Guest::Veth),
        other => {
            errs.push(
                format!("{path}.Guest"),
                format!("{} is not a guest (tap or veth)", quote(other)),
            );
            None
        }
    };
    let mut forwards = Vec::new();
    if within(
        errs,
        &format!("{path}.PortForwards"),
        spec.port_forwards.len(),
        limits::PORT_FORWARDS,
    ) {
        for (j, f) in spec.port_forwards.iter().enumerate() {
            let fpath = format!("{path}.PortForwards[{j}]");
            let Some(forward) = forward(errs, &fpath, f) else {
                continue;
            };
            let key = (forward.protocol, forward.host_port);
            if let Some((si, fi)) = host_ports.get(&key) {
                errs.push(
                    format!("{fpath}.HostPort"),
                    format!(
                        "{} {} is already forwarded by Sandboxes[{si}].PortForwards[{fi}]",
                        forward.protocol.as_str(),
                        forward.host_port
                    ),
                );
                continue;
            }
            host_ports.insert(key, (index, j));
            forwards.push(forward);
        }
    }
    forwards.sort_unstable();
    if errs.total > before {
        return None;
    }
    Some(Sandbox {
        slot: slot?,
        guest: guest?,
        egress: spec.egress,
        port_forwards: forwards,
    })
}

fn forward(errs: &mut ValidationErrors, path: &str, spec: &PortForwardSpec) -> Option<Forward> {
    let protocol = L4::parse(&spec.protocol)
        .map_err(|e| errs.push(format!("{path}.Protocol"), e))
        .ok();
    let mut port = |field: &str, n: u32| match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.push(
                format!("{path}.{field}"),
                format!("{n} is not a port (1-65535)"),
            );
            None
        }
    };
    let host_port = port("HostPort", spec.host_port);
    let sandbox_port = port("SandboxPort", spec.sandbox_port);
    Some(Forward {
        protocol: protocol?,
        host_port: host_port?,
        sandbox_port: sandbox_port?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostId {
        HostId::parse("host-a").unwrap()
    }

    fn errors(json: serde_json::Value) -> String {
        let spec: HostSpec = serde_json::from_value(json).unwrap();
        ValidHostSpec::validate(&spec, &host())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn sandboxes_are_sorted_and_forwards_too() {
        let spec: HostSpec = serde_json::from_value(serde_json::json!({
            "HostId": "host-a", "Generation": 1,
            "Sandboxes": [
                {"Slot": 9, "Guest": "veth", "PortForwards": [
                    {"Protocol": "udp", "HostPort": 53, "SandboxPort": 53},
                    {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80},
                    {"Protocol": "tcp", "HostPort": 22, "SandboxPort": 22}]},
                {"Slot": 2, "Guest": "tap", "Egress": false}
            ]
        }))
        .unwrap();
        let v = ValidHostSpec::validate(&spec, &host()).unwrap();
        let slots: Vec<u16> = v.sandboxes.iter().map(|s| s.slot.get()).collect();
        assert_eq!(slots, [2, 9]);
        assert!(!v.sandboxes[0].egress && v.sandboxes[1].egress);
        let ports: Vec<(L4, u16)> = v.sandboxes[1]
            .port_forwards
            .iter()
            .map(|f| (f.protocol, f.host_port))
            .collect();
        assert_eq!(ports, [(L4::Tcp, 22), (L4::Tcp, 8080), (L4::Udp, 53)]);
        assert_eq!(v.sandbox(Slot::new(9).unwrap()).unwrap().guest, Guest::Veth);
        assert!(v.sandbox(Slot::new(3).unwrap()).is_none());
    }

    #[test]
    fn a_host_port_is_used_once_per_protocol() {
        let e = errors(serde_json::json!({
            "HostId": "host-a", "Generation": 1,
            "Sandboxes": [
                {"Slot": 1, "Guest": "veth", "PortForwards": [
                    {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80},
                    {"Protocol": "udp", "HostPort": 8080, "SandboxPort": 80}]},
                {"Slot": 2, "Guest": "veth", "PortForwards": [
                    {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 81}]}
            ]
        }));
        assert_eq!(
            e,
            "Sandboxes[1].PortForwards[0].HostPort: tcp 8080 is already forwarded by \
             Sandboxes[0].PortForwards[0]"
        );
    }
}
