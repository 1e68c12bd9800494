//! The agent's one rtnetlink socket: links, addresses and routes, over synchronous neli.
//!
//! Every request waits for its answer: a change is sent with `NLM_F_ACK`, so a refusal comes
//! back as an error message carrying the errno and is never silently lost; a dump is read to
//! its `NLMSG_DONE`. Replies are matched by sequence number, so leftovers of an aborted
//! exchange are skipped rather than mistaken for the next answer.
//!
//! The socket belongs to the network namespace of the thread that opened it (KERNEL-NOTES).

use std::fmt;
use std::io::{self, Cursor};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use neli::consts::nl::{NlmF, Nlmsg};
use neli::consts::rtnl::{
    Arphrd, Ifa, Iff, Ifla, IflaInfo, RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot,
};
use neli::consts::socket::NlFamily;
use neli::err::{BuilderError, DeError, SerError, SocketError};
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::rtnl::{
    Ifaddrmsg, IfaddrmsgBuilder, Ifinfomsg, IfinfomsgBuilder, Rtattr, RtattrBuilder, Rtmsg,
    RtmsgBuilder,
};
use neli::socket::synchronous::NlSocketHandle;
use neli::types::{Buffer, RtBuffer};
use neli::utils::Groups;
use neli::{FromBytesWithInput, Size, ToBytes};

/// The `rtm_protocol` (and `IFA_PROTO`) the agent stamps on every route and address it adds,
/// so it can tell its own objects from everyone else's and remove only those.
///
/// 0x57 (87, ASCII `W`) is unassigned: `/etc/iproute2/rt_protos` and `linux/rtnetlink.h`
/// name 0-4 (kernel), 8-18, 42, 99 and 186-192 (routing daemons); RTPROT_STATIC (4) and
/// below are where `ip route add` and the kernel put theirs. `ip route show proto 87` lists
/// exactly the agent's routes.
pub const RTPROT_WEFT: u8 = 0x57;

/// `IFA_PROTO` (Linux 6.1+): the protocol that added an address; neli has no constant.
const IFA_PROTO: u16 = 11;
/// `RTA_TABLE`: the 32-bit table id, present when it does not fit `rtm_table`.
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
/// `IFLA_INET_CONF` under `IFLA_AF_SPEC` > `AF_INET`.
const IFLA_INET_CONF: u16 = 1;
/// Index of `promote_secondaries` in the IPv4 devconf array (`linux/ip.h`).
const IPV4_DEVCONF_PROMOTE_SECONDARIES: u16 = 20;
const ENODEV: i32 = 19;
/// A dump interrupted by a concurrent change is retried this many times before the last
/// (possibly inconsistent) answer is returned.
const DUMP_RETRIES: usize = 5;

