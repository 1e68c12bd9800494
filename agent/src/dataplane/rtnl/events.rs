//! rtnetlink notifications: which groups the agent listens to, and what one datagram of them
//! says changed and who asked for it.

use super::addr::{RTM_DELADDR, RTM_NEWADDR};
use super::link::{RTM_DELLINK, RTM_NEWLINK};
use super::route::{RTM_DELROUTE, RTM_NEWROUTE};
use crate::dataplane::netlink::messages;

/// Links, IPv4 addresses, IPv4 routes.
pub const GROUPS: [u32; 3] = [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE];
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;

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
        let what = match msg.ty {
            RTM_NEWLINK => "link changed",
            RTM_DELLINK => "link deleted",
            RTM_NEWADDR => "address added",
            RTM_DELADDR => "address removed",
            RTM_NEWROUTE => "route added",
            RTM_DELROUTE => "route removed",
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
