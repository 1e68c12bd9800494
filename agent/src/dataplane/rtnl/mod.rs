//! rtnetlink: the agent's one `NETLINK_ROUTE` socket, and the messages of each kernel object
//! it manages: [`link`], [`addr`], [`route`].
//!
//! Every change asks for an ack, so a refusal comes back with its errno (and the kernel's
//! words) and is never silently lost; every dump is read to its end and read again when the
//! kernel flags it interrupted (`netlink::Socket`). Requests are built and answers read with
//! neli's rtnetlink types (`Ifinfomsg`, `Ifaddrmsg`, `Rtmsg`, `Rtattr`) and constants; the
//! few constants neli lacks are in [`consts`]. The message functions are pure (request bytes
//! in, parsed objects out) and tested without root; [`Rtnl`] only sends and counts.

pub mod addr;
pub mod events;
pub mod link;
pub mod route;

use std::io;
use std::net::IpAddr;

use neli::consts::rtnl::{RtAddrFamily, RtaType};
use neli::rtnl::{Rtattr, RtattrBuilder};
use neli::types::Buffer;
use neli::{Size, ToBytes};

pub use super::netlink::Error;
use super::netlink::{Protocol, Socket};
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

/// The rtnetlink constants neli does not have, from `linux/if_addr.h`, `linux/if_link.h`,
/// `linux/ip.h` and `linux/veth.h`.
pub mod consts {
    /// `IFA_PROTO` (Linux 6.1+): the protocol that added an address.
    pub const IFA_PROTO: u16 = 11;
    /// `IFLA_INET_CONF` under `IFLA_AF_SPEC` > `AF_INET`.
    pub const IFLA_INET_CONF: u16 = 1;
    /// Index of `promote_secondaries` in the IPv4 devconf array.
    pub const IPV4_DEVCONF_PROMOTE_SECONDARIES: u16 = 20;
    /// `VETH_INFO_PEER` under `IFLA_INFO_DATA`: the peer's `ifinfomsg` and attributes.
    pub const VETH_INFO_PEER: u16 = 1;
}

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

    /// Opens a socket whose dumps the kernel filters ([`Rtnl::addresses_on`],
    /// [`Rtnl::routes_via`] then cost what they return, not what the namespace holds).
    pub fn open_strict() -> io::Result<Rtnl> {
        let rtnl = Rtnl::open()?;
        rtnl.socket.strict_dumps()?;
        Ok(rtnl)
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
    fn change(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> Result<(), Error> {
        self.changes += 1;
        let seq = self.socket.next_seq();
        self.socket.request(&build(seq), |_| {})
    }
}

/// One attribute with its payload serialized by neli (`&str` NUL-terminated, integers in
/// host order, a nested message as its bytes).
fn attr<T: RtaType, P: Size + ToBytes>(ty: T, payload: P) -> Rtattr<T, Buffer> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(payload)
        .build()
        .expect("type and payload are set")
}

/// An attribute of type `ty` holding `inner`, nested.
fn nest<T: RtaType, U: RtaType>(ty: T, inner: &[Rtattr<U, Buffer>]) -> Rtattr<T, Buffer> {
    inner.iter().fold(attr(ty, Buffer::new()), |outer, a| {
        outer
            .nest(a)
            .expect("serializing into a vector cannot fail")
    })
}

fn family_of(ip: IpAddr) -> RtAddrFamily {
    match ip {
        IpAddr::V4(_) => RtAddrFamily::Inet,
        IpAddr::V6(_) => RtAddrFamily::Inet6,
    }
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn u32_ne(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
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
