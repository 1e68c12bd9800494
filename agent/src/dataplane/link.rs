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

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_schema::status::{NetworkStatus, Overall};
use weft_schema::text::error_line;
use weft_schema::validate::{IfName, Network, WireGuard};

use super::rtnl::{self, AddrInfo, Family, Route, RouteInfo, Rtnl, RTPROT_WEFT};
use super::subsystem::Subsystem;

/// The metric of the routes the agent installs to `dst`: the best there is, so they are the
/// ones the kernel uses. IPv6 takes 0 to mean its default (1024, where router advertisements
/// put theirs), so 1 there.
pub fn route_metric(dst: IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

/// `RTPROT_KERNEL`: a route the kernel made itself (a link's connected prefix).
const RTPROT_KERNEL: u8 = 2;

/// What on a link is the agent's to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The pod interface (CONTRACT.md): every IPv4 address on it, whoever added it, and every
    /// global IPv6 address when the spec names `Address6` (link-local addresses are the
    /// kernel's, and without `Address6` IPv6 addressing is left to others). Of routes, only
    /// the default routes the agent added (stamped [`RTPROT_WEFT`]) on this link: other
    /// routes are left to others. An address another interface already holds is refused,
    /// not added.
    Pod { ipv6: bool },
    /// The WireGuard interface, which the agent created: wholly the agent's. Every address but
    /// the desired one and link-local ones is removed, and so is any route the agent added on
    /// the link that is no longer wanted.
    Whole,
}

impl Ownership {
    fn owns_address(self, a: &AddrInfo) -> bool {
        match (self, a.addr) {
            (Ownership::Pod { .. }, IpNet::V4(_)) => true,
            (Ownership::Pod { ipv6 }, IpNet::V6(_)) => ipv6 && !is_link_local(&a.addr),
            (Ownership::Whole, _) => !is_link_local(&a.addr),
        }
    }

    /// Whether a route of the read is one the agent may remove when it is not wanted.
    fn owns_route(self, r: &RouteInfo, index: u32) -> bool {
        r.protocol == RTPROT_WEFT
            && r.oif == Some(index)
            && match self {
                // The default routes the agent set for the pod. A default route of the agent
                // on another link (the tunnel's, `WireGuard.DefaultRoute`) is not the pod
                // link's to remove.
                Ownership::Pod { .. } => r.dst.prefix_len() == 0,
                Ownership::Whole => true,
            }
    }
}

/// What a link should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    pub interface: IfName,
    /// `None`: the MTU is left as it is.
    pub mtu: Option<u32>,
    /// The link's addresses (at most one per family) of those the agent owns.
    pub addresses: Vec<IpNet>,
    /// The routes the link must carry: (destination, gateway on the link or `None` for a
    /// route straight onto the link). Each is satisfied when the route the kernel uses for
    /// its destination goes that way.
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
    /// Destinations whose route another subsystem decides: the agent's route there on this
    /// link is neither wanted nor removed (the tunnel's default route replaces the pod's in
    /// place, and until it does the pod's stays).
    pub left_to_others: Vec<IpNet>,
    /// `lo` must be up too (a pod's loopback: `127.0.0.1` and the firewall's `iifname "lo"
    /// accept` need it; a fresh network namespace has it down).
    pub loopback: bool,
    pub ownership: Ownership,
}

/// The unspecified network of a family: the destination of its default route.
pub fn default_of(family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::V4(Ipv4Net::default()),
        Family::V6 => IpNet::V6(Ipv6Net::default()),
    }
}

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

impl LinkSpec {
    /// The pod interface of a validated `Network`. A default route that the overlay takes
    /// (`WireGuard.DefaultRoute`, see [`super::wireguard::default_routes`]) is not wanted
    /// here: the tunnel's replaces it, and dropping `DefaultRoute` puts this one back.
    pub fn pod(net: &Network, overlay: Option<&WireGuard>) -> LinkSpec {
        let tunnel = overlay
            .map(super::wireguard::default_routes)
            .unwrap_or_default();
        let gateways = [net.gateway.map(IpAddr::V4), net.gateway6.map(IpAddr::V6)];
        let routes = gateways
            .into_iter()
            .flatten()
            .map(|gw| (default_of(family_of(gw)), Some(gw)))
            .filter(|(dst, _)| !tunnel.contains(dst))
            .collect();
        let left_to_others = tunnel;
        LinkSpec {
            interface: net.interface.clone(),
            mtu: net.mtu,
            addresses: [Some(IpNet::V4(net.address)), net.address6.map(IpNet::V6)]
                .into_iter()
                .flatten()
                .collect(),
            routes,
            left_to_others,
            loopback: true,
            ownership: Ownership::Pod {
                ipv6: net.address6.is_some(),
            },
        }
    }