/// A failed rtnetlink exchange.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open rtnetlink socket")]
    Open(#[source] SocketError),
    #[error("build netlink message")]
    Build(#[source] BuilderError),
    #[error("encode netlink attribute")]
    Encode(#[source] SerError),
    #[error("send netlink request")]
    Send(#[source] SocketError),
    #[error("receive netlink reply")]
    Receive(#[source] SocketError),
    #[error("decode netlink reply")]
    Decode(#[source] DeError),
    /// The kernel answered the request with an error. Displayed as the errno's text
    /// (`File exists (os error 17)`) so callers can prefix what they were doing.
    #[error("{}", io::Error::from_raw_os_error(*errno))]
    Refused { errno: i32 },
}

impl Error {
    /// The errno behind the failure, when there is one (EEXIST, EOPNOTSUPP, ENODEV ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Refused { errno } => Some(*errno),
            Error::Open(e) | Error::Send(e) | Error::Receive(e) => match e {
                SocketError::Io(io) => io.raw_os_error(),
                _ => None,
            },
            Error::Build(_) | Error::Encode(_) | Error::Decode(_) => None,
        }
    }
}

impl<E: Into<BuilderError>> From<E> for Error {
    fn from(e: E) -> Self {
        Error::Build(e.into())
    }
}

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

/// One address on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    /// The local address with its prefix length.
    pub addr: IpNet,
    /// `IFA_PROTO`; 0 when whoever added it did not say (the kernel, `ip addr add`).
    pub protocol: u8,
}

/// Address family of a route dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One unicast route of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination prefix; `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    /// The metric (`RTA_PRIORITY`), 0 when absent.
    pub metric: u32,
}

/// A route the agent installs in the main table, always with [`RTPROT_WEFT`]: either via a
/// gateway (`default via 10.0.0.1 dev eth0`) or a connected prefix (`10.9.0.0/24 dev wg0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub metric: u32,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dst.prefix_len() == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev #{}", self.oif)?;
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// The NETLINK_ROUTE socket. Blocking; lives on the reconciler's thread.
pub struct Rtnl {
    socket: NlSocketHandle,
    seq: u32,
    changes: u64,
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnl")
            .field("pid", &self.socket.pid())
            .field("changes", &self.changes)
            .finish()
    }
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, Error> {
        let socket =
            NlSocketHandle::connect(NlFamily::Route, None, Groups::empty()).map_err(Error::Open)?;
        Ok(Rtnl {
            socket,
            seq: 0,
            changes: 0,
        })
    }

    /// The socket's netlink port: the kernel stamps it on the notifications our own requests
    /// cause, which tells them apart from everyone else's.
    pub fn portid(&self) -> u32 {
        self.socket.pid()
    }

    /// How many change requests (new/set/delete of links, addresses, routes) this socket has
    /// sent, whether or not the kernel accepted them. Reads do not count.
    pub fn changes_sent(&self) -> u64 {
        self.changes
    }

    /// The link named `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkInfo>, Error> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, name)?);
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .rtattrs(attrs)
            .build()?;
        match self.exchange(Rtm::Getlink, NlmF::ACK, msg) {
            Ok(replies) => match replies.first() {
                Some(buf) => Ok(Some(parse_link(&decode::<Ifinfomsg>(buf)?)?)),
                None => Ok(None),
            },
            Err(Error::Refused { errno: ENODEV }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, Error> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .build()?;
        self.dump(Rtm::Getlink, msg)?
            .iter()
            .map(|buf| parse_link(&decode::<Ifinfomsg>(buf)?))
            .collect()
    }

    /// Sets `IFF_UP` on the link.
    pub fn set_link_up(&mut self, index: u32) -> Result<(), Error> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .up()
            .build()?;
        self.change(Rtm::Newlink, NlmF::empty(), msg)
    }

    pub fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Mtu, mtu)?);
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .rtattrs(attrs)
            .build()?;
        self.change(Rtm::Newlink, NlmF::empty(), msg)
    }

    /// Sets the link's IPv4 `promote_secondaries`, so deleting its primary address promotes
    /// a secondary in the same subnet instead of deleting every secondary with it (and the
    /// routes through them). The per-interface sysctl, set over netlink: `IFLA_AF_SPEC` >
    /// `AF_INET` > `IFLA_INET_CONF` > `IPV4_DEVCONF_PROMOTE_SECONDARIES`.
    pub fn set_promote_secondaries(&mut self, index: u32) -> Result<(), Error> {
        let conf = nest(
            IFLA_INET_CONF,
            &attr(IPV4_DEVCONF_PROMOTE_SECONDARIES, 1u32)?,
        )?;
        let inet = nest(libc::AF_INET as u16, &conf)?;
        let af_spec = RtattrBuilder::default()
            .rta_type(Ifla::AfSpec)
            .rta_payload(Buffer::new())
            .build()?
            .nest(&inet)
            .map_err(Error::Encode)?;
        let mut attrs = RtBuffer::new();
        attrs.push(af_spec);
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .rtattrs(attrs)
            .build()?;
        self.change(Rtm::Newlink, NlmF::empty(), msg)
    }

    /// Creates a link of `kind` (`"wireguard"`). EEXIST when the name is taken, EOPNOTSUPP
    /// when the kernel has no such kind.
    pub fn create_link(&mut self, name: &str, kind: &str) -> Result<(), Error> {
        let linkinfo = RtattrBuilder::default()
            .rta_type(Ifla::Linkinfo)
            .rta_payload(Buffer::new())
            .build()?
            .nest(&attr(IflaInfo::Kind, kind)?)
            .map_err(Error::Encode)?;
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, name)?);
        attrs.push(linkinfo);
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_type(Arphrd::from(0))
            .rtattrs(attrs)
            .build()?;
        self.change(Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, msg)
    }

    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .build()?;
        self.change(Rtm::Dellink, NlmF::empty(), msg)
    }

    /// The addresses (IPv4 and IPv6) on link `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<AddrInfo>, Error> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|a| a.index == index)
            .collect())
    }

    /// Every address on every link of the namespace (to find an address held elsewhere).
    pub fn all_addresses(&mut self) -> Result<Vec<AddrInfo>, Error> {
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()?;
        let mut out = Vec::new();
        for buf in self.dump(Rtm::Getaddr, msg)? {
            if let Some(a) = parse_addr(&decode::<Ifaddrmsg>(&buf)?) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Adds `addr` to link `index`, stamped [`RTPROT_WEFT`]. EEXIST when it is already there
    /// (an existing address is never touched: connections on it survive).
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error> {
        let mut msg = addr_msg(index, addr)?;
        msg.attrs
            .push(attr(Ifa::UnrecognizedConst(IFA_PROTO), RTPROT_WEFT)?);
        if let IpNet::V4(v4) = addr {
            // What `ip addr add ... brd +` sets; a /31 or /32 has no broadcast address.
            if v4.prefix_len() < 31 {
                msg.attrs.push(attr(
                    Ifa::Broadcast,
                    Buffer::from(&v4.broadcast().octets()[..]),
                )?);
            }
        }
        self.change(Rtm::Newaddr, NlmF::CREATE | NlmF::EXCL, msg.build()?)
    }

    /// Removes `addr` (address and prefix length) from link `index`.
    pub fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error> {
        let msg = addr_msg(index, addr)?;
        self.change(Rtm::Deladdr, NlmF::empty(), msg.build()?)
    }

    /// The unicast routes of the main table.
    pub fn routes(&mut self, family: Family) -> Result<Vec<RouteInfo>, Error> {
        let msg = RtmsgBuilder::default()
            .rtm_family(match family {
                Family::V4 => RtAddrFamily::Inet,
                Family::V6 => RtAddrFamily::Inet6,
            })
            .rtm_dst_len(0)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Unspec)
            .rtm_protocol(Rtprot::Unspec)
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Unspec)
            .build()?;
        let mut out = Vec::new();
        for buf in self.dump(Rtm::Getroute, msg)? {
            if let Some(r) = parse_route(&decode::<Rtmsg>(&buf)?, family) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Installs `route` with `NLM_F_REPLACE`: the route of the same destination and metric in
    /// the main table, whoever added it, becomes this one (or it is created).
    pub fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        let scope = if route.gateway.is_some() {
            RtScope::Universe
        } else {
            RtScope::Link
        };
        let msg = route_msg(
            route,
            Rtprot::UnrecognizedConst(RTPROT_WEFT),
            scope,
            Rtn::Unicast,
        )?;
        self.change(Rtm::Newroute, NlmF::CREATE | NlmF::REPLACE, msg)
    }

    /// Deletes `route`, but only if it carries [`RTPROT_WEFT`]: the kernel matches the
    /// protocol on delete, so someone else's identical route is never removed (ESRCH then).
    pub fn delete_route(&mut self, route: &Route) -> Result<(), Error> {
        // As iproute2 does for deletes: scope NOWHERE and type UNSPEC match any.
        let msg = route_msg(
            route,
            Rtprot::UnrecognizedConst(RTPROT_WEFT),
            RtScope::Nowhere,
            Rtn::Unspec,
        )?;
        self.change(Rtm::Delroute, NlmF::empty(), msg)
    }

    /// A change request: counted, acknowledged.
    fn change<P>(&mut self, ty: Rtm, flags: NlmF, payload: P) -> Result<(), Error>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        self.changes += 1;
        self.exchange(ty, flags | NlmF::ACK, payload).map(drop)
    }

    /// A dump, retried while the kernel flags it as interrupted by a concurrent change.
    fn dump<P>(&mut self, ty: Rtm, payload: P) -> Result<Vec<Buffer>, Error>
    where
        P: Size + ToBytes + fmt::Debug + Clone,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (replies, interrupted) = self.exchange_raw(ty, NlmF::DUMP, payload.clone())?;
            if !interrupted || attempt >= DUMP_RETRIES {
                return Ok(replies);
            }
        }
    }

    fn exchange<P>(&mut self, ty: Rtm, flags: NlmF, payload: P) -> Result<Vec<Buffer>, Error>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        self.exchange_raw(ty, flags, payload).map(|(r, _)| r)
    }

    /// Sends one request and collects the payloads of its replies until the ACK, the error or
    /// `NLMSG_DONE` that ends it. Returns whether a dump was flagged `NLM_F_DUMP_INTR`.
    fn exchange_raw<P>(
        &mut self,
        ty: Rtm,
        flags: NlmF,
        payload: P,
    ) -> Result<(Vec<Buffer>, bool), Error>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg: Nlmsghdr<Rtm, P> = NlmsghdrBuilder::default()
            .nl_type(ty)
            .nl_flags(flags | NlmF::REQUEST)
            .nl_seq(seq)
            .nl_pid(0)
            .nl_payload(NlPayload::Payload(payload))
            .build()?;
        self.socket.send(&msg).map_err(Error::Send)?;

        let pid = self.socket.pid();
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let (iter, _) = self.socket.recv::<u16, Buffer>().map_err(Error::Receive)?;
            for reply in iter {
                let reply = reply.map_err(Error::Receive)?;
                // Leftovers of an earlier exchange that ended in an error: not ours.
                if *reply.nl_seq() != seq || *reply.nl_pid() != pid {
                    continue;
                }
                interrupted |= reply.nl_flags().contains(NlmF::DUMP_INTR);
                match reply.nl_payload() {
                    NlPayload::Ack(_) => return Ok((replies, interrupted)),
                    NlPayload::Err(e) => return Err(Error::Refused { errno: -*e.error() }),
                    NlPayload::DumpExtAck(e) if *e.error() != 0 => {
                        return Err(Error::Refused { errno: -*e.error() })
                    }
                    NlPayload::DumpExtAck(_) | NlPayload::Empty => {
                        return Ok((replies, interrupted))
                    }
                    NlPayload::Payload(_) if *reply.nl_type() == u16::from(Nlmsg::Done) => {
                        return Ok((replies, interrupted))
                    }
                    NlPayload::Payload(p) => replies.push(p.clone()),
                }
            }
        }
    }
}

