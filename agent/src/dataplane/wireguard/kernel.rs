//! Kernel WireGuard over generic netlink: the `wireguard` family's `WG_CMD_SET_DEVICE` and
//! `WG_CMD_GET_DEVICE` (include/uapi/linux/wireguard.h), written and read with neli's
//! `Genlmsghdr` and `Nlattr`, the attributes typed by the enums below.
//!
//! The messages are rendered and parsed by pure functions, so their layout and the chunking
//! of thousands of peers are unit-tested without root. No key is ever handed to neli, whose
//! buffers are freed unwiped: a message is laid out with a random placeholder where each
//! private or preshared key goes, and the key is written over it only in the finished
//! message, which is wiped when dropped ([`Zeroizing`]). Answers are read into [`Wiped`]
//! payloads, and the socket's receive buffer, which held the device's keys, is wiped after
//! a read.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::IpNet;
use neli::consts::genl::{Cmd, NlAttrType};
use neli::consts::nl::NlmF;
use neli::genl::Nlattr;
use neli::neli_enum;
use neli::types::{Buffer, GenlBuffer};
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::validate::Peer;
use zeroize::Zeroizing;

use super::plan::{DevicePlan, ObservedDevice, ObservedPeer};
use crate::dataplane::netlink::genl::{self, attr, Genl, GENL_HDRLEN};
use crate::dataplane::netlink::{self, Message, Wiped};

const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;

/// `enum wg_cmd`.
#[neli_enum(serialized_type = "u8")]
pub enum WgCmd {
    GetDevice = 0,
    SetDevice = 1,
}
impl Cmd for WgCmd {}

/// `enum wgdevice_attribute`.
#[neli_enum(serialized_type = "u16")]
pub enum WgDeviceAttr {
    Unspec = 0,
    Ifindex = 1,
    Ifname = 2,
    PrivateKey = 3,
    PublicKey = 4,
    Flags = 5,
    ListenPort = 6,
    Fwmark = 7,
    Peers = 8,
}
impl NlAttrType for WgDeviceAttr {}

/// `enum wgpeer_attribute`.
#[neli_enum(serialized_type = "u16")]
pub enum WgPeerAttr {
    Unspec = 0,
    PublicKey = 1,
    PresharedKey = 2,
    Flags = 3,
    Endpoint = 4,
    PersistentKeepaliveInterval = 5,
    LastHandshakeTime = 6,
    RxBytes = 7,
    TxBytes = 8,
    Allowedips = 9,
    ProtocolVersion = 10,
}
impl NlAttrType for WgPeerAttr {}

/// `enum wgallowedip_attribute`.
#[neli_enum(serialized_type = "u16")]
pub enum WgAllowedIpAttr {
    Unspec = 0,
    Family = 1,
    Ipaddr = 2,
    CidrMask = 3,
}
impl NlAttrType for WgAllowedIpAttr {}

const WGPEER_F_REMOVE_ME: u32 = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// The largest message we render. The kernel takes far more (up to the socket's send
/// buffer), but 32 KiB keeps each message well inside any default buffer while a
/// 1,000-peer spec still needs only a handful of messages.
pub const MAX_MESSAGE: usize = 32 * 1024;

/// Netlink and generic netlink headers.
const HEADERS: usize = netlink::message::NLMSG_HDRLEN + GENL_HDRLEN;
/// Bytes an allowed IP costs inside a message: the nest plus family, address, mask.
const ALLOWED_IP_COST: usize = 4 + 8 + (4 + 16) + 8;
/// The fixed part of a peer: key, flags, preshared key, keepalive, endpoint, nests.
const PEER_HEADER: usize = 4 + (4 + 32) + 8 + (4 + 32) + 8 + (4 + 28) + 4 + 4;

fn sockaddr(endpoint: SocketAddr) -> Vec<u8> {
    // struct sockaddr_in / sockaddr_in6: family in host order, port and address in network
    // order.
    let mut out = Vec::with_capacity(28);
    match endpoint {
        SocketAddr::V4(a) => {
            out.extend_from_slice(&AF_INET.to_ne_bytes());
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            out.extend_from_slice(&AF_INET6.to_ne_bytes());
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.flowinfo().to_be_bytes());
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    out
}

/// An attribute of type `ty` holding `inner`, nested.
fn nest<T: NlAttrType, U: NlAttrType>(ty: T, inner: &[Nlattr<U, Buffer>]) -> Nlattr<T, Buffer> {
    inner.iter().fold(attr(ty, Buffer::new()), |outer, a| {
        outer
            .nest(a)
            .expect("serializing into a vector cannot fail")
    })
}

/// The keys of one message and the placeholders that stand for them until it is laid out:
/// a random prefix, then the key's number.
struct Secrets<'k> {
    prefix: [u8; 24],
    keys: Vec<&'k [u8; 32]>,
}

