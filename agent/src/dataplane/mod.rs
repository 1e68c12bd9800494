//! The kernel subsystems the agent owns. Each has a pure half (spec -> the exact objects to
//! write; kernel dump -> observed status), unit-tested without root, and a thin half that does
//! the socket I/O. All of them live on the reconciler's thread: their sockets are blocking,
//! and a thread is the unit that lives in a network namespace.

pub mod firewall;
pub mod link;
pub mod resolv;
pub mod rtnl;
pub mod wireguard;
