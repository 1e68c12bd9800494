//! Kernel change notifications that wake the reconciler: rtnetlink (links, IPv4 addresses,
//! IPv4 routes) and nf_tables (`NFNLGRP_NFTABLES`). They only say *that* something may have
//! drifted and, where the kernel tells, *who* did it; whether anything drifted is decided by
//! reading the kernel back and comparing with the desired state. So the agent's own writes,
//! which converge, never count as drift, and a lost event costs only latency (the periodic
//! resync catches it; an overrun socket asks for one at once).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::firewall::TABLE_REF;
use super::netlink::{Protocol, Socket};
use super::nftables::abi::NFNLGRP_NFTABLES;
use super::nftables::events::Decoder;
pub use super::nftables::events::Transaction;
pub use super::rtnl::events::RouteChange;

/// Room for a burst of notifications (a 10,000-rule table replaced by someone else).
const RCVBUF: usize = 4 << 20;

/// What the event sockets said since the last drain.
#[derive(Debug, Default)]
pub struct Hints {
    pub network: Vec<RouteChange>,
    pub firewall: Vec<Transaction>,
    /// A socket overflowed: events were lost, so everything must be checked.
    pub overrun: bool,
}

impl Hints {
    pub fn is_empty(&self) -> bool {
        self.network.is_empty() && self.firewall.is_empty() && !self.overrun
    }
}

/// The notification sockets, opened on the reconciler's thread (so in its namespace).
#[derive(Debug)]
pub struct KernelEvents {
    route: Socket,
    nft: Socket,
    decoder: Decoder,
}

impl KernelEvents {
    pub fn open() -> io::Result<KernelEvents> {
        Ok(KernelEvents {
            route: Socket::subscribe(Protocol::Route, &super::rtnl::events::GROUPS, RCVBUF)?,
            nft: Socket::subscribe(Protocol::Netfilter, &[NFNLGRP_NFTABLES], RCVBUF)?,
            decoder: Decoder::new(TABLE_REF),
        })
    }

    /// The descriptors to poll for readability.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.route.as_raw_fd(), self.nft.as_raw_fd()]
    }

    /// Reads everything pending on both sockets without blocking.
    pub fn drain(&mut self) -> Hints {
        let mut hints = Hints::default();
        drain(&mut self.route, &mut hints.overrun, |datagram| {
            hints.network.extend(super::rtnl::events::changes(datagram))
        });
        let decoder = &mut self.decoder;
        drain(&mut self.nft, &mut hints.overrun, |datagram| {
            hints.firewall.extend(decoder.feed(datagram))
        });
        hints
    }
}

/// Hands every pending datagram of `socket` to `each`; sets `overrun` when the kernel
/// dropped notifications (ENOBUFS) or the socket failed otherwise.
fn drain(socket: &mut Socket, overrun: &mut bool, mut each: impl FnMut(&[u8])) {
    loop {
        match socket.recv() {
            Ok(datagram) => each(datagram),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                *overrun = true;
                return;
            }
        }
    }
}

/// `ip (pid 4242)` when the port is a live process's id, else `pid 4242`, or `the kernel`.
pub fn describe_port(port: u32) -> String {
    if port == 0 {
        return "the kernel".into();
    }
    match std::fs::read_to_string(format!("/proc/{port}/comm")) {
        Ok(comm) => format!("{} (pid {port})", comm.trim()),
        Err(_) => format!("pid {port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_name_their_process() {
        assert_eq!(describe_port(0), "the kernel");
        assert!(
            describe_port(std::process::id()).ends_with(&format!("(pid {})", std::process::id()))
        );
    }
}