impl<'k> Secrets<'k> {
    fn new() -> Secrets<'k> {
        let mut prefix = [0; 24];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut prefix);
        Secrets {
            prefix,
            keys: Vec::new(),
        }
    }

    /// The placeholder to give neli for `key`.
    fn stand_in(&mut self, key: &'k [u8; 32]) -> Buffer {
        let mut p = [0; 32];
        p[..24].copy_from_slice(&self.prefix);
        p[24..].copy_from_slice(&(self.keys.len() as u64).to_ne_bytes());
        self.keys.push(key);
        Buffer::from(&p[..])
    }

    /// Writes each key over its placeholder in the laid-out message.
    fn fill(&mut self, message: &mut [u8]) {
        let at: Vec<usize> = memchr::memmem::find_iter(message, &self.prefix).collect();
        for at in at {
            let n = u64::from_ne_bytes(message[at + 24..at + 32].try_into().expect("8 bytes"));
            if let Some(key) = self.keys.get(n as usize) {
                message[at..at + 32].copy_from_slice(*key);
            }
        }
        self.keys.clear();
    }
}

/// `WG_CMD_SET_DEVICE` messages being written, each at most `max_len` bytes.
struct SetWriter<'a> {
    family: u16,
    ifname: &'a str,
    max_len: usize,
    seq: u32,
    out: Vec<Zeroizing<Vec<u8>>>,
    /// The device's attributes in the message being written, before its peers.
    device: Vec<Nlattr<WgDeviceAttr, Buffer>>,
    /// The peer sections of the message being written.
    peers: Vec<Nlattr<u16, Buffer>>,
    /// Whether the message carries a peer list (the first one only when there are peers).
    has_peers: bool,
    /// The message's length as it stands.
    len: usize,
    secrets: Secrets<'a>,
}

impl<'a> SetWriter<'a> {
    fn new(family: u16, ifname: &'a str, first_seq: u32, max_len: usize) -> SetWriter<'a> {
        let mut w = SetWriter {
            family,
            ifname,
            max_len,
            seq: first_seq,
            out: Vec::new(),
            device: Vec::new(),
            peers: Vec::new(),
            has_peers: false,
            len: 0,
            secrets: Secrets::new(),
        };
        w.start();
        w
    }

    /// Starts a message naming the device.
    fn start(&mut self) {
        self.device = vec![attr(WgDeviceAttr::Ifname, self.ifname)];
        self.len = HEADERS + self.device[0].padded_size();
    }

    fn add_device(&mut self, a: Nlattr<WgDeviceAttr, Buffer>) {
        self.len += a.padded_size();
        self.device.push(a);
    }

    fn open_peers(&mut self) {
        self.has_peers = true;
        self.len += 4;
    }

    fn add_peer(&mut self, peer: Nlattr<u16, Buffer>) {
        self.len += peer.padded_size();
        self.peers.push(peer);
    }

    /// Lays out the message, puts the keys in, and numbers it.
    fn seal(&mut self) {
        let mut attrs: GenlBuffer<WgDeviceAttr, Buffer> =
            std::mem::take(&mut self.device).into_iter().collect();
        let peers = std::mem::take(&mut self.peers);
        if std::mem::take(&mut self.has_peers) {
            attrs.push(nest(WgDeviceAttr::Peers, &peers));
        }
        let msg = genl::message(WgCmd::SetDevice, WG_GENL_VERSION, attrs);
        let mut bytes = Zeroizing::new(netlink::request(self.family, NlmF::ACK, self.seq, msg));
        debug_assert_eq!(bytes.len(), self.len);
        self.secrets.fill(&mut bytes);
        self.out.push(bytes);
        self.seq = self.seq.wrapping_add(1);
    }

    /// Ends the message and starts the next one, with its peer list open.
    fn next(&mut self) {
        self.seal();
        self.start();
        self.open_peers();
    }

    /// Makes room for `bytes` more, in a new message when this one would grow too long.
    fn fit(&mut self, bytes: usize) {
        if self.len + bytes > self.max_len {
            self.next();
        }
    }

    fn finish(mut self) -> Vec<Zeroizing<Vec<u8>>> {
        self.seal();
        self.out
    }
}

/// Renders `plan` as `WG_CMD_SET_DEVICE` messages of at most `max_len` bytes each, numbered
/// from `first_seq`. The first carries the device settings; a peer that does not fit goes to
/// the next message, and a peer whose allowed IPs do not fit continues in the next one (its
/// key again, without `REPLACE_ALLOWEDIPS`, so the kernel appends), as `wg` does.
///
/// A changed peer is updated in place (the kernel keeps its session), with its allowed IPs
/// replaced and its keepalive and preshared key stated (0 and zeros mean off).
pub fn render_set<'a>(
    family: u16,
    ifname: &'a str,
    plan: &'a DevicePlan<'a>,
    first_seq: u32,
    max_len: usize,
) -> Vec<Zeroizing<Vec<u8>>> {
    assert!(
        max_len >= 512,
        "a message must hold at least one peer header"
    );
    let mut w = SetWriter::new(family, ifname, first_seq, max_len);
    if let Some(key) = plan.private_key {
        let stand_in = w.secrets.stand_in(key.expose());
        w.add_device(attr(WgDeviceAttr::PrivateKey, stand_in));
    }
    if let Some(port) = plan.listen_port {
        w.add_device(attr(WgDeviceAttr::ListenPort, port));
    }
    w.open_peers();
    let mut index = 0u16;
    for key in &plan.removed {
        w.fit(PEER_HEADER);
        let removed = [
            attr(WgPeerAttr::PublicKey, Buffer::from(&key.as_bytes()[..])),
            attr(WgPeerAttr::Flags, WGPEER_F_REMOVE_ME),
        ];
        w.add_peer(nest(index, &removed));
        index = index.wrapping_add(1);
    }
    for peer in plan.added.iter().chain(&plan.changed) {
        w.fit(PEER_HEADER + ALLOWED_IP_COST);
        let mut head = peer_head(&mut w.secrets, peer);
        let mut ips = Vec::new();
        // The peer section as it stands: its nest, its head, the allowed IPs' nest and IPs.
        let mut section = 4 + size(&head) + 4;
        for (i, net) in peer.allowed_ips.iter().enumerate() {
            let ip = allowed_ip(i as u16, net);
            if w.len + section + ip.padded_size() > w.max_len && !ips.is_empty() {
                // Close this section; continue the same peer in the next message.
                head.push(nest(WgPeerAttr::Allowedips, &std::mem::take(&mut ips)));
                w.add_peer(nest(index, &head));
                w.next();
                head = vec![attr(
                    WgPeerAttr::PublicKey,
                    Buffer::from(&peer.public_key.as_bytes()[..]),
                )];
                section = 4 + size(&head) + 4;
            }
            section += ip.padded_size();
            ips.push(ip);
        }
        head.push(nest(WgPeerAttr::Allowedips, &ips));
        w.add_peer(nest(index, &head));
        index = index.wrapping_add(1);
    }
    w.finish()
}

