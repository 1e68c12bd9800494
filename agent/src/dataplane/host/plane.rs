//! The host plane: the host role's kernel half, on the reconciler's thread. It keeps one
//! socket set open inside each sandbox namespace (opened by a thread that entered it), the
//! host namespace's own, and what it last read or wrote of each slot, so an apply that adds
//! or removes one sandbox touches that slot's objects and rules only, and costs the same
//! whatever the number of slots the host holds.
//!
//! What it knows is kept until something says otherwise: a change it did not make (the
//! kernel's notifications), a resync, a start. Then everything is read again, the slots the
//! spec names are finished or mended, and the slots it finds that the spec does not name
//! (namespaces of its prefix, host links in its link group) are taken away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::IpNet;
use weft_schema::host::{Forward, Sandbox, Slot, ValidHostSpec};
use weft_schema::validate::IfName;
use weft_schema::Subsystem;

use super::exprs::exprs;
use super::hosttable::{HostTable, Scope, HOST_TABLE_REF};
use super::plan::{self, LinkState, Ns, Refusal, RouteState, SlotState, Step};
use super::read::{self, HostSide, SandboxSockets, SANDBOX_TABLE_REF};
use super::slot::{
    self, Addressing, GuestLink, SlotObjects, GUEST_LINK, GUEST_NS_LINK, SANDBOX_LINK,
};
use super::status::{Observed, SlotObserved};
use super::tables::{self, Key, Keyed, SANDBOX_CHAINS};
use super::{netns, sysctl, tap, Settings};
use crate::dataplane::events::{Hints, KernelEvents};
use crate::dataplane::netlink;
use crate::dataplane::nftables::batch::{BaseChain, Batch};
use crate::dataplane::nftables::{CommitError, Nft, TableRef};
use crate::dataplane::rtnl::events::Subject;
use crate::dataplane::rtnl::{Family, Route, Rtnl, RTPROT_WEFT};
use crate::dataplane::{Failure, OpenError};
use crate::role::Plane;

/// Why a part of a host spec was not applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No uplink: nothing of the spec is applied (no slot would reach out).
    #[error("Uplink: {0}")]
    Uplink(String),
    #[error("turn IPv4 forwarding on on the host")]
    Forwarding(#[source] io::Error),
    #[error("read the host namespace")]
    ReadHost(#[source] netlink::Error),
    #[error("slot {slot}: {what}")]
    Slot {
        slot: Slot,
        what: String,
        #[source]
        source: StepError,
    },
    #[error("slot {0}: {1}")]
    Refused(Slot, Refusal),
    #[error("table ip weft-host: {0}")]
    Table(String),
}

/// What one step of a slot failed with.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("no link {0}")]
    NoLink(String),
    #[error("no sockets in the sandbox's namespace")]
    NoSockets,
    #[error("{0}")]
    Table(String),
}

/// What a message of a host or sandbox table transaction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    Begin,
    Batch,
    Table,
    Chain(&'static str),
    Rule,
}

/// The host role's kernel half.
#[derive(Debug)]
pub struct HostPlane {
    settings: Settings,
    addressing: Addressing,
    rtnl: Rtnl,
    nft: Nft,
    /// The sockets inside each sandbox namespace the agent holds.
    sandboxes: BTreeMap<Slot, SandboxSockets>,
    /// The sandboxes last applied, by slot: what the next apply is compared with.
    applied: BTreeMap<Slot, Sandbox>,
    /// Slots found in the kernel at the last full read (whether the spec names them or not).
    found: BTreeSet<Slot>,
    /// What each slot held when last read, or was made to hold since (every step acked).
    states: BTreeMap<Slot, SlotState>,
    /// Slots known to hold exactly their objects.
    settled: BTreeSet<Slot>,
    /// Everything is to be read again before it is trusted.
    stale: bool,
    /// Slots to read again (a change someone else made names one of their objects).
    dirty: BTreeSet<Slot>,
    /// The host ends of the slots' veth pairs, by link index.
    index_slot: HashMap<u32, Slot>,
    /// The uplink's link index, when resolved.
    uplink_index: Option<u32>,
    /// The uplink in use, resolved for the spec's `Uplink` (the first), while no route or
    /// link changed; `None`: to resolve.
    uplink: Option<(Option<IfName>, IfName)>,
    /// Table `ip weft-host` as last read or written.
    table: HostTable,
    /// Someone else changed the host table: the next apply checks all of it.
    table_suspect: bool,
    /// The uplink the shared rules were last written for.
    base_uplink: Option<IfName>,
    /// Each slot as last observed, for the status.
    seen: BTreeMap<Slot, SlotObserved>,
    /// Slots to observe again (their objects or rules changed), or all.
    reobserve: BTreeSet<Slot>,
    reobserve_all: bool,
    /// The host table's shared part as last observed.
    table_seen: Option<Vec<String>>,
    /// The host's `net.ipv4.ip_forward`, kept open once opened.
    forwarding: Option<sysctl::Forwarding>,
}