/// An address message under construction: the fixed header plus its attributes.
struct AddrMsg {
    family: RtAddrFamily,
    prefix_len: u8,
    index: u32,
    attrs: RtBuffer<Ifa, Buffer>,
}

impl AddrMsg {
    fn build(self) -> Result<Ifaddrmsg, Error> {
        Ok(IfaddrmsgBuilder::default()
            .ifa_family(self.family)
            .ifa_prefixlen(self.prefix_len)
            .ifa_scope(RtScope::Universe)
            .ifa_index(self.index)
            .rtattrs(self.attrs)
            .build()?)
    }
}

fn addr_msg(index: u32, addr: IpNet) -> Result<AddrMsg, Error> {
    let octets = ip_octets(addr.addr());
    let mut attrs = RtBuffer::new();
    // IFA_LOCAL is the address itself; IFA_ADDRESS the same on a non point-to-point link.
    attrs.push(attr(Ifa::Local, Buffer::from(&octets[..]))?);
    attrs.push(attr(Ifa::Address, Buffer::from(&octets[..]))?);
    Ok(AddrMsg {
        family: family_of(addr.addr()),
        prefix_len: addr.prefix_len(),
        index,
        attrs,
    })
}

fn route_msg(route: &Route, protocol: Rtprot, scope: RtScope, ty: Rtn) -> Result<Rtmsg, Error> {
    let mut attrs = RtBuffer::new();
    if route.dst.prefix_len() > 0 {
        attrs.push(attr(
            Rta::Dst,
            Buffer::from(&ip_octets(route.dst.network())[..]),
        )?);
    }
    if let Some(gw) = route.gateway {
        attrs.push(attr(Rta::Gateway, Buffer::from(&ip_octets(gw)[..]))?);
    }
    attrs.push(attr(Rta::Oif, route.oif)?);
    attrs.push(attr(Rta::Priority, route.metric)?);
    Ok(RtmsgBuilder::default()
        .rtm_family(family_of(route.dst.addr()))
        .rtm_dst_len(route.dst.prefix_len())
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(RtTable::Main)
        .rtm_protocol(protocol)
        .rtm_scope(scope)
        .rtm_type(ty)
        .rtattrs(attrs)
        .build()?)
}

