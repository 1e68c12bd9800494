//! rtnetlink: the agent's one `NETLINK_ROUTE` socket, and the messages of each kernel object
//! it manages: [`link`], [`addr`], [`route`].
//!
//! Every change asks for an ack, so a refusal comes back with its errno (and the kernel's
//! words) and is never silently lost; every dump is read to its end and read again when the
//! kernel flags it interrupted (`netlink::Socket`). The message functions are pure (request
//! bytes in, parsed objects out) and tested without root; [`Rtnl`] only sends and counts.

pub mod addr;
pub mod events;
pub mod link;
pub mod route;

use std::io;
use std::net::IpAddr;

pub use super::netlink::Error;
use super::netlink::{Datagram, Protocol, Socket};
pub use addr::AddrInfo;
pub use link::LinkInfo;
pub use route::{Family, Route, RouteInfo};

/// The `rtm_protocol` (and `IFA_PROTO`) the agent stamps on every route and address it adds,
/// so it can tell its own objects from everyone else's and remove only those.
///
/// 0x57 (87, ASCII `W`) is unassigned: `/etc/iproute2/rt_protos` and `linux/rtnetlink.h`
/// name 0-4 (kernel), 8-18, 42, 99 and 186-192 (routing daemons); RTPROT_STATIC (4) and
/// below are where `ip route add` and the kernel put theirs. `ip route show proto 87` lists
/// exactly the agent's routes.
pub const RTPROT_WEFT: u8 = 0x57;

const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// The NETLINK_ROUTE socket. Blocking; lives on the reconciler's thread.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    changes: u64,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl {
            socket: Socket::open(Protocol::Route)?,
            changes: 0,
        })
    }

    /// The socket's netlink port: the kernel stamps it on the notifications our own requests
    /// cause, which tells them apart from everyone else's.
    pub fn portid(&self) -> u32 {
        self.socket.port()
    }

    /// How many change requests (new/set/delete of links, addresses, routes) this socket has
    /// sent, whether or not the kernel accepted them. Reads do not count.
    pub fn changes_sent(&self) -> u64 {
        self.changes
    }

    /// A change request: counted, acknowledged.
    fn change(&mut self, build: impl FnOnce(u32) -> Datagram) -> Result<(), Error> {
        self.changes += 1;
        let seq = self.socket.next_seq();
        self.socket.request(build(seq).bytes(), |_| {})
    }
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(b))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::from(b))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_displays_errno_text_and_exposes_it() {
        let e = Error::Refused {
            errno: 17,
            text: None,
        };
        assert_eq!(e.errno(), Some(17));
        assert_eq!(e.to_string(), "File exists (os error 17)");
        let e = Error::Refused {
            errno: 101,
            text: Some("Nexthop has invalid gateway".into()),
        };
        assert_eq!(
            e.to_string(),
            "Network is unreachable (os error 101): Nexthop has invalid gateway"
        );
    }

    #[test]
    fn the_socket_can_move_to_the_reconciler_thread() {
        fn send<T: Send>() {}
        send::<Rtnl>();
        fn sync<T: Sync>() {}
        send::<Error>();
        sync::<Error>();
    }
}
