//! A link the agent configures: up, its address, MTU and routes. One planner for the pod
//! interface and the WireGuard interface, which differ only in what the agent owns there
//! ([`Ownership`]).
//!
//! [`Link`] has the shape of every subsystem: `read` the link's [`LinkState`], `plan` the
//! minimal list of [`Change`]s (empty when everything is right: an apply then sends nothing),
//! `send` them, and `status` a read in words naming the interface.
//!
//! The default route: the contract says "the default route goes via `Gateway`", so when the
//! route the kernel would use (the lowest-metric default of the main table) does not go via
//! `Gateway` on the interface, the agent installs its own at metric 0 with `NLM_F_REPLACE`.
//! That takes the place of a metric-0 default of any protocol (the kernel replaces the route
//! with the same destination and metric) and outranks defaults at higher metrics, which are
//! left in place. A default that already goes via `Gateway` on the interface is accepted
//! whoever set it. The same rule holds for a connected route (`10.9.0.0/24 dev wg0`): the
//! kernel's own is accepted, and ours is put back only when it is missing.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use weft_schema::status::{NetworkStatus, Overall};
use weft_schema::text::error_line;
use weft_schema::validate::{IfName, Network};

use super::rtnl::{self, AddrInfo, Family, Route, RouteInfo, Rtnl, RTPROT_WEFT};
use super::subsystem::Subsystem;

/// The metric of the routes the agent installs: 0, so they are the ones the kernel uses.
const ROUTE_METRIC: u32 = 0;

/// What on a link is the agent's to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The pod interface (CONTRACT.md, README): only IPv4 addresses and default routes the
    /// agent added (stamped [`RTPROT_WEFT`]) are ever removed; an address or route someone
    /// else added (the kernel, `ip` without `proto`, a routing daemon) is left alone. An
    /// address another interface already holds is refused, not added.
    Pod,
    /// The WireGuard interface, which the agent created: wholly the agent's. Every address but
    /// the desired one and link-local ones is removed, and so is any route the agent added on
    /// the link that is no longer wanted.
    Whole,
}

impl Ownership {
    fn owns_address(self, a: &AddrInfo) -> bool {
        match self {
            Ownership::Pod => a.protocol == RTPROT_WEFT && a.addr.addr().is_ipv4(),
            Ownership::Whole => !is_link_local(&a.addr),
        }
    }

    /// Whether a route of the read is one the agent may remove when it is not wanted.
    fn owns_route(self, r: &RouteInfo, index: u32) -> bool {
        r.protocol == RTPROT_WEFT
            && match self {
                // Default routes, wherever they point: the one the agent set for the pod.
                Ownership::Pod => r.dst.prefix_len() == 0,
                Ownership::Whole => r.oif == Some(index),
            }
    }
}

/// What a link should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    pub interface: IfName,
    /// `None`: the MTU is left as it is.
    pub mtu: Option<u32>,
    /// The link's one address (of those the agent owns).
    pub address: IpNet,
    /// The default route goes via this gateway on the link.
    pub gateway: Option<IpAddr>,
    /// The connected route to the address's prefix must be there (the kernel adds it with
    /// the address; the agent puts it back when someone removes it).
    pub connected_route: bool,
    pub ownership: Ownership,
}

impl LinkSpec {
    /// The pod interface of a validated `Network`.
    pub fn pod(net: &Network) -> LinkSpec {
        LinkSpec {
            interface: net.interface.clone(),
            mtu: net.mtu,
            address: IpNet::V4(net.address),
            gateway: net.gateway.map(IpAddr::V4),
            connected_route: false,
            ownership: Ownership::Pod,
        }
    }

    fn family(&self) -> Family {
        match self.address {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The routes the link must carry, each satisfied when the route the kernel uses for its
    /// destination goes that way.
    fn routes(&self) -> Vec<(IpNet, Option<IpAddr>)> {
        let mut routes = Vec::new();
        if let Some(gw) = self.gateway {
            let any = match gw {
                IpAddr::V4(_) => IpNet::V4(Ipv4Net::default()),
                IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
            };
            routes.push((any, Some(gw)));
        }
        if self.connected_route {
            routes.push((self.address.trunc(), None));
        }
        routes
    }
}

/// What the kernel holds for the link, as far as the plan needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mtu: u32,
    /// The link's addresses with the protocol that added each.
    pub addresses: Vec<AddrInfo>,
    /// The routes of the address's family in the main table that are defaults (on any link)
    /// or on this link.
    pub routes: Vec<RouteInfo>,
    /// Another interface that already holds the desired address (any prefix length); read
    /// only for [`Ownership::Pod`].
    pub address_held_by: Option<String>,
}

impl LinkState {
    /// The route the kernel uses for `dst`: the lowest metric, the first of equals.
    pub fn effective(&self, dst: IpNet) -> Option<&RouteInfo> {
        self.routes
            .iter()
            .filter(|r| r.dst == dst)
            .min_by_key(|r| r.metric)
    }

