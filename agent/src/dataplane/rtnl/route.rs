//! Routes (`RTM_*ROUTE`, `struct rtmsg`): read the unicast routes of the main table, replace
//! one, delete one of the agent's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{family_of, ip_from, ip_octets, Error, Rtnl, AF_INET, AF_INET6, RTPROT_WEFT};
use crate::dataplane::netlink::message::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};
use crate::dataplane::netlink::{Datagram, Message};

pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
/// The 32-bit table id, present when it does not fit `rtm_table`.
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNSPEC: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTMSG_LEN: usize = 12;

/// Address family of a route dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One unicast route of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination prefix; `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    /// The metric (`RTA_PRIORITY`), 0 when absent.
    pub metric: u32,
}

/// A route the agent installs in the main table, always with [`RTPROT_WEFT`]: either via a
/// gateway (`default via 10.0.0.1 dev eth0`) or a connected prefix (`10.9.0.0/24 dev wg0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub metric: u32,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dst.prefix_len() == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev #{}", self.oif)?;
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
struct Header {
    family: u8,
    dst_len: u8,
    table: u8,
    protocol: u8,
    scope: u8,
    ty: u8,
}

fn message(d: &mut Datagram, ty: u16, flags: u16, seq: u32, h: Header) -> &mut Datagram {
    let m = d.message(ty, NLM_F_REQUEST | flags, seq);
    m.fixed(&[
        h.family, h.dst_len, 0, 0, h.table, h.protocol, h.scope, h.ty, 0, 0, 0, 0,
    ]);
    m
}

pub fn dump_request(family: Family, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    let family = match family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    };
    message(
        &mut d,
        RTM_GETROUTE,
        NLM_F_DUMP,
        seq,
        Header {
            family,
            dst_len: 0,
            table: 0,
            protocol: 0,
            scope: RT_SCOPE_UNIVERSE,
            ty: RTN_UNSPEC,
        },
    );
    d
}

fn route_message(
    d: &mut Datagram,
    ty: u16,
    flags: u16,
    seq: u32,
    route: &Route,
    scope: u8,
    kind: u8,
) {
    let m = message(
        d,
        ty,
        flags,
        seq,
        Header {
            family: family_of(route.dst.addr()),
            dst_len: route.dst.prefix_len(),
            table: RT_TABLE_MAIN,
            protocol: RTPROT_WEFT,
            scope,
            ty: kind,
        },
    );
    if route.dst.prefix_len() > 0 {
        m.attr(RTA_DST, &ip_octets(route.dst.network()));
    }
    if let Some(gw) = route.gateway {
        m.attr(RTA_GATEWAY, &ip_octets(gw));
    }
    m.attr_u32(RTA_OIF, route.oif)
        .attr_u32(RTA_PRIORITY, route.metric);
}

/// Installs `route` with `NLM_F_REPLACE`.
pub fn replace_request(route: &Route, seq: u32) -> Datagram {
    let scope = if route.gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let mut d = Datagram::new();
    route_message(
        &mut d,
        RTM_NEWROUTE,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        route,
        scope,
        RTN_UNICAST,
    );
    d
}

/// Deletes `route` if it carries [`RTPROT_WEFT`]. As iproute2 does for deletes: scope
/// NOWHERE and type UNSPEC match any.
pub fn delete_request(route: &Route, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    route_message(
        &mut d,
        RTM_DELROUTE,
        NLM_F_ACK,
        seq,
        route,
        RT_SCOPE_NOWHERE,
        RTN_UNSPEC,
    );
    d
}

