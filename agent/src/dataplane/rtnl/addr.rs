//! Addresses (`RTM_*ADDR`, `struct ifaddrmsg`): read every address, add one stamped with
//! [`RTPROT_WEFT`], delete one.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{family_of, ip_from, ip_octets, Error, Rtnl, AF_UNSPEC, RTPROT_WEFT};
use crate::dataplane::netlink::message::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::dataplane::netlink::{Datagram, Message};

pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
/// The protocol that added an address (Linux 6.1+).
const IFA_PROTO: u16 = 11;
const IFADDRMSG_LEN: usize = 8;

/// One address on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    /// The local address with its prefix length.
    pub addr: IpNet,
    /// `IFA_PROTO`; 0 when whoever added it did not say (the kernel, `ip addr add`).
    pub protocol: u8,
}

fn message(
    d: &mut Datagram,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    prefix_len: u8,
    index: u32,
) -> &mut Datagram {
    let m = d.message(ty, NLM_F_REQUEST | flags, seq);
    let mut h = [0u8; IFADDRMSG_LEN];
    h[0] = family;
    h[1] = prefix_len;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    m.fixed(&h);
    m
}

pub fn dump_request(seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(&mut d, RTM_GETADDR, NLM_F_DUMP, seq, AF_UNSPEC, 0, 0);
    d
}

/// The address message for `addr` on link `index`: `IFA_LOCAL` is the address itself,
/// `IFA_ADDRESS` the same on a link that is not point-to-point.
fn address(
    d: &mut Datagram,
    ty: u16,
    flags: u16,
    seq: u32,
    index: u32,
    addr: IpNet,
) -> &mut Datagram {
    let octets = ip_octets(addr.addr());
    let m = message(
        d,
        ty,
        flags,
        seq,
        family_of(addr.addr()),
        addr.prefix_len(),
        index,
    );
    m.attr(IFA_LOCAL, &octets).attr(IFA_ADDRESS, &octets);
    m
}

pub fn add_request(index: u32, addr: IpNet, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    let m = address(
        &mut d,
        RTM_NEWADDR,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        index,
        addr,
    );
    m.attr_u8(IFA_PROTO, RTPROT_WEFT);
    if let IpNet::V4(v4) = addr {
        // What `ip addr add ... brd +` sets; a /31 or /32 has no broadcast address.
        if v4.prefix_len() < 31 {
            m.attr(IFA_BROADCAST, &v4.broadcast().octets());
        }
    }
    d
}

pub fn delete_request(index: u32, addr: IpNet, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    address(&mut d, RTM_DELADDR, NLM_F_ACK, seq, index, addr);
    d
}

/// An address of a `RTM_NEWADDR` answer (or a `RTM_NEWADDR`/`RTM_DELADDR` notification).
pub fn parse(msg: &Message<'_>) -> Option<AddrInfo> {
    if msg.ty != RTM_NEWADDR && msg.ty != RTM_DELADDR {
        return None;
    }
    let h = msg.payload.get(..IFADDRMSG_LEN)?;
    let (mut local, mut address, mut protocol) = (None, None, 0);
    for a in msg.attrs(IFADDRMSG_LEN) {
        match a.ty {
            IFA_LOCAL => local = ip_from(a.payload),
            IFA_ADDRESS => address = ip_from(a.payload),
            IFA_PROTO => protocol = a.u8().unwrap_or(0),
            _ => {}
        }
    }
    // IPv4 names the local address IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point
    // links); IPv6 sends only IFA_ADDRESS.
    let ip: IpAddr = local.or(address)?;
    Some(AddrInfo {
        index: u32::from_ne_bytes(h[4..8].try_into().ok()?),
        addr: IpNet::new(ip, h[1]).ok()?,
        protocol,
    })
}

impl Rtnl {
    /// The addresses (IPv4 and IPv6) on link `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<AddrInfo>, Error> {
        let mut all = self.all_addresses()?;
        all.retain(|a| a.index == index);
        Ok(all)
    }

    /// Every address on every link of the namespace (to find an address held elsewhere).
    pub fn all_addresses(&mut self) -> Result<Vec<AddrInfo>, Error> {
        self.socket
            .dump(dump_request, |m, out: &mut Vec<_>| out.extend(parse(m)))
    }

    /// Adds `addr` to link `index`, stamped [`RTPROT_WEFT`]. EEXIST when it is already there
    /// (an existing address is never touched: connections on it survive).
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error> {
        self.change(|seq| add_request(index, addr, seq))
    }

    /// Removes `addr` (address and prefix length) from link `index`.
    pub fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error> {
        self.change(|seq| delete_request(index, addr, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netlink::messages;

    #[test]
    fn an_added_address_reads_back_with_our_protocol_and_a_broadcast() {
        let net: IpNet = "198.51.100.7/24".parse().unwrap();
        let d = add_request(3, net, 5);
        let mut bytes = d.bytes().to_vec();
        // The kernel answers with the same layout.
        bytes[4..6].copy_from_slice(&RTM_NEWADDR.to_ne_bytes());
        let m = messages(&bytes).next().unwrap();
        assert_eq!(
            parse(&m),
            Some(AddrInfo {
                index: 3,
                addr: net,
                protocol: RTPROT_WEFT
            })
        );
        let brd = m.attrs(IFADDRMSG_LEN).get(IFA_BROADCAST).unwrap();
        assert_eq!(brd.payload, &[198, 51, 100, 255]);
        // A /32 has none; IPv6 neither.
        for net in ["198.51.100.7/32", "2001:db8::1/64"] {
            let d = add_request(3, net.parse().unwrap(), 5);
            let m = messages(d.bytes()).next().unwrap();
            assert!(m.attrs(IFADDRMSG_LEN).get(IFA_BROADCAST).is_none());
        }
    }

    proptest::proptest! {
        /// Any address on any link: the request, read as the answer it becomes, gives it back.
        #[test]
        fn any_address_reads_back(index in 1u32.., v6 in proptest::prelude::any::<bool>(),
                                  bits in proptest::prelude::any::<u128>(), len in 0u8..=128) {
            let addr = if v6 {
                IpNet::new(std::net::Ipv6Addr::from(bits).into(), len).unwrap()
            } else {
                IpNet::new(std::net::Ipv4Addr::from(bits as u32).into(), len % 33).unwrap()
            };
            let mut bytes = add_request(index, addr, 1).bytes().to_vec();
            bytes[4..6].copy_from_slice(&RTM_NEWADDR.to_ne_bytes());
            let got = parse(&messages(&bytes).next().unwrap());
            proptest::prop_assert_eq!(got, Some(AddrInfo { index, addr, protocol: RTPROT_WEFT }));
        }
    }

    #[test]
    fn ipv6_answers_name_only_the_address() {
        let mut d = Datagram::new();
        message(&mut d, RTM_NEWADDR, 0, 1, libc::AF_INET6 as u8, 64, 2).attr(
            IFA_ADDRESS,
            &"2001:db8::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let m = messages(d.bytes()).next().unwrap();
        let a = parse(&m).unwrap();
        assert_eq!(a.addr, "2001:db8::5/64".parse::<IpNet>().unwrap());
        assert_eq!(a.protocol, 0);
    }
}
