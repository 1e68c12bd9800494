//! Links (`RTM_*LINK`, neli's `Ifinfomsg`): read one or all, bring up, set the MTU, set
//! `promote_secondaries`, create one of a kind or a veth pair (its peer in any namespace),
//! delete.

use std::os::fd::{AsRawFd, BorrowedFd};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Iff, Ifla, IflaInfo, RtAddrFamily, Rtm};
use neli::rtnl::{Ifinfomsg, IfinfomsgBuilder, Rtattr};
use neli::types::{Buffer, RtBuffer};

use super::consts::{IFLA_INET_CONF, IPV4_DEVCONF_PROMOTE_SECONDARIES, VETH_INFO_PEER};
use super::{attr, nest, Error, Rtnl};
use crate::dataplane::netlink::{self, Message};

const ENODEV: i32 = libc::ENODEV;

/// A link as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub mtu: u32,
    /// `IFLA_INFO_KIND` (`veth`, `wireguard`, `tun` ...); `None` for links without one
    /// (loopback, physical NICs).
    pub kind: Option<String>,
    /// `IFLA_GROUP`, the link's group (0, the default group, for most).
    pub group: u32,
}

/// An `ifinfomsg` for link `index` (0: named by attribute) with `attrs`.
fn link(index: u32, attrs: Vec<Rtattr<Ifla, Buffer>>) -> IfinfomsgBuilder {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_index(index as i32)
        .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
}

fn build(b: IfinfomsgBuilder) -> Ifinfomsg {
    b.build().expect("the family is set")
}

pub fn get_request(name: &str, seq: u32) -> Vec<u8> {
    let msg = build(link(0, vec![attr(Ifla::Ifname, name)]));
    netlink::request(Rtm::Getlink, NlmF::ACK, seq, msg)
}

pub fn dump_request(seq: u32) -> Vec<u8> {
    netlink::request(Rtm::Getlink, NlmF::DUMP, seq, build(link(0, vec![])))
}

pub fn up_request(index: u32, seq: u32) -> Vec<u8> {
    netlink::request(
        Rtm::Newlink,
        NlmF::ACK,
        seq,
        build(link(index, vec![]).up()),
    )
}

pub fn mtu_request(index: u32, mtu: u32, seq: u32) -> Vec<u8> {
    let msg = build(link(index, vec![attr(Ifla::Mtu, mtu)]));
    netlink::request(Rtm::Newlink, NlmF::ACK, seq, msg)
}

/// The per-interface sysctl `promote_secondaries`, set over netlink: `IFLA_AF_SPEC` >
/// `AF_INET` > `IFLA_INET_CONF` > `IPV4_DEVCONF_PROMOTE_SECONDARIES`.
pub fn promote_secondaries_request(index: u32, seq: u32) -> Vec<u8> {
    let conf = nest(
        IFLA_INET_CONF,
        &[attr(IPV4_DEVCONF_PROMOTE_SECONDARIES, 1u32)],
    );
    let inet = nest(libc::AF_INET as u16, &[conf]);
    let msg = build(link(index, vec![nest(Ifla::AfSpec, &[inet])]));
    netlink::request(Rtm::Newlink, NlmF::ACK, seq, msg)
}

pub fn create_request(name: &str, kind: &str, seq: u32) -> Vec<u8> {
    let info = nest(Ifla::Linkinfo, &[attr(IflaInfo::Kind, kind)]);
    let msg = build(link(0, vec![attr(Ifla::Ifname, name), info]));
    netlink::request(
        Rtm::Newlink,
        NlmF::ACK | NlmF::CREATE | NlmF::EXCL,
        seq,
        msg,
    )
}

/// A veth pair: `name` here (in link group `group`, when given), `peer` in the namespace of
/// `peer_netns` (an open `/run/netns/NAME` or `/proc/PID/ns/net`), or here too.
pub fn veth_request(
    name: &str,
    group: Option<u32>,
    peer: &str,
    peer_netns: Option<BorrowedFd<'_>>,
    seq: u32,
) -> Vec<u8> {
    let mut peer_attrs = vec![attr(Ifla::Ifname, peer)];
    if let Some(fd) = peer_netns {
        peer_attrs.push(attr(Ifla::NetNsFd, fd.as_raw_fd() as u32));
    }
    let data = nest(
        IflaInfo::Data,
        &[attr(VETH_INFO_PEER, build(link(0, peer_attrs)))],
    );
    let info = nest(Ifla::Linkinfo, &[attr(IflaInfo::Kind, "veth"), data]);
    let mut attrs = vec![attr(Ifla::Ifname, name), info];
    if let Some(group) = group {
        attrs.push(attr(Ifla::Group, group));
    }
    let msg = build(link(0, attrs));
    netlink::request(
        Rtm::Newlink,
        NlmF::ACK | NlmF::CREATE | NlmF::EXCL,
        seq,
        msg,
    )
}

/// Moves link `index` to link group `group`.
pub fn group_request(index: u32, group: u32, seq: u32) -> Vec<u8> {
    let msg = build(link(index, vec![attr(Ifla::Group, group)]));
    netlink::request(Rtm::Newlink, NlmF::ACK, seq, msg)
}

