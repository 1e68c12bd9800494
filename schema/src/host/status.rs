//! `HostStatus`: what the host holds, read back from the kernel, for dashboards.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::{DriftEvent, Overall};

/// A snapshot of one host, stamped by the emitter just before it is published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HostStatus {
    pub host_id: String,
    pub agent_version: String,
    /// The generation last applied (also when applied only in part); 0 before any.
    pub observed_generation: u64,
    pub overall: Overall,
    /// Empty when healthy.
    pub last_error: String,
    /// Seconds since the epoch, stamped just before publishing.
    pub published_at_unix: u64,
    /// Milliseconds since the epoch, stamped with `PublishedAtUnix`.
    pub published_at_unix_ms: u64,
    /// Repairs of changes someone else made to the agent's objects.
    pub drift_repairs: u64,
    /// The last of those repairs.
    pub last_drift: Option<DriftEvent>,
    /// The base64 Ed25519 key that signed the applied spec; `null` without `--trust-keys`.
    pub signed_by: Option<String>,
    /// The uplink in use; `null` before a spec, or when none could be resolved.
    pub uplink: Option<String>,
    /// The host's IPv4 forwarding setting.
    pub forwarding: bool,
    /// The slots of the applied spec, by slot number.
    pub sandboxes: Vec<SandboxStatus>,
}

/// What a sandbox's guest attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Guest {
    /// A persistent tap device `tap0` in the sandbox namespace, for a micro-VM.
    Tap,
    /// A veth whose peer `eth0` lives in the guest namespace `<ns-prefix>N-g`.
    Veth,
}

impl Guest {
    pub fn as_str(self) -> &'static str {
        match self {
            Guest::Tap => "tap",
            Guest::Veth => "veth",
        }
    }
}

/// One slot as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SandboxStatus {
    pub slot: u32,
    /// The sandbox's network namespace, as `ip netns` names it.
    pub namespace: String,
    pub guest: Guest,
    /// The MAC the VMM gives the guest NIC (`Guest: tap`); `null` for a veth guest.
    pub guest_mac: Option<String>,
    /// The address the host reaches the guest at (DNAT in the sandbox).
    pub host_ip: String,
    /// The host end of the veth pair, with its /31.
    pub veth_ip: String,
    /// The sandbox end of the veth pair, with its /31.
    pub vpeer_ip: String,
    /// The guest's address behind the sandbox's NAT.
    pub guest_ip: String,
    /// The host end `weft-vN` is up.
    pub up: bool,
    pub egress: bool,
    pub port_forwards: Vec<PortForward>,
    pub overall: Overall,
    /// Empty when healthy; what differs from the spec otherwise.
    pub last_error: String,
}

/// A port forward in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PortForward {
    pub protocol: String,
    pub host_port: u16,
    pub sandbox_port: u16,
}