    /// The default route of `family` the kernel uses.
    pub fn effective_default(&self, family: Family) -> Option<&RouteInfo> {
        let any = match family {
            Family::V4 => IpNet::V4(Ipv4Net::default()),
            Family::V6 => IpNet::V6(ipnet::Ipv6Net::default()),
        };
        self.effective(any)
    }

    fn has_address(&self, addr: IpNet) -> bool {
        self.addresses.iter().any(|a| a.addr == addr)
    }

    fn routed(&self, dst: IpNet, gateway: Option<IpAddr>) -> bool {
        self.effective(dst)
            .is_some_and(|r| r.gateway == gateway && r.oif == Some(self.index))
    }
}

/// One change to the kernel, in the order [`plan`] lists them: the link first (a route needs
/// it up); before any address is deleted, `promote_secondaries` (else deleting a primary
/// address deletes its secondaries too: someone else's, or the desired one); the new address
/// before the stale one (so the subnet, and the routes through it, never go away when only
/// the host part changes); routes last (a gateway must be reachable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetMtu(u32),
    SetUp,
    PromoteSecondaries,
    /// An address the agent owns that is not the desired one.
    DeleteAddress(IpNet),
    AddAddress(IpNet),
    /// The agent's route to `dst` (via `gateway`, or directly on the link), at metric 0,
    /// in place of whatever the main table has for that destination and metric.
    ReplaceRoute {
        dst: IpNet,
        gateway: Option<IpAddr>,
    },
    /// A route the agent owns that the spec no longer wants.
    DeleteRoute(RouteInfo),
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
            Change::ReplaceRoute { dst, gateway } => match gateway {
                Some(gw) if dst.prefix_len() == 0 => {
                    format!("replace default route via {gw} on {interface}")
                }
                Some(gw) => format!("replace route {dst} via {gw} on {interface}"),
                None => format!("install route {dst} on {interface}"),
            },
            Change::DeleteRoute(r) => match (r.dst.prefix_len(), r.gateway) {
                (0, Some(gw)) => format!("remove default route via {gw}"),
                (0, None) => "remove default route".to_owned(),
                (_, _) => format!("remove route {}", r.dst),
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
        address: IpNet,
        holder: String,
    },
}

/// A failed apply.
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
    #[error("{}", failures.iter().map(|f| error_line(f)).collect::<Vec<_>>().join("; "))]
    Incomplete { sent: usize, failures: Vec<Failure> },
}

/// The changes that make `observed` match `desired`; empty when it already does.
pub fn plan(desired: &LinkSpec, observed: &LinkState) -> Vec<Change> {
    let own = desired.ownership;
    let mut changes = Vec::new();
    if let Some(mtu) = desired.mtu {
        if observed.mtu != mtu {
            changes.push(Change::SetMtu(mtu));
        }
    }
    if !observed.up {
        changes.push(Change::SetUp);
    }
    let stale: Vec<IpNet> = observed
        .addresses
        .iter()
        .filter(|a| own.owns_address(a) && a.addr != desired.address)
        .map(|a| a.addr)
        .collect();
    if !stale.is_empty() {
        changes.push(Change::PromoteSecondaries);
    }
    if !observed.has_address(desired.address) && observed.address_held_by.is_none() {
        changes.push(Change::AddAddress(desired.address));
    }
    changes.extend(stale.into_iter().map(Change::DeleteAddress));
    let wanted = desired.routes();
    for &(dst, gateway) in &wanted {
        if !observed.routed(dst, gateway) {
            changes.push(Change::ReplaceRoute { dst, gateway });
        }
    }
    for r in &observed.routes {
        let still_wanted = wanted.iter().any(|&(dst, _)| dst == r.dst);
        if !still_wanted && r.oif.is_some() && own.owns_route(r, observed.index) {
            changes.push(Change::DeleteRoute(*r));
        }
    }
    changes
}

/// The link subsystem: stateless, its socket is the namespace's rtnetlink socket.
#[derive(Debug, Default)]
pub struct Link;

impl Subsystem for Link {
    type Desired = LinkSpec;
    type State = LinkState;
    type Plan<'a> = Vec<Change>;
    type Error = Error;
    type Status = LinkStatus;

