//! rtnetlink notifications: which groups the agent listens to, and what one datagram of them
//! says changed and who asked for it.

use std::net::IpAddr;

use ipnet::IpNet;
use neli::consts::rtnl::{Rta, Rtm};
use neli::rtnl::{Ifaddrmsg, Ifinfomsg, Rtmsg};

use super::{ip_from, u32_ne};
use crate::dataplane::netlink::{self, messages, Message};

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
    /// What it is about, when the message says.
    pub subject: Option<Subject>,
}

/// What a notification is about: enough to tell whose object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A link, by index.
    Link(u32),
    /// An address on a link (the link's index).
    Address(u32),
    /// A route: its destination and the link it leaves by.
    Route {
        dst: Option<IpNet>,
        oif: Option<u32>,
    },
}

fn subject(msg: &Message<'_>) -> Option<Subject> {
    match Rtm::from(msg.ty) {
        Rtm::Newlink | Rtm::Dellink => {
            let m: Ifinfomsg = netlink::parse(msg.payload)?;
            Some(Subject::Link(*m.ifi_index() as u32))
        }
        Rtm::Newaddr | Rtm::Deladdr => {
            let m: Ifaddrmsg = netlink::parse(msg.payload)?;
            Some(Subject::Address(*m.ifa_index()))
        }
        Rtm::Newroute | Rtm::Delroute => {
            let m: Rtmsg = netlink::parse(msg.payload)?;
            let (mut dst, mut oif): (Option<IpAddr>, Option<u32>) = (None, None);
            for a in m.rtattrs().iter() {
                let p = a.rta_payload().as_ref();
                match a.rta_type() {
                    Rta::Dst => dst = ip_from(p),
                    Rta::Oif => oif = u32_ne(p),
                    _ => {}
                }
            }
            let len = *m.rtm_dst_len();
            // No RTA_DST: a default route (of the message's family).
            let dst = match (dst, *m.rtm_family()) {
                (Some(ip), _) => IpNet::new(ip, len).ok(),
                (None, neli::consts::rtnl::RtAddrFamily::Inet) => {
                    IpNet::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0).ok()
                }
                _ => None,
            };
            Some(Subject::Route { dst, oif })
        }
        _ => None,
    }
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
            subject: subject(&msg),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::rtnl::{addr, link, route, Route};

    #[test]
    fn notifications_name_their_object() {
        // The requests' layouts are the notifications' (a notification is the object's
        // message with another type).
        let retype = |mut b: Vec<u8>, ty: Rtm| {
            b[4..6].copy_from_slice(&u16::from(ty).to_ne_bytes());
            b
        };
        let up = retype(link::up_request(7, 1), Rtm::Dellink);
        let a = retype(
            addr::add_request(9, "10.12.0.2/31".parse().unwrap(), 1),
            Rtm::Deladdr,
        );
        let r = retype(
            route::replace_request(
                &Route {
                    dst: "10.11.0.7/32".parse().unwrap(),
                    gateway: Some("10.12.0.15".parse().unwrap()),
                    oif: 9,
                    metric: 0,
                },
                1,
            ),
            Rtm::Delroute,
        );
        let d = retype(
            route::replace_request(
                &Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("198.51.100.1".parse().unwrap()),
                    oif: 2,
                    metric: 0,
                },
                1,
            ),
            Rtm::Newroute,
        );
        let all = [up, a, r, d].concat();
        let subjects: Vec<_> = changes(&all).map(|c| c.subject).collect();
        assert_eq!(
            subjects,
            [
                Some(Subject::Link(7)),
                Some(Subject::Address(9)),
                Some(Subject::Route {
                    dst: Some("10.11.0.7/32".parse().unwrap()),
                    oif: Some(9)
                }),
                Some(Subject::Route {
                    dst: Some("0.0.0.0/0".parse().unwrap()),
                    oif: Some(2)
                }),
            ]
        );
    }

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
                    port: 4242,
                    subject: None,
                },
                RouteChange {
                    what: "route removed",
                    port: 0,
                    subject: None,
                },
            ]
        );
    }
}
