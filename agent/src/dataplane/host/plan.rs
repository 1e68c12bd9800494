//! One slot: what the kernel holds of it ([`SlotState`], as read), and the steps that take
//! it to its objects ([`plan`]) or take it away ([`teardown`]). Pure: the steps are values
//! that tests compare without root, and each says in words what it mends, which is also what
//! the status and a drift record say is wrong.
//!
//! A slot's links are the agent's when they carry its mark (the host end is made in link
//! group [`LINK_GROUP`], in the request that makes it) or live in the slot's own namespaces;
//! a `weft-v<N>` without the mark is someone else's and is never changed: the slot fails
//! instead, and nothing of it is built.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::slot::{GuestLink, SlotObjects, GUEST_LINK, SANDBOX_LINK};

/// The link group of the host ends of the agent's veth pairs (`WEFT` in ASCII): what a
/// restarted agent adopts by, and what tells its links from another's of the same name.
/// `ip link show group 1464157780` lists them.
pub const LINK_GROUP: u32 = 0x5745_4654;

/// The link group a slot's host link moves to on its way out: every link of it is deleted in
/// one request. One left there by a process that died on the way is the agent's, to delete.
pub const DYING_GROUP: u32 = LINK_GROUP + 1;

/// A named namespace as `/run/netns` holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ns {
    #[default]
    Absent,
    /// The file is there but nothing is mounted on it: a create that did not finish.
    Unmounted,
    Mounted,
}

/// A link as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    pub up: bool,
    /// Its IPv4 addresses.
    pub addrs: Vec<Ipv4Net>,
    /// `veth`, `tun`, ...
    pub kind: Option<String>,
    /// Its link group.
    pub group: u32,
}

/// A route as read: its gateway and whether it leaves by the expected link, for routes the
/// agent added (protocol 87).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteState {
    pub gateway: Option<Ipv4Addr>,
    pub on_link: bool,
}

/// The sandbox namespace's contents, as read from inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxState {
    pub lo_up: bool,
    /// The sandbox end of the veth pair.
    pub eth0: Option<LinkState>,
    /// `tap0`.
    pub guest_link: Option<LinkState>,
    /// The guest end `eth0` is in the guest namespace (`Guest: veth`).
    pub guest_peer: bool,
    /// The agent's default route (protocol 87).
    pub default_route: Option<RouteState>,
    pub forwarding: bool,
    /// Table `ip weft-sb` holds exactly the slot's NAT.
    pub table: TableState,
}

/// A table compared with what it should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TableState {
    #[default]
    Absent,
    Same,
    /// Present, other than it should be: how.
    Differs(String),
}

/// Everything of one slot, as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    pub namespace: Ns,
    /// The guest namespace (`Guest: veth`); `Absent` otherwise.
    pub guest_namespace: Ns,
    /// The host end `weft-v<N>`, in the host namespace.
    pub host_link: Option<LinkState>,
    /// The agent's route to HostIp/32.
    pub host_route: Option<RouteState>,
    /// Meaningful when the namespace is mounted.
    pub sandbox: SandboxState,
}

/// One change to the kernel, in the namespace its variant says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A namespace file nothing is mounted on: removed, so it can be made.
    ClearNamespace(String),
    CreateNamespace(String),
    DeleteNamespace(String),
    /// The host end, which takes the sandbox end with it. Only a marked host end is
    /// deleted (an unmarked one is someone else's: the plan fails instead).
    DeleteHostLink(String),
    DeleteSandboxLink(&'static str),
    /// `weft-v<N>` (marked) in the host namespace, `eth0` in the sandbox's.
    CreateVethPair,
    HostLinkUp,
    HostLinkAddress(Ipv4Net),
    HostLinkUnaddress(Ipv4Net),
    /// `HostIp/32 via VpeerIp dev weft-v<N> proto 87`, by replace.
    HostRoute,
    LoopbackUp,
    SandboxLinkUp,
    SandboxLinkAddress(Ipv4Net),
    SandboxLinkUnaddress(Ipv4Net),
    /// `tap0` (a persistent tap, or a veth with its peer in the guest namespace).
    CreateGuestLink,
    GuestLinkUp,
    GuestLinkAddress(Ipv4Net),
    GuestLinkUnaddress(Ipv4Net),
    /// `default via VethIp dev eth0 proto 87`, by replace.
    SandboxRoute,
    SandboxForwarding,
    /// Table `ip weft-sb`, replaced whole in one transaction.
    SandboxTable,
}