    fn wants_address(&self, addr: IpNet) -> bool {
        self.addresses.contains(&addr)
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
    /// The routes of the main table (both families) that are defaults, on this link, or to a
    /// destination the link must carry (on any link).
    pub routes: Vec<RouteInfo>,
    /// Desired addresses another interface already holds (any prefix length), with its
    /// name; read only for [`Ownership::Pod`].
    pub held_elsewhere: Vec<(IpNet, String)>,
    /// `lo`'s index when it is down and the spec wants it up.
    pub loopback_down: Option<u32>,
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
        self.effective(default_of(family))
    }

    fn has_address(&self, addr: IpNet) -> bool {
        self.addresses.iter().any(|a| a.addr == addr)
    }

    fn holder(&self, addr: IpNet) -> Option<&str> {
        self.held_elsewhere
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, h)| h.as_str())
    }

    fn routed(&self, dst: IpNet, gateway: Option<IpAddr>) -> bool {
        self.effective(dst)
            .is_some_and(|r| r.gateway == gateway && r.oif == Some(self.index))
    }

    /// Another link's connected route to `dst` (a peer allowing the pod's own subnet): never
    /// replaced, which would cut that link off.
    fn connected_elsewhere(&self, dst: IpNet) -> Option<&RouteInfo> {
        self.effective(dst).filter(|r| {
            r.oif != Some(self.index) && r.gateway.is_none() && r.protocol == RTPROT_KERNEL
        })
    }
}