/// Deletes every link of group `group` (`ip link delete group N`).
pub fn delete_group_request(group: u32, seq: u32) -> Vec<u8> {
    let msg = build(link(0, vec![attr(Ifla::Group, group)]));
    netlink::request(Rtm::Dellink, NlmF::ACK, seq, msg)
}

pub fn delete_request(index: u32, seq: u32) -> Vec<u8> {
    netlink::request(Rtm::Dellink, NlmF::ACK, seq, build(link(index, vec![])))
}

/// A link of a `RTM_NEWLINK` answer or notification.
pub fn parse(msg: &Message<'_>) -> Option<LinkInfo> {
    if msg.ty != u16::from(Rtm::Newlink) {
        return None;
    }
    let m: Ifinfomsg = netlink::parse(msg.payload)?;
    let mut link = LinkInfo {
        index: *m.ifi_index() as u32,
        name: String::new(),
        up: m.ifi_flags().contains(Iff::UP),
        mtu: 0,
        kind: None,
        group: 0,
    };
    for a in m.rtattrs().iter() {
        let p = a.rta_payload().as_ref();
        match a.rta_type() {
            Ifla::Ifname => link.name = netlink::c_str(p).to_owned(),
            Ifla::Group => link.group = super::u32_ne(p).unwrap_or(0),
            Ifla::Mtu => link.mtu = super::u32_ne(p).unwrap_or(0),
            Ifla::Linkinfo => {
                let info = a.get_attr_handle::<IflaInfo>().ok()?;
                link.kind = info
                    .get_attribute(IflaInfo::Kind)
                    .map(|k| netlink::c_str(k.rta_payload().as_ref()).to_owned());
            }
            _ => {}
        }
    }
    Some(link)
}

impl Rtnl {
    /// The link named `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkInfo>, Error> {
        let seq = self.socket.next_seq();
        let mut found = None;
        match self.socket.request(&get_request(name, seq), |m| {
            found = found.take().or_else(|| parse(m));
        }) {
            Ok(()) => Ok(found),
            Err(e) if e.errno() == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, Error> {
        self.socket
            .dump(dump_request, |m, out: &mut Vec<_>| out.extend(parse(m)))
    }

    /// Sets `IFF_UP` on the link.
    pub fn set_link_up(&mut self, index: u32) -> Result<(), Error> {
        self.change(|seq| up_request(index, seq))
    }

    pub fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.change(|seq| mtu_request(index, mtu, seq))
    }

    /// Sets the link's IPv4 `promote_secondaries`, so deleting its primary address promotes
    /// a secondary in the same subnet instead of deleting every secondary with it (and the
    /// routes through them).
    pub fn set_promote_secondaries(&mut self, index: u32) -> Result<(), Error> {
        self.change(|seq| promote_secondaries_request(index, seq))
    }

    /// Creates a link of `kind` (`"wireguard"`). EEXIST when the name is taken, EOPNOTSUPP
    /// when the kernel has no such kind.
    pub fn create_link(&mut self, name: &str, kind: &str) -> Result<(), Error> {
        self.change(|seq| create_request(name, kind, seq))
    }

