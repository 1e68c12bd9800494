//! The pod interface: up, one IPv4 address, the default route, the MTU.
//!
//! [`plan`] is pure: the desired [`Network`] and the [`LinkState`] read from the kernel give
//! the minimal list of [`Change`]s, empty when everything is right (an apply then sends
//! nothing). [`apply`] reads, plans and sends; [`observe`] reads back into the contract's
//! [`NetworkStatus`].
//!
//! Ownership: every address and route the agent adds carries [`RTPROT_WEFT`], and only
//! objects carrying it are ever removed. An address or route someone else added (the kernel,
//! `ip` without `proto`, a routing daemon) is left alone, even when it is not in the spec.
//!
//! The default route: the contract says "the default route goes via `Gateway`", so when the
//! route the kernel would use (the lowest-metric IPv4 default of the main table) does not go
//! via `Gateway` on the pod interface, the agent installs its own at metric 0 with
//! `NLM_F_REPLACE`. That takes the place of a metric-0 default of any protocol (the kernel
//! replaces the route with the same destination and metric) and outranks defaults at higher
//! metrics, which are left in place. A default that already goes via `Gateway` on the
//! interface is accepted whoever set it. When `Gateway` is absent, only a default route
//! carrying `RTPROT_WEFT` is removed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use weft_schema::status::{NetworkStatus, Overall};
use weft_schema::validate::{IfName, Network};

use super::rtnl::{self, AddrInfo, Family, Route, RouteInfo, Rtnl, RTPROT_WEFT};

/// The metric of the default route the agent installs: 0, so it is the one the kernel uses.
const DEFAULT_ROUTE_METRIC: u32 = 0;

/// What the kernel holds for the pod interface, as far as the spec is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mtu: u32,
    /// The interface's IPv4 addresses with the protocol that added each.
    pub addresses: Vec<AddrInfo>,
    /// Every IPv4 default route of the main table, on any interface.
    pub default_routes: Vec<RouteInfo>,
    /// Another interface that already holds the desired address (any prefix length).
    pub address_held_by: Option<String>,
}

impl LinkState {
    /// The default route the kernel uses: the lowest metric, the first of equals.
    pub fn effective_default(&self) -> Option<&RouteInfo> {
        self.default_routes.iter().min_by_key(|r| r.metric)
    }

    fn has_address(&self, addr: Ipv4Net) -> bool {
        self.addresses.iter().any(|a| a.addr == IpNet::V4(addr))
    }
}

/// One change to the kernel, in the order [`plan`] lists them: the link first (a route needs
/// it up); before any address is deleted, `promote_secondaries` (else deleting a primary
/// address deletes its secondaries too: someone else's, or the desired one); the new address
/// before the stale one (so the subnet, and the routes through it, never go away when only
/// the host part changes); the route last (its gateway must be reachable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetMtu(u32),
    SetUp,
    PromoteSecondaries,
    /// An address the agent added earlier that is not the desired one.
    DeleteAddress(Ipv4Net),
    AddAddress(Ipv4Net),
    ReplaceDefaultRoute(Ipv4Addr),
    /// A default route the agent added, when the spec has no gateway any more.
    DeleteDefaultRoute {
        gateway: Option<Ipv4Addr>,
        oif: u32,
        metric: u32,
    },
}

impl Change {
    /// Names the change and the interface it applies to, for error messages.
    pub fn describe(&self, interface: &IfName) -> String {
        match self {
            Change::SetMtu(mtu) => format!("set mtu {mtu} on {interface}"),
            Change::SetUp => format!("bring {interface} up"),
            Change::PromoteSecondaries => format!("set promote_secondaries on {interface}"),
            Change::DeleteAddress(a) => format!("remove address {a} from {interface}"),
            Change::AddAddress(a) => format!("add address {a} to {interface}"),
            Change::ReplaceDefaultRoute(gw) => {
                format!("replace default route via {gw} on {interface}")
            }
            Change::DeleteDefaultRoute { gateway, .. } => match gateway {
                Some(gw) => format!("remove default route via {gw}"),
                None => "remove default route".to_owned(),
            },
        }
    }
}

/// Why part of the spec could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{}", .change.describe(.interface))]
    Change {
        interface: IfName,
        change: Change,
        #[source]
        cause: rtnl::Error,
    },
    /// Two interfaces with one address make routing ambiguous; the kernel would allow it.
    #[error("address {address} is already on interface {holder}, not adding it to {interface}")]
    AddressInUse {
        interface: IfName,
        address: Ipv4Net,
        holder: String,
    },
}