/// One change to the kernel, in the order [`plan`] lists them: the link first (a route needs
/// it up); before any IPv4 address is deleted, `promote_secondaries` (else deleting a
/// primary address deletes its secondaries too: someone else's, or the desired one); the new
/// address before the stale one (so the subnet, and the routes through it, never go away when
/// only the host part changes); routes last (a gateway must be reachable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetMtu(u32),
    SetUp,
    /// `lo` (its index), for a pod.
    SetLoopbackUp(u32),
    PromoteSecondaries,
    /// An address the agent owns that is not a desired one.
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
            Change::SetLoopbackUp(_) => "bring lo up".to_owned(),
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
                (0, None) => format!("remove default route {}", r.dst),
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
    if let (true, Some(lo)) = (desired.loopback, observed.loopback_down) {
        changes.push(Change::SetLoopbackUp(lo));
    }
    let stale: Vec<IpNet> = observed
        .addresses
        .iter()
        .filter(|a| own.owns_address(a) && !desired.wants_address(a.addr))
        .map(|a| a.addr)
        .collect();
    if stale.iter().any(|a| matches!(a, IpNet::V4(_))) {
        changes.push(Change::PromoteSecondaries);
    }
    for &addr in &desired.addresses {
        if !observed.has_address(addr) && observed.holder(addr).is_none() {
            changes.push(Change::AddAddress(addr));
        }
    }
    changes.extend(stale.into_iter().map(Change::DeleteAddress));
    for &(dst, gateway) in &desired.routes {
        if !observed.routed(dst, gateway) && observed.connected_elsewhere(dst).is_none() {
            changes.push(Change::ReplaceRoute { dst, gateway });
        }
    }
    for r in &observed.routes {
        let still_wanted = desired.routes.iter().any(|&(dst, _)| dst == r.dst)
            || desired.left_to_others.contains(&r.dst);
        if !still_wanted && own.owns_route(r, observed.index) {
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
        let mut held_elsewhere = Vec::new();
        if let Ownership::Pod { .. } = desired.ownership {
            for &want in &desired.addresses {
                let holder = all
                    .iter()
                    .find(|a| a.index != link.index && a.addr.addr() == want.addr())
                    .map(|a| a.index);
                if let Some(index) = holder {
                    let name = rtnl
                        .links()
                        .map_err(read)?
                        .into_iter()
                        .find(|l| l.index == index)
                        .map_or_else(|| format!("#{index}"), |l| l.name);
                    held_elsewhere.push((want, name));
                }
            }
        }
        let loopback_down = match desired.loopback {
            true => rtnl
                .link("lo")
                .map_err(read)?
                .filter(|lo| !lo.up)
                .map(|lo| lo.index),
            false => None,
        };
        let mut routes = rtnl.routes(Family::V4).map_err(read)?;
        routes.extend(rtnl.routes(Family::V6).map_err(read)?);
        routes.retain(|r| {
            r.dst.prefix_len() == 0
                || r.oif == Some(link.index)
                || desired.routes.iter().any(|&(dst, _)| dst == r.dst)
        });
        Ok(LinkState {
            index: link.index,
            up: link.up,
            mtu: link.mtu,
            addresses: all.into_iter().filter(|a| a.index == link.index).collect(),
            routes,
            held_elsewhere,
            loopback_down,
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
        let mut failures: Vec<Failure> = state
            .held_elsewhere
            .iter()
            .map(|(address, holder)| Failure::AddressInUse {
                interface: desired.interface.clone(),
                address: *address,
                holder: holder.clone(),
            })
            .collect();
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
        Change::SetLoopbackUp(lo) => rtnl.set_link_up(lo),
        Change::PromoteSecondaries => rtnl.set_promote_secondaries(index),
        Change::DeleteAddress(a) => rtnl.delete_address(index, a),
        Change::AddAddress(a) => rtnl.add_address(index, a),
        Change::ReplaceRoute { dst, gateway } => rtnl.replace_route(&Route {
            dst,
            gateway,
            oif: index,
            metric: route_metric(dst),
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
            addresses: addresses(state, |a| matches!(a, IpNet::V4(_))),
            gateway: gateway(state, Family::V4),
            mtu: state.map_or(0, |s| s.mtu),
            addresses6: addresses(state, |a| matches!(a, IpNet::V6(_)) && !is_link_local(a)),
            gateway6: gateway(state, Family::V6),
        }
    }
}

fn addresses(state: Option<&LinkState>, which: impl Fn(&IpNet) -> bool) -> Vec<String> {
    state
        .map(|s| {
            s.addresses
                .iter()
                .filter(|a| which(&a.addr))
                .map(|a| a.addr.to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn gateway(state: Option<&LinkState>, family: Family) -> Option<String> {
    state
        .and_then(|s| s.effective_default(family))
        .and_then(|r| r.gateway)
        .map(|g| g.to_string())
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
    if state.loopback_down.is_some() && desired.loopback {
        problems.push("lo is down".to_owned());
    }
    for &addr in &desired.addresses {
        if let Some(holder) = state.holder(addr) {
            problems.push(format!(
                "address {addr} is on interface {holder}, not {name}"
            ));
        } else if !state.has_address(addr) {
            problems.push(format!("address {addr} is missing on {name}"));
        }
    }
    for change in plan(desired, state) {
        match change {
            Change::DeleteAddress(a) => problems.push(format!("stale address {a} on {name}")),
            Change::DeleteRoute(r) if r.dst.prefix_len() > 0 => {
                problems.push(format!("stale route {} on {name}", r.dst))
            }
            Change::DeleteRoute(r) => {
                problems.push(format!("stale default route {} on {name}", FmtRoute(&r)))
            }
            _ => {}
        }
    }
    for &(dst, gateway) in &desired.routes {
        if state.routed(dst, gateway) {
            continue;
        }
        if let Some(r) = state.connected_elsewhere(dst) {
            problems.push(format!(
                "{dst} is the connected route of {}, not routed via {name}",
                FmtRoute(r)
            ));
            continue;
        }
        match (gateway, state.effective(dst)) {
            (Some(gw), Some(r)) if dst.prefix_len() == 0 => problems.push(format!(
                "default route goes via {}, want {gw} on {name}",
                FmtRoute(r)
            )),
            (Some(gw), None) if dst.prefix_len() == 0 => {
                problems.push(format!("no default route, want via {gw} on {name}"))
            }
            (Some(gw), _) => problems.push(format!("no route to {dst} via {gw} on {name}")),
            (None, Some(r)) if r.oif != Some(state.index) || r.gateway.is_some() => {
                problems.push(format!("route {dst} goes via {}, want {name}", FmtRoute(r)))
            }
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

/// Makes the pod interface match `desired` (without an overlay); returns the change requests
/// sent.
pub fn apply(rtnl: &mut Rtnl, desired: &Network) -> Result<usize, Error> {
    let before = rtnl.changes_sent();
    Link.apply(rtnl, &LinkSpec::pod(desired, None))?;
    Ok((rtnl.changes_sent() - before) as usize)
}

/// The pod interface as the kernel holds it, compared with `desired`. Never fails: a read
/// error or a missing interface is a `Degraded` status whose `LastError` names it.
pub fn observe(rtnl: &mut Rtnl, desired: &Network) -> NetworkStatus {
    let spec = LinkSpec::pod(desired, None);
    Link.observe(rtnl, &spec).network(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(address: &str, gateway: Option<&str>, mtu: Option<u32>) -> LinkSpec {
        LinkSpec::pod(
            &Network {
                interface: IfName::parse("eth0").unwrap(),
                address: address.parse().unwrap(),
                gateway: gateway.map(|g| g.parse().unwrap()),
                address6: None,
                gateway6: None,
                mtu,
                nameservers: Vec::new(),
                search_domains: Vec::new(),
            },
            None,
        )
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
            held_elsewhere: vec![],
            loopback_down: None,
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
            held_elsewhere: vec![],
            loopback_down: Some(1),
        };
        assert_eq!(
            plan(&desired, &fresh),
            vec![
                Change::SetMtu(1400),
                Change::SetUp,
                Change::SetLoopbackUp(1),
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
    fn the_spec_address_is_the_only_ipv4_address_whoever_added_the_others() {
        let desired = network("10.0.0.6/24", Some("10.0.0.1"), Some(1400));
        let mut state = converged();
        state.addresses.push(addr("10.0.0.99/24", 0)); // someone else's
        state.addresses.push(addr("10.0.0.98/24", 4)); // `ip addr add ... proto static`
                                                       // IPv6 is not managed without Address6: the kernel's and anyone's stay.
        state.addresses.push(addr("2001:db8::99/64", 0));
        state.addresses.push(addr("fe80::1/64", 2));
        assert_eq!(
            plan(&desired, &state),
            vec![
                Change::PromoteSecondaries,
                Change::AddAddress(net("10.0.0.6/24")),
                Change::DeleteAddress(net("10.0.0.5/24")),
                Change::DeleteAddress(net("10.0.0.99/24")),
                Change::DeleteAddress(net("10.0.0.98/24")),
            ]
        );
        let problems = Link.status(&desired, Ok(&state)).problems;
        assert!(
            problems.contains(&"stale address 10.0.0.99/24 on eth0".to_owned()),
            "{problems:?}"
        );
    }

    fn dual(address6: &str, gateway6: Option<&str>) -> LinkSpec {
        let n = Network {
            interface: IfName::parse("eth0").unwrap(),
            address: "10.0.0.5/24".parse().unwrap(),
            gateway: Some("10.0.0.1".parse().unwrap()),
            address6: Some(address6.parse().unwrap()),
            gateway6: gateway6.map(|g| g.parse().unwrap()),
            mtu: Some(1400),
            nameservers: Vec::new(),
            search_domains: Vec::new(),
        };
        LinkSpec::pod(&n, None)
    }

    #[test]
    fn address6_is_the_only_global_ipv6_address_and_link_local_ones_stay() {
        let desired = dual("2001:db8::5/64", Some("fe80::1"));
        let mut state = converged();
        state
            .addresses
            .push(addr("fe80::a8c1:abff:fe12:3456/64", 0));
        state.addresses.push(addr("2001:db8::77/64", 3)); // SLAAC, or anyone's
        let route6 = default_via("fe80::1", 2, RTPROT_WEFT, 0);
        let route6 = RouteInfo {
            dst: "::/0".parse().unwrap(),
            ..route6
        };
        assert_eq!(
            plan(&desired, &state),
            vec![
                Change::AddAddress(net("2001:db8::5/64")),
                Change::DeleteAddress(net("2001:db8::77/64")),
                Change::ReplaceRoute {
                    dst: net("::/0"),
                    gateway: Some("fe80::1".parse().unwrap())
                },
            ]
        );
        state.addresses.retain(|a| a.addr != net("2001:db8::77/64"));
        state.addresses.push(addr("2001:db8::5/64", RTPROT_WEFT));
        state.routes.push(route6);
        assert_eq!(plan(&desired, &state), vec![]);
        let s = status(&desired, &Ok(state));
        assert_eq!(s.overall, Overall::Healthy, "{}", s.last_error);
        assert_eq!(s.addresses, vec!["10.0.0.5/24"]);
        assert_eq!(s.addresses6, vec!["2001:db8::5/64"]);
        assert_eq!(s.gateway6.as_deref(), Some("fe80::1"));
        // Without Gateway6 the agent's IPv6 default goes; the kernel's RA route stays.
        let no_gw6 = dual("2001:db8::5/64", None);
        let mut state = converged();
        state.addresses.push(addr("2001:db8::5/64", RTPROT_WEFT));
        state.routes.push(route6);
        let ra = RouteInfo {
            protocol: 9,
            metric: 1024,
            ..route6
        };
        state.routes.push(ra);
        assert_eq!(plan(&no_gw6, &state), vec![Change::DeleteRoute(route6)]);
    }

    #[test]
    fn the_tunnels_default_route_is_left_to_the_tunnel() {
        let pod = Network {
            interface: IfName::parse("eth0").unwrap(),
            address: "10.0.0.5/24".parse().unwrap(),
            gateway: Some("10.0.0.1".parse().unwrap()),
            address6: None,
            gateway6: None,
            mtu: Some(1400),
            nameservers: Vec::new(),
            search_domains: Vec::new(),
        };
        let wg = weft_schema::validate::WireGuard {
            interface: IfName::parse("wg0").unwrap(),
            address: "10.9.0.1/24".parse().unwrap(),
            listen_port: 51820,
            private_key: None,
            peers: vec![weft_schema::validate::Peer {
                public_key: weft_schema::key::PublicKey([1; 32]),
                endpoint: Some("192.0.2.7:51820".parse().unwrap()),
                allowed_ips: vec![net("0.0.0.0/0")],
                persistent_keepalive: None,
                preshared_key: None,
            }],
            mtu: 1420,
            default_route: Some(weft_schema::validate::Underlay {
                interface: IfName::parse("eth0").unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
                gateway6: None,
            }),
        };
        let desired = LinkSpec::pod(&pod, Some(&wg));
        assert!(desired.routes.is_empty());
        // Until the tunnel's replaces it, the pod's default stays; then the tunnel's stays.
        assert_eq!(plan(&desired, &converged()), vec![]);
        let mut state = converged();
        state.routes = vec![RouteInfo {
            gateway: None,
            oif: Some(7),
            ..default_via("10.0.0.1", 7, RTPROT_WEFT, 0)
        }];
        assert_eq!(plan(&desired, &state), vec![]);
        assert!(status(&desired, &Ok(state)).last_error.is_empty());
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
            held_elsewhere: vec![(net("10.0.0.5/24"), "eth1".into())],
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
        let address: IpNet = address.parse().unwrap();
        LinkSpec {
            interface: IfName::parse("wg0").unwrap(),
            mtu: Some(1420),
            addresses: vec![address],
            routes: vec![(address.trunc(), None)],
            left_to_others: vec![],
            loopback: false,
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
            held_elsewhere: vec![],
            loopback_down: None,
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
    fn another_links_connected_route_is_never_taken() {
        let mut desired = wg("10.9.0.1/24");
        desired.routes.push(("192.0.2.0/24".parse().unwrap(), None));
        let state = LinkState {
            index: 5,
            up: true,
            mtu: 1420,
            addresses: vec![addr("10.9.0.1/24", RTPROT_WEFT)],
            routes: vec![
                on_link("10.9.0.0/24", RTPROT_KERNEL),
                RouteInfo {
                    oif: Some(2),
                    ..on_link("192.0.2.0/24", RTPROT_KERNEL)
                },
            ],
            held_elsewhere: vec![],
            loopback_down: None,
        };
        assert_eq!(plan(&desired, &state), vec![]);
        assert_eq!(
            Link.status(&desired, Ok(&state)).problems,
            vec![
                "192.0.2.0/24 is the connected route of interface #2 directly, not routed via wg0"
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
            held_elsewhere: vec![],
            loopback_down: None,
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