    /// Creates the veth pair `name` (here) and `peer` (in the namespace of `peer_netns`, or
    /// here when `None`). EEXIST when either name is taken.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<BorrowedFd<'_>>,
    ) -> Result<(), Error> {
        self.change(|seq| veth_request(name, None, peer, peer_netns, seq))
    }

    /// [`Self::create_veth`], `name` in link group `group` from the start: a mark of the
    /// link's owner made in the same request as the link (the kernel takes a group when it
    /// creates a link, an alias only later), so no link of the pair is ever without it.
    pub fn create_marked_veth(
        &mut self,
        name: &str,
        group: u32,
        peer: &str,
        peer_netns: Option<BorrowedFd<'_>>,
    ) -> Result<(), Error> {
        self.change(|seq| veth_request(name, Some(group), peer, peer_netns, seq))
    }

    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        self.change(|seq| delete_request(index, seq))
    }

    /// Moves link `index` to link group `group`.
    pub fn set_link_group(&mut self, index: u32, group: u32) -> Result<(), Error> {
        self.change(|seq| group_request(index, group, seq))
    }

    /// Deletes every link of group `group` at once. The kernel waits for its readers once
    /// (an RCU grace period, some 20 ms) for the whole group, where deleting the links one
    /// by one waits once each. ENODEV when the group has no link.
    pub fn delete_link_group(&mut self, group: u32) -> Result<(), Error> {
        self.change(|seq| delete_group_request(group, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netlink::messages;

    /// A link as the kernel describes it: the request's layout is the answer's.
    fn answer(index: u32, up: bool, name: &str, mtu: u32, kind: Option<&str>) -> Vec<u8> {
        let mut attrs = vec![attr(Ifla::Ifname, name), attr(Ifla::Mtu, mtu)];
        if let Some(kind) = kind {
            attrs.push(nest(Ifla::Linkinfo, &[attr(IflaInfo::Kind, kind)]));
        }
        let b = link(index, attrs);
        let b = if up { b.up() } else { b };
        netlink::request(Rtm::Newlink, NlmF::empty(), 1, build(b))
    }

    fn ifinfomsg(bytes: &[u8]) -> Ifinfomsg {
        netlink::parse(messages(bytes).next().unwrap().payload).unwrap()
    }

    #[test]
    fn links_parse_with_their_kind() {
        let bytes = answer(7, true, "wg0", 1420, Some("wireguard"));
        let link = parse(&messages(&bytes).next().unwrap()).unwrap();
        assert_eq!(
            link,
            LinkInfo {
                index: 7,
                name: "wg0".into(),
                up: true,
                mtu: 1420,
                kind: Some("wireguard".into()),
                group: 0,
            }
        );
        let bytes = answer(1, false, "lo", 65536, None);
        let lo = parse(&messages(&bytes).next().unwrap()).unwrap();
        assert!(!lo.up);
        assert_eq!(lo.kind, None);
    }

    #[test]
    fn requests_name_the_link_and_what_changes() {
        let up = up_request(3, 9);
        let m = messages(&up).next().unwrap();
        assert_eq!((m.ty, m.seq), (u16::from(Rtm::Newlink), 9));
        assert_eq!(m.flags, (NlmF::REQUEST | NlmF::ACK).bits());
        assert_eq!(&m.payload[4..16], &[3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        let create = create_request("wg0", "wireguard", 1);
        let m = messages(&create).next().unwrap();
        assert_eq!(
            m.flags,
            (NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL).bits()
        );
        let msg = ifinfomsg(&create);
        let info = msg.rtattrs().get_attr_handle();
        let kind = info
            .get_nested_attributes::<IflaInfo>(Ifla::Linkinfo)
            .unwrap();
        assert_eq!(
            kind.get_attr_payload_as_with_len::<String>(IflaInfo::Kind)
                .unwrap(),
            "wireguard"
        );
        let promote = ifinfomsg(&promote_secondaries_request(3, 1));
        let spec = promote.rtattrs().get_attr_handle();
        let inet = spec.get_nested_attributes::<u16>(Ifla::AfSpec).unwrap();
        let conf = inet
            .get_nested_attributes::<u16>(libc::AF_INET as u16)
            .unwrap();
        let devconf = conf.get_nested_attributes::<u16>(IFLA_INET_CONF).unwrap();
        assert_eq!(
            devconf
                .get_attr_payload_as::<u32>(IPV4_DEVCONF_PROMOTE_SECONDARIES)
                .unwrap(),
            1
        );
    }

    #[test]
    fn a_veth_request_carries_the_peer_and_its_namespace() {
        let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
        use std::os::fd::AsFd;
        let bytes = veth_request(
            "veth-a",
            Some(0x5745_4654),
            "veth-b",
            Some(netns.as_fd()),
            4,
        );
        let msg = ifinfomsg(&bytes);
        let top = msg.rtattrs().get_attr_handle();
        let info = top
            .get_nested_attributes::<IflaInfo>(Ifla::Linkinfo)
            .unwrap();
        let data = info.get_nested_attributes::<u16>(IflaInfo::Data).unwrap();
        let peer = data.get_attribute(VETH_INFO_PEER).unwrap();
        let peer: Ifinfomsg = netlink::parse(peer.rta_payload().as_ref()).unwrap();
        let attrs = peer.rtattrs().get_attr_handle();
        assert_eq!(
            attrs
                .get_attr_payload_as_with_len::<String>(Ifla::Ifname)
                .unwrap(),
            "veth-b"
        );
        assert_eq!(
            attrs.get_attr_payload_as::<u32>(Ifla::NetNsFd).unwrap(),
            netns.as_raw_fd() as u32
        );
        // The group is the local end's; it reads back as the link's.
        assert_eq!(
            top.get_attr_payload_as::<u32>(Ifla::Group).unwrap(),
            0x5745_4654
        );
    }

    /// Needs root: a veth pair with its peer created straight in another namespace.
    #[test]
    fn a_veth_peer_lands_in_the_namespace_named() {
        weft_testkit::require_root();
        let here = weft_testkit::Netns::new("vetha").unwrap();
        let there = weft_testkit::Netns::new("vethb").unwrap();
        let there_fd = std::fs::File::open(format!("/run/netns/{}", there.name())).unwrap();
        use std::os::fd::AsFd;
        here.enter(|| {
            let mut rtnl = Rtnl::open().unwrap();
            rtnl.create_marked_veth("pod0", 0x5745_4654, "host0", Some(there_fd.as_fd()))
                .unwrap();
            let pod0 = rtnl.link("pod0").unwrap().unwrap();
            assert_eq!(pod0.kind.as_deref(), Some("veth"));
            assert_eq!(pod0.group, 0x5745_4654);
            assert_eq!(rtnl.link("host0").unwrap(), None);
        });
        let out = there.run("ip", &["-j", "link", "show", "host0"]).unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"ifname\":\"host0\""));
    }
}