/// A failed network apply.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {0} does not exist")]
    NoInterface(IfName),
    #[error("read the state of {interface}")]
    Read {
        interface: IfName,
        #[source]
        cause: rtnl::Error,
    },
    /// Some changes failed; every other change was still made. The message lists each failure
    /// with its cause (`add address 10.0.0.5/24 to eth0: File exists (os error 17)`).
    #[error("{}", describe_failures(.failures))]
    Incomplete { sent: usize, failures: Vec<Failure> },
}

fn describe_failures(failures: &[Failure]) -> String {
    let mut text = String::new();
    for (i, f) in failures.iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        text.push_str(&f.to_string());
        if let Failure::Change { cause, .. } = f {
            text.push_str(&format!(": {cause}"));
        }
    }
    text
}

/// The changes that make `observed` match `desired`; empty when it already does.
pub fn plan(desired: &Network, observed: &LinkState) -> Vec<Change> {
    let mut changes = Vec::new();
    if let Some(mtu) = desired.mtu {
        if observed.mtu != mtu {
            changes.push(Change::SetMtu(mtu));
        }
    }
    if !observed.up {
        changes.push(Change::SetUp);
    }
    let stale: Vec<Ipv4Net> = observed
        .addresses
        .iter()
        .filter(|a| a.protocol == RTPROT_WEFT)
        .filter_map(|a| match a.addr {
            IpNet::V4(v4) if v4 != desired.address => Some(v4),
            _ => None,
        })
        .collect();
    if !stale.is_empty() {
        changes.push(Change::PromoteSecondaries);
    }
    if !observed.has_address(desired.address) && observed.address_held_by.is_none() {
        changes.push(Change::AddAddress(desired.address));
    }
    changes.extend(stale.into_iter().map(Change::DeleteAddress));
    match desired.gateway {
        Some(gw) => {
            let via_gateway = observed.effective_default().is_some_and(|r| {
                r.gateway == Some(IpAddr::V4(gw)) && r.oif == Some(observed.index)
            });
            if !via_gateway {
                changes.push(Change::ReplaceDefaultRoute(gw));
            }
        }
        None => {
            for r in &observed.default_routes {
                if let (RTPROT_WEFT, Some(oif)) = (r.protocol, r.oif) {
                    changes.push(Change::DeleteDefaultRoute {
                        gateway: r.gateway.and_then(|g| match g {
                            IpAddr::V4(v4) => Some(v4),
                            IpAddr::V6(_) => None,
                        }),
                        oif,
                        metric: r.metric,
                    });
                }
            }
        }
    }
    changes
}

/// Reads what [`plan`] needs. `Err(NoInterface)` when the interface does not exist.
pub fn read_state(rtnl: &mut Rtnl, desired: &Network) -> Result<LinkState, Error> {
    let read = |cause| Error::Read {
        interface: desired.interface.clone(),
        cause,
    };
    let link = rtnl
        .link(desired.interface.as_str())
        .map_err(read)?
        .ok_or_else(|| Error::NoInterface(desired.interface.clone()))?;
    let all = rtnl.all_addresses().map_err(read)?;
    let want = IpAddr::V4(desired.address.addr());
    let holder = all
        .iter()
        .find(|a| a.index != link.index && a.addr.addr() == want)
        .map(|a| a.index);
    let address_held_by = match holder {
        Some(index) => Some(
            rtnl.links()
                .map_err(read)?
                .into_iter()
                .find(|l| l.index == index)
                .map_or_else(|| format!("#{index}"), |l| l.name),
        ),
        None => None,
    };
    let default_routes = rtnl
        .routes(Family::V4)
        .map_err(read)?
        .into_iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .collect();
    Ok(LinkState {
        index: link.index,
        up: link.up,
        mtu: link.mtu,
        addresses: all
            .into_iter()
            .filter(|a| a.index == link.index && a.addr.addr().is_ipv4())
            .collect(),
        default_routes,
        address_held_by,
    })
}