fn size<T: NlAttrType>(attrs: &[Nlattr<T, Buffer>]) -> usize {
    attrs.iter().map(|a| a.padded_size()).sum()
}

use neli::Size as _;

/// A peer's key and settings. Zeros mean no preshared key; a real one goes in as a
/// placeholder.
fn peer_head<'k>(secrets: &mut Secrets<'k>, peer: &'k Peer) -> Vec<Nlattr<WgPeerAttr, Buffer>> {
    let psk = match &peer.preshared_key {
        Some(k) => secrets.stand_in(k.expose()),
        None => Buffer::from(&[0u8; 32][..]),
    };
    let mut head = vec![
        attr(
            WgPeerAttr::PublicKey,
            Buffer::from(&peer.public_key.as_bytes()[..]),
        ),
        attr(WgPeerAttr::Flags, WGPEER_F_REPLACE_ALLOWEDIPS),
        attr(WgPeerAttr::PresharedKey, psk),
        attr(
            WgPeerAttr::PersistentKeepaliveInterval,
            peer.persistent_keepalive.unwrap_or(0),
        ),
    ];
    if let Some(endpoint) = peer.endpoint {
        head.push(attr(WgPeerAttr::Endpoint, Buffer::from(sockaddr(endpoint))));
    }
    head
}