impl Step {
    /// What the step mends, in words (for the status, a drift record, a log line).
    pub fn problem(&self, o: &SlotObjects) -> String {
        let a = &o.addrs;
        match self {
            Step::ClearNamespace(ns) => format!("namespace {ns} is a file without a namespace"),
            Step::CreateNamespace(ns) => format!("namespace {ns} missing"),
            Step::DeleteNamespace(ns) => format!("namespace {ns} is not the spec's"),
            Step::DeleteHostLink(name) => format!("link {name} is not the other end of eth0"),
            Step::DeleteSandboxLink(name) => {
                format!("link {name} in {} has no host end", a.namespace)
            }
            Step::CreateVethPair => format!("link {} missing", a.host_link),
            Step::HostLinkUp => format!("link {} is down", a.host_link),
            Step::HostLinkAddress(n) => format!("address {n} missing on {}", a.host_link),
            Step::HostLinkUnaddress(n) => {
                format!("address {n} on {} is not the spec's", a.host_link)
            }
            Step::HostRoute => format!("route {} missing or changed", a.host_net()),
            Step::LoopbackUp => format!("lo in {} is down", a.namespace),
            Step::SandboxLinkUp => format!("{SANDBOX_LINK} in {} is down", a.namespace),
            Step::SandboxLinkAddress(n) => {
                format!("address {n} missing on {SANDBOX_LINK} in {}", a.namespace)
            }
            Step::SandboxLinkUnaddress(n) => format!(
                "address {n} on {SANDBOX_LINK} in {} is not the spec's",
                a.namespace
            ),
            Step::CreateGuestLink => format!("{GUEST_LINK} in {} missing", a.namespace),
            Step::GuestLinkUp => format!("{GUEST_LINK} in {} is down", a.namespace),
            Step::GuestLinkAddress(n) => {
                format!("address {n} missing on {GUEST_LINK} in {}", a.namespace)
            }
            Step::GuestLinkUnaddress(n) => format!(
                "address {n} on {GUEST_LINK} in {} is not the spec's",
                a.namespace
            ),
            Step::SandboxRoute => {
                format!("default route in {} missing or changed", a.namespace)
            }
            Step::SandboxForwarding => format!("forwarding is off in {}", a.namespace),
            Step::SandboxTable => format!("table ip weft-sb in {} missing or changed", a.namespace),
        }
    }
}

/// Why a slot cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("link {0} exists and is not the agent's (not in link group {LINK_GROUP})")]
    ForeignLink(String),
}