fn attr<T, P>(ty: T, payload: P) -> Result<Rtattr<T, Buffer>, Error>
where
    T: neli::consts::rtnl::RtaType,
    P: Size + ToBytes,
{
    Ok(RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(payload)
        .build()?)
}

/// An attribute of type `ty` holding one nested attribute.
fn nest<P: ToBytes>(ty: u16, inner: &Rtattr<u16, P>) -> Result<Rtattr<u16, Buffer>, Error> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(Buffer::new())
        .build()?
        .nest(inner)
        .map_err(Error::Encode)
}

fn decode<P>(buf: &Buffer) -> Result<P, Error>
where
    P: FromBytesWithInput<Input = usize>,
{
    P::from_bytes_with_input(&mut Cursor::new(buf.as_ref()), buf.len()).map_err(Error::Decode)
}

fn parse_link(msg: &Ifinfomsg) -> Result<LinkInfo, Error> {
    let mut name = String::new();
    let mut mtu = 0;
    let mut kind = None;
    for a in msg.rtattrs().iter() {
        let p = a.rta_payload().as_ref();
        match a.rta_type() {
            Ifla::Ifname => name = c_string(p),
            Ifla::Mtu => mtu = u32_ne(p).unwrap_or(0),
            Ifla::Linkinfo => {
                let nested = a.get_attr_handle::<IflaInfo>().map_err(Error::Decode)?;
                if let Some(k) = nested.get_attribute(IflaInfo::Kind) {
                    kind = Some(c_string(k.rta_payload().as_ref()));
                }
            }
            _ => {}
        }
    }
    Ok(LinkInfo {
        index: *msg.ifi_index() as u32,
        name,
        up: msg.ifi_flags().contains(Iff::UP),
        mtu,
        kind,
    })
}

