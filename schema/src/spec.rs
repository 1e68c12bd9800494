//! `PodSpec`: the desired network state of one pod, as the control plane writes it.
//!
//! Field names are PascalCase on the wire and unknown fields are an error: a typo such as
//! `Source` for `Sources` must never silently widen a firewall. The field order of every
//! struct is part of the bincode encoding; the golden fixtures in `tests/` pin it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::key::{Secret, KEY_PATTERN};
use crate::validate::limits;

pub(crate) mod null;

// Patterns for the JSON Schema (`weft.schema.json`). Validation is the full rule; these
// never refuse what it accepts (interface names: it counts bytes, and refuses `.`/`..`).
const IFNAME_PATTERN: &str = r"^[^/:\s]{1,15}$";
const PORT_PATTERN: &str = r"^[0-9]+(-[0-9]+)?$";

/// The desired state of one pod's network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PodSpec {
    /// Must equal the agent's `--pod-id`.
    #[schemars(pattern(r"^[A-Za-z0-9_-]{1,63}$"))]
    pub pod_id: String,
    /// Orders specs: lower than the last applied is stale, equal is re-asserted.
    #[schemars(range(min = 1, max = limits::GENERATION_MAX))]
    pub generation: u64,
    /// Seconds since the epoch: a spec received after this time is rejected, and an applied
    /// spec that passes it leaves the pod `Degraded` until a fresh one arrives (v1.1).
    #[serde(default)]
    pub not_after_unix: Option<u64>,
    /// The pod interface; absent means the interface is not managed.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// The firewall; absent or empty means the fail-closed baseline.
    #[serde(default)]
    pub firewall: Option<FirewallSpec>,
    /// The overlay; absent means the agent's WireGuard interface is removed.
    #[serde(default, rename = "WireGuard")]
    pub wireguard: Option<WireGuardSpec>,
}

/// The pod interface: its IPv4 address and default route, optionally an IPv6 address and
/// default route (v1.1), its MTU and the resolver file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// Interface name, 1-15 characters, no `/`, whitespace or `:`.
    #[schemars(pattern(IFNAME_PATTERN))]
    pub interface: String,
    /// IPv4 CIDR with its prefix (`10.0.0.5/24`): made the only IPv4 address on the link.
    pub address: String,
    /// IPv4 address of the default gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// IPv6 CIDR with its prefix (`2001:db8::5/64`): made the only global IPv6 address on the
    /// link; link-local addresses stay (v1.1).
    #[serde(default)]
    pub address6: Option<String>,
    /// IPv6 address of the default gateway, global or link-local (`fe80::1`); needs
    /// `Address6` (v1.1).
    #[serde(default)]
    pub gateway6: Option<String>,
    /// 576-65535.
    #[serde(default)]
    #[schemars(range(min = limits::MTU_MIN, max = limits::MTU_MAX))]
    pub mtu: Option<u32>,
    /// At most 3 IP addresses; when non-empty the resolver file is replaced.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    #[schemars(length(max = limits::NAMESERVERS))]
    pub nameservers: Vec<String>,
    /// At most 6 DNS names.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    #[schemars(length(max = limits::SEARCH_DOMAINS))]
    pub search_domains: Vec<String>,
}

/// Allows in, drops out. `"Firewall": {}` is the baseline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FirewallSpec {
    /// Each rule becomes one accept per address family it names.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<IngressRule>>")]
    #[schemars(length(max = limits::RULES_PER_DIRECTION))]
    pub ingress: Vec<IngressRule>,
    /// Each rule becomes one drop per address family it names.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<EgressRule>>")]
    #[schemars(length(max = limits::RULES_PER_DIRECTION))]
    pub egress: Vec<EgressRule>,
}