/// Makes the kernel match `desired`, sending only the changes [`plan`] lists. Every change is
/// attempted even when an earlier one fails; the result counts the change requests sent.
pub fn apply(rtnl: &mut Rtnl, desired: &Network) -> Result<usize, Error> {
    let before = rtnl.changes_sent();
    let mut failures = Vec::new();
    let mut failed: Vec<Change> = Vec::new();
    let state = read_state(rtnl, desired)?;
    if let Some(holder) = &state.address_held_by {
        failures.push(Failure::AddressInUse {
            interface: desired.interface.clone(),
            address: desired.address,
            holder: holder.clone(),
        });
    }
    let changes = plan(desired, &state);
    // Deleting the last address of a subnet takes the routes through it along, the default
    // route included, after the plan was made.
    let deleted_address = changes
        .iter()
        .any(|c| matches!(c, Change::DeleteAddress(_)));
    send(rtnl, desired, &state, changes, &mut failed, &mut failures);
    if deleted_address {
        // Look again and finish, without retrying what already failed.
        let state = read_state(rtnl, desired)?;
        let again = plan(desired, &state)
            .into_iter()
            .filter(|c| !failed.contains(c))
            .collect();
        send(rtnl, desired, &state, again, &mut failed, &mut failures);
    }
    let sent = (rtnl.changes_sent() - before) as usize;
    if failures.is_empty() {
        Ok(sent)
    } else {
        Err(Error::Incomplete { sent, failures })
    }
}

fn send(
    rtnl: &mut Rtnl,
    desired: &Network,
    state: &LinkState,
    changes: Vec<Change>,
    failed: &mut Vec<Change>,
    failures: &mut Vec<Failure>,
) {
    for change in changes {
        if let Err(cause) = send_one(rtnl, state.index, &change) {
            failed.push(change.clone());
            failures.push(Failure::Change {
                interface: desired.interface.clone(),
                change,
                cause,
            });
        }
    }
}

fn send_one(rtnl: &mut Rtnl, index: u32, change: &Change) -> Result<(), rtnl::Error> {
    match *change {
        Change::SetMtu(mtu) => rtnl.set_link_mtu(index, mtu),
        Change::SetUp => rtnl.set_link_up(index),
        Change::PromoteSecondaries => rtnl.set_promote_secondaries(index),
        Change::DeleteAddress(a) => rtnl.delete_address(index, IpNet::V4(a)),
        Change::AddAddress(a) => rtnl.add_address(index, IpNet::V4(a)),
        Change::ReplaceDefaultRoute(gw) => rtnl.replace_route(&Route {
            dst: IpNet::V4(Ipv4Net::default()),
            gateway: Some(IpAddr::V4(gw)),
            oif: index,
            metric: DEFAULT_ROUTE_METRIC,
        }),
        Change::DeleteDefaultRoute {
            gateway,
            oif,
            metric,
        } => rtnl.delete_route(&Route {
            dst: IpNet::V4(Ipv4Net::default()),
            gateway: gateway.map(IpAddr::V4),
            oif,
            metric,
        }),
    }
}

/// The pod interface as the kernel holds it, compared with `desired`. Never fails: a read
/// error or a missing interface is a `Degraded` status whose `LastError` names it.
pub fn observe(rtnl: &mut Rtnl, desired: &Network) -> NetworkStatus {
    status(desired, &read_state(rtnl, desired))
}

/// Folds a read of the kernel into a status (pure).
pub fn status(desired: &Network, observed: &Result<LinkState, Error>) -> NetworkStatus {
    let state = match observed {
        Ok(state) => state,
        Err(e) => {
            return NetworkStatus {
                overall: Overall::Degraded,
                last_error: crate::dataplane::error_line(e),
                interface: desired.interface.to_string(),
                up: false,
                addresses: Vec::new(),
                gateway: None,
                mtu: 0,
            };
        }
    };
    let problems = differences(desired, state);
    NetworkStatus {
        overall: if problems.is_empty() {
            Overall::Healthy
        } else {
            Overall::Degraded
        },
        last_error: problems.join("; "),
        interface: desired.interface.to_string(),
        up: state.up,
        addresses: state.addresses.iter().map(|a| a.addr.to_string()).collect(),
        gateway: state
            .effective_default()
            .and_then(|r| r.gateway)
            .map(|g| g.to_string()),
        mtu: state.mtu,
    }
}

