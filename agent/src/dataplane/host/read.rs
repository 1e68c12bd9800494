//! Reading what the kernel holds of the slots: the host side of every slot at once (one dump
//! each of the host namespace's links, addresses and routes), a sandbox's side through the
//! sockets kept open inside it, its tables compared with what they should hold.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read as _, Seek as _};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use ipnet::{IpNet, Ipv4Net};

use super::exprs::exprs;
use super::netns;
use super::plan::{LinkState, Ns, RouteState, SandboxState, TableState};
use super::slot::{SlotAddrs, SlotObjects, GUEST_LINK, SANDBOX_LINK};
use super::tables::{ChainDef, Key, SANDBOX_CHAINS, SANDBOX_TABLE};
use crate::dataplane::nftables::keyed::{self, Want};
use crate::dataplane::nftables::{self, Nft, TableRef};
use crate::dataplane::rtnl::{Family, LinkInfo, Rtnl, RTPROT_WEFT};

/// A namespace of `/run/netns` as read: its state and, mounted, its inode (the namespace's
/// own number: a namespace deleted and made again under the same name has another).
pub fn namespace(name: &str) -> (Ns, Option<u64>) {
    match std::fs::metadata(netns::path(name)) {
        Err(_) => (Ns::Absent, None),
        Ok(_) if !netns::is_mounted(name) => (Ns::Unmounted, None),
        Ok(meta) => (Ns::Mounted, Some(meta.ino())),
    }
}

/// The host namespace's links, IPv4 addresses and the agent's IPv4 routes.
#[derive(Debug, Default)]
pub struct HostSide {
    links: HashMap<String, LinkInfo>,
    addrs: HashMap<u32, Vec<Ipv4Net>>,
    /// The agent's routes (protocol 87), by destination.
    routes: HashMap<Ipv4Net, Via>,
}

/// Every IPv4 address of each link, from one dump.
fn addresses(
    rtnl: &mut Rtnl,
) -> Result<HashMap<u32, Vec<Ipv4Net>>, crate::dataplane::netlink::Error> {
    let mut by_link: HashMap<u32, Vec<Ipv4Net>> = HashMap::new();
    for a in rtnl.all_addresses()? {
        if let IpNet::V4(v4) = a.addr {
            by_link.entry(a.index).or_default().push(v4);
        }
    }
    Ok(by_link)
}

/// A route's gateway and outgoing link.
type Via = (Option<IpAddr>, Option<u32>);

/// The agent's IPv4 routes (protocol 87) of the main table, by destination.
fn our_routes(rtnl: &mut Rtnl) -> Result<HashMap<Ipv4Net, Via>, crate::dataplane::netlink::Error> {
    Ok(rtnl
        .routes(Family::V4)?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_WEFT)
        .filter_map(|r| match r.dst {
            IpNet::V4(dst) => Some((dst, (r.gateway, r.oif))),
            IpNet::V6(_) => None,
        })
        .collect())
}

impl HostSide {
    pub fn read(rtnl: &mut Rtnl) -> Result<HostSide, crate::dataplane::netlink::Error> {
        Ok(HostSide {
            links: rtnl
                .links()?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect(),
            addrs: addresses(rtnl)?,
            routes: our_routes(rtnl)?,
        })
    }

    /// A link by name, as the plan sees it.
    pub fn link(&self, name: &str) -> Option<LinkState> {
        let l = self.links.get(name)?;
        Some(link_state(l, self.addrs.get(&l.index)))
    }

    /// The names of the host namespace's links and their groups (for finding slots the
    /// spec does not name).
    pub fn link_names(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.links.values().map(|l| (l.name.as_str(), l.group))
    }

    /// The names of the host namespace's links and their indexes.
    pub fn link_indexes(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.links.values().map(|l| (l.name.as_str(), l.index))
    }

    /// The agent's route to slot `a`'s HostIp, as the plan sees it.
    pub fn host_route(&self, a: &SlotAddrs) -> Option<RouteState> {
        let (gateway, oif) = self.routes.get(&a.host_net())?;
        let on = self.links.get(&a.host_link).map(|l| l.index);
        Some(RouteState {
            gateway: match gateway {
                Some(IpAddr::V4(g)) => Some(*g),
                _ => None,
            },
            on_link: on.is_some() && *oif == on,
        })
    }
}

fn link_state(l: &LinkInfo, addrs: Option<&Vec<Ipv4Net>>) -> LinkState {
    let mut addrs = addrs.cloned().unwrap_or_default();
    addrs.sort_unstable();
    LinkState {
        up: l.up,
        addrs,
        kind: l.kind.clone(),
        group: l.group,
    }
}

/// The sockets kept open inside a sandbox namespace, and what says which namespace they are
/// in.
#[derive(Debug)]
pub struct SandboxSockets {
    pub rtnl: Rtnl,
    pub nft: Nft,
    /// `/proc/sys/net/ipv4/ip_forward`, opened inside: it reads and writes the sandbox's
    /// setting from any thread.
    pub forwarding: File,
    /// The namespace's inode when these were opened.
    pub ino: u64,
}