/// The most descriptors the plane may need: four per sandbox, a margin for the rest.
const FDS: u64 = 4 * 16_384 + 1_024;

/// Raises the soft limit on open descriptors towards what thousands of sandboxes' sockets
/// need (at most the hard limit).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the live struct; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < FDS {
            lim.rlim_cur = FDS.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl HostPlane {
    fn objects(&self, sandbox: &Sandbox) -> SlotObjects {
        SlotObjects::of(&self.addressing, sandbox)
    }

    /// The host's forwarding setting, opened when it is not yet (a failure is not kept).
    fn forwarding(&mut self) -> io::Result<&sysctl::Forwarding> {
        if self.forwarding.is_none() {
            self.forwarding = Some(sysctl::Forwarding::open()?);
        }
        Ok(self.forwarding.as_ref().expect("just opened"))
    }

    /// The uplink: the spec's (it must exist), or the interface of the IPv4 default route
    /// with the lowest metric. Kept until a route or link changes (or the spec names
    /// another); a failure is not kept.
    fn uplink(&mut self, spec: &ValidHostSpec) -> Result<IfName, String> {
        if let Some((asked, resolved)) = &self.uplink {
            if *asked == spec.uplink {
                return Ok(resolved.clone());
            }
        }
        let resolved = match &spec.uplink {
            Some(name) => match self.rtnl.link(name.as_str()) {
                Ok(Some(l)) => {
                    self.uplink_index = Some(l.index);
                    Ok(name.clone())
                }
                Ok(None) => Err(format!("interface {name} does not exist")),
                Err(e) => Err(format!("read link {name}: {e}")),
            },
            None => self.default_route_link(),
        };
        self.uplink = resolved
            .as_ref()
            .ok()
            .map(|r| (spec.uplink.clone(), r.clone()));
        resolved
    }

    fn default_route_link(&mut self) -> Result<IfName, String> {
        let routes = self
            .rtnl
            .routes(Family::V4)
            .map_err(|e| format!("read routes: {e}"))?;
        let oif = routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0 && r.oif.is_some())
            .min_by_key(|r| r.metric)
            .and_then(|r| r.oif)
            .ok_or("no IPv4 default route")?;
        let links = self.rtnl.links().map_err(|e| format!("read links: {e}"))?;
        let name = links
            .iter()
            .find(|l| l.index == oif)
            .map(|l| l.name.clone())
            .ok_or("the IPv4 default route's interface is gone")?;
        self.uplink_index = Some(oif);
        IfName::parse(&name)
    }

    /// The slots the kernel holds: namespaces of the prefix, host links in the group.
    fn discover(&self, host: &HostSide) -> Result<BTreeSet<Slot>, Error> {
        let mut found = BTreeSet::new();
        let names = netns::list(&self.settings.netns_prefix).map_err(|e| Error::Slot {
            slot: Slot::new(1).expect("1 is a slot"),
            what: "list namespaces".into(),
            source: e.into(),
        })?;
        for name in names {
            if let Some(s) = self
                .addressing
                .slot_of_namespace(&name)
                .or_else(|| self.addressing.slot_of_guest_namespace(&name))
            {
                found.insert(s);
            }
        }
        for (name, group) in host.link_names() {
            if group == plan::LINK_GROUP || group == plan::DYING_GROUP {
                if let Some(s) = slot::slot_of_host_link(name) {
                    found.insert(s);
                }
            }
        }
        Ok(found)
    }

    /// The sockets of slot `s`'s namespace, opened inside it when they are not open yet, or
    /// are in another namespace of the same name (`ino`).
    fn sockets(&mut self, o: &SlotObjects, ino: u64) -> Result<&mut SandboxSockets, StepError> {
        let slot = o.addrs.slot;
        if self.sandboxes.get(&slot).is_some_and(|s| s.ino != ino) {
            self.sandboxes.remove(&slot);
        }
        if let std::collections::btree_map::Entry::Vacant(e) = self.sandboxes.entry(slot) {
            let opened = netns::enter(&o.addrs.namespace, || SandboxSockets::open_here(ino))??;
            e.insert(opened);
        }
        Ok(self.sandboxes.get_mut(&slot).expect("just made"))
    }

    /// Reads all of slot `o`: its host side from `host` (dumps of the host namespace) or,
    /// without, by requests about its own objects only.
    fn read_slot(
        &mut self,
        o: &SlotObjects,
        host: Option<&HostSide>,
    ) -> Result<SlotState, StepError> {
        let (namespace, ino) = read::namespace(&o.addrs.namespace);
        let guest_namespace = match &o.guest {
            GuestLink::Veth { guest_namespace } => read::namespace(guest_namespace).0,
            GuestLink::Tap => Ns::Absent,
        };
        let sandbox = match (namespace, ino) {
            (Ns::Mounted, Some(ino)) => {
                let s = self.sockets(o, ino)?;
                read::sandbox_side(s, o)?
            }
            _ => {
                self.sandboxes.remove(&o.addrs.slot);
                Default::default()
            }
        };
        let (host_link, host_route) = match host {
            Some(h) => (h.link(&o.addrs.host_link), h.host_route(&o.addrs)),
            None => self.read_host_of(o)?,
        };
        Ok(SlotState {
            namespace,
            guest_namespace,
            host_link,
            host_route,
            sandbox,
        })
    }

    /// Slot `o`'s host end and route, asked for by name and link (the kernel filters).
    fn read_host_of(
        &mut self,
        o: &SlotObjects,
    ) -> Result<(Option<LinkState>, Option<RouteState>), StepError> {
        let Some(l) = self.rtnl.link(&o.addrs.host_link)? else {
            return Ok((None, None));
        };
        self.index_slot.insert(l.index, o.addrs.slot);
        let mut addrs: Vec<ipnet::Ipv4Net> = self
            .rtnl
            .addresses_on(l.index)?
            .into_iter()
            .filter_map(|a| match a.addr {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            })
            .collect();
        addrs.sort_unstable();
        // The route traffic to HostIp takes, looked up: a dump of the routes via the link
        // walks every slot's route in the kernel (at 1,000 slots, 15% of the reconciler's CPU
        // while slots came and went one at a time, `perf`).
        let route = self
            .rtnl
            .route_to(o.addrs.host_ip)?
            .filter(|r| {
                r.protocol == RTPROT_WEFT
                    && r.oif == Some(l.index)
                    && r.dst == IpNet::from(o.addrs.host_net())
            })
            .map(|r| RouteState {
                gateway: match r.gateway {
                    Some(std::net::IpAddr::V4(g)) => Some(g),
                    _ => None,
                },
                on_link: true,
            });
        Ok((
            Some(LinkState {
                up: l.up,
                addrs,
                kind: l.kind,
                group: l.group,
            }),
            route,
        ))
    }

    /// What a new slot holds, read cheaply: nothing at all, usually. When something of it
    /// is there (a name taken, a leftover), `None`: read the host side whole.
    fn read_new_slot(&mut self, o: &SlotObjects) -> Result<Option<SlotState>, StepError> {
        let taken = read::namespace(&o.addrs.namespace).0 != Ns::Absent
            || o.namespaces()
                .iter()
                .any(|n| read::namespace(n).0 != Ns::Absent)
            || self.rtnl.link(&o.addrs.host_link)?.is_some();
        Ok((!taken).then(SlotState::default))
    }

    /// Runs the steps of a slot, in order.
    fn run(&mut self, o: &SlotObjects, steps: &[Step]) -> Result<(), Error> {
        let slot = o.addrs.slot;
        for step in steps {
            self.step(o, step).map_err(|source| Error::Slot {
                slot,
                what: step.problem(o),
                source,
            })?;
        }
        Ok(())
    }

    fn host_index(&mut self, o: &SlotObjects) -> Result<u32, StepError> {
        let name = &o.addrs.host_link;
        let index = self
            .rtnl
            .link(name)?
            .ok_or_else(|| StepError::NoLink(name.clone()))?
            .index;
        self.index_slot.insert(index, o.addrs.slot);
        Ok(index)
    }

    fn step(&mut self, o: &SlotObjects, step: &Step) -> Result<(), StepError> {
        let a = &o.addrs;
        let slot = a.slot;
        match step {
            Step::ClearNamespace(name) => netns::delete(name)?,
            Step::CreateNamespace(name) if *name == a.namespace => {
                self.sandboxes.remove(&slot);
                let sockets = netns::create(name, || {
                    let (_, ino) = read::namespace(name);
                    SandboxSockets::open_here(ino.unwrap_or(0))
                })??;
                self.sandboxes.insert(slot, sockets);
            }
            Step::CreateNamespace(name) => netns::create(name, || ())?,
            Step::DeleteNamespace(name) => {
                if *name == a.namespace {
                    // Our sockets would keep it alive.
                    self.sandboxes.remove(&slot);
                }
                netns::delete(name)?;
            }
            Step::DeleteHostLink(name) => {
                if let Some(l) = self.rtnl.link(name)? {
                    self.rtnl.delete_link(l.index)?;
                }
            }
            Step::DeleteSandboxLink(name) => {
                let s = self.sandbox(slot)?;
                if let Some(l) = s.rtnl.link(name)? {
                    s.rtnl.delete_link(l.index)?;
                }
            }
            Step::CreateVethPair => {
                let ns = std::fs::File::open(netns::path(&a.namespace))?;
                self.rtnl.create_marked_veth(
                    &a.host_link,
                    plan::LINK_GROUP,
                    SANDBOX_LINK,
                    Some(ns.as_fd()),
                )?;
            }
            Step::HostLinkUp => {
                let i = self.host_index(o)?;
                self.rtnl.set_link_up(i)?;
            }
            Step::HostLinkAddress(n) => {
                let i = self.host_index(o)?;
                self.rtnl.add_address(i, (*n).into())?;
            }
            Step::HostLinkUnaddress(n) => {
                let i = self.host_index(o)?;
                self.rtnl.delete_address(i, (*n).into())?;
            }
            Step::HostRoute => {
                let i = self.host_index(o)?;
                self.rtnl.replace_route(&Route {
                    dst: a.host_net().into(),
                    gateway: Some(a.vpeer_ip.into()),
                    oif: i,
                    metric: 0,
                })?;
            }
            Step::LoopbackUp => sandbox_link(self.sandbox(slot)?, "lo", |r, i| r.set_link_up(i))?,
            Step::SandboxLinkUp => {
                sandbox_link(self.sandbox(slot)?, SANDBOX_LINK, |r, i| r.set_link_up(i))?
            }
            Step::SandboxLinkAddress(n) => {
                sandbox_link(self.sandbox(slot)?, SANDBOX_LINK, |r, i| {
                    r.add_address(i, (*n).into())
                })?
            }
            Step::SandboxLinkUnaddress(n) => {
                sandbox_link(self.sandbox(slot)?, SANDBOX_LINK, |r, i| {
                    r.delete_address(i, (*n).into())
                })?
            }
            Step::CreateGuestLink => match &o.guest {
                GuestLink::Tap => {
                    netns::enter(&a.namespace, || tap::create_persistent(GUEST_LINK))??
                }
                GuestLink::Veth { guest_namespace } => {
                    let ns = std::fs::File::open(netns::path(guest_namespace))?;
                    self.sandbox(slot)?.rtnl.create_veth(
                        GUEST_LINK,
                        GUEST_NS_LINK,
                        Some(ns.as_fd()),
                    )?;
                }
            },
            Step::GuestLinkUp => {
                sandbox_link(self.sandbox(slot)?, GUEST_LINK, |r, i| r.set_link_up(i))?
            }
            Step::GuestLinkAddress(n) => sandbox_link(self.sandbox(slot)?, GUEST_LINK, |r, i| {
                r.add_address(i, (*n).into())
            })?,
            Step::GuestLinkUnaddress(n) => {
                sandbox_link(self.sandbox(slot)?, GUEST_LINK, |r, i| {
                    r.delete_address(i, (*n).into())
                })?
            }
            Step::SandboxRoute => {
                let gateway = o.sandbox_gateway;
                sandbox_link(self.sandbox(slot)?, SANDBOX_LINK, |r, i| {
                    r.replace_route(&Route {
                        dst: "0.0.0.0/0".parse().expect("a network"),
                        gateway: Some(gateway.into()),
                        oif: i,
                        metric: 0,
                    })
                })?
            }
            Step::SandboxForwarding => self.sandbox(slot)?.enable_forwarding()?,
            Step::SandboxTable => {
                let rules = o.sandbox_table.rules();
                let s = self.sandbox(slot)?;
                let exists = s.nft.table(SANDBOX_TABLE_REF)?.is_some();
                let tx = replace_table(
                    SANDBOX_TABLE_REF,
                    &SANDBOX_CHAINS,
                    &rules,
                    exists,
                    s.nft.batch_seq(),
                );
                s.nft
                    .commit(&tx)
                    .map_err(|e| StepError::Table(commit_error(e)))?;
            }
        }
        Ok(())
    }

    fn sandbox(&mut self, slot: Slot) -> Result<&mut SandboxSockets, StepError> {
        self.sandboxes.get_mut(&slot).ok_or(StepError::NoSockets)
    }

    /// Takes slots away, whatever of them there is: their host links at once (moved to the
    /// dying group, then the group deleted: one wait for the kernel's readers for all), then
    /// their namespaces (what is in them goes with them). `sandboxes` says each one's guest
    /// when known (both namespaces are tried otherwise). A link of a slot's name that is not
    /// the agent's is left alone.
    fn remove_slots(&mut self, slots: &[(Slot, Option<Sandbox>)]) -> Vec<Error> {
        let mut errors = Vec::new();
        let mut dying = 0;
        for (s, sandbox) in slots {
            let o = self.removal_objects(*s, sandbox.as_ref());
            let moved = (|| -> Result<bool, StepError> {
                let Some(l) = self.rtnl.link(&o.addrs.host_link)? else {
                    return Ok(false);
                };
                if l.group == plan::LINK_GROUP {
                    self.rtnl.set_link_group(l.index, plan::DYING_GROUP)?;
                }
                Ok(l.group == plan::LINK_GROUP || l.group == plan::DYING_GROUP)
            })();
            match moved {
                Ok(m) => dying += usize::from(m),
                Err(e) => errors.push(self.slot_error(*s, "take link away", e)),
            }
        }
        if dying > 0 {
            if let Err(e) = self.rtnl.delete_link_group(plan::DYING_GROUP) {
                if e.errno() != Some(libc::ENODEV) {
                    errors.push(Error::Table(format!("delete the slots' links: {e}")));
                }
            }
        }
        for (s, sandbox) in slots {
            let o = self.removal_objects(*s, sandbox.as_ref());
            // Our sockets would keep the namespace alive.
            self.sandboxes.remove(s);
            for ns in [o.addrs.namespace.clone(), o.addrs.guest_namespace()] {
                if read::namespace(&ns).0 != Ns::Absent {
                    if let Err(e) = netns::delete(&ns) {
                        errors.push(self.slot_error(*s, "delete namespace", e.into()));
                    }
                }
            }
            self.states.remove(s);
            self.settled.remove(s);
            self.dirty.remove(s);
            self.seen.remove(s);
            self.index_slot.retain(|_, v| v != s);
        }
        errors
    }

    fn removal_objects(&self, s: Slot, sandbox: Option<&Sandbox>) -> SlotObjects {
        self.objects(sandbox.unwrap_or(&Sandbox {
            slot: s,
            guest: weft_schema::Guest::Veth,
            egress: true,
            port_forwards: vec![],
        }))
    }

    /// Reads again the slots a change someone else made named.
    fn refresh_dirty(&mut self, spec: &ValidHostSpec) {
        let dirty = std::mem::take(&mut self.dirty);
        for s in dirty {
            self.settled.remove(&s);
            self.reobserve.insert(s);
            let Some(sandbox) = spec.sandbox(s) else {
                continue;
            };
            let o = self.objects(sandbox);
            match self.read_slot(&o, None) {
                Ok(state) => {
                    self.states.insert(s, state);
                }
                Err(e) => {
                    tracing::warn!(slot = %s, error = %crate::dataplane::error_line(&e), "slot not read");
                    self.states.remove(&s);
                }
            }
        }
    }

    /// Finishes, mends or makes slot `sandbox`. A slot that did not exist before and fails
    /// is taken away again: nothing of it is left half-built.
    fn build_slot(&mut self, sandbox: &Sandbox, host: &Option<HostSide>) -> Result<(), Error> {
        let s = sandbox.slot;
        let o = self.objects(sandbox);
        let known = self.applied.contains_key(&s) || self.found.contains(&s);
        let state = match self.states.get(&s) {
            Some(state) if !self.stale => state.clone(),
            _ => {
                let quick = if known {
                    None
                } else {
                    self.read_new_slot(&o)
                        .map_err(|e| self.slot_error(s, "read", e))?
                };
                match quick {
                    Some(state) => state,
                    None => self
                        .read_slot(&o, host.as_ref())
                        .map_err(|e| self.slot_error(s, "read", e))?,
                }
            }
        };
        self.reobserve.insert(s);
        let steps = plan::plan(&o, &state).map_err(|r| Error::Refused(s, r))?;
        if steps.is_empty() {
            self.states.insert(s, state);
            self.settled.insert(s);
            return Ok(());
        }
        match self.run(&o, &steps) {
            Ok(()) => {
                self.states.insert(s, plan::whole(&o));
                self.settled.insert(s);
                Ok(())
            }
            Err(e) => {
                self.settled.remove(&s);
                self.states.remove(&s);
                if !known {
                    let _ = self.remove_slots(&[(s, Some(sandbox.clone()))]);
                }
                Err(e)
            }
        }
    }

    fn slot_error(&self, slot: Slot, what: &str, source: StepError) -> Error {
        Error::Slot {
            slot,
            what: what.into(),
            source,
        }
    }

    /// The rules `ip weft-host` should hold for `spec`.
    fn host_rules_for(&self, spec: &ValidHostSpec, uplink: Option<&IfName>) -> Vec<Keyed> {
        let mut rules = tables::host_base(uplink, self.settings.veth_range);
        for sandbox in &spec.sandboxes {
            rules.extend(tables::slot_rules(
                &self.addressing.slot(sandbox.slot),
                sandbox,
            ));
        }
        rules
    }

    /// Whole reads, when something said the kernel changed: every slot the spec names, and
    /// what the kernel holds that it does not.
    fn refresh(&mut self, spec: &ValidHostSpec) -> Result<HostSide, Error> {
        let host = HostSide::read(&mut self.rtnl).map_err(Error::ReadHost)?;
        self.found = self.discover(&host)?;
        self.settled.clear();
        self.dirty.clear();
        self.index_slot = host
            .link_indexes()
            .filter_map(|(name, index)| slot::slot_of_host_link(name).map(|s| (index, s)))
            .collect();
        self.reobserve_all = true;
        for sandbox in &spec.sandboxes {
            let o = self.objects(sandbox);
            match self.read_slot(&o, Some(&host)) {
                Ok(state) => {
                    self.states.insert(sandbox.slot, state);
                }
                Err(e) => {
                    tracing::warn!(slot = %sandbox.slot, error = %crate::dataplane::error_line(&e), "slot not read");
                    self.states.remove(&sandbox.slot);
                }
            }
        }
        self.stale = false;
        Ok(host)
    }
}

