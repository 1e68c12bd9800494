//! rtnetlink notifications: which groups the agent listens to, and what one datagram of them
//! says changed and who asked for it.

use neli::consts::rtnl::Rtm;

use crate::dataplane::netlink::messages;

/// Links, addresses and routes of both families.
pub const GROUPS: [u32; 5] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_IFADDR,
    libc::RTNLGRP_IPV6_ROUTE,
];

/// A possible change to the pod's links, addresses or routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// `address removed`, `route added`, `link changed` ...
    pub what: &'static str,
    /// The netlink port of the socket whose request caused it (0: the kernel itself). For
    /// most tools, `ip` included, that is the process id.
    pub port: u32,
}

/// The rtnetlink notifications in one datagram.
pub fn changes(data: &[u8]) -> impl Iterator<Item = RouteChange> + '_ {
    messages(data).filter_map(|msg| {
        let what = match Rtm::from(msg.ty) {
            Rtm::Newlink => "link changed",
            Rtm::Dellink => "link deleted",
            Rtm::Newaddr => "address added",
            Rtm::Deladdr => "address removed",
            Rtm::Newroute => "route added",
            Rtm::Delroute => "route removed",
            _ => return None,
        };
        Some(RouteChange {
            what,
            port: msg.port,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_notifications_name_the_change_and_its_port() {
        let mut d = Vec::new();
        for (ty, port) in [(21u16, 4242u32), (25, 0), (99, 1)] {
            d.extend_from_slice(&20u32.to_ne_bytes());
            d.extend_from_slice(&ty.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&port.to_ne_bytes());
            d.extend_from_slice(&[0; 4]);
        }
        assert_eq!(
            changes(&d).collect::<Vec<_>>(),
            vec![
                RouteChange {
                    what: "address removed",
                    port: 4242
                },
                RouteChange {
                    what: "route removed",
                    port: 0
                },
            ]
        );
    }
}