fn parse_addr(msg: &Ifaddrmsg) -> Option<AddrInfo> {
    let mut local = None;
    let mut address = None;
    let mut protocol = 0;
    for a in msg.rtattrs().iter() {
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
        index: *msg.ifa_index(),
        addr: IpNet::new(ip, *msg.ifa_prefixlen()).ok()?,
        protocol,
    })
}

fn parse_route(msg: &Rtmsg, family: Family) -> Option<RouteInfo> {
    if *msg.rtm_type() != Rtn::Unicast {
        return None;
    }
    let mut table = u32::from(u8::from(*msg.rtm_table()));
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for a in msg.rtattrs().iter() {
        let p = a.rta_payload().as_ref();
        match a.rta_type() {
            Rta::Dst => dst = ip_from(p),
            Rta::Gateway => gateway = ip_from(p),
            Rta::Oif => oif = u32_ne(p),
            Rta::Priority => metric = u32_ne(p).unwrap_or(0),
            Rta::UnrecognizedConst(RTA_TABLE) => table = u32_ne(p).unwrap_or(table),
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    let unspecified = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Some(RouteInfo {
        dst: IpNet::new(dst.unwrap_or(unspecified), *msg.rtm_dst_len()).ok()?,
        gateway,
        oif,
        protocol: u8::from(*msg.rtm_protocol()),
        metric,
    })
}

fn family_of(ip: IpAddr) -> RtAddrFamily {
    match ip {
        IpAddr::V4(_) => RtAddrFamily::Inet,
        IpAddr::V6(_) => RtAddrFamily::Inet6,
    }
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(b))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::from(b))
    } else {
        None
    }
}

fn u32_ne(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// A kernel string attribute: NUL-terminated.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_displays_errno_text_and_exposes_it() {
        let e = Error::Refused { errno: 17 };
        assert_eq!(e.errno(), Some(17));
        assert_eq!(e.to_string(), "File exists (os error 17)");
    }

    #[test]
    fn route_message_carries_weft_protocol_gateway_and_main_table() {
        let route = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            oif: 7,
            metric: 0,
        };
        let msg = route_msg(
            &route,
            Rtprot::UnrecognizedConst(RTPROT_WEFT),
            RtScope::Universe,
            Rtn::Unicast,
        )
        .unwrap();
        assert_eq!(u8::from(*msg.rtm_protocol()), RTPROT_WEFT);
        assert_eq!(*msg.rtm_table(), RtTable::Main);
        assert_eq!(*msg.rtm_dst_len(), 0);
        let parsed = parse_route(&msg, Family::V4).unwrap();
        assert_eq!(parsed.gateway, route.gateway);
        assert_eq!(parsed.oif, Some(7));
        assert_eq!(parsed.dst, route.dst);
        assert_eq!(parsed.protocol, RTPROT_WEFT);
    }

    #[test]
    fn address_message_round_trips() {
        let net: IpNet = "198.51.100.7/24".parse().unwrap();
        let msg = addr_msg(3, net).unwrap().build().unwrap();
        let parsed = parse_addr(&msg).unwrap();
        assert_eq!(parsed.addr, net);
        assert_eq!(parsed.index, 3);
    }

    #[test]
    fn the_socket_can_move_to_the_reconciler_thread() {
        fn send<T: Send>() {}
        send::<Rtnl>();
        fn sync<T: Sync>() {}
        send::<Error>();
        sync::<Error>();
    }

    #[test]
    fn c_strings_stop_at_nul() {
        assert_eq!(c_string(b"eth0\0"), "eth0");
        assert_eq!(c_string(b"eth0"), "eth0");
    }
}