/// The rules `ip weft-host` should hold for `spec`: the shared ones and every slot's.
fn host_rules(
    addressing: &Addressing,
    veth_range: ipnet::Ipv4Net,
    spec: &ValidHostSpec,
    uplink: Option<&IfName>,
) -> Vec<Keyed> {
    let mut rules = tables::host_base(uplink, veth_range);
    for sandbox in &spec.sandboxes {
        rules.extend(tables::slot_rules(&addressing.slot(sandbox.slot), sandbox));
    }
    rules
}

/// `what failed` from a refused transaction.
pub(super) fn commit_error(e: CommitError<Label>) -> String {
    match e {
        CommitError::Refused(r) => format!(
            "the kernel refused {:?}: {}{}",
            r.what,
            io::Error::from_raw_os_error(r.errno),
            r.text.map(|t| format!(" ({t})")).unwrap_or_default()
        ),
        CommitError::Netlink(e) => crate::dataplane::error_line(&e),
        CommitError::NoAnswer => "the kernel did not answer".into(),
    }
}

fn sandbox_link(
    s: &mut SandboxSockets,
    name: &str,
    f: impl FnOnce(&mut Rtnl, u32) -> Result<(), netlink::Error>,
) -> Result<(), StepError> {
    let i = s
        .rtnl
        .link(name)?
        .ok_or_else(|| StepError::NoLink(name.into()))?
        .index;
    Ok(f(&mut s.rtnl, i)?)
}