/// Traffic the pod accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IngressRule {
    /// `tcp`, `udp`, `icmp`, `icmpv6` or `any` (default).
    #[serde(default = "any", deserialize_with = "null::or_any")]
    #[schemars(with = "Option<String>")]
    #[schemars(extend("enum" = ["tcp", "udp", "icmp", "icmpv6", "any", null]))]
    pub protocol: String,
    /// `"N"` or `"N-M"` (1-65535), tcp and udp only; empty means every port.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    #[schemars(length(max = limits::PORTS_PER_RULE), inner(pattern(PORT_PATTERN)))]
    pub ports: Vec<String>,
    /// IPv4 or IPv6 CIDRs (a bare address is a host); empty means any address.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    #[schemars(length(max = limits::ADDRESSES_PER_RULE))]
    pub sources: Vec<String>,
    /// At most 128 bytes of printable text; kept on the nftables rule.
    #[serde(default)]
    #[schemars(length(max = limits::COMMENT_BYTES))]
    pub comment: Option<String>,
}

/// Traffic the pod may not send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EgressRule {
    /// `tcp`, `udp`, `icmp`, `icmpv6` or `any` (default).
    #[serde(default = "any", deserialize_with = "null::or_any")]
    #[schemars(with = "Option<String>")]
    #[schemars(extend("enum" = ["tcp", "udp", "icmp", "icmpv6", "any", null]))]
    pub protocol: String,
    /// `"N"` or `"N-M"` (1-65535), tcp and udp only; empty means every port.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    #[schemars(length(max = limits::PORTS_PER_RULE), inner(pattern(PORT_PATTERN)))]
    pub ports: Vec<String>,
    /// IPv4 or IPv6 CIDRs (a bare address is a host); empty means any address.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    #[schemars(length(max = limits::ADDRESSES_PER_RULE))]
    pub destinations: Vec<String>,
    /// At most 128 bytes of printable text; kept on the nftables rule.
    #[serde(default)]
    #[schemars(length(max = limits::COMMENT_BYTES))]
    pub comment: Option<String>,
}

fn any() -> String {
    "any".to_owned()
}

/// The WireGuard overlay interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct WireGuardSpec {
    /// Interface name, 1-15 characters, no `/`, whitespace or `:`.
    #[schemars(pattern(IFNAME_PATTERN))]
    pub interface: String,
    /// Overlay address as a full CIDR (`10.9.0.1/24`); the connected route follows it.
    pub address: String,
    /// UDP port, 1-65535, default 51820.
    #[serde(
        default = "default_listen_port",
        deserialize_with = "null::or_default_listen_port"
    )]
    #[schemars(with = "Option<u32>")]
    #[schemars(range(min = 1, max = 65_535))]
    pub listen_port: u32,
    /// Base64 of 32 bytes; null means the agent generates one and keeps it.
    #[serde(default)]
    pub private_key: Option<Secret>,
    /// Exactly these peers.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<PeerSpec>>")]
    #[schemars(length(max = limits::PEERS))]
    pub peers: Vec<PeerSpec>,
    /// Interface MTU, 576-65535, default 1420 (an addition to contract v1).
    #[serde(default)]
    #[schemars(
        range(min = limits::MTU_MIN, max = limits::MTU_MAX),
        extend("default" = limits::WIREGUARD_MTU)
    )]
    pub mtu: Option<u32>,
    /// `true`: a peer allowing `0.0.0.0/0` or `::/0` takes the pod's default route of that
    /// family, and every peer's endpoint keeps a host route via the `Network` gateway of its
    /// family. Absent, `null` or `false`: no default route through the tunnel (v1.1).
    #[serde(default)]
    pub default_route: Option<bool>,
}

fn default_listen_port() -> u32 {
    51820
}

/// One WireGuard peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PeerSpec {
    /// Base64 of 32 bytes.
    #[schemars(pattern(KEY_PATTERN))]
    pub public_key: String,
    /// `IP:port` or `[IPv6]:port`; no host names.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// CIDRs routed to this peer.
    #[serde(default, deserialize_with = "null::or_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    #[schemars(length(max = limits::ALLOWED_IPS_PER_PEER))]
    pub allowed_ips: Vec<String>,
    /// 0 (off) to 65535.
    #[serde(default)]
    #[schemars(range(max = 65_535))]
    pub persistent_keepalive_seconds: Option<u32>,
    /// Base64 of 32 bytes.
    #[serde(default)]
    pub preshared_key: Option<Secret>,
}