impl SandboxSockets {
    /// Opens them in the calling thread's namespace (a thread inside the sandbox).
    pub fn open_here(ino: u64) -> io::Result<SandboxSockets> {
        Ok(SandboxSockets {
            rtnl: Rtnl::open()?,
            nft: Nft::open()?,
            forwarding: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/proc/sys/net/ipv4/ip_forward")?,
            ino,
        })
    }

    pub fn forwarding(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 4];
        self.forwarding.rewind()?;
        let n = self.forwarding.read(&mut buf)?;
        Ok(buf[..n].first() == Some(&b'1'))
    }

    pub fn enable_forwarding(&mut self) -> io::Result<()> {
        use std::io::Write as _;
        self.forwarding.rewind()?;
        self.forwarding.write_all(b"1\n")
    }
}

/// The sandbox table's reference.
pub const SANDBOX_TABLE_REF: TableRef<'static> = TableRef {
    family: nftnl::ProtoFamily::Ipv4,
    name: SANDBOX_TABLE,
};

/// Whether a table's chains are `defs` (names, types, hooks, priorities, policy accept).
pub fn chains_are(chains: &[nftables::Chain], defs: &[ChainDef]) -> bool {
    chains.len() == defs.len()
        && defs.iter().all(|d| {
            chains.iter().any(|c| {
                c.name == d.name
                    && c.kind == d.kind
                    && c.hook == Some((d.hook.number(), d.priority))
                    && c.policy == Some(crate::dataplane::nftables::abi::NF_ACCEPT)
            })
        })
}

/// The sandbox's contents, through its sockets.
pub fn sandbox_side(
    s: &mut SandboxSockets,
    o: &SlotObjects,
) -> Result<SandboxState, crate::dataplane::netlink::Error> {
    let links = s.rtnl.links()?;
    let addrs = addresses(&mut s.rtnl)?;
    let state_of = |name: &str| {
        links
            .iter()
            .find(|l| l.name == name)
            .map(|l| link_state(l, addrs.get(&l.index)))
    };
    let eth0_index = links
        .iter()
        .find(|l| l.name == SANDBOX_LINK)
        .map(|l| l.index);
    let default = s
        .rtnl
        .routes(Family::V4)?
        .into_iter()
        .find(|r| r.protocol == RTPROT_WEFT && r.dst.prefix_len() == 0)
        .map(|r| RouteState {
            gateway: match r.gateway {
                Some(IpAddr::V4(g)) => Some(g),
                _ => None,
            },
            on_link: eth0_index.is_some() && r.oif == eth0_index,
        });
    Ok(SandboxState {
        lo_up: state_of("lo").is_some_and(|l| l.up),
        eth0: state_of(SANDBOX_LINK),
        guest_link: state_of(GUEST_LINK),
        // Its end in the guest namespace lives as long as that namespace: it is checked by
        // the namespace (a tap0 veth whose peer's namespace went is gone too).
        guest_peer: true,
        default_route: default,
        forwarding: s
            .forwarding()
            .map_err(crate::dataplane::netlink::Error::Receive)?,
        table: sandbox_table(&mut s.nft, o)?,
    })
}

/// Table `ip weft-sb` compared with the slot's NAT.
pub fn sandbox_table(
    nft: &mut Nft,
    o: &SlotObjects,
) -> Result<TableState, crate::dataplane::netlink::Error> {
    if nft.table(SANDBOX_TABLE_REF)?.is_none() {
        return Ok(TableState::Absent);
    }
    if !chains_are(&nft.chains(SANDBOX_TABLE_REF)?, &SANDBOX_CHAINS) {
        return Ok(TableState::Differs("its chains are not the agent's".into()));
    }
    let rules = nft.rules(SANDBOX_TABLE_REF)?;
    let wanted: Vec<(String, &'static str, Vec<_>)> = o
        .sandbox_table
        .rules()
        .into_iter()
        .map(|k| (k.key.to_string(), k.chain, exprs(&k.rule)))
        .collect();
    let want: Vec<Want<'_>> = wanted
        .iter()
        .map(|(key, chain, e)| Want {
            chain,
            key,
            exprs: e,
        })
        .collect();
    let plan = keyed::plan(&want, &rules, |_| true);
    Ok(if plan.is_empty() {
        TableState::Same
    } else {
        TableState::Differs(format!(
            "{} rule(s) missing or changed, {} not the agent's",
            plan.add.len(),
            plan.delete.len()
        ))
    })
}

/// Whether a comment is one of the agent's keys (`weft base`, `weft slot N`).
pub fn is_ours(comment: Option<&str>) -> bool {
    comment.and_then(Key::parse).is_some()
}
