//! Links (`RTM_*LINK`, `struct ifinfomsg`): read one or all, bring up, set the MTU, set
//! `promote_secondaries`, create one of a kind, delete.

use super::{Error, Rtnl, AF_INET, AF_UNSPEC};
use crate::dataplane::netlink::message::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::dataplane::netlink::{Datagram, Message};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;

const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INFO_KIND: u16 = 1;
/// `IFLA_INET_CONF` under `IFLA_AF_SPEC` > `AF_INET`.
const IFLA_INET_CONF: u16 = 1;
/// Index of `promote_secondaries` in the IPv4 devconf array (`linux/ip.h`).
const IPV4_DEVCONF_PROMOTE_SECONDARIES: u16 = 20;
const IFF_UP: u32 = 0x1;
const IFINFOMSG_LEN: usize = 16;
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
}

/// Starts a link message: `ifinfomsg` for link `index` (0: named by attribute), setting
/// the flags in `change` to `flags`.
fn message(
    d: &mut Datagram,
    ty: u16,
    flags: u16,
    seq: u32,
    index: u32,
    set: (u32, u32),
) -> &mut Datagram {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[0] = AF_UNSPEC;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&set.0.to_ne_bytes());
    h[12..16].copy_from_slice(&set.1.to_ne_bytes());
    d.message(ty, NLM_F_REQUEST | flags, seq).fixed(&h)
}

pub fn get_request(name: &str, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(&mut d, RTM_GETLINK, NLM_F_ACK, seq, 0, (0, 0)).attr_str(IFLA_IFNAME, name);
    d
}

pub fn dump_request(seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(&mut d, RTM_GETLINK, NLM_F_DUMP, seq, 0, (0, 0));
    d
}

pub fn up_request(index: u32, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(&mut d, RTM_NEWLINK, NLM_F_ACK, seq, index, (IFF_UP, IFF_UP));
    d
}

pub fn mtu_request(index: u32, mtu: u32, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(&mut d, RTM_NEWLINK, NLM_F_ACK, seq, index, (0, 0)).attr_u32(IFLA_MTU, mtu);
    d
}

/// The per-interface sysctl `promote_secondaries`, set over netlink: `IFLA_AF_SPEC` >
/// `AF_INET` > `IFLA_INET_CONF` > `IPV4_DEVCONF_PROMOTE_SECONDARIES`.
pub fn promote_secondaries_request(index: u32, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(&mut d, RTM_NEWLINK, NLM_F_ACK, seq, index, (0, 0));
    let spec = d.nest(IFLA_AF_SPEC);
    let inet = d.nest(u16::from(AF_INET));
    let conf = d.nest(IFLA_INET_CONF);
    d.attr_u32(IPV4_DEVCONF_PROMOTE_SECONDARIES, 1);
    d.end_nest(conf);
    d.end_nest(inet);
    d.end_nest(spec);
    d
}

pub fn create_request(name: &str, kind: &str, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(
        &mut d,
        RTM_NEWLINK,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        0,
        (0, 0),
    )
    .attr_str(IFLA_IFNAME, name);
    let info = d.nest(IFLA_LINKINFO);
    d.attr_str(IFLA_INFO_KIND, kind);
    d.end_nest(info);
    d
}

pub fn delete_request(index: u32, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(&mut d, RTM_DELLINK, NLM_F_ACK, seq, index, (0, 0));
    d
}

/// A link of a `RTM_NEWLINK` answer or notification.
pub fn parse(msg: &Message<'_>) -> Option<LinkInfo> {
    if msg.ty != RTM_NEWLINK {
        return None;
    }
    let h = msg.payload.get(..IFINFOMSG_LEN)?;
    let index = u32::from_ne_bytes(h[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(h[8..12].try_into().ok()?);
    let mut link = LinkInfo {
        index,
        name: String::new(),
        up: flags & IFF_UP != 0,
        mtu: 0,
        kind: None,
    };
    for a in msg.attrs(IFINFOMSG_LEN) {
        match a.ty {
            IFLA_IFNAME => link.name = a.str().to_owned(),
            IFLA_MTU => link.mtu = a.u32().unwrap_or(0),
            IFLA_LINKINFO => {
                link.kind = a.nested().get(IFLA_INFO_KIND).map(|k| k.str().to_owned());
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
        match self.socket.request(get_request(name, seq).bytes(), |m| {
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

    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        self.change(|seq| delete_request(index, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netlink::messages;

    /// A link as the kernel describes it: the request's layout is the answer's.
    fn answer(index: u32, flags: u32, name: &str, mtu: u32, kind: Option<&str>) -> Vec<u8> {
        let mut d = Datagram::new();
        let m = message(&mut d, RTM_NEWLINK, 0, 1, index, (flags, 0));
        m.attr_str(IFLA_IFNAME, name).attr_u32(IFLA_MTU, mtu);
        if let Some(kind) = kind {
            let info = m.nest(IFLA_LINKINFO);
            m.attr_str(IFLA_INFO_KIND, kind);
            m.end_nest(info);
        }
        d.bytes().to_vec()
    }

    #[test]
    fn links_parse_with_their_kind() {
        let bytes = answer(7, IFF_UP | 0x40, "wg0", 1420, Some("wireguard"));
        let link = parse(&messages(&bytes).next().unwrap()).unwrap();
        assert_eq!(
            link,
            LinkInfo {
                index: 7,
                name: "wg0".into(),
                up: true,
                mtu: 1420,
                kind: Some("wireguard".into())
            }
        );
        let bytes = answer(1, 0, "lo", 65536, None);
        let lo = parse(&messages(&bytes).next().unwrap()).unwrap();
        assert!(!lo.up);
        assert_eq!(lo.kind, None);
    }

    #[test]
    fn requests_name_the_link_and_what_changes() {
        let up = up_request(3, 9);
        let m = messages(up.bytes()).next().unwrap();
        assert_eq!((m.ty, m.seq), (RTM_NEWLINK, 9));
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&m.payload[4..16], &[3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        let create = create_request("wg0", "wireguard", 1);
        let m = messages(create.bytes()).next().unwrap();
        assert_eq!(
            m.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let info = m.attrs(IFINFOMSG_LEN).get(IFLA_LINKINFO).unwrap();
        assert_eq!(
            info.nested().get(IFLA_INFO_KIND).unwrap().str(),
            "wireguard"
        );
        let promote = promote_secondaries_request(3, 1);
        let m = messages(promote.bytes()).next().unwrap();
        let conf = m
            .attrs(IFINFOMSG_LEN)
            .get(IFLA_AF_SPEC)
            .and_then(|a| a.nested().get(u16::from(AF_INET)))
            .and_then(|a| a.nested().get(IFLA_INET_CONF))
            .and_then(|a| a.nested().get(IPV4_DEVCONF_PROMOTE_SECONDARIES))
            .unwrap();
        assert_eq!(conf.u32(), Some(1));
    }
}