fn allowed_ip(index: u16, net: &IpNet) -> Nlattr<u16, Buffer> {
    let (family, octets) = match net.addr() {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    nest(
        index,
        &[
            attr(WgAllowedIpAttr::Family, family),
            attr(WgAllowedIpAttr::Ipaddr, Buffer::from(octets)),
            attr(WgAllowedIpAttr::CidrMask, net.prefix_len()),
        ],
    )
}

/// The `WG_CMD_GET_DEVICE` dump request for `ifname`.
pub fn render_get(family: u16, ifname: &str, seq: u32) -> Vec<u8> {
    let attrs = std::iter::once(attr(WgDeviceAttr::Ifname, ifname)).collect();
    let msg = genl::message(WgCmd::GetDevice, WG_GENL_VERSION, attrs);
    netlink::request(family, NlmF::DUMP, seq, msg)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated netlink message")]
    Truncated,
    #[error("bad {0} attribute")]
    BadAttribute(&'static str),
}

/// The attributes in `payload`, read by neli into wiped buffers.
fn attrs<T: NlAttrType>(payload: &[u8]) -> Result<GenlBuffer<T, Wiped>, ParseError> {
    netlink::parse(payload).ok_or(ParseError::Truncated)
}

fn payload<T>(a: &Nlattr<T, Wiped>) -> &[u8] {
    a.nla_payload().as_ref()
}

fn key32<T>(a: &Nlattr<T, Wiped>, what: &'static str) -> Result<[u8; 32], ParseError> {
    payload(a)
        .try_into()
        .map_err(|_| ParseError::BadAttribute(what))
}

fn fixed<const N: usize, T>(a: &Nlattr<T, Wiped>) -> Option<[u8; N]> {
    payload(a).get(..N)?.try_into().ok()
}

fn parse_endpoint(p: &[u8]) -> Result<Option<SocketAddr>, ParseError> {
    let bad = ParseError::BadAttribute("endpoint");
    if p.len() < 2 {
        return Err(bad);
    }
    let family = u16::from_ne_bytes([p[0], p[1]]);
    match family {
        AF_INET if p.len() >= 8 => {
            let port = u16::from_be_bytes([p[2], p[3]]);
            let ip: [u8; 4] = p[4..8].try_into().map_err(|_| ParseError::Truncated)?;
            Ok(Some(SocketAddr::V4(SocketAddrV4::new(ip.into(), port))))
        }
        AF_INET6 if p.len() >= 28 => {
            let port = u16::from_be_bytes([p[2], p[3]]);
            let flow = u32::from_be_bytes(p[4..8].try_into().map_err(|_| ParseError::Truncated)?);
            let ip: [u8; 16] = p[8..24].try_into().map_err(|_| ParseError::Truncated)?;
            let scope =
                u32::from_ne_bytes(p[24..28].try_into().map_err(|_| ParseError::Truncated)?);
            Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                ip.into(),
                port,
                flow,
                scope,
            ))))
        }
        0 => Ok(None),
        _ => Err(bad),
    }
}

fn parse_allowed_ip(a: &Nlattr<u16, Wiped>) -> Result<IpNet, ParseError> {
    let (mut family, mut addr, mut mask) = (None, None, None);
    for a in attrs::<WgAllowedIpAttr>(payload(a))?.iter() {
        let p = payload(a);
        match a.nla_type().nla_type() {
            WgAllowedIpAttr::Family if p.len() == 2 => {
                family = fixed::<2, _>(a).map(u16::from_ne_bytes)
            }
            WgAllowedIpAttr::Ipaddr => addr = Some(p.to_vec()),
            WgAllowedIpAttr::CidrMask if p.len() == 1 => mask = Some(p[0]),
            _ => {}
        }
    }
    let bad = || ParseError::BadAttribute("allowed ip");
    let (family, addr, mask) = (
        family.ok_or_else(bad)?,
        addr.ok_or_else(bad)?,
        mask.ok_or_else(bad)?,
    );
    let ip: IpAddr = match family {
        AF_INET => <[u8; 4]>::try_from(addr.as_slice())
            .map_err(|_| bad())?
            .into(),
        AF_INET6 => <[u8; 16]>::try_from(addr.as_slice())
            .map_err(|_| bad())?
            .into(),
        _ => return Err(bad()),
    };
    IpNet::new(ip, mask).map(|n| n.trunc()).map_err(|_| bad())
}

fn parse_peer(section: &Nlattr<u16, Wiped>) -> Result<ObservedPeer, ParseError> {
    let mut peer = ObservedPeer::new(PublicKey([0; 32]));
    let mut has_key = false;
    for a in attrs::<WgPeerAttr>(payload(section))?.iter() {
        let p = payload(a);
        match a.nla_type().nla_type() {
            WgPeerAttr::PublicKey => {
                peer.public_key = PublicKey(key32(a, "peer public key")?);
                has_key = true;
            }
            WgPeerAttr::PresharedKey => {
                let k = Zeroizing::new(key32(a, "preshared key")?);
                peer.preshared_key = (*k != [0; 32]).then(|| SecretKey::from_bytes(*k));
            }
            WgPeerAttr::Endpoint => peer.endpoint = parse_endpoint(p)?,
            WgPeerAttr::PersistentKeepaliveInterval if p.len() == 2 => {
                peer.persistent_keepalive = fixed::<2, _>(a).map_or(0, u16::from_ne_bytes)
            }
            WgPeerAttr::LastHandshakeTime if p.len() >= 8 => {
                // struct __kernel_timespec { s64 tv_sec; s64 tv_nsec; }
                peer.last_handshake_unix = fixed::<8, _>(a).map_or(0, u64::from_ne_bytes);
            }
            WgPeerAttr::RxBytes => {
                peer.rx_bytes = <[u8; 8]>::try_from(p)
                    .map(u64::from_ne_bytes)
                    .map_err(|_| ParseError::BadAttribute("rx bytes"))?
            }
            WgPeerAttr::TxBytes => {
                peer.tx_bytes = <[u8; 8]>::try_from(p)
                    .map(u64::from_ne_bytes)
                    .map_err(|_| ParseError::BadAttribute("tx bytes"))?
            }
            WgPeerAttr::Allowedips => {
                for ip in attrs::<u16>(p)?.iter() {
                    peer.allowed_ips.push(parse_allowed_ip(ip)?);
                }
            }
            _ => {}
        }
    }
    if !has_key {
        return Err(ParseError::BadAttribute("peer without public key"));
    }
    Ok(peer)
}

