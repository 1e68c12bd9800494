//! `HostSpec`: the sandboxes one host keeps, as the control plane writes it. The field order
//! of every struct is part of the bincode encoding; the golden fixtures pin it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::limits;
use crate::spec::null;
use crate::validate::limits::GENERATION_MAX;

/// The desired slots of one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HostSpec {
    /// Must equal the agent's `--host-id`.
    #[schemars(pattern(r"^[A-Za-z0-9_-]{1,63}$"))]
    pub host_id: String,
    /// Orders specs: lower than the last applied is stale, equal is re-asserted.
    #[schemars(range(min = 1, max = GENERATION_MAX))]
    pub generation: u64,
    /// Seconds since the epoch: a spec received after this time is rejected, and an applied
    /// spec that passes it leaves the host `Degraded` until a fresh one arrives.
    #[serde(default)]
    pub not_after_unix: Option<u64>,
    /// The interface that leads out; absent: the interface of the IPv4 default route,
    /// resolved at each apply and whenever that route changes.
    #[serde(default)]
    #[schemars(pattern(r"^[^/:\s]{1,15}$"))]
    pub uplink: Option<String>,
    /// One per sandbox, slots unique.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<SandboxSpec>>")]
    #[schemars(length(max = limits::SANDBOXES))]
    pub sandboxes: Vec<SandboxSpec>,
}

/// One sandbox: its slot, what the guest attaches to, egress and port forwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// 1 to 16383; the addresses and names of the slot follow from it.
    #[schemars(range(min = 1, max = limits::SLOT_MAX))]
    pub slot: u32,
    /// `tap` (a micro-VM attaches to the tap device) or `veth` (a guest network namespace).
    #[schemars(extend("enum" = ["tap", "veth"]))]
    pub guest: String,
    /// Whether the guest may open connections out of the host (default true).
    #[serde(default = "yes", deserialize_with = "null::or_true")]
    #[schemars(with = "Option<bool>", extend("default" = true))]
    pub egress: bool,
    /// At most 64; a `HostPort` is used once per protocol on the host.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<PortForwardSpec>>")]
    #[schemars(length(max = limits::PORT_FORWARDS))]
    pub port_forwards: Vec<PortForwardSpec>,
}

fn yes() -> bool {
    true
}

/// A port of the host forwarded to a port of the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PortForwardSpec {
    /// `tcp` or `udp`.
    #[schemars(extend("enum" = ["tcp", "udp"]))]
    pub protocol: String,
    /// 1-65535, on every local address of the host but 127.0.0.0/8.
    #[schemars(range(min = 1, max = 65_535))]
    pub host_port: u32,
    /// 1-65535, on the guest.
    #[schemars(range(min = 1, max = 65_535))]
    pub sandbox_port: u32,
}
