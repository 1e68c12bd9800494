//! Host routes to the peers' endpoints while the tunnel may hold the default route
//! (`WireGuard.DefaultRoute: true`): each endpoint is reached via the `Network` gateway of
//! its family on the pod interface, so the tunnel's own packets never enter the tunnel.
//!
//! These are the agent's only routes outside its links' own: stamped [`RTPROT_WEFT`], a host
//! prefix (/32, /128), via a gateway, not on the tunnel. Nothing else the pod agent adds looks
//! like that (its default routes are /0, its tunnel routes go straight onto the tunnel), so
//! one that is no longer wanted is removed wherever it is: after `DefaultRoute` is dropped,
//! after the WireGuard section is, and after a restart. Drift of them is reported under
//! `WireGuard`.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_schema::validate::WireGuard;

use crate::dataplane::rtnl::{self, Family, Route, RouteInfo, Rtnl, RTPROT_WEFT};

/// What the kernel holds for the endpoint routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The index of the pod interface (`None`: it does not exist, or nothing is wanted).
    pub underlay: Option<u32>,
    /// The host routes of the main table, both families.
    pub routes: Vec<RouteInfo>,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Replace(Route),
    Delete(RouteInfo),
}

impl Change {
    pub fn describe(&self) -> String {
        match self {
            Change::Replace(r) => format!(
                "route endpoint {} via {}",
                r.dst.addr(),
                r.gateway.map_or_else(String::new, |g| g.to_string())
            ),
            Change::Delete(r) => format!("remove endpoint route {}", r.dst.addr()),
        }
    }
}

/// The routes wanted: each peer endpoint via the gateway of its family (validation made
/// sure there is one), when the spec says `DefaultRoute: true`.
pub fn wanted(desired: Option<&WireGuard>) -> Vec<(IpNet, IpAddr)> {
    let Some(w) = desired else { return Vec::new() };
    let Some(underlay) = &w.default_route else {
        return Vec::new();
    };
    let mut routes: Vec<(IpNet, IpAddr)> = w
        .peers
        .iter()
        .filter_map(|p| p.endpoint)
        .filter_map(|e| Some((IpNet::from(e.ip()), underlay.gateway_for(e.ip())?)))
        .collect();
    routes.sort_unstable();
    routes.dedup_by_key(|(dst, _)| *dst);
    routes
}

/// Whether a route is one of the agent's endpoint routes (see the module's rule).
fn owned(r: &RouteInfo, tunnel: Option<u32>) -> bool {
    r.protocol == RTPROT_WEFT
        && r.dst.prefix_len() == r.dst.max_prefix_len()
        && r.gateway.is_some()
        && (tunnel.is_none() || r.oif != tunnel)
}

pub fn read(rtnl: &mut Rtnl, desired: Option<&WireGuard>) -> Result<State, rtnl::Error> {
    let underlay = match desired.and_then(|w| w.default_route.as_ref()) {
        Some(u) => rtnl.link(u.interface.as_str())?.map(|l| l.index),
        None => None,
    };
    let mut routes = rtnl.routes(Family::V4)?;
    routes.extend(rtnl.routes(Family::V6)?);
    routes.retain(|r| r.dst.prefix_len() == r.dst.max_prefix_len());
    Ok(State { underlay, routes })
}

/// The route the kernel uses for `dst` among the host routes read.
fn effective(state: &State, dst: IpNet) -> Option<&RouteInfo> {
    state
        .routes
        .iter()
        .filter(|r| r.dst == dst)
        .min_by_key(|r| r.metric)
}

/// The changes: the wanted routes missing or going elsewhere, and the agent's endpoint routes
/// no longer wanted. `tunnel` is the WireGuard interface's index, when it exists.
pub fn plan(desired: Option<&WireGuard>, tunnel: Option<u32>, state: &State) -> Vec<Change> {
    let wanted = wanted(desired);
    let mut changes = Vec::new();
    if let Some(oif) = state.underlay {
        for &(dst, gateway) in &wanted {
            let ok = effective(state, dst)
                .is_some_and(|r| r.gateway == Some(gateway) && r.oif == Some(oif));
            if !ok {
                changes.push(Change::Replace(Route {
                    dst,
                    gateway: Some(gateway),
                    oif,
                    metric: crate::dataplane::link::route_metric(dst),
                }));
            }
        }
    }
    for r in &state.routes {
        if owned(r, tunnel) && !wanted.iter().any(|(dst, _)| *dst == r.dst) {
            changes.push(Change::Delete(*r));
        }
    }
    changes
}