/// The steps that take the slot from `state` to `o`, in the order they must be made; empty
/// when the kernel holds the slot as it should. Refused when a link of the slot's name is
/// someone else's.
pub fn plan(o: &SlotObjects, state: &SlotState) -> Result<Vec<Step>, Refusal> {
    let mut steps = Vec::new();
    let a = &o.addrs;
    let mut state = std::borrow::Cow::Borrowed(state);
    match state.host_link.as_ref().map(|l| l.group) {
        Some(LINK_GROUP) | None => {}
        // Half taken away: its pair goes, and is made again.
        Some(DYING_GROUP) => {
            steps.push(Step::DeleteHostLink(a.host_link.clone()));
            let s = state.to_mut();
            s.host_link = None;
            s.host_route = None;
            s.sandbox.eth0 = None;
            s.sandbox.default_route = None;
        }
        Some(_) => return Err(Refusal::ForeignLink(a.host_link.clone())),
    }
    let state: &SlotState = &state;

    // Namespaces: a fresh one holds nothing of what the read saw.
    let fresh_sandbox = namespace(&mut steps, &a.namespace, state.namespace);
    let mut sandbox = if fresh_sandbox {
        SandboxState::default()
    } else {
        state.sandbox.clone()
    };
    let fresh_guest = match &o.guest {
        GuestLink::Veth { guest_namespace } => {
            namespace(&mut steps, guest_namespace, state.guest_namespace)
        }
        GuestLink::Tap => false,
    };

    // The veth pair: both ends or neither.
    let mut host_link = state.host_link.clone();
    let paired =
        host_link.as_ref().is_some_and(is_veth) && sandbox.eth0.as_ref().is_some_and(is_veth);
    if !paired {
        if host_link.is_some() {
            steps.push(Step::DeleteHostLink(a.host_link.clone()));
        }
        if sandbox.eth0.is_some() {
            steps.push(Step::DeleteSandboxLink(SANDBOX_LINK));
        }
        steps.push(Step::CreateVethPair);
        host_link = Some(LinkState::default());
        sandbox.eth0 = Some(LinkState::default());
    }
    let host_link = host_link.expect("made above");
    if !host_link.up {
        steps.push(Step::HostLinkUp);
    }
    addresses(
        &mut steps,
        &host_link.addrs,
        a.veth_net(),
        Step::HostLinkAddress,
        Step::HostLinkUnaddress,
    );
    // A new link takes its routes with it when it goes: the route is made again.
    let route = RouteState {
        gateway: Some(a.vpeer_ip),
        on_link: true,
    };
    if !paired || state.host_route != Some(route) {
        steps.push(Step::HostRoute);
    }

    if !sandbox.lo_up {
        steps.push(Step::LoopbackUp);
    }
    let eth0 = sandbox.eth0.clone().expect("made above");
    if !eth0.up {
        steps.push(Step::SandboxLinkUp);
    }
    addresses(
        &mut steps,
        &eth0.addrs,
        a.vpeer_net(),
        Step::SandboxLinkAddress,
        Step::SandboxLinkUnaddress,
    );
    let want_kind = match o.guest {
        GuestLink::Tap => "tun",
        GuestLink::Veth { .. } => "veth",
    };
    let guest_ok = sandbox
        .guest_link
        .as_ref()
        .is_some_and(|l| l.kind.as_deref() == Some(want_kind))
        && (matches!(o.guest, GuestLink::Tap) || (sandbox.guest_peer && !fresh_guest));
    let guest = if guest_ok {
        sandbox.guest_link.clone().expect("checked")
    } else {
        if sandbox.guest_link.is_some() {
            steps.push(Step::DeleteSandboxLink(GUEST_LINK));
        }
        steps.push(Step::CreateGuestLink);
        LinkState::default()
    };
    if !guest.up {
        steps.push(Step::GuestLinkUp);
    }
    addresses(
        &mut steps,
        &guest.addrs,
        o.guest_link_addr,
        Step::GuestLinkAddress,
        Step::GuestLinkUnaddress,
    );
    let default = RouteState {
        gateway: Some(o.sandbox_gateway),
        on_link: true,
    };
    // A route on a link made again went with the old link.
    if !paired || sandbox.default_route != Some(default) {
        steps.push(Step::SandboxRoute);
    }
    if !sandbox.forwarding {
        steps.push(Step::SandboxForwarding);
    }
    if sandbox.table != TableState::Same {
        steps.push(Step::SandboxTable);
    }
    Ok(steps)
}

/// Whether `state` already holds the slot; the words of what differs otherwise (empty when
/// nothing does). A foreign link of the slot's name is a problem too.
pub fn problems(o: &SlotObjects, state: &SlotState) -> Vec<String> {
    match plan(o, state) {
        Ok(steps) => steps.iter().map(|s| s.problem(o)).collect(),
        Err(refusal) => vec![refusal.to_string()],
    }
}

fn is_veth(l: &LinkState) -> bool {
    l.kind.as_deref() == Some("veth")
}

/// Steps for a namespace in `state`; true when it is to be made (so it holds nothing yet).
fn namespace(steps: &mut Vec<Step>, name: &str, state: Ns) -> bool {
    match state {
        Ns::Mounted => false,
        Ns::Unmounted => {
            steps.push(Step::ClearNamespace(name.to_owned()));
            steps.push(Step::CreateNamespace(name.to_owned()));
            true
        }
        Ns::Absent => {
            steps.push(Step::CreateNamespace(name.to_owned()));
            true
        }
    }
}

/// The link is to hold exactly `want` (IPv4): the others go first, then it comes.
fn addresses(
    steps: &mut Vec<Step>,
    have: &[Ipv4Net],
    want: Ipv4Net,
    add: fn(Ipv4Net) -> Step,
    remove: fn(Ipv4Net) -> Step,
) {
    for other in have.iter().filter(|n| **n != want) {
        steps.push(remove(*other));
    }
    if !have.contains(&want) {
        steps.push(add(want));
    }
}