    /// `Err(NoInterface)` when the interface does not exist.
    fn read(&mut self, rtnl: &mut Rtnl, desired: &LinkSpec) -> Result<LinkState, Error> {
        let read = |cause| Error::Read {
            interface: desired.interface.clone(),
            cause,
        };
        let link = rtnl
            .link(desired.interface.as_str())
            .map_err(read)?
            .ok_or_else(|| Error::NoInterface(desired.interface.clone()))?;
        let all = rtnl.all_addresses().map_err(read)?;
        let address_held_by = match desired.ownership {
            Ownership::Pod => {
                let want = desired.address.addr();
                let holder = all
                    .iter()
                    .find(|a| a.index != link.index && a.addr.addr() == want)
                    .map(|a| a.index);
                match holder {
                    Some(index) => Some(
                        rtnl.links()
                            .map_err(read)?
                            .into_iter()
                            .find(|l| l.index == index)
                            .map_or_else(|| format!("#{index}"), |l| l.name),
                    ),
                    None => None,
                }
            }
            Ownership::Whole => None,
        };
        let routes = rtnl
            .routes(desired.family())
            .map_err(read)?
            .into_iter()
            .filter(|r| r.dst.prefix_len() == 0 || r.oif == Some(link.index))
            .collect();
        Ok(LinkState {
            index: link.index,
            up: link.up,
            mtu: link.mtu,
            addresses: all.into_iter().filter(|a| a.index == link.index).collect(),
            routes,
            address_held_by,
        })
    }

    fn plan<'a>(&self, desired: &'a LinkSpec, state: &'a LinkState) -> Vec<Change> {
        plan(desired, state)
    }

    /// Every change is attempted even when an earlier one fails.
    fn send(
        &mut self,
        rtnl: &mut Rtnl,
        desired: &LinkSpec,
        state: &LinkState,
        changes: Vec<Change>,
    ) -> Result<(), Error> {
        let before = rtnl.changes_sent();
        let mut failures = Vec::new();
        if let Some(holder) = &state.address_held_by {
            failures.push(Failure::AddressInUse {
                interface: desired.interface.clone(),
                address: desired.address,
                holder: holder.clone(),
            });
        }
        // Deleting the last address of a subnet takes the routes through it along, the
        // default route included, after the plan was made.
        let deleted_address = changes
            .iter()
            .any(|c| matches!(c, Change::DeleteAddress(_)));
        let mut failed = Vec::new();
        send(
            rtnl,
            desired,
            state.index,
            changes,
            &mut failed,
            &mut failures,
        );
        if deleted_address {
            // Look again and finish, without retrying what already failed.
            let state = self.read(rtnl, desired)?;
            let again = plan(desired, &state)
                .into_iter()
                .filter(|c| !failed.contains(c))
                .collect();
            send(
                rtnl,
                desired,
                state.index,
                again,
                &mut failed,
                &mut failures,
            );
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Incomplete {
                sent: (rtnl.changes_sent() - before) as usize,
                failures,
            })
        }
    }

    fn status(&self, desired: &LinkSpec, read: Result<&LinkState, &Error>) -> LinkStatus {
        match read {
            Ok(state) => LinkStatus {
                problems: differences(desired, state),
                state: Some(state.clone()),
            },
            Err(e) => LinkStatus {
                problems: vec![error_line(e)],
                state: None,
            },
        }
    }
}

fn send(
    rtnl: &mut Rtnl,
    desired: &LinkSpec,
    index: u32,
    changes: Vec<Change>,
    failed: &mut Vec<Change>,
    failures: &mut Vec<Failure>,
) {
    for change in changes {
        if let Err(cause) = send_one(rtnl, index, &change) {
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
        Change::DeleteAddress(a) => rtnl.delete_address(index, a),
        Change::AddAddress(a) => rtnl.add_address(index, a),
        Change::ReplaceRoute { dst, gateway } => rtnl.replace_route(&Route {
            dst,
            gateway,
            oif: index,
            metric: ROUTE_METRIC,
        }),
        Change::DeleteRoute(r) => rtnl.delete_route(&Route {
            dst: r.dst,
            gateway: r.gateway,
            oif: r.oif.unwrap_or(index),
            metric: r.metric,
        }),
    }
}

/// A link read back and compared with its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// What differs, in words naming the interface; the read error when it failed.
    pub problems: Vec<String>,
    /// What was read, when it could be.
    pub state: Option<LinkState>,
}

