//! Addresses (`RTM_*ADDR`, neli's `Ifaddrmsg`): read every address, add one stamped with
//! [`RTPROT_WEFT`], delete one.

use ipnet::IpNet;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Ifa, IfaF, RtAddrFamily, RtScope, Rtm};
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder, Rtattr};
use neli::types::{Buffer, RtBuffer};

use super::consts::IFA_PROTO;
use super::{attr, family_of, ip_from, ip_octets, Error, Rtnl, RTPROT_WEFT};
use crate::dataplane::netlink::{self, Message};

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
    family: RtAddrFamily,
    prefix_len: u8,
    index: u32,
    attrs: Vec<Rtattr<Ifa, Buffer>>,
) -> Ifaddrmsg {
    message_with(family, prefix_len, IfaF::empty(), index, attrs)
}

fn message_with(
    family: RtAddrFamily,
    prefix_len: u8,
    flags: IfaF,
    index: u32,
    attrs: Vec<Rtattr<Ifa, Buffer>>,
) -> Ifaddrmsg {
    IfaddrmsgBuilder::default()
        .ifa_family(family)
        .ifa_prefixlen(prefix_len)
        .ifa_flags(flags)
        .ifa_scope(RtScope::Universe)
        .ifa_index(index)
        .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
        .build()
        .expect("every field is set")
}

pub fn dump_request(seq: u32) -> Vec<u8> {
    dump_request_on(0, seq)
}

/// A dump of link `index`'s IPv4 addresses (0: every link's, every family's). A socket with
/// strict dumps gets only those.
pub fn dump_request_on(index: u32, seq: u32) -> Vec<u8> {
    let family = if index == 0 {
        RtAddrFamily::Unspecified
    } else {
        RtAddrFamily::Inet
    };
    let msg = message(family, 0, index, vec![]);
    netlink::request(Rtm::Getaddr, NlmF::DUMP, seq, msg)
}

/// The attributes naming `addr`: `IFA_LOCAL` is the address itself, `IFA_ADDRESS` the same
/// on a link that is not point-to-point.
fn address(addr: IpNet) -> Vec<Rtattr<Ifa, Buffer>> {
    let octets = Buffer::from(ip_octets(addr.addr()));
    vec![attr(Ifa::Local, octets.clone()), attr(Ifa::Address, octets)]
}

/// An IPv6 address is added `nodad`: the control plane hands out unique addresses, and
/// duplicate address detection would keep it tentative (unusable as a source) for a second
/// or more after the apply reports it in place.
pub fn add_request(index: u32, addr: IpNet, seq: u32) -> Vec<u8> {
    let mut attrs = address(addr);
    attrs.push(attr(Ifa::UnrecognizedConst(IFA_PROTO), RTPROT_WEFT));
    let mut flags = IfaF::empty();
    match addr {
        // What `ip addr add ... brd +` sets; a /31 or /32 has no broadcast address.
        IpNet::V4(v4) if v4.prefix_len() < 31 => attrs.push(attr(
            Ifa::Broadcast,
            Buffer::from(&v4.broadcast().octets()[..]),
        )),
        IpNet::V4(_) => {}
        IpNet::V6(_) => flags = IfaF::NODAD,
    }
    let msg = message_with(
        family_of(addr.addr()),
        addr.prefix_len(),
        flags,
        index,
        attrs,
    );
    netlink::request(
        Rtm::Newaddr,
        NlmF::ACK | NlmF::CREATE | NlmF::EXCL,
        seq,
        msg,
    )
}

pub fn delete_request(index: u32, addr: IpNet, seq: u32) -> Vec<u8> {
    let msg = message(
        family_of(addr.addr()),
        addr.prefix_len(),
        index,
        address(addr),
    );
    netlink::request(Rtm::Deladdr, NlmF::ACK, seq, msg)
}

/// An address of a `RTM_NEWADDR` answer (or a `RTM_NEWADDR`/`RTM_DELADDR` notification).
pub fn parse(msg: &Message<'_>) -> Option<AddrInfo> {
    if msg.ty != u16::from(Rtm::Newaddr) && msg.ty != u16::from(Rtm::Deladdr) {
        return None;
    }
    let m: Ifaddrmsg = netlink::parse(msg.payload)?;
    let (mut local, mut address, mut protocol) = (None, None, 0);
    for a in m.rtattrs().iter() {
        let p = a.rta_payload().as_ref();
        match a.rta_type() {
            Ifa::Local => local = ip_from(p),
            Ifa::Address => address = ip_from(p),
            Ifa::UnrecognizedConst(IFA_PROTO) => protocol = p.first().copied().unwrap_or(0),
            _ => {}
        }
    }
    // IPv4 names the local address IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point
    // links); IPv6 sends only IFA_ADDRESS.
    let ip = local.or(address)?;
    Some(AddrInfo {
        index: *m.ifa_index(),
        addr: IpNet::new(ip, *m.ifa_prefixlen()).ok()?,
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

    /// The IPv4 addresses on link `index`, by a dump the kernel filters when the socket has
    /// strict dumps ([`Rtnl::open_strict`]).
    pub fn addresses_on(&mut self, index: u32) -> Result<Vec<AddrInfo>, Error> {
        let mut on = self.socket.dump(
            |seq| dump_request_on(index, seq),
            |m, out: &mut Vec<_>| out.extend(parse(m)),
        )?;
        on.retain(|a| a.index == index && a.addr.addr().is_ipv4());
        Ok(on)
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

    fn as_answer(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes[4..6].copy_from_slice(&u16::from(Rtm::Newaddr).to_ne_bytes());
        bytes
    }

    fn has_broadcast(bytes: &[u8]) -> Option<Vec<u8>> {
        let m: Ifaddrmsg = netlink::parse(messages(bytes).next().unwrap().payload).unwrap();
        m.rtattrs()
            .get_attr_handle()
            .get_attribute(Ifa::Broadcast)
            .map(|a| a.rta_payload().as_ref().to_vec())
    }

    #[test]
    fn an_added_address_reads_back_with_our_protocol_and_a_broadcast() {
        let net: IpNet = "198.51.100.7/24".parse().unwrap();
        // The kernel answers with the same layout.
        let bytes = as_answer(add_request(3, net, 5));
        let m = messages(&bytes).next().unwrap();
        assert_eq!(
            parse(&m),
            Some(AddrInfo {
                index: 3,
                addr: net,
                protocol: RTPROT_WEFT
            })
        );
        assert_eq!(has_broadcast(&bytes), Some(vec![198, 51, 100, 255]));
        // A /32 has none; IPv6 neither.
        for net in ["198.51.100.7/32", "2001:db8::1/64"] {
            assert_eq!(
                has_broadcast(&add_request(3, net.parse().unwrap(), 5)),
                None
            );
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
            let bytes = as_answer(add_request(index, addr, 1));
            let got = parse(&messages(&bytes).next().unwrap());
            proptest::prop_assert_eq!(got, Some(AddrInfo { index, addr, protocol: RTPROT_WEFT }));
        }
    }

    #[test]
    fn ipv6_answers_name_only_the_address() {
        let octets = "2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let msg = message(
            RtAddrFamily::Inet6,
            64,
            2,
            vec![attr(Ifa::Address, Buffer::from(&octets[..]))],
        );
        let bytes = netlink::request(Rtm::Newaddr, NlmF::empty(), 1, msg);
        let a = parse(&messages(&bytes).next().unwrap()).unwrap();
        assert_eq!(a.addr, "2001:db8::5/64".parse::<IpNet>().unwrap());
        assert_eq!(a.protocol, 0);
    }
}