/// What differs, in words.
pub fn problems(desired: Option<&WireGuard>, tunnel: Option<u32>, state: &State) -> Vec<String> {
    let wanted = wanted(desired);
    if state.underlay.is_none() {
        if let Some(u) = desired.and_then(|w| w.default_route.as_ref()) {
            if !wanted.is_empty() {
                return vec![format!(
                    "no route to the peers' endpoints: interface {} does not exist",
                    u.interface
                )];
            }
        }
    }
    plan(desired, tunnel, state)
        .into_iter()
        .map(|c| match c {
            Change::Replace(r) => format!(
                "endpoint {} is not routed via {}",
                r.dst.addr(),
                r.gateway.map_or_else(String::new, |g| g.to_string())
            ),
            Change::Delete(r) => format!("stale endpoint route {}", r.dst.addr()),
        })
        .collect()
}

/// A change the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{}", .change.describe())]
pub struct Failure {
    pub change: Change,
    #[source]
    pub cause: rtnl::Error,
}

/// Makes every change; returns those the kernel refused.
pub fn send(rtnl: &mut Rtnl, changes: Vec<Change>) -> Vec<Failure> {
    let mut failed = Vec::new();
    for c in changes {
        let result = match &c {
            Change::Replace(r) => rtnl.replace_route(r),
            Change::Delete(r) => rtnl.delete_route(&Route {
                dst: r.dst,
                gateway: r.gateway,
                oif: r.oif.unwrap_or(0),
                metric: r.metric,
            }),
        };
        match result {
            // Gone already (with its link, or by someone else's hand): what was wanted.
            Err(e) if matches!(c, Change::Delete(_)) && e.errno() == Some(libc::ESRCH) => {}
            Err(cause) => failed.push(Failure { change: c, cause }),
            Ok(()) => {}
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::validate::{IfName, Peer, Underlay};

    fn wg(default_route: bool, endpoints: &[&str]) -> WireGuard {
        WireGuard {
            interface: IfName::parse("wg0").unwrap(),
            address: "10.9.0.1/24".parse().unwrap(),
            listen_port: 51820,
            private_key: None,
            peers: endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| Peer {
                    public_key: weft_schema::key::PublicKey([i as u8; 32]),
                    endpoint: Some(e.parse().unwrap()),
                    allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
                    persistent_keepalive: None,
                    preshared_key: None,
                })
                .collect(),
            mtu: 1420,
            default_route: default_route.then(|| Underlay {
                interface: IfName::parse("eth0").unwrap(),
                gateway: Some("192.0.2.1".parse().unwrap()),
                gateway6: Some("fe80::1".parse().unwrap()),
            }),
        }
    }

    fn host(dst: &str, gw: &str, oif: u32, protocol: u8) -> RouteInfo {
        RouteInfo {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            protocol,
            metric: 0,
        }
    }

    #[test]
    fn each_endpoint_gets_a_host_route_via_its_familys_gateway() {
        let w = wg(true, &["198.51.100.2:51820", "[2001:db8::10]:51820"]);
        let state = State {
            underlay: Some(2),
            routes: vec![],
        };
        assert_eq!(
            plan(Some(&w), Some(5), &state),
            vec![
                Change::Replace(Route {
                    dst: "198.51.100.2/32".parse().unwrap(),
                    gateway: Some("192.0.2.1".parse().unwrap()),
                    oif: 2,
                    metric: 0
                }),
                Change::Replace(Route {
                    dst: "2001:db8::10/128".parse().unwrap(),
                    gateway: Some("fe80::1".parse().unwrap()),
                    oif: 2,
                    metric: 1
                }),
            ]
        );
        let done = State {
            underlay: Some(2),
            routes: vec![
                host("198.51.100.2/32", "192.0.2.1", 2, RTPROT_WEFT),
                host("2001:db8::10/128", "fe80::1", 2, RTPROT_WEFT),
            ],
        };
        assert_eq!(plan(Some(&w), Some(5), &done), vec![]);
        assert!(problems(Some(&w), Some(5), &done).is_empty());
    }

    #[test]
    fn without_default_route_only_the_agents_endpoint_routes_go() {
        let state = State {
            underlay: None,
            routes: vec![
                host("198.51.100.2/32", "192.0.2.1", 2, RTPROT_WEFT),
                host("203.0.113.9/32", "192.0.2.1", 2, 4), // someone else's
            ],
        };
        let w = wg(false, &["198.51.100.2:51820"]);
        let expected = vec![Change::Delete(host(
            "198.51.100.2/32",
            "192.0.2.1",
            2,
            RTPROT_WEFT,
        ))];
        assert_eq!(plan(Some(&w), Some(5), &state), expected);
        // No WireGuard section at all: the same.
        assert_eq!(plan(None, None, &state), expected);
        assert_eq!(
            problems(None, None, &state),
            vec!["stale endpoint route 198.51.100.2"]
        );
    }
}