/// What differs between the kernel and the spec, in words naming the interface.
fn differences(desired: &Network, state: &LinkState) -> Vec<String> {
    let name = &desired.interface;
    let mut problems = Vec::new();
    if !state.up {
        problems.push(format!("{name} is down"));
    }
    if let Some(mtu) = desired.mtu {
        if state.mtu != mtu {
            problems.push(format!("{name} has mtu {}, want {mtu}", state.mtu));
        }
    }
    if let Some(holder) = &state.address_held_by {
        problems.push(format!(
            "address {} is on interface {holder}, not {name}",
            desired.address
        ));
    } else if !state.has_address(desired.address) {
        problems.push(format!("address {} is missing on {name}", desired.address));
    }
    for change in plan(desired, state) {
        if let Change::DeleteAddress(a) = change {
            problems.push(format!("stale address {a} on {name}"));
        }
    }
    if let Some(gw) = desired.gateway {
        match state.effective_default() {
            Some(r) if r.gateway == Some(IpAddr::V4(gw)) && r.oif == Some(state.index) => {}
            Some(r) => problems.push(format!(
                "default route goes via {}, want {gw} on {name}",
                FmtRoute(r)
            )),
            None => problems.push(format!("no default route, want via {gw} on {name}")),
        }
    }
    problems
}

struct FmtRoute<'a>(&'a RouteInfo);

