//! Kernel change notifications that wake the reconciler: rtnetlink (links, IPv4 addresses,
//! IPv4 routes) and nf_tables (`NFNLGRP_NFTABLES`). They only say *that* something may have
//! drifted and, where the kernel tells, *who* did it; whether anything drifted is decided by
//! reading the kernel back and comparing with the desired state. So the agent's own writes,
//! which converge, never count as drift, and a lost event costs only latency (the periodic
//! resync catches it; an overrun socket asks for one at once).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

use super::firewall::events::{Decoder, Transaction};
pub use super::rtnl::events::RouteChange;

const NFNLGRP_NFTABLES: u32 = 7;
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

/// The two notification sockets, opened on the reconciler's thread (so in its namespace).
pub struct KernelEvents {
    route: NlSocket,
    nft: NlSocket,
    decoder: Decoder,
    buf: Vec<u8>,
}

impl std::fmt::Debug for KernelEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelEvents").finish_non_exhaustive()
    }
}

fn subscribe(family: NlFamily, groups: &[u32]) -> io::Result<NlSocket> {
    let socket = NlSocket::connect(family, None, Groups::new_groups(groups))?;
    socket.nonblock()?;
    socket.set_recv_buffer_size(RCVBUF)?;
    Ok(socket)
}

impl KernelEvents {
    pub fn open() -> io::Result<KernelEvents> {
        Ok(KernelEvents {
            route: subscribe(NlFamily::Route, &super::rtnl::events::GROUPS)?,
            nft: subscribe(NlFamily::Netfilter, &[NFNLGRP_NFTABLES])?,
            decoder: Decoder::default(),
            buf: vec![0; 64 << 10],
        })
    }

    /// The descriptors to poll for readability.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.route.as_raw_fd(), self.nft.as_raw_fd()]
    }

    /// Reads everything pending on both sockets without blocking.
    pub fn drain(&mut self) -> Hints {
        let mut hints = Hints::default();
        loop {
            match self.route.recv(&mut self.buf[..], Msg::empty()) {
                Ok((n, _)) => hints
                    .network
                    .extend(super::rtnl::events::changes(&self.buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ENOBUFS: the kernel dropped notifications; anything else: treat the same.
                Err(_) => {
                    hints.overrun = true;
                    break;
                }
            }
        }
        loop {
            match self.nft.recv(&mut self.buf[..], Msg::empty()) {
                Ok((n, _)) => {
                    let datagram = &self.buf[..n];
                    hints.firewall.extend(self.decoder.feed(datagram));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    hints.overrun = true;
                    break;
                }
            }
        }
        hints
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
