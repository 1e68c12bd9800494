//! Routes (`RTM_*ROUTE`, `struct rtmsg`): read the unicast routes of the main table, replace
//! one, delete one of the agent's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, RtmF, Rtn, Rtprot};
use neli::rtnl::{Rtattr, Rtmsg, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use super::{attr, family_of, ip_from, ip_octets, u32_ne, Error, Rtnl, RTPROT_WEFT};
use crate::dataplane::netlink::{self, Message};

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

fn message(
    family: RtAddrFamily,
    dst_len: u8,
    table: RtTable,
    protocol: Rtprot,
    scope: RtScope,
    ty: Rtn,
    attrs: Vec<Rtattr<Rta, Buffer>>,
) -> Rtmsg {
    RtmsgBuilder::default()
        .rtm_family(family)
        .rtm_dst_len(dst_len)
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(table)
        .rtm_protocol(protocol)
        .rtm_scope(scope)
        .rtm_type(ty)
        .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
        .build()
        .expect("every field is set")
}

/// A dump of the IPv4 routes via link `oif`: a socket with strict dumps gets only those.
pub fn dump_request_via(oif: u32, seq: u32) -> Vec<u8> {
    let msg = message(
        RtAddrFamily::Inet,
        0,
        RtTable::Unspec,
        Rtprot::Unspec,
        RtScope::Universe,
        Rtn::Unspec,
        vec![attr(Rta::Oif, oif)],
    );
    netlink::request(Rtm::Getroute, NlmF::DUMP, seq, msg)
}

/// The route the kernel's FIB lookup of `dst` matches (`ip route get fibmatch`): one
/// lookup, where a dump, however filtered, walks the whole table.
pub fn fib_match_request(dst: Ipv4Addr, seq: u32) -> Vec<u8> {
    let msg = RtmsgBuilder::default()
        .rtm_family(RtAddrFamily::Inet)
        .rtm_dst_len(32)
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(RtTable::Unspec)
        .rtm_protocol(Rtprot::Unspec)
        .rtm_scope(RtScope::Universe)
        .rtm_type(Rtn::Unspec)
        .rtm_flags(RtmF::FIBMATCH)
        .rtattrs(
            [attr(Rta::Dst, Buffer::from(ip_octets(IpAddr::V4(dst))))]
                .into_iter()
                .collect::<RtBuffer<_, _>>(),
        )
        .build()
        .expect("every field is set");
    netlink::request(Rtm::Getroute, NlmF::ACK, seq, msg)
}

pub fn dump_request(family: Family, seq: u32) -> Vec<u8> {
    let family = match family {
        Family::V4 => RtAddrFamily::Inet,
        Family::V6 => RtAddrFamily::Inet6,
    };
    let msg = message(
        family,
        0,
        RtTable::Unspec,
        Rtprot::Unspec,
        RtScope::Universe,
        Rtn::Unspec,
        vec![],
    );
    netlink::request(Rtm::Getroute, NlmF::DUMP, seq, msg)
}

fn route_message(route: &Route, scope: RtScope, kind: Rtn) -> Rtmsg {
    let mut attrs = Vec::new();
    if route.dst.prefix_len() > 0 {
        attrs.push(attr(Rta::Dst, Buffer::from(ip_octets(route.dst.network()))));
    }
    if let Some(gw) = route.gateway {
        attrs.push(attr(Rta::Gateway, Buffer::from(ip_octets(gw))));
    }
    attrs.push(attr(Rta::Oif, route.oif));
    attrs.push(attr(Rta::Priority, route.metric));
    message(
        family_of(route.dst.addr()),
        route.dst.prefix_len(),
        RtTable::Main,
        Rtprot::UnrecognizedConst(RTPROT_WEFT),
        scope,
        kind,
        attrs,
    )
}

/// Installs `route` with `NLM_F_REPLACE`.
pub fn replace_request(route: &Route, seq: u32) -> Vec<u8> {
    let scope = if route.gateway.is_some() {
        RtScope::Universe
    } else {
        RtScope::Link
    };
    let msg = route_message(route, scope, Rtn::Unicast);
    netlink::request(
        Rtm::Newroute,
        NlmF::ACK | NlmF::CREATE | NlmF::REPLACE,
        seq,
        msg,
    )
}

/// Deletes `route` if it carries [`RTPROT_WEFT`]. As iproute2 does for deletes: scope
/// NOWHERE and type UNSPEC match any.
pub fn delete_request(route: &Route, seq: u32) -> Vec<u8> {
    let msg = route_message(route, RtScope::Nowhere, Rtn::Unspec);
    netlink::request(Rtm::Delroute, NlmF::ACK, seq, msg)
}

/// A unicast route of the main table from a `RTM_NEWROUTE` answer; `None` for any other.
pub fn parse(msg: &Message<'_>) -> Option<RouteInfo> {
    if msg.ty != u16::from(Rtm::Newroute) {
        return None;
    }
    let m: Rtmsg = netlink::parse(msg.payload)?;
    if *m.rtm_type() != Rtn::Unicast {
        return None;
    }
    let mut table = u32::from(u8::from(*m.rtm_table()));
    let (mut dst, mut gateway, mut oif, mut metric) = (None, None, None, 0);
    for a in m.rtattrs().iter() {
        let p = a.rta_payload().as_ref();
        match a.rta_type() {
            Rta::Dst => dst = ip_from(p),
            Rta::Gateway => gateway = ip_from(p),
            Rta::Oif => oif = u32_ne(p),
            Rta::Priority => metric = u32_ne(p).unwrap_or(0),
            Rta::Table => table = u32_ne(p).unwrap_or(table),
            _ => {}
        }
    }
    if table != u32::from(u8::from(RtTable::Main)) {
        return None;
    }
    let unspecified = match *m.rtm_family() {
        RtAddrFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        RtAddrFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(RouteInfo {
        dst: IpNet::new(dst.unwrap_or(unspecified), *m.rtm_dst_len()).ok()?,
        gateway,
        oif,
        protocol: u8::from(*m.rtm_protocol()),
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

    /// The IPv4 unicast routes of the main table via link `oif`, by a dump the kernel filters
    /// when the socket has strict dumps ([`Rtnl::open_strict`]).
    pub fn routes_via(&mut self, oif: u32) -> Result<Vec<RouteInfo>, Error> {
        let mut via = self.socket.dump(
            |seq| dump_request_via(oif, seq),
            |m, out: &mut Vec<_>| out.extend(parse(m)),
        )?;
        via.retain(|r| r.oif == Some(oif) && r.dst.addr().is_ipv4());
        Ok(via)
    }

    /// The main table's route that traffic to `dst` takes (the FIB's longest match), in
    /// the time of one lookup whatever the size of the table; `None` when there is none.
    pub fn route_to(&mut self, dst: Ipv4Addr) -> Result<Option<RouteInfo>, Error> {
        let seq = self.socket.next_seq();
        let mut found = None;
        match self.socket.request(&fib_match_request(dst, seq), |m| {
            found = found.take().or_else(|| parse(m));
        }) {
            Ok(()) => Ok(found),
            Err(e) if matches!(e.errno(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => Ok(None),
            Err(e) => Err(e),
        }
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

    fn as_answer(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes[4..6].copy_from_slice(&u16::from(Rtm::Newroute).to_ne_bytes());
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
        assert_eq!(m.payload[4], u8::from(RtTable::Main));
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
        bytes[16 + 4] = u8::from(RtTable::Main);
        // A blackhole route (type 6).
        bytes[16 + 7] = 6;
        assert_eq!(parse(&messages(&bytes).next().unwrap()), None);
    }
}