impl fmt::Display for FmtRoute<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.gateway, self.0.oif) {
            (Some(gw), Some(oif)) => write!(f, "{gw} on interface #{oif}"),
            (Some(gw), None) => write!(f, "{gw}"),
            (None, Some(oif)) => write!(f, "interface #{oif} directly"),
            (None, None) => f.write_str("nowhere"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(address: &str, gateway: Option<&str>, mtu: Option<u32>) -> Network {
        Network {
            interface: IfName::parse("eth0").unwrap(),
            address: address.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            mtu,
            nameservers: Vec::new(),
            search_domains: Vec::new(),
        }
    }

    fn addr(a: &str, protocol: u8) -> AddrInfo {
        AddrInfo {
            index: 2,
            addr: a.parse().unwrap(),
            protocol,
        }
    }

    fn default_via(gw: &str, oif: u32, protocol: u8, metric: u32) -> RouteInfo {
        RouteInfo {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            protocol,
            metric,
        }
    }

    /// The state an apply of `network("10.0.0.5/24", Some("10.0.0.1"), Some(1400))` leaves.
    fn converged() -> LinkState {
        LinkState {
            index: 2,
            up: true,
            mtu: 1400,
            addresses: vec![addr("10.0.0.5/24", RTPROT_WEFT)],
            default_routes: vec![default_via("10.0.0.1", 2, RTPROT_WEFT, 0)],
            address_held_by: None,
        }
    }

    #[test]
    fn a_converged_link_needs_no_change() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), Some(1400));
        assert_eq!(plan(&desired, &converged()), vec![]);
        let s = status(&desired, &Ok(converged()));
        assert_eq!(s.overall, Overall::Healthy, "{}", s.last_error);
        assert_eq!(s.addresses, vec!["10.0.0.5/24"]);
        assert_eq!(s.gateway.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn a_fresh_link_gets_everything_in_order() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), Some(1400));
        let fresh = LinkState {
            index: 2,
            up: false,
            mtu: 1500,
            addresses: vec![],
            default_routes: vec![],
            address_held_by: None,
        };
        assert_eq!(
            plan(&desired, &fresh),
            vec![
                Change::SetMtu(1400),
                Change::SetUp,
                Change::AddAddress("10.0.0.5/24".parse().unwrap()),
                Change::ReplaceDefaultRoute("10.0.0.1".parse().unwrap()),
            ]
        );
        let s = status(&desired, &Ok(fresh));
        assert_eq!(s.overall, Overall::Degraded);
        assert!(s.last_error.contains("eth0 is down"), "{}", s.last_error);
    }

    #[test]
    fn no_mtu_in_the_spec_leaves_the_mtu_alone() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), None);
        let mut state = converged();
        state.mtu = 9000;
        assert_eq!(plan(&desired, &state), vec![]);
    }

    #[test]
    fn a_new_address_removes_only_the_agents_old_one() {
        let desired = network("10.0.0.6/24", Some("10.0.0.1"), Some(1400));
        let mut state = converged();
        state.addresses.push(addr("10.0.0.99/24", 0)); // someone else's
        state.addresses.push(addr("10.0.0.98/24", 4)); // `ip addr add ... proto static`
        assert_eq!(
            plan(&desired, &state),
            vec![
                Change::PromoteSecondaries,
                Change::AddAddress("10.0.0.6/24".parse().unwrap()),
                Change::DeleteAddress("10.0.0.5/24".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn the_same_address_with_another_prefix_is_a_different_address() {
        let desired = network("10.0.0.5/16", None, None);
        let state = LinkState {
            default_routes: vec![],
            ..converged()
        };
        assert_eq!(
            plan(&desired, &state),
            vec![
                Change::PromoteSecondaries,
                Change::AddAddress("10.0.0.5/16".parse().unwrap()),
                Change::DeleteAddress("10.0.0.5/24".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn the_desired_address_added_by_someone_else_is_kept_as_is() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), Some(1400));
        let mut state = converged();
        state.addresses = vec![addr("10.0.0.5/24", 0)];
        assert_eq!(plan(&desired, &state), vec![]);
    }

    #[test]
    fn a_new_gateway_replaces_the_route() {
        let desired = network("10.0.0.5/24", Some("10.0.0.254"), Some(1400));
        assert_eq!(
            plan(&desired, &converged()),
            vec![Change::ReplaceDefaultRoute("10.0.0.254".parse().unwrap())]
        );
    }

    #[test]
    fn a_foreign_default_via_the_gateway_is_accepted_and_a_worse_one_ignored() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), Some(1400));
        let mut state = converged();
        state.default_routes = vec![
            default_via("10.0.0.1", 2, 4, 0),
            default_via("10.0.0.77", 2, 16, 100),
        ];
        assert_eq!(plan(&desired, &state), vec![]);
    }

    #[test]
    fn a_better_foreign_default_elsewhere_is_outranked() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), Some(1400));
        let mut state = converged();
        state.default_routes = vec![
            default_via("10.0.0.1", 2, 4, 50),
            default_via("192.0.2.1", 3, 4, 10),
        ];
        assert_eq!(
            plan(&desired, &state),
            vec![Change::ReplaceDefaultRoute("10.0.0.1".parse().unwrap())]
        );
        let s = status(&desired, &Ok(state));
        assert_eq!(s.gateway.as_deref(), Some("192.0.2.1"));
        assert!(s.last_error.contains("default route goes via 192.0.2.1"));
    }

    #[test]
    fn without_a_gateway_only_the_agents_default_route_goes() {
        let desired = network("10.0.0.5/24", None, Some(1400));
        let mut state = converged();
        state
            .default_routes
            .push(default_via("10.0.0.77", 2, 16, 100));
        assert_eq!(
            plan(&desired, &state),
            vec![Change::DeleteDefaultRoute {
                gateway: Some("10.0.0.1".parse().unwrap()),
                oif: 2,
                metric: 0
            }]
        );
    }

    #[test]
    fn an_address_held_elsewhere_is_not_added_and_is_reported() {
        let desired = network("10.0.0.5/24", None, Some(1400));
        let state = LinkState {
            addresses: vec![],
            default_routes: vec![],
            address_held_by: Some("eth1".into()),
            ..converged()
        };
        assert_eq!(plan(&desired, &state), vec![]);
        let s = status(&desired, &Ok(state));
        assert_eq!(s.overall, Overall::Degraded);
        assert_eq!(
            s.last_error,
            "address 10.0.0.5/24 is on interface eth1, not eth0"
        );
    }

    #[test]
    fn a_missing_interface_is_degraded_and_named() {
        let desired = network("10.0.0.5/24", None, None);
        let s = status(
            &desired,
            &Err(Error::NoInterface(IfName::parse("eth0").unwrap())),
        );
        assert_eq!(s.overall, Overall::Degraded);
        assert_eq!(s.last_error, "interface eth0 does not exist");
        assert!(!s.up);
    }

    #[test]
    fn errors_cross_threads_and_into_anyhow() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Error>();
    }

    #[test]
    fn failures_name_the_part_and_the_cause() {
        let e = Error::Incomplete {
            sent: 2,
            failures: vec![
                Failure::Change {
                    interface: IfName::parse("eth0").unwrap(),
                    change: Change::AddAddress("10.0.0.5/24".parse().unwrap()),
                    cause: rtnl::Error::Refused {
                        errno: 17,
                        text: None,
                    },
                },
                Failure::Change {
                    interface: IfName::parse("eth0").unwrap(),
                    change: Change::ReplaceDefaultRoute("192.0.2.1".parse().unwrap()),
                    cause: rtnl::Error::Refused {
                        errno: 101,
                        text: None,
                    },
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "add address 10.0.0.5/24 to eth0: File exists (os error 17); \
             replace default route via 192.0.2.1 on eth0: Network is unreachable (os error 101)"
        );
    }
}