impl LinkStatus {
    /// The contract's `Network` status of the pod interface.
    pub fn network(&self, desired: &LinkSpec) -> NetworkStatus {
        let state = self.state.as_ref();
        NetworkStatus {
            overall: if self.problems.is_empty() {
                Overall::Healthy
            } else {
                Overall::Degraded
            },
            last_error: self.problems.join("; "),
            interface: desired.interface.to_string(),
            up: state.is_some_and(|s| s.up),
            addresses: state
                .map(|s| {
                    s.addresses
                        .iter()
                        .filter(|a| a.addr.addr().is_ipv4())
                        .map(|a| a.addr.to_string())
                        .collect()
                })
                .unwrap_or_default(),
            gateway: state
                .and_then(|s| s.effective_default(Family::V4))
                .and_then(|r| r.gateway)
                .map(|g| g.to_string()),
            mtu: state.map_or(0, |s| s.mtu),
        }
    }
}

/// What differs between the kernel and the spec, in words naming the interface.
fn differences(desired: &LinkSpec, state: &LinkState) -> Vec<String> {
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
        match change {
            Change::DeleteAddress(a) => problems.push(format!("stale address {a} on {name}")),
            Change::DeleteRoute(r) if r.dst.prefix_len() > 0 => {
                problems.push(format!("stale route {} on {name}", r.dst))
            }
            _ => {}
        }
    }
    for (dst, gateway) in desired.routes() {
        if state.routed(dst, gateway) {
            continue;
        }
        match (gateway, state.effective(dst)) {
            (Some(gw), Some(r)) => problems.push(format!(
                "default route goes via {}, want {gw} on {name}",
                FmtRoute(r)
            )),
            (Some(gw), None) => problems.push(format!("no default route, want via {gw} on {name}")),
            (None, _) => problems.push(format!("no route to {dst} on {name}")),
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

fn is_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.addr().is_link_local(),
        IpNet::V6(n) => (n.addr().segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Makes the pod interface match `desired`; returns the change requests sent.
pub fn apply(rtnl: &mut Rtnl, desired: &Network) -> Result<usize, Error> {
    let before = rtnl.changes_sent();
    Link.apply(rtnl, &LinkSpec::pod(desired))?;
    Ok((rtnl.changes_sent() - before) as usize)
}

/// The pod interface as the kernel holds it, compared with `desired`. Never fails: a read
/// error or a missing interface is a `Degraded` status whose `LastError` names it.
pub fn observe(rtnl: &mut Rtnl, desired: &Network) -> NetworkStatus {
    let spec = LinkSpec::pod(desired);
    Link.observe(rtnl, &spec).network(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(address: &str, gateway: Option<&str>, mtu: Option<u32>) -> LinkSpec {
        LinkSpec::pod(&Network {
            interface: IfName::parse("eth0").unwrap(),
            address: address.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            mtu,
            nameservers: Vec::new(),
            search_domains: Vec::new(),
        })
    }

    fn status(desired: &LinkSpec, read: &Result<LinkState, Error>) -> NetworkStatus {
        Link.status(desired, read.as_ref()).network(desired)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn default_route(gw: &str) -> Change {
        Change::ReplaceRoute {
            dst: net("0.0.0.0/0"),
            gateway: Some(gw.parse().unwrap()),
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
            routes: vec![default_via("10.0.0.1", 2, RTPROT_WEFT, 0)],
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
            routes: vec![],
            address_held_by: None,
        };
        assert_eq!(
            plan(&desired, &fresh),
            vec![
                Change::SetMtu(1400),
                Change::SetUp,
                Change::AddAddress(net("10.0.0.5/24")),
                default_route("10.0.0.1"),
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
                Change::AddAddress(net("10.0.0.6/24")),
                Change::DeleteAddress(net("10.0.0.5/24")),
            ]
        );
    }

    #[test]
    fn the_same_address_with_another_prefix_is_a_different_address() {
        let desired = network("10.0.0.5/16", None, None);
        let state = LinkState {
            routes: vec![],
            ..converged()
        };
        assert_eq!(
            plan(&desired, &state),
            vec![
                Change::PromoteSecondaries,
                Change::AddAddress(net("10.0.0.5/16")),
                Change::DeleteAddress(net("10.0.0.5/24")),
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
            vec![default_route("10.0.0.254")]
        );
    }

    #[test]
    fn a_foreign_default_via_the_gateway_is_accepted_and_a_worse_one_ignored() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), Some(1400));
        let mut state = converged();
        state.routes = vec![
            default_via("10.0.0.1", 2, 4, 0),
            default_via("10.0.0.77", 2, 16, 100),
        ];
        assert_eq!(plan(&desired, &state), vec![]);
    }

    #[test]
    fn a_better_foreign_default_elsewhere_is_outranked() {
        let desired = network("10.0.0.5/24", Some("10.0.0.1"), Some(1400));
        let mut state = converged();
        state.routes = vec![
            default_via("10.0.0.1", 2, 4, 50),
            default_via("192.0.2.1", 3, 4, 10),
        ];
        assert_eq!(plan(&desired, &state), vec![default_route("10.0.0.1")]);
        let s = status(&desired, &Ok(state));
        assert_eq!(s.gateway.as_deref(), Some("192.0.2.1"));
        assert!(s.last_error.contains("default route goes via 192.0.2.1"));
    }

    #[test]
    fn without_a_gateway_only_the_agents_default_route_goes() {
        let desired = network("10.0.0.5/24", None, Some(1400));
        let mut state = converged();
        state.routes.push(default_via("10.0.0.77", 2, 16, 100));
        assert_eq!(
            plan(&desired, &state),
            vec![Change::DeleteRoute(default_via(
                "10.0.0.1",
                2,
                RTPROT_WEFT,
                0
            ))]
        );
    }

    #[test]
    fn an_address_held_elsewhere_is_not_added_and_is_reported() {
        let desired = network("10.0.0.5/24", None, Some(1400));
        let state = LinkState {
            addresses: vec![],
            routes: vec![],
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
                    change: Change::AddAddress(net("10.0.0.5/24")),
                    cause: rtnl::Error::Refused {
                        errno: 17,
                        text: None,
                    },
                },
                Failure::Change {
                    interface: IfName::parse("eth0").unwrap(),
                    change: default_route("192.0.2.1"),
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

#[cfg(test)]
mod whole {
    use super::*;

    fn wg(address: &str) -> LinkSpec {
        LinkSpec {
            interface: IfName::parse("wg0").unwrap(),
            mtu: Some(1420),
            address: address.parse().unwrap(),
            gateway: None,
            connected_route: true,
            ownership: Ownership::Whole,
        }
    }

    fn addr(a: &str, protocol: u8) -> AddrInfo {
        AddrInfo {
            index: 5,
            addr: a.parse().unwrap(),
            protocol,
        }
    }

    fn on_link(dst: &str, protocol: u8) -> RouteInfo {
        RouteInfo {
            dst: dst.parse().unwrap(),
            gateway: None,
            oif: Some(5),
            protocol,
            metric: 0,
        }
    }

    #[test]
    fn the_wireguard_link_is_wholly_the_agents() {
        let desired = wg("10.9.0.1/24");
        let state = LinkState {
            index: 5,
            up: true,
            mtu: 1420,
            addresses: vec![
                addr("10.9.0.1/24", RTPROT_WEFT),
                addr("192.0.2.9/32", 0),
                addr("fe80::1/64", 0),
            ],
            routes: vec![
                on_link("10.9.0.0/24", 2),
                on_link("10.7.0.0/16", RTPROT_WEFT),
            ],
            address_held_by: None,
        };
        // Someone else's address goes; link-local stays; our stale route goes, the kernel's
        // connected route is accepted.
        assert_eq!(
            plan(&desired, &state),
            vec![
                Change::PromoteSecondaries,
                Change::DeleteAddress("192.0.2.9/32".parse().unwrap()),
                Change::DeleteRoute(on_link("10.7.0.0/16", RTPROT_WEFT)),
            ]
        );
        let problems = Link.status(&desired, Ok(&state)).problems;
        assert_eq!(
            problems,
            vec![
                "stale address 192.0.2.9/32 on wg0",
                "stale route 10.7.0.0/16 on wg0"
            ]
        );
    }

    #[test]
    fn a_fresh_wireguard_link_gets_mtu_up_address_and_its_route_when_missing() {
        let desired = wg("10.9.0.1/24");
        let fresh = LinkState {
            index: 5,
            up: false,
            mtu: 1500,
            addresses: vec![],
            routes: vec![],
            address_held_by: None,
        };
        assert_eq!(
            plan(&desired, &fresh),
            vec![
                Change::SetMtu(1420),
                Change::SetUp,
                Change::AddAddress("10.9.0.1/24".parse().unwrap()),
                Change::ReplaceRoute {
                    dst: "10.9.0.0/24".parse().unwrap(),
                    gateway: None
                },
            ]
        );
        assert_eq!(
            Link.status(&desired, Ok(&fresh)).problems,
            vec![
                "wg0 is down",
                "wg0 has mtu 1500, want 1420",
                "address 10.9.0.1/24 is missing on wg0",
                "no route to 10.9.0.0/24 on wg0"
            ]
        );
    }
}