/// Folds one `WG_CMD_GET_DEVICE` dump message into `device`. The kernel splits a large
/// device over several messages, continuing the last peer of one message at the start of
/// the next: those are merged.
pub fn parse_device_message(
    msg: &Message<'_>,
    device: &mut ObservedDevice,
) -> Result<(), ParseError> {
    if msg.payload.len() < GENL_HDRLEN {
        return Err(ParseError::Truncated);
    }
    for a in attrs::<WgDeviceAttr>(&msg.payload[GENL_HDRLEN..])?.iter() {
        let p = payload(a);
        match a.nla_type().nla_type() {
            WgDeviceAttr::PublicKey => {
                let k = key32(a, "public key")?;
                device.public_key = (k != [0; 32]).then_some(PublicKey(k));
            }
            WgDeviceAttr::ListenPort if p.len() == 2 => {
                device.listen_port = fixed::<2, _>(a).map_or(0, u16::from_ne_bytes)
            }
            WgDeviceAttr::Peers => {
                for p in attrs::<u16>(p)?.iter() {
                    let peer = parse_peer(p)?;
                    match device.peers.last_mut() {
                        Some(last) if last.public_key == peer.public_key => {
                            last.allowed_ips.extend(peer.allowed_ips)
                        }
                        _ => device.peers.push(peer),
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("look up the wireguard genl family")]
    Family(#[source] netlink::Error),
    #[error("parse the device")]
    Parse(#[source] ParseError),
    #[error("the kernel refused the request")]
    Refused(#[source] netlink::Error),
}

/// The `wireguard` family's id (ENOENT when the kernel has no WireGuard).
pub fn family(genl: &mut Genl) -> Result<u16, Error> {
    genl.family(WG_GENL_NAME).map_err(Error::Family)
}

/// Sends `plan` to device `ifname`: every message, each waited for; the first refusal is
/// the result.
pub fn set_device(
    genl: &mut Genl,
    family: u16,
    ifname: &str,
    plan: &DevicePlan<'_>,
) -> Result<(), Error> {
    let socket = genl.socket();
    let first = socket.next_seq();
    let messages = render_set(family, ifname, plan, first, MAX_MESSAGE);
    socket.reserve_seqs(messages.len() as u32 - 1);
    let mut first_error = None;
    for msg in &messages {
        if let Err(e) = socket.request(msg, |_| {}) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(Error::Refused(e)),
        None => Ok(()),
    }
}

/// Reads device `ifname` back.
pub fn get_device(genl: &mut Genl, family: u16, ifname: &str) -> Result<ObservedDevice, Error> {
    let socket = genl.socket();
    let read = socket.dump(
        |seq| render_get(family, ifname, seq),
        |msg, (device, failed): &mut (ObservedDevice, Option<ParseError>)| {
            if msg.ty == family && failed.is_none() {
                *failed = parse_device_message(msg, device).err();
            }
        },
    );
    // The answer held the device's private and preshared keys.
    socket.wipe();
    let (mut device, failed) = read.map_err(Error::Refused)?;
    if let Some(e) = failed {
        return Err(Error::Parse(e));
    }
    for p in &mut device.peers {
        p.allowed_ips.sort();
        p.allowed_ips.dedup();
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{peer, pk, spec};
    use super::super::plan::{plan, DevicePlan};
    use super::*;
    use crate::dataplane::netlink::message::NLMSG_HDRLEN;
    use crate::dataplane::netlink::messages;

    const FAMILY: u16 = 0x1c;

    /// Parses rendered SET messages as if they were a GET dump: the peer attributes are the
    /// same, so a round trip must give back the spec.
    fn read_back(datagrams: &[Zeroizing<Vec<u8>>]) -> ObservedDevice {
        let mut device = ObservedDevice::default();
        for d in datagrams {
            let all: Vec<Message<'_>> = messages(d).collect();
            assert_eq!(all.len(), 1);
            assert_eq!(all[0].ty, FAMILY);
            parse_device_message(&all[0], &mut device).unwrap();
        }
        device
    }

    /// (peer key, flags) of every peer section of one message.
    fn peer_flags(message: &[u8]) -> Vec<(PublicKey, u32)> {
        let msg = messages(message).next().unwrap();
        let mut out = Vec::new();
        for a in attrs::<WgDeviceAttr>(&msg.payload[GENL_HDRLEN..])
            .unwrap()
            .iter()
        {
            if *a.nla_type().nla_type() == WgDeviceAttr::Peers {
                for p in attrs::<u16>(payload(a)).unwrap().iter() {
                    let (mut key, mut flags) = (None, 0);
                    for pa in attrs::<WgPeerAttr>(payload(p)).unwrap().iter() {
                        match pa.nla_type().nla_type() {
                            WgPeerAttr::PublicKey => key = Some(PublicKey(key32(pa, "k").unwrap())),
                            WgPeerAttr::Flags => flags = u32::from_ne_bytes(fixed(pa).unwrap()),
                            _ => {}
                        }
                    }
                    out.push((key.unwrap(), flags));
                }
            }
        }
        out
    }

    #[test]
    fn a_set_message_has_the_genl_header_and_round_trips() {
        let mut s = spec(vec![
            peer(1, &["10.9.0.2/32", "2001:db8:1::/48"]),
            peer(2, &[]),
            peer(3, &["10.9.3.0/24"]),
        ]);
        s.peers[0].endpoint = Some("192.0.2.1:51820".parse().unwrap());
        s.peers[0].persistent_keepalive = Some(25);
        s.peers[1].endpoint = Some("[2001:db8::7]:1234".parse().unwrap());
        s.peers[2].preshared_key = Some(SecretKey::from_bytes([5; 32]));
        let key = s.private_key.clone().unwrap();
        let p = plan(&s, &key, &ObservedDevice::default());
        let msgs = render_set(FAMILY, "wg0", &p, 7, MAX_MESSAGE);
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0][..];
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), FAMILY);
        assert_eq!(
            u16::from_ne_bytes([m[6], m[7]]),
            (NlmF::REQUEST | NlmF::ACK).bits()
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(
            &m[16..20],
            &[u8::from(WgCmd::SetDevice), WG_GENL_VERSION, 0, 0]
        );
        // First attribute: IFNAME "wg0\0".
        assert_eq!(
            &m[20..28],
            &[
                8,
                0,
                u16::from(WgDeviceAttr::Ifname) as u8,
                0,
                b'w',
                b'g',
                b'0',
                0
            ]
        );
        // The private key is there, in the clear only on the wire.
        assert!(m.windows(32).any(|w| w == [9; 32]));

        let back = read_back(&msgs);
        assert_eq!(back.listen_port, 51820);
        assert_eq!(back.peers.len(), 3);
        for (want, got) in s.peers.iter().zip(&back.peers) {
            assert_eq!(got.public_key, want.public_key);
            assert_eq!(got.endpoint, want.endpoint);
            assert_eq!(got.allowed_ips, want.allowed_ips);
            assert_eq!(
                got.persistent_keepalive,
                want.persistent_keepalive.unwrap_or(0)
            );
            assert_eq!(got.preshared_key, want.preshared_key);
        }
        // So the plan against the read-back device is empty (the key aside: SET carries
        // no public key).
        let mut back = back;
        back.public_key = Some(super::super::keys::public_key(&key));
        assert!(plan(&s, &key, &back).is_empty());
        assert!(peer_flags(&msgs[0])
            .iter()
            .all(|(_, f)| *f == WGPEER_F_REPLACE_ALLOWEDIPS));
    }

    #[test]
    fn removed_peers_carry_remove_me_and_unchanged_peers_are_absent() {
        let before = spec(vec![peer(1, &["10.9.0.2/32"]), peer(2, &["10.9.0.3/32"])]);
        let key = before.private_key.clone().unwrap();
        let mut observed = ObservedDevice {
            public_key: Some(super::super::keys::public_key(&key)),
            listen_port: 51820,
            peers: Vec::new(),
        };
        let msgs = render_set(
            FAMILY,
            "wg0",
            &plan(&before, &key, &observed),
            1,
            MAX_MESSAGE,
        );
        observed.peers = read_back(&msgs).peers;
        let after = spec(vec![peer(1, &["10.9.0.2/32"]), peer(3, &["10.9.0.4/32"])]);
        let p = plan(&after, &key, &observed);
        let msgs = render_set(FAMILY, "wg0", &p, 1, MAX_MESSAGE);
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            peer_flags(&msgs[0]),
            [
                (pk(2), WGPEER_F_REMOVE_ME),
                (pk(3), WGPEER_F_REPLACE_ALLOWEDIPS)
            ]
        );
        // No private key or port when they already match.
        assert!(!msgs[0].windows(32).any(|w| w == [9; 32]));
    }

    #[test]
    fn ten_thousand_peers_are_chunked_and_a_long_peer_continues() {
        let mut peers: Vec<Peer> = (0..10_000u32)
            .map(|i| {
                let mut p = peer(0, &[]);
                p.public_key = PublicKey([(i % 251) as u8; 32]);
                p.public_key.0[0..4].copy_from_slice(&i.to_be_bytes());
                p.allowed_ips = vec![
                    format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap(),
                    format!("2001:db8:{:x}::/48", i).parse().unwrap(),
                ];
                p.endpoint = Some(
                    format!("192.0.2.{}:{}", i % 250 + 1, 40000 + i % 1000)
                        .parse()
                        .unwrap(),
                );
                p
            })
            .collect();
        // One peer with the maximum of 1,024 allowed IPs must span messages of 8 KiB.
        peers[5000].allowed_ips = (0..1024u32)
            .map(|i| {
                format!("172.16.{}.{}/32", i / 256, i % 256)
                    .parse()
                    .unwrap()
            })
            .collect();
        peers[5000].allowed_ips.sort();
        let s = spec(peers);
        let key = s.private_key.clone().unwrap();
        let p: DevicePlan<'_> = plan(&s, &key, &ObservedDevice::default());
        for max in [8 * 1024, MAX_MESSAGE] {
            let msgs = render_set(FAMILY, "wg0", &p, 100, max);
            assert!(msgs.len() > 1);
            for (i, m) in msgs.iter().enumerate() {
                assert!(m.len() <= max, "message {i} is {} bytes", m.len());
                let m = &m[..];
                assert_eq!(
                    u32::from_ne_bytes(m[8..12].try_into().unwrap()),
                    100 + i as u32
                );
            }
            // A continued peer is stated again without REPLACE_ALLOWEDIPS, which would
            // drop what the previous message added.
            let continued: Vec<_> = msgs
                .iter()
                .skip(1)
                .filter_map(|m| peer_flags(m).first().copied())
                .filter(|(_, f)| *f == 0)
                .collect();
            assert!(continued
                .iter()
                .all(|(k, _)| *k == s.peers[5000].public_key));
            if max == 8 * 1024 {
                assert!(!continued.is_empty(), "1,024 allowed IPs do not fit 8 KiB");
            }
            let back = read_back(&msgs);
            assert_eq!(back.peers.len(), 10_000);
            for (want, got) in s.peers.iter().zip(&back.peers) {
                assert_eq!(got.public_key, want.public_key);
                assert_eq!(got.allowed_ips, want.allowed_ips);
                assert_eq!(got.endpoint, want.endpoint);
            }
        }
    }

    #[test]
    fn the_get_request_dumps_the_named_device() {
        let get = render_get(FAMILY, "wg7", 3);
        assert_eq!(
            u16::from_ne_bytes([get[6], get[7]]),
            (NlmF::REQUEST | NlmF::DUMP).bits()
        );
        assert_eq!(
            &get[16..20],
            &[u8::from(WgCmd::GetDevice), WG_GENL_VERSION, 0, 0]
        );
        assert_eq!(
            &get[20..28],
            &[
                8,
                0,
                u16::from(WgDeviceAttr::Ifname) as u8,
                0,
                b'w',
                b'g',
                b'7',
                0
            ]
        );
        assert_eq!(get.len(), NLMSG_HDRLEN + GENL_HDRLEN + 8);
    }

    #[test]
    fn a_dump_message_with_handshake_and_counters_parses() {
        let mut ts = Vec::new();
        ts.extend_from_slice(&1_700_000_000i64.to_ne_bytes());
        ts.extend_from_slice(&5i64.to_ne_bytes());
        let peer = nest(
            0u16,
            &[
                attr(WgPeerAttr::PublicKey, Buffer::from(&[1u8; 32][..])),
                attr(WgPeerAttr::LastHandshakeTime, Buffer::from(ts)),
                attr(WgPeerAttr::RxBytes, 123u64),
                attr(WgPeerAttr::TxBytes, 456u64),
                attr(
                    WgPeerAttr::Endpoint,
                    Buffer::from(sockaddr("198.51.100.9:51820".parse().unwrap())),
                ),
            ],
        );
        let attrs = [
            attr(WgDeviceAttr::PublicKey, Buffer::from(&[4u8; 32][..])),
            attr(WgDeviceAttr::ListenPort, 51821u16),
            nest(WgDeviceAttr::Peers, &[peer]),
        ];
        let msg = genl::message(WgCmd::GetDevice, 1, attrs.into_iter().collect());
        let m = netlink::request(FAMILY, NlmF::empty(), 1, msg);
        let mut d = ObservedDevice::default();
        parse_device_message(&messages(&m).next().unwrap(), &mut d).unwrap();
        assert_eq!(d.public_key, Some(PublicKey([4; 32])));
        assert_eq!(d.listen_port, 51821);
        let p = &d.peers[0];
        assert_eq!(
            (p.last_handshake_unix, p.rx_bytes, p.tx_bytes),
            (1_700_000_000, 123, 456)
        );
        assert_eq!(p.endpoint, Some("198.51.100.9:51820".parse().unwrap()));
    }
}

#[cfg(test)]
mod props {
    use super::super::plan::tests::{arb_device, arb_spec, expected, normalised};
    use super::super::plan::{plan, ObservedDevice, ObservedPeer};
    use super::*;
    use crate::dataplane::netlink::messages;
    use proptest::prelude::*;

    const FAMILY: u16 = 0x1c;

    /// The kernel's `WG_CMD_SET_DEVICE`, as a model: what a device holds after `messages`.
    fn apply(device: &mut ObservedDevice, messages_: &[Zeroizing<Vec<u8>>]) {
        for d in messages_ {
            for msg in messages(d) {
                assert_eq!(msg.ty, FAMILY);
                for a in attrs::<WgDeviceAttr>(&msg.payload[GENL_HDRLEN..])
                    .unwrap()
                    .iter()
                {
                    match a.nla_type().nla_type() {
                        WgDeviceAttr::PrivateKey => {
                            let key = SecretKey::from_bytes(key32(a, "private key").unwrap());
                            device.public_key = Some(super::super::keys::public_key(&key));
                        }
                        WgDeviceAttr::ListenPort => {
                            device.listen_port = u16::from_ne_bytes(fixed(a).unwrap())
                        }
                        WgDeviceAttr::Peers => {
                            for section in attrs::<u16>(payload(a)).unwrap().iter() {
                                apply_peer(device, section);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn apply_peer(device: &mut ObservedDevice, section: &Nlattr<u16, Wiped>) {
        let inner = attrs::<WgPeerAttr>(payload(section)).unwrap();
        let find = |ty: WgPeerAttr| inner.iter().find(|a| *a.nla_type().nla_type() == ty);
        let flags = find(WgPeerAttr::Flags)
            .map(|f| u32::from_ne_bytes(fixed(f).unwrap()))
            .unwrap_or(0);
        // The same reader the agent uses on a GET; flags and the presence of each setting
        // are what SET adds to it.
        let given = parse_peer(section).unwrap();
        let has = |ty| find(ty).is_some();
        if flags & WGPEER_F_REMOVE_ME != 0 {
            device.peers.retain(|p| p.public_key != given.public_key);
            return;
        }
        let at = match device
            .peers
            .iter()
            .position(|p| p.public_key == given.public_key)
        {
            Some(i) => i,
            None => {
                device.peers.push(ObservedPeer::new(given.public_key));
                device.peers.len() - 1
            }
        };
        let peer = &mut device.peers[at];
        if has(WgPeerAttr::PresharedKey) {
            peer.preshared_key = given.preshared_key;
        }
        if has(WgPeerAttr::PersistentKeepaliveInterval) {
            peer.persistent_keepalive = given.persistent_keepalive;
        }
        if has(WgPeerAttr::Endpoint) {
            peer.endpoint = given.endpoint;
        }
        if flags & WGPEER_F_REPLACE_ALLOWEDIPS != 0 {
            peer.allowed_ips.clear();
        }
        peer.allowed_ips.extend(given.allowed_ips);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random peer set and device -> plan -> genl messages (chunked at any size) ->
        /// the device the spec describes, and the same messages read back as a GET dump
        /// give the peers they carry.
        #[test]
        fn genl_messages_take_any_device_to_the_spec(
            desired in arb_spec(),
            before in arb_device(),
            max in 512usize..4096,
        ) {
            let key = desired.private_key.clone().unwrap();
            let p = plan(&desired, &key, &before);
            let msgs = render_set(FAMILY, "wg0", &p, 1, max);
            for m in &msgs {
                prop_assert!(m.len() <= max);
            }
            let mut device = before.clone();
            apply(&mut device, &msgs);
            prop_assert_eq!(normalised(device), normalised(expected(&desired, &before)));

            // Against an empty device every peer is added: parsing the messages as a dump
            // gives back the spec's peers.
            let fresh = plan(&desired, &key, &ObservedDevice::default());
            let mut read = ObservedDevice::default();
            for m in render_set(FAMILY, "wg0", &fresh, 1, max) {
                for msg in messages(&m) {
                    parse_device_message(&msg, &mut read).unwrap();
                }
            }
            let want: Vec<_> = desired.peers.iter().map(|p| (p.public_key, p.allowed_ips.clone(), p.endpoint)).collect();
            let got: Vec<_> = read.peers.iter().map(|p| (p.public_key, p.allowed_ips.clone(), p.endpoint)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