/// One transaction that makes `table` hold exactly `chains` and `rules`: add table, delete
/// it (when it exists), add it, its chains, its rules. No observer sees it half-made.
pub(super) fn replace_table(
    table: TableRef<'_>,
    chains: &[tables::ChainDef],
    rules: &[Keyed],
    exists: bool,
    seq: u32,
) -> crate::dataplane::nftables::batch::Transaction<Label> {
    let mut b = Batch::new(seq, None, Label::Begin).echo_rules();
    if exists {
        b.delete_table(table, Label::Table);
    }
    b.add_table(table, 0, Label::Table);
    for c in chains {
        b.add_chain(
            table,
            &BaseChain {
                name: c.name,
                kind: match c.kind {
                    "nat" => nftnl::ChainType::Nat,
                    _ => nftnl::ChainType::Filter,
                },
                hook: match c.hook {
                    tables::Hook::Prerouting => nftnl::Hook::PreRouting,
                    tables::Hook::Input => nftnl::Hook::In,
                    tables::Hook::Forward => nftnl::Hook::Forward,
                    tables::Hook::Output => nftnl::Hook::Out,
                    tables::Hook::Postrouting => nftnl::Hook::PostRouting,
                },
                priority: c.priority,
                policy: nftnl::Policy::Accept,
            },
            Label::Chain(c.name),
        );
    }
    for r in rules {
        b.add_rule(
            table,
            r.chain,
            &exprs(&r.rule),
            Some(&r.key.to_string()),
            Label::Rule,
        );
    }
    b.finish(Label::Batch)
}

