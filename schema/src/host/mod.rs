//! The host role (CONTRACT.md v1.1 "Host role"): `weft-agent host --host-id ID` keeps one
//! slot per sandbox (a named network namespace, its links, addresses, routes, NAT and port
//! forwards) in the state a [`HostSpec`] on `<prefix>.host.<host>.spec` asks for, and
//! publishes a [`HostStatus`] on `<prefix>.host.<host>.status`.
//!
//! The same rules as for pods hold: unknown fields are errors, `null` means left out, the
//! whole spec is validated ([`ValidHostSpec`]) before anything touches the kernel, and errors
//! name the field (`Sandboxes[2].PortForwards[0].HostPort: ...`).

mod spec;
mod status;
mod validate;

pub use spec::{HostSpec, PortForwardSpec, SandboxSpec};
pub use status::{Guest, HostStatus, PortForward, SandboxStatus};
pub use validate::{limits, Forward, Sandbox, Slot, ValidHostSpec, L4};

/// A host id: as a pod id, 1 to 63 characters of `[A-Za-z0-9_-]` (one subject token).
pub type HostId = crate::PodId;
