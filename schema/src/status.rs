//! What the agent reports: `PodStatus` snapshots for dashboards and `ApplyReply` answers to
//! spec requests. A status describes what the kernel holds, read back from it; errors are
//! folded into `Overall: Degraded` and `LastError` at the level where they happened.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Health of the pod or of one subsystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Overall {
    /// The kernel holds the desired state.
    Healthy,
    /// Something differs from the desired state or failed; `LastError` says what.
    Degraded,
    /// No spec applied yet.
    Pending,
}

/// A snapshot of one pod, stamped by the emitter just before it is published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PodStatus {
    pub pod_id: String,
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
    /// The base64 Ed25519 key that signed the applied spec; `null` without `--trust-keys`
    /// (whatever headers the spec carried) and before a spec is applied (v1.1). Absent in a
    /// v1 agent's status: a dashboard reads that as `null`.
    #[serde(default)]
    pub signed_by: Option<String>,
    /// `null` when the pod interface is not managed.
    pub network: Option<NetworkStatus>,
    /// `null` before the first spec.
    pub firewall: Option<FirewallStatus>,
    /// `null` when there is no overlay.
    #[serde(rename = "WireGuard")]
    pub wireguard: Option<WireGuardStatus>,
}

/// One repair of an outside change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DriftEvent {
    pub at_unix_ms: u64,
    pub subsystem: Subsystem,
    /// What changed, e.g. `rule added to chain input`.
    pub change: String,
    /// Who changed it when the kernel says (`nft (pid 4242)`), else `unknown`.
    pub by: String,
}

/// The agent's three kernel subsystems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Subsystem {
    Network,
    Firewall,
    WireGuard,
}

/// The pod interface as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct NetworkStatus {
    pub overall: Overall,
    pub last_error: String,
    pub interface: String,
    pub up: bool,
    /// The interface's IPv4 addresses, as CIDRs (with the spec's, the only one).
    pub addresses: Vec<String>,
    /// The default route's gateway, `null` when there is none.
    pub gateway: Option<String>,
    pub mtu: u32,
    /// The interface's global IPv6 addresses, as CIDRs (link-local ones are not listed)
    /// (v1.1; absent in a v1 agent's status).
    #[serde(default)]
    pub addresses6: Vec<String>,
    /// The IPv6 default route's gateway, `null` when there is none (v1.1).
    #[serde(default)]
    pub gateway6: Option<String>,
}

/// The `inet weft-fw` table as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FirewallStatus {
    pub overall: Overall,
    pub last_error: String,
    pub table_present: bool,
    /// Rules in chain input after the two baseline rules (and the WireGuard port allow).
    pub ingress_rules: u32,
    /// Rules in chain output.
    pub egress_rules: u32,
    /// Hex digest of the table's rules as read back; equal digests mean equal rulesets.
    pub ruleset_hash: String,
    /// What fell through chain input to its policy drop, from the counter of the chain's
    /// last rule (v1.1); `null` when there is no table or the counter could not be read.
    /// Absent in a v1 agent's status: read as `null`.
    #[serde(default)]
    pub input_dropped: Option<PacketCount>,
    /// What chain output's drop rules (the egress rules) dropped, summed from their
    /// counters (v1.1); `null` as `InputDropped`.
    #[serde(default)]
    pub egress_dropped: Option<PacketCount>,
}

/// What a kernel counter counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Which WireGuard implementation runs the overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Kernel,
    Userspace,
}

/// The WireGuard device as it reports itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct WireGuardStatus {
    pub overall: Overall,
    pub last_error: String,
    pub backend: Backend,
    pub interface: String,
    /// Base64; the private key is never reported.
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<PeerStatus>,
}

/// One peer as the device reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PeerStatus {
    pub public_key: String,
    /// `null` until the peer has an endpoint.
    pub endpoint: Option<String>,
    /// 0 until the first handshake (not an error).
    pub last_handshake_unix: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The outcome of one spec sent as a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ApplyResult {
    /// The kernel now holds the spec.
    Applied,
    /// It did not decode or validate: nothing changed.
    Rejected,
    /// Older than the applied generation: nothing changed.
    Stale,
    /// Valid, but the kernel refused part of it; `Error` says which part.
    Failed,
}

/// The answer to a spec sent as a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ApplyReply {
    pub pod_id: String,
    /// 0 when the body could not be decoded.
    pub generation: u64,
    pub result: ApplyResult,
    /// Empty when applied.
    pub error: String,
    /// Time from the start of the apply to the kernel's acknowledgement of its last write,
    /// in microseconds (decoding, validation and the read-back are not included).
    pub apply_micros: u64,
}