impl Plane for HostPlane {
    type Spec = ValidHostSpec;
    type Observed = Observed;
    type Settings = Settings;

    fn open(settings: &Settings) -> Result<HostPlane, OpenError> {
        netns::prepare_dir()
            .map_err(|e| OpenError::Enter(netns::NETNS_DIR.into(), io::Error::other(e)))?;
        raise_fd_limit();
        Ok(HostPlane {
            settings: settings.clone(),
            addressing: settings.addressing(),
            rtnl: Rtnl::open_strict().map_err(OpenError::Rtnl)?,
            nft: Nft::open().map_err(OpenError::Nft)?,
            sandboxes: BTreeMap::new(),
            applied: BTreeMap::new(),
            found: BTreeSet::new(),
            states: BTreeMap::new(),
            settled: BTreeSet::new(),
            stale: true,
            dirty: BTreeSet::new(),
            index_slot: HashMap::new(),
            uplink_index: None,
            uplink: None,
            table: HostTable::default(),
            table_suspect: true,
            base_uplink: None,
            seen: BTreeMap::new(),
            reobserve: BTreeSet::new(),
            reobserve_all: true,
            table_seen: None,
            forwarding: None,
        })
    }

    fn state_dir(settings: &Settings) -> &Path {
        &settings.state_dir
    }