/// The steps that take a slot away completely: the host end of the pair (which takes the
/// sandbox end and the host route with it), then the namespaces (which take everything in
/// them, the table included). The host table's rules of the slot go in the host table's
/// own transaction. An unmarked host link of the name is left alone.
pub fn teardown(o: &SlotObjects, state: &SlotState) -> Vec<Step> {
    let mut steps = Vec::new();
    if state
        .host_link
        .as_ref()
        .is_some_and(|l| l.group == LINK_GROUP || l.group == DYING_GROUP)
    {
        steps.push(Step::DeleteHostLink(o.addrs.host_link.clone()));
    }
    if state.namespace != Ns::Absent {
        steps.push(Step::DeleteNamespace(o.addrs.namespace.clone()));
    }
    if let GuestLink::Veth { guest_namespace } = &o.guest {
        if state.guest_namespace != Ns::Absent {
            steps.push(Step::DeleteNamespace(guest_namespace.clone()));
        }
    }
    steps
}

/// The slot as the kernel holds it when it is complete: what a read of it gives once every
/// step of its plan was acknowledged.
pub fn whole(o: &SlotObjects) -> SlotState {
    let tap = matches!(o.guest, GuestLink::Tap);
    let link = |addr: Ipv4Net, kind: &str, group: u32| LinkState {
        up: true,
        addrs: vec![addr],
        kind: Some(kind.into()),
        group,
    };
    SlotState {
        namespace: Ns::Mounted,
        guest_namespace: if tap { Ns::Absent } else { Ns::Mounted },
        host_link: Some(link(o.addrs.veth_net(), "veth", LINK_GROUP)),
        host_route: Some(RouteState {
            gateway: Some(o.addrs.vpeer_ip),
            on_link: true,
        }),
        sandbox: SandboxState {
            lo_up: true,
            eth0: Some(link(o.addrs.vpeer_net(), "veth", 0)),
            guest_link: Some(link(o.guest_link_addr, if tap { "tun" } else { "veth" }, 0)),
            guest_peer: !tap,
            default_route: Some(RouteState {
                gateway: Some(o.sandbox_gateway),
                on_link: true,
            }),
            forwarding: true,
            table: TableState::Same,
        },
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ns::Absent => "absent",
            Ns::Unmounted => "unmounted",
            Ns::Mounted => "mounted",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::host::slot::Addressing;
    use weft_schema::host::{Sandbox, Slot};
    use weft_schema::Guest;

    fn objects(guest: Guest) -> SlotObjects {
        let addressing = Addressing {
            host_range: "10.11.0.0/16".parse().unwrap(),
            veth_range: "10.12.0.0/16".parse().unwrap(),
            netns_prefix: "weft-sb-".into(),
        };
        SlotObjects::of(
            &addressing,
            &Sandbox {
                slot: Slot::new(7).unwrap(),
                guest,
                egress: true,
                port_forwards: vec![],
            },
        )
    }

    fn link(up: bool, addrs: &[&str], kind: &str, marked: bool) -> LinkState {
        LinkState {
            up,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            kind: Some(kind.into()),
            group: if marked { LINK_GROUP } else { 0 },
        }
    }

    #[test]
    fn a_new_slot_is_made_in_order() {
        let o = objects(Guest::Veth);
        let steps = plan(&o, &SlotState::default()).unwrap();
        assert_eq!(
            steps,
            [
                Step::CreateNamespace("weft-sb-7".into()),
                Step::CreateNamespace("weft-sb-7-g".into()),
                Step::CreateVethPair,
                Step::HostLinkUp,
                Step::HostLinkAddress("10.12.0.14/31".parse().unwrap()),
                Step::HostRoute,
                Step::LoopbackUp,
                Step::SandboxLinkUp,
                Step::SandboxLinkAddress("10.12.0.15/31".parse().unwrap()),
                Step::CreateGuestLink,
                Step::GuestLinkUp,
                Step::GuestLinkAddress("169.254.0.22/30".parse().unwrap()),
                Step::SandboxRoute,
                Step::SandboxForwarding,
                Step::SandboxTable,
            ]
        );
    }

    #[test]
    fn a_whole_slot_needs_nothing() {
        for guest in [Guest::Tap, Guest::Veth] {
            let o = objects(guest);
            assert_eq!(plan(&o, &whole(&o)).unwrap(), []);
            assert!(problems(&o, &whole(&o)).is_empty());
        }
    }

    #[test]
    fn drift_is_mended_by_just_the_steps_it_needs() {
        let o = objects(Guest::Tap);
        // The host end deleted: the sandbox end went with it, and both routes.
        let mut s = whole(&o);
        s.host_link = None;
        s.host_route = None;
        s.sandbox.eth0 = None;
        s.sandbox.default_route = None;
        assert_eq!(
            problems(&o, &s),
            [
                "link weft-v7 missing",
                "link weft-v7 is down",
                "address 10.12.0.14/31 missing on weft-v7",
                "route 10.11.0.7/32 missing or changed",
                "eth0 in weft-sb-7 is down",
                "address 10.12.0.15/31 missing on eth0 in weft-sb-7",
                "default route in weft-sb-7 missing or changed",
            ]
        );
        // The host route deleted alone.
        let mut s = whole(&o);
        s.host_route = None;
        assert_eq!(plan(&o, &s).unwrap(), [Step::HostRoute]);
        // An address someone added to the sandbox end, and the table changed.
        let mut s = whole(&o);
        s.sandbox.eth0 = Some(link(
            true,
            &["10.12.0.15/31", "192.0.2.9/24"],
            "veth",
            false,
        ));
        s.sandbox.table = TableState::Differs("a rule added".into());
        assert_eq!(
            plan(&o, &s).unwrap(),
            [
                Step::SandboxLinkUnaddress("192.0.2.9/24".parse().unwrap()),
                Step::SandboxTable
            ]
        );
        // A tap where a veth guest should be: made again.
        let v = objects(Guest::Veth);
        let mut s = whole(&v);
        s.sandbox.guest_link = Some(link(true, &["169.254.0.22/30"], "tun", false));
        assert_eq!(
            plan(&v, &s).unwrap(),
            [
                Step::DeleteSandboxLink("tap0"),
                Step::CreateGuestLink,
                Step::GuestLinkUp,
                Step::GuestLinkAddress("169.254.0.22/30".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn a_half_built_slot_is_finished() {
        let o = objects(Guest::Veth);
        // A crash after the namespace file was made but before it was mounted, with the
        // guest namespace not made yet.
        let s = SlotState {
            namespace: Ns::Unmounted,
            ..SlotState::default()
        };
        let steps = plan(&o, &s).unwrap();
        assert_eq!(
            steps[..3],
            [
                Step::ClearNamespace("weft-sb-7".into()),
                Step::CreateNamespace("weft-sb-7".into()),
                Step::CreateNamespace("weft-sb-7-g".into()),
            ]
        );
        // A crash after the pair was made: the rest follows, nothing is made twice.
        let mut s = whole(&o);
        s.host_link = Some(link(false, &[], "veth", true));
        s.host_route = None;
        s.sandbox = SandboxState {
            eth0: Some(link(false, &[], "veth", false)),
            ..SandboxState::default()
        };
        let steps = plan(&o, &s).unwrap();
        assert!(!steps.contains(&Step::CreateVethPair), "{steps:?}");
        assert!(!steps.iter().any(|s| matches!(s, Step::CreateNamespace(_))));
        assert_eq!(steps[0], Step::HostLinkUp);
        assert!(steps.contains(&Step::CreateGuestLink));
    }

    #[test]
    fn someone_elses_link_is_never_touched() {
        let o = objects(Guest::Tap);
        let s = SlotState {
            host_link: Some(link(true, &["192.0.2.1/24"], "veth", false)),
            ..SlotState::default()
        };
        assert_eq!(
            plan(&o, &s).unwrap_err(),
            Refusal::ForeignLink("weft-v7".into())
        );
        assert_eq!(
            problems(&o, &s),
            ["link weft-v7 exists and is not the agent's (not in link group 1464157780)"]
        );
        // Taking the slot away leaves it too.
        assert_eq!(teardown(&o, &s), []);
    }

    #[test]
    fn a_slot_is_taken_away_whole() {
        let o = objects(Guest::Veth);
        assert_eq!(
            teardown(&o, &whole(&o)),
            [
                Step::DeleteHostLink("weft-v7".into()),
                Step::DeleteNamespace("weft-sb-7".into()),
                Step::DeleteNamespace("weft-sb-7-g".into()),
            ]
        );
        // Half of one: what there is.
        let s = SlotState {
            namespace: Ns::Unmounted,
            ..SlotState::default()
        };
        assert_eq!(
            teardown(&o, &s),
            [Step::DeleteNamespace("weft-sb-7".into())]
        );
    }
}