/// A unicast route of the main table from a `RTM_NEWROUTE` answer; `None` for any other.
pub fn parse(msg: &Message<'_>) -> Option<RouteInfo> {
    if msg.ty != RTM_NEWROUTE {
        return None;
    }
    let h = msg.payload.get(..RTMSG_LEN)?;
    if h[7] != RTN_UNICAST {
        return None;
    }
    let mut table = u32::from(h[4]);
    let (mut dst, mut gateway, mut oif, mut metric) = (None, None, None, 0);
    for a in msg.attrs(RTMSG_LEN) {
        match a.ty {
            RTA_DST => dst = ip_from(a.payload),
            RTA_GATEWAY => gateway = ip_from(a.payload),
            RTA_OIF => oif = a.u32(),
            RTA_PRIORITY => metric = a.u32().unwrap_or(0),
            RTA_TABLE => table = a.u32().unwrap_or(table),
            _ => {}
        }
    }
    if table != u32::from(RT_TABLE_MAIN) {
        return None;
    }
    let unspecified = match h[0] {
        AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(RouteInfo {
        dst: IpNet::new(dst.unwrap_or(unspecified), h[1]).ok()?,
        gateway,
        oif,
        protocol: h[5],
        metric,
    })
}

impl Rtnl {
    /// The unicast routes of the main table.
    pub fn routes(&mut self, family: Family) -> Result<Vec<RouteInfo>, Error> {
        self.socket.dump(
            |seq| dump_request(family, seq),
            |m, out: &mut Vec<_>| out.extend(parse(m)),
        )
    }

    /// Installs `route` with `NLM_F_REPLACE`: the route of the same destination and metric in
    /// the main table, whoever added it, becomes this one (or it is created).
    pub fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        self.change(|seq| replace_request(route, seq))
    }

    /// Deletes `route`, but only if it carries [`RTPROT_WEFT`]: the kernel matches the
    /// protocol on delete, so someone else's identical route is never removed (ESRCH then).
    pub fn delete_route(&mut self, route: &Route) -> Result<(), Error> {
        self.change(|seq| delete_request(route, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netlink::messages;

    fn as_answer(d: Datagram) -> Vec<u8> {
        let mut bytes = d.bytes().to_vec();
        bytes[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        bytes
    }

    #[test]
    fn route_message_carries_weft_protocol_gateway_and_main_table() {
        let route = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            oif: 7,
            metric: 0,
        };
        let bytes = as_answer(replace_request(&route, 3));
        let m = messages(&bytes).next().unwrap();
        assert_eq!(m.payload[4], RT_TABLE_MAIN);
        assert_eq!(m.payload[5], RTPROT_WEFT);
        assert_eq!(m.payload[1], 0);
        let parsed = parse(&m).unwrap();
        assert_eq!(parsed.gateway, route.gateway);
        assert_eq!(parsed.oif, Some(7));
        assert_eq!(parsed.dst, route.dst);
        assert_eq!(parsed.protocol, RTPROT_WEFT);
    }

    proptest::proptest! {
        /// Any route the agent installs, read as the answer it becomes, gives it back.
        #[test]
        fn any_route_reads_back(v6 in proptest::prelude::any::<bool>(),
                                bits in proptest::prelude::any::<u128>(), len in 0u8..=128,
                                gw in proptest::option::of(proptest::prelude::any::<u128>()),
                                oif in 1u32.., metric in proptest::prelude::any::<u32>()) {
            let (dst, gateway): (IpNet, Option<IpAddr>) = if v6 {
                (IpNet::new(Ipv6Addr::from(bits).into(), len).unwrap().trunc(),
                 gw.map(|g| Ipv6Addr::from(g).into()))
            } else {
                (IpNet::new(Ipv4Addr::from(bits as u32).into(), len % 33).unwrap().trunc(),
                 gw.map(|g| Ipv4Addr::from(g as u32).into()))
            };
            let route = Route { dst, gateway, oif, metric };
            let bytes = as_answer(replace_request(&route, 1));
            let got = parse(&messages(&bytes).next().unwrap()).unwrap();
            proptest::prop_assert_eq!(got, RouteInfo { dst, gateway, oif: Some(oif), protocol: RTPROT_WEFT, metric });
        }
    }

    #[test]
    fn other_tables_and_types_are_not_ours_to_read() {
        let route = Route {
            dst: "2001:db8::/32".parse().unwrap(),
            gateway: None,
            oif: 2,
            metric: 1024,
        };
        let mut bytes = as_answer(replace_request(&route, 3));
        let parsed = parse(&messages(&bytes).next().unwrap()).unwrap();
        assert_eq!((parsed.dst, parsed.metric), (route.dst, 1024));
        // Table local (255).
        bytes[16 + 4] = 255;
        assert_eq!(parse(&messages(&bytes).next().unwrap()), None);
        bytes[16 + 4] = RT_TABLE_MAIN;
        // A blackhole route (type 6).
        bytes[16 + 7] = 6;
        assert_eq!(parse(&messages(&bytes).next().unwrap()), None);
    }
}