    fn events(&self) -> io::Result<KernelEvents> {
        KernelEvents::open_for(HOST_TABLE_REF, None)
    }

    fn apply(&mut self, spec: &ValidHostSpec) -> Vec<Failure> {
        let fail = |subsystem, error: Error| Failure {
            subsystem,
            error: error.into(),
        };
        let uplink = match self.uplink(spec) {
            Ok(u) => u,
            // Nothing of the spec is built without a way out.
            Err(why) => return vec![fail(Subsystem::Network, Error::Uplink(why))],
        };
        let mut failures = Vec::new();
        if let Err(e) = self.forwarding().and_then(sysctl::Forwarding::enable) {
            failures.push(fail(Subsystem::Network, Error::Forwarding(e)));
        }
        let mut host = None;
        if self.stale {
            match self.refresh(spec) {
                Ok(h) => host = Some(h),
                Err(e) => return vec![fail(Subsystem::Network, e)],
            }
        }
        self.refresh_dirty(spec);
        // Slots to take away: applied before, or found, and not in the spec.
        let gone: Vec<Slot> = self
            .applied
            .keys()
            .chain(self.found.iter())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|s| spec.sandbox(*s).is_none())
            .collect();
        let gone: Vec<(Slot, Option<Sandbox>)> = gone
            .into_iter()
            .map(|s| (s, self.applied.get(&s).cloned()))
            .collect();
        for e in self.remove_slots(&gone) {
            failures.push(fail(Subsystem::Network, e));
        }
        let mut changed_keys: BTreeSet<Slot> = BTreeSet::new();
        for (s, _) in &gone {
            self.applied.remove(s);
            self.found.remove(s);
            changed_keys.insert(*s);
        }
        for sandbox in &spec.sandboxes {
            let unchanged = self.applied.get(&sandbox.slot) == Some(sandbox);
            if unchanged && self.settled.contains(&sandbox.slot) {
                continue;
            }
            if !unchanged {
                changed_keys.insert(sandbox.slot);
            }
            match self.build_slot(sandbox, &host) {
                Ok(()) => {
                    self.applied.insert(sandbox.slot, sandbox.clone());
                }
                Err(e) => {
                    failures.push(fail(Subsystem::Network, e));
                    self.applied.remove(&sandbox.slot);
                }
            }
        }
        // The host table: every rule when it may have been changed by someone else, else
        // the keys of the slots that came, went or changed, and the shared rules when the
        // uplink did.
        let scope = if self.table_suspect || !self.table.known() {
            Scope::All
        } else {
            let mut keys: BTreeSet<String> = changed_keys
                .iter()
                .map(|s| Key::Slot(*s).to_string())
                .collect();
            if self.base_uplink.as_ref() != Some(&uplink) {
                keys.insert(Key::Base.to_string());
            }
            Scope::Keys(keys)
        };
        let want = match &scope {
            Scope::All => self.host_rules_for(spec, Some(&uplink)),
            Scope::Keys(keys) => {
                let mut want = Vec::new();
                if keys.contains(&Key::Base.to_string()) {
                    want.extend(tables::host_base(Some(&uplink), self.settings.veth_range));
                }
                for s in &changed_keys {
                    if let Some(sandbox) = spec.sandbox(*s) {
                        want.extend(tables::slot_rules(&self.addressing.slot(*s), sandbox));
                    }
                }
                want
            }
        };
        let (addressing, veth_range) = (&self.addressing, self.settings.veth_range);
        let all = || host_rules(addressing, veth_range, spec, Some(&uplink));
        match self.table.sync(&mut self.nft, &want, &scope, all) {
            Ok(()) => {
                self.base_uplink = Some(uplink);
                if matches!(scope, Scope::All) {
                    self.table_suspect = false;
                }
            }
            Err(e) => failures.push(fail(Subsystem::Firewall, e)),
        }
        failures
    }

    fn apply_one(&mut self, subsystem: Subsystem, spec: &ValidHostSpec) -> Vec<Failure> {
        let mut failures = self.apply(spec);
        failures.retain(|f| f.subsystem == subsystem);
        failures
    }

    /// What the kernel holds for `spec`: the slots and rules that changed (or may have) since
    /// the last observation are looked at again, the others are as they were.
    fn observe(&mut self, spec: &ValidHostSpec) -> Observed {
        if self.stale {
            if let Err(e) = self.refresh(spec) {
                tracing::warn!(error = %crate::dataplane::error_line(&e), "host not read");
            }
        }
        self.refresh_dirty(spec);
        let uplink = self.uplink(spec);
        if !self.table.known() {
            if let Err(e) = self.table.read(&mut self.nft) {
                tracing::warn!(error = %crate::dataplane::error_line(&e), "host table not read");
            }
        }
        let base_key = Key::Base.to_string();
        match self.table.take_changed() {
            None => {
                self.reobserve_all = true;
                self.table_seen = None;
            }
            Some(keys) => {
                for key in keys {
                    if key == base_key {
                        self.table_seen = None;
                    } else if let Some(Key::Slot(s)) = Key::parse(&key) {
                        self.reobserve.insert(s);
                    } else {
                        // A rule that is nobody's.
                        self.table_seen = None;
                    }
                }
            }
        }
        let all = std::mem::take(&mut self.reobserve_all);
        let again = std::mem::take(&mut self.reobserve);
        self.seen.retain(|s, _| spec.sandbox(*s).is_some());
        for sandbox in &spec.sandboxes {
            let s = sandbox.slot;
            if !all && !again.contains(&s) && self.seen.contains_key(&s) {
                continue;
            }
            let o = self.objects(sandbox);
            let network = match self.states.get(&s) {
                Some(state) => plan::problems(&o, state),
                None => vec!["not read".into()],
            };
            let up = self
                .states
                .get(&s)
                .and_then(|st| st.host_link.as_ref())
                .is_some_and(|l| l.up);
            let key = Key::Slot(s);
            let (rules, present) = self.table.key_problems(&key, &o.host_rules);
            // A forward is in force when both its DNATs are (prerouting and output).
            let forwards: Vec<Forward> = sandbox
                .port_forwards
                .iter()
                .filter(|f| {
                    o.host_rules.iter().zip(&present).all(|(k, ok)| {
                        *ok || !matches!(&k.rule, tables::Rule::PortForward { protocol, host_port, .. }
                            if *protocol == f.protocol && *host_port == f.host_port)
                    })
                })
                .copied()
                .collect();
            self.seen.insert(
                s,
                SlotObserved {
                    guest_mac: o.guest_mac(),
                    addrs: o.addrs,
                    guest: sandbox.guest,
                    egress: sandbox.egress,
                    forwards,
                    up,
                    network,
                    rules,
                },
            );
        }
        let table = match (
            &self.table_seen,
            self.base_uplink.as_ref() == uplink.as_ref().ok(),
        ) {
            (Some(seen), true) => seen.clone(),
            _ => {
                let slots: BTreeSet<String> = spec
                    .sandboxes
                    .iter()
                    .map(|s| Key::Slot(s.slot).to_string())
                    .collect();
                let base = tables::host_base(uplink.as_ref().ok(), self.settings.veth_range);
                let seen = self.table.base_problems(&base, &slots);
                self.table_seen = Some(seen.clone());
                seen
            }
        };
        Observed {
            table,
            uplink: uplink.map(|u| u.to_string()),
            forwarding: self
                .forwarding()
                .and_then(sysctl::Forwarding::get)
                .unwrap_or(false),
            slots: self.seen.values().cloned().collect(),
        }
    }

    fn degraded(observed: &Observed) -> Vec<(Subsystem, String)> {
        observed.degraded()
    }

    fn before_any_spec(&mut self) -> Option<Result<Observed, Failure>> {
        None
    }

    fn rtnl_port(&self) -> u32 {
        self.rtnl.portid()
    }

    fn shutdown(&mut self) {}

    /// A change someone else made marks what it names to be read again: the slot whose
    /// link, address or route it is, or the uplink; what it cannot place, everything.
    fn woken(&mut self, hints: &Hints, resync: bool) {
        if resync || hints.overrun {
            self.stale = true;
            self.uplink = None;
            self.table.invalidate();
            self.table_suspect = true;
            return;
        }
        let own = self.rtnl.portid();
        for c in hints.network.iter().filter(|c| c.port != own) {
            match c.subject {
                Some(Subject::Link(i)) | Some(Subject::Address(i)) => {
                    if let Some(s) = self.index_slot.get(&i) {
                        self.dirty.insert(*s);
                    }
                    if self.uplink_index == Some(i) {
                        self.uplink = None;
                    }
                }
                Some(Subject::Route { dst, oif }) => {
                    if let Some(s) = oif.and_then(|i| self.index_slot.get(&i)) {
                        self.dirty.insert(*s);
                    }
                    match dst {
                        Some(IpNet::V4(d)) if d.prefix_len() == 0 => self.uplink = None,
                        Some(IpNet::V4(d)) if d.prefix_len() == 32 => {
                            let range = self.settings.host_range;
                            if range.contains(&d.addr()) {
                                let n = u32::from(d.addr()) - u32::from(range.network());
                                if let Ok(s) = Slot::new(n) {
                                    self.dirty.insert(s);
                                }
                            }
                        }
                        Some(_) => {}
                        None => self.uplink = None,
                    }
                }
                None => {
                    self.stale = true;
                    self.uplink = None;
                }
            }
        }
        if hints
            .firewall
            .iter()
            .any(|t| !crate::dataplane::events::own_transaction(t))
        {
            self.table.invalidate();
            self.table_suspect = true;
        }
    }
}
