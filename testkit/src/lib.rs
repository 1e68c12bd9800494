//! Test harness for weft: real processes and real kernel state, cleaned up on drop.
//!
//! - [`netns`]: network namespaces and veth pairs with unique names, deleted on drop, and a
//!   way to run a closure on a thread inside a namespace.
//! - [`observe`]: independent observers (`nft -j`, `ip -j`, `wg show`) for assertions.
//! - [`packets`]: TCP and UDP echo servers and clients in namespaces, for real packets;
//!   [`tapguest`]: a guest on a tap (ARP and UDP), as a VMM's guest would be.
//! - [`nats`]: a real `nats-server` on a free port, with a configuration file or without.
//! - [`natsconf`]: the nats-server configuration weft ships (users, permissions, TLS), generated.
//! - [`pki`]: test certificates made at run time; [`identity`]: a client's credentials as
//!   flags and as a connection.
//! - [`agent`]: the real `weft-agent` binary inside a namespace.
//! - [`control`]: a control plane publishing specs and a dashboard collecting statuses.
//! - [`hub`]: a hub namespace (NATS, the test's clients) and pod namespaces joined to it.
//! - [`host`]: a machine that hosts sandboxes: a host namespace for the host agent, an
//!   internet namespace beyond its uplink.
//! - [`stack`]: a whole local stack: hub, LAN router, pods with their agents.
//! - [`fleet`]: N agents in namespaces of their own against a nats-server cluster, a control
//!   plane applying specs to all of them and a dashboard following them, with their costs.
//! - [`eventually`]: bounded waits for eventual conditions, never a fixed sleep.
//! - [`go`]: `weftcp`, a control plane written in Go from the contract alone.
//! - [`vm`]: a QEMU guest running Debian's stock kernel, for kernel features the host lacks.

pub mod agent;
pub mod cluster;
pub mod control;
pub mod eventually;
pub mod fleet;
pub mod go;
pub mod host;
pub mod hub;
pub mod identity;
pub mod nats;
pub mod natsconf;
pub mod netns;
pub mod observe;
pub mod packets;
pub mod pki;
pub mod stack;
pub mod status_log;
pub mod tapguest;
pub mod vm;
pub mod wireguard;

pub use eventually::{wait_until, wait_until_async};
pub use netns::{veth, Netns};

/// An interface name unique on this host across parallel tests and test processes (the
/// userspace WireGuard control socket path is per host, not per namespace): `<tag><pid>x<n>`,
/// at most 15 characters for a tag of up to 3.
pub fn unique_ifname(tag: &str, n: u32) -> String {
    let name = format!("{tag}{}x{n}", std::process::id() % 100_000);
    assert!(
        name.len() <= 15,
        "{name} is longer than an interface name may be"
    );
    name
}

/// True when the process can create network namespaces (root with CAP_SYS_ADMIN).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics with a clear message when not root: privileged tests must not pass by skipping.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, netlink); run the suite as root"
    );
}
