//! The weft wire contract in code.
//!
//! Three parties speak it over NATS: the control plane publishes a [`PodSpec`] on
//! `<prefix>.pod.<pod>.spec`, the agent answers requests with an [`ApplyReply`], and dashboards
//! read [`PodStatus`] snapshots from `<prefix>.pod.<pod>.status`. [`subject`] builds those
//! names, [`codec`] turns bodies into values and back (JSON or bincode 2, chosen by the
//! `Content-Type` header), and [`validate`] turns a decoded [`PodSpec`] into typed values
//! ([`ValidSpec`]) in one pass, or says every field that is wrong.
//!
//! [`sign`] holds the signing rule of CONTRACT.md v1.1 (the exact signed bytes, a Go snippet,
//! a test vector) with an Ed25519 helper for control planes written in Rust, and [`text`] the
//! bounds on everything foreign the agent echoes (a quoted value: 64 bytes, escaped;
//! `LastError`: 1 KiB).
//!
//! The host role (CONTRACT.md v1.1 "Host role") speaks the same way over
//! `<prefix>.host.<host>.*`: a [`HostSpec`] in, a [`HostStatus`] out, [`ValidHostSpec`] its
//! validation ([`host`]). [`role`] holds what intake needs of either role's spec.
//!
//! Wire types keep the strings the control plane writes (`"10.0.0.0/8"`, `"8000-8080"`);
//! nothing downstream of validation ever parses one again.
//!
//! # Choices where the contract is silent
//!
//! - `WireGuard.Mtu` (optional, 576-65535, default 1420) is an addition to the contract's
//!   WireGuard section; the agent needs it to honour "MTU 1420 unless set".
//! - `Network.Address` and `Gateway` must be IPv4; `Address6` (v1.1) an IPv6 CIDR with its
//!   prefix that is not link-local (the kernel keeps those), multicast, loopback, unspecified
//!   or IPv4-mapped; `Gateway6` an IPv6 unicast address, link-local allowed (the route names
//!   the interface), and only with `Address6`.
//! - `WireGuard.DefaultRoute: true` (v1.1) needs a `Network` section with the gateway of every
//!   peer endpoint's family (`Gateway` for IPv4 endpoints, `Gateway6` for IPv6 ones): the
//!   endpoints keep host routes via it. The validated `WireGuard` carries that underlay.
//! - `ListenPort` 0 is refused: the firewall opens exactly the listen port, so it must be known.
//! - A rule with protocol `icmp` may name IPv4 addresses only, `icmpv6` IPv6 only.
//! - Two peers with the same `PublicKey`, or `WireGuard.Interface` equal to
//!   `Network.Interface`, are refused.
//! - `SearchDomains` entries are DNS names (labels of `[A-Za-z0-9-_]`, at most 253 characters);
//!   `Comment` is at most 128 bytes of printable text. Both end up in files and kernel objects
//!   where a newline or a NUL would be an injection.
//! - `PodStatus.Network.Gateway` and a peer's `Endpoint` are `null` when there is none.
//! - `null` is taken wherever a field may be left out and means leaving it out (contract v1.1:
//!   Go writes a nil slice or an unset pointer as `null`): a list is empty, `Protocol` is
//!   `any`, `ListenPort` 51820, an optional section or value absent. `null` for a required
//!   field, as a list's element, or as a whole rule or peer is refused, naming where it is.
//! - An object must be a JSON object, not a positional array (serde would otherwise take
//!   `["web-1",7]` for a `PodSpec`).
//! - `Generation` is at most 2^53 - 1 (v1.1); `NotAfterUnix` may be any number of seconds
//!   (one past year 9999 is never reached). Both are in the bincode encoding: `NotAfterUnix`
//!   comes right after `Generation`, `SignedBy` right after `LastDrift`.
//! - `PodStatus.SignedBy` is always sent (`null` when nobody signed); a status without it (a
//!   v1 agent's) decodes with `null`. Likewise `Network.Addresses6` (`[]`) and
//!   `Network.Gateway6` (`null`). In bincode the new fields follow their IPv4 counterparts'
//!   sections: `Address6`, `Gateway6` right after `Gateway`; `DefaultRoute` last in
//!   `WireGuard`; `Addresses6`, `Gateway6` last in `NetworkStatus`.
//! - A JSON body is parsed once, straight into the typed value, with every quoted value of a
//!   decoding error (a field name as the body spelled it) bounded like [`text::quote`]; an
//!   empty array in place of a `PodSpec` is refused as positional, not as a short sequence.
//!
//! For the host role:
//! - `Slot`, `HostPort` and `SandboxPort` are unsigned 32-bit numbers on the wire, so 16384
//!   or 70000 decodes and validation names the field and the bound; `Guest` and a port
//!   forward's `Protocol` are strings checked by validation, like a rule's `Protocol`. A port
//!   forward's `Protocol` is required (there is no `any` to default to).
//! - Sandboxes are compared in slot order and a sandbox's forwards in protocol and host port
//!   order: a spec that only reorders them re-asserts the same state.
//! - `HostStatus.Sandboxes` lists the applied spec's slots in slot order, each as the kernel
//!   holds it; `GuestMac` is `null` for a `veth` guest (its `eth0` belongs to the guest).
//!   `Uplink` is `null` before a spec and while none can be resolved.
//! - With `--spec-source kv` and `--status-kv` a host's key in the two buckets is
//!   `host.<host>` (a pod's is `<pod>`): ids have no `.`, so the two never meet.

pub mod codec;
pub mod host;
mod json_objects;
pub mod key;
pub mod role;
pub mod sign;
pub mod spec;
pub mod status;
pub mod subject;
pub mod text;
pub mod validate;

pub use codec::{DecodeError, Encoding};
pub use host::{
    Guest, HostId, HostSpec, HostStatus, PortForward, PortForwardSpec, SandboxSpec, SandboxStatus,
    ValidHostSpec,
};
pub use key::{PublicKey, Secret, SecretKey};
pub use role::{Applicable, Role, WireSpec};
pub use spec::{
    EgressRule, FirewallSpec, IngressRule, NetworkSpec, PeerSpec, PodSpec, WireGuardSpec,
};
pub use status::{
    ApplyReply, ApplyResult, Backend, DriftEvent, FirewallStatus, NetworkStatus, Overall,
    PacketCount, PeerStatus, PodStatus, Subsystem, WireGuardStatus,
};
pub use subject::{PodId, Subjects};
pub use validate::{ValidSpec, ValidationError, ValidationErrors};

/// The schema version this crate speaks, sent in the `Weft-Schema` header.
pub const SCHEMA_VERSION: u32 = 1;
