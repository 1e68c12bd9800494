//! Kernel WireGuard over generic netlink: the `wireguard` family's `WG_CMD_SET_DEVICE` and
//! `WG_CMD_GET_DEVICE` (include/uapi/linux/wireguard.h), written and read with the agent's
//! netlink layer.
//!
//! The messages are rendered and parsed by pure functions, so their layout and the chunking
//! of thousands of peers are unit-tested without root. Every message is built in one buffer
//! sized for it, and one that carries a private or preshared key is wiped when dropped; the
//! socket's receive buffer, which held the device's keys on a read, is wiped after it.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::IpNet;
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::validate::Peer;
use zeroize::Zeroizing;

use super::plan::{DevicePlan, ObservedDevice, ObservedPeer};
use crate::dataplane::netlink::genl::{self, Genl, GENL_HDRLEN};
use crate::dataplane::netlink::message::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use crate::dataplane::netlink::{self, Attr, Datagram, Message, Truncated};

const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
const WG_CMD_GET_DEVICE: u8 = 0;
const WG_CMD_SET_DEVICE: u8 = 1;

const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_PUBLIC_KEY: u16 = 4;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;

const WGPEER_F_REMOVE_ME: u32 = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
const WGPEER_A_RX_BYTES: u16 = 7;
const WGPEER_A_TX_BYTES: u16 = 8;
const WGPEER_A_ALLOWEDIPS: u16 = 9;

const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// The largest message we render. The kernel takes far more (up to the socket's send
/// buffer), but 32 KiB keeps each message well inside any default buffer while a
/// 1,000-peer spec still needs only a handful of messages.
pub const MAX_MESSAGE: usize = 32 * 1024;

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

/// `WG_CMD_SET_DEVICE` messages being written, each at most `max_len` bytes.
struct SetWriter<'a> {
    family: u16,
    ifname: &'a str,
    max_len: usize,
    seq: u32,
    out: Vec<Datagram>,
    /// The message being written, with its peer list open.
    current: Datagram,
    peers: Option<netlink::Nest>,
    index: u16,
}

impl<'a> SetWriter<'a> {
    fn new(family: u16, ifname: &'a str, first_seq: u32, max_len: usize) -> SetWriter<'a> {
        let mut w = SetWriter {
            family,
            ifname,
            max_len,
            seq: first_seq,
            out: Vec::new(),
            current: Datagram::new(),
            peers: None,
            index: 0,
        };
        w.start();
        w
    }

    /// Starts a message naming the device; its peer list is opened by [`Self::open_peers`].
    fn start(&mut self) {
        // Room for the whole message, so a key in it is never left in a freed buffer.
        self.current = Datagram::with_capacity(self.max_len + 64);
        genl::message(
            &mut self.current,
            self.family,
            NLM_F_REQUEST | NLM_F_ACK,
            self.seq,
            WG_CMD_SET_DEVICE,
            WG_GENL_VERSION,
        )
        .attr_str(WGDEVICE_A_IFNAME, self.ifname);
        self.seq = self.seq.wrapping_add(1);
        self.index = 0;
    }

    fn open_peers(&mut self) {
        self.peers = Some(self.current.nest(WGDEVICE_A_PEERS));
    }

    /// Ends the message and starts the next one, with its peer list open.
    fn next(&mut self) {
        if let Some(peers) = self.peers.take() {
            self.current.end_nest(peers);
        }
        let full = std::mem::take(&mut self.current);
        self.out.push(full);
        self.start();
        self.open_peers();
    }

    /// Makes room for `bytes` more, in a new message when this one would grow too long.
    fn fit(&mut self, bytes: usize) {
        if self.current.message_len() + bytes > self.max_len {
            self.next();
        }
    }

    fn finish(mut self) -> Vec<Datagram> {
        if let Some(peers) = self.peers.take() {
            self.current.end_nest(peers);
        }
        self.out.push(self.current);
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
pub fn render_set(
    family: u16,
    ifname: &str,
    plan: &DevicePlan<'_>,
    first_seq: u32,
    max_len: usize,
) -> Vec<Datagram> {
    assert!(
        max_len >= 512,
        "a message must hold at least one peer header"
    );
    let mut w = SetWriter::new(family, ifname, first_seq, max_len);
    if let Some(key) = plan.private_key {
        w.current.set_secret();
        w.current.attr(WGDEVICE_A_PRIVATE_KEY, key.expose());
    }
    if let Some(port) = plan.listen_port {
        w.current.attr_u16(WGDEVICE_A_LISTEN_PORT, port);
    }
    w.open_peers();
    for key in &plan.removed {
        w.fit(PEER_HEADER);
        let peer = w.current.nest(w.index);
        w.current
            .attr(WGPEER_A_PUBLIC_KEY, key.as_bytes())
            .attr_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME);
        w.current.end_nest(peer);
        w.index = w.index.wrapping_add(1);
    }
    for peer in plan.added.iter().chain(&plan.changed) {
        w.fit(PEER_HEADER + ALLOWED_IP_COST);
        let mut section = w.current.nest(w.index);
        render_peer_head(&mut w.current, peer);
        let mut ips = w.current.nest(WGPEER_A_ALLOWEDIPS);
        for (i, net) in peer.allowed_ips.iter().enumerate() {
            if w.current.message_len() + ALLOWED_IP_COST > w.max_len {
                // Close allowed IPs and the peer; continue the same peer in the next message.
                w.current.end_nest(ips);
                w.current.end_nest(section);
                w.next();
                section = w.current.nest(w.index);
                w.current
                    .attr(WGPEER_A_PUBLIC_KEY, peer.public_key.as_bytes());
                ips = w.current.nest(WGPEER_A_ALLOWEDIPS);
            }
            render_allowed_ip(&mut w.current, i as u16, net);
        }
        w.current.end_nest(ips);
        w.current.end_nest(section);
        w.index = w.index.wrapping_add(1);
    }
    w.finish()
}

fn render_peer_head(d: &mut Datagram, peer: &Peer) {
    // Zeros mean no preshared key; a real one makes the message a secret (read from the
    // spec's key in place, never copied).
    let psk: &[u8; 32] = match &peer.preshared_key {
        Some(k) => {
            d.set_secret();
            k.expose()
        }
        None => &[0; 32],
    };
    d.attr(WGPEER_A_PUBLIC_KEY, peer.public_key.as_bytes())
        .attr_u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS)
        .attr(WGPEER_A_PRESHARED_KEY, psk)
        .attr_u16(
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
            peer.persistent_keepalive.unwrap_or(0),
        );
    if let Some(endpoint) = peer.endpoint {
        d.attr(WGPEER_A_ENDPOINT, &sockaddr(endpoint));
    }
}

fn render_allowed_ip(d: &mut Datagram, index: u16, net: &IpNet) {
    let ip = d.nest(index);
    match net.addr() {
        IpAddr::V4(a) => d
            .attr_u16(WGALLOWEDIP_A_FAMILY, AF_INET)
            .attr(WGALLOWEDIP_A_IPADDR, &a.octets()),
        IpAddr::V6(a) => d
            .attr_u16(WGALLOWEDIP_A_FAMILY, AF_INET6)
            .attr(WGALLOWEDIP_A_IPADDR, &a.octets()),
    };
    d.attr_u8(WGALLOWEDIP_A_CIDR_MASK, net.prefix_len());
    d.end_nest(ip);
}

/// The `WG_CMD_GET_DEVICE` dump request for `ifname`.
pub fn render_get(family: u16, ifname: &str, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    genl::message(
        &mut d,
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        WG_CMD_GET_DEVICE,
        WG_GENL_VERSION,
    )
    .attr_str(WGDEVICE_A_IFNAME, ifname);
    d
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated netlink message")]
    Truncated,
    #[error("bad {0} attribute")]
    BadAttribute(&'static str),
}

impl From<Truncated> for ParseError {
    fn from(_: Truncated) -> ParseError {
        ParseError::Truncated
    }
}

fn key32(a: &Attr<'_>, what: &'static str) -> Result<[u8; 32], ParseError> {
    a.array().ok_or(ParseError::BadAttribute(what))
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

fn parse_allowed_ip(a: &Attr<'_>) -> Result<IpNet, ParseError> {
    let (mut family, mut addr, mut mask) = (None, None, None);
    for a in a.try_nested() {
        let a = a?;
        match a.ty {
            WGALLOWEDIP_A_FAMILY if a.payload.len() == 2 => family = a.u16(),
            WGALLOWEDIP_A_IPADDR => addr = Some(a.payload),
            WGALLOWEDIP_A_CIDR_MASK if a.payload.len() == 1 => mask = a.u8(),
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
        AF_INET => <[u8; 4]>::try_from(addr).map_err(|_| bad())?.into(),
        AF_INET6 => <[u8; 16]>::try_from(addr).map_err(|_| bad())?.into(),
        _ => return Err(bad()),
    };
    IpNet::new(ip, mask).map(|n| n.trunc()).map_err(|_| bad())
}

fn parse_peer(section: &Attr<'_>) -> Result<ObservedPeer, ParseError> {
    let mut peer = ObservedPeer::new(PublicKey([0; 32]));
    let mut has_key = false;
    for a in section.try_nested() {
        let a = a?;
        match a.ty {
            WGPEER_A_PUBLIC_KEY => {
                peer.public_key = PublicKey(key32(&a, "peer public key")?);
                has_key = true;
            }
            WGPEER_A_PRESHARED_KEY => {
                let k = Zeroizing::new(key32(&a, "preshared key")?);
                peer.preshared_key = (*k != [0; 32]).then(|| SecretKey::from_bytes(*k));
            }
            WGPEER_A_ENDPOINT => peer.endpoint = parse_endpoint(a.payload)?,
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL if a.payload.len() == 2 => {
                peer.persistent_keepalive = a.u16().unwrap_or(0)
            }
            WGPEER_A_LAST_HANDSHAKE_TIME if a.payload.len() >= 8 => {
                // struct __kernel_timespec { s64 tv_sec; s64 tv_nsec; }
                peer.last_handshake_unix = a.u64().unwrap_or(0);
            }
            WGPEER_A_RX_BYTES => {
                peer.rx_bytes = a
                    .array::<8>()
                    .map(u64::from_ne_bytes)
                    .ok_or(ParseError::BadAttribute("rx bytes"))?
            }
            WGPEER_A_TX_BYTES => {
                peer.tx_bytes = a
                    .array::<8>()
                    .map(u64::from_ne_bytes)
                    .ok_or(ParseError::BadAttribute("tx bytes"))?
            }
            WGPEER_A_ALLOWEDIPS => {
                for ip in a.try_nested() {
                    peer.allowed_ips.push(parse_allowed_ip(&ip?)?);
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
    for a in netlink::try_attrs(&msg.payload[GENL_HDRLEN..]) {
        let a = a?;
        match a.ty {
            WGDEVICE_A_PUBLIC_KEY => {
                let k = key32(&a, "public key")?;
                device.public_key = (k != [0; 32]).then_some(PublicKey(k));
            }
            WGDEVICE_A_LISTEN_PORT if a.payload.len() == 2 => {
                device.listen_port = a.u16().unwrap_or(0)
            }
            WGDEVICE_A_PEERS => {
                for p in a.try_nested() {
                    let peer = parse_peer(&p?)?;
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
        if let Err(e) = socket.request(msg.bytes(), |_| {}) {
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
    fn read_back(datagrams: &[Datagram]) -> ObservedDevice {
        let mut device = ObservedDevice::default();
        for d in datagrams {
            let all: Vec<Message<'_>> = messages(d.bytes()).collect();
            assert_eq!(all.len(), 1);
            assert_eq!(all[0].ty, FAMILY);
            parse_device_message(&all[0], &mut device).unwrap();
        }
        device
    }

    /// (peer key, flags) of every peer section of one message.
    fn peer_flags(message: &Datagram) -> Vec<(PublicKey, u32)> {
        let msg = messages(message.bytes()).next().unwrap();
        let mut out = Vec::new();
        for a in msg.attrs(GENL_HDRLEN) {
            if a.ty == WGDEVICE_A_PEERS {
                for p in a.nested() {
                    let (mut key, mut flags) = (None, 0);
                    for pa in p.nested() {
                        match pa.ty {
                            WGPEER_A_PUBLIC_KEY => key = Some(PublicKey(key32(&pa, "k").unwrap())),
                            WGPEER_A_FLAGS => flags = pa.u32().unwrap(),
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
        let m = msgs[0].bytes();
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), FAMILY);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0, 0]);
        // First attribute: IFNAME "wg0\0".
        assert_eq!(
            &m[20..28],
            &[8, 0, WGDEVICE_A_IFNAME as u8, 0, b'w', b'g', b'0', 0]
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
        assert!(!msgs[0].bytes().windows(32).any(|w| w == [9; 32]));
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
                let m = m.bytes();
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
        let get = get.bytes();
        assert_eq!(
            u16::from_ne_bytes([get[6], get[7]]),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(&get[16..20], &[WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0, 0]);
        assert_eq!(
            &get[20..28],
            &[8, 0, WGDEVICE_A_IFNAME as u8, 0, b'w', b'g', b'7', 0]
        );
        assert_eq!(get.len(), NLMSG_HDRLEN + GENL_HDRLEN + 8);
    }

    #[test]
    fn a_dump_message_with_handshake_and_counters_parses() {
        let mut m = Datagram::new();
        genl::message(&mut m, FAMILY, 0, 1, WG_CMD_GET_DEVICE, 1)
            .attr(WGDEVICE_A_PUBLIC_KEY, &[4; 32])
            .attr_u16(WGDEVICE_A_LISTEN_PORT, 51821);
        let peers = m.nest(WGDEVICE_A_PEERS);
        let peer = m.nest(0);
        let mut ts = Vec::new();
        ts.extend_from_slice(&1_700_000_000i64.to_ne_bytes());
        ts.extend_from_slice(&5i64.to_ne_bytes());
        m.attr(WGPEER_A_PUBLIC_KEY, &[1; 32])
            .attr(WGPEER_A_LAST_HANDSHAKE_TIME, &ts)
            .attr(WGPEER_A_RX_BYTES, &123u64.to_ne_bytes())
            .attr(WGPEER_A_TX_BYTES, &456u64.to_ne_bytes())
            .attr(
                WGPEER_A_ENDPOINT,
                &sockaddr("198.51.100.9:51820".parse().unwrap()),
            );
        m.end_nest(peer);
        m.end_nest(peers);
        let mut d = ObservedDevice::default();
        parse_device_message(&messages(m.bytes()).next().unwrap(), &mut d).unwrap();
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
    fn apply(device: &mut ObservedDevice, messages_: &[Datagram]) {
        for d in messages_ {
            for msg in messages(d.bytes()) {
                assert_eq!(msg.ty, FAMILY);
                for a in msg.attrs(GENL_HDRLEN) {
                    match a.ty {
                        WGDEVICE_A_PRIVATE_KEY => {
                            let key = SecretKey::from_bytes(a.array().unwrap());
                            device.public_key = Some(super::super::keys::public_key(&key));
                        }
                        WGDEVICE_A_LISTEN_PORT => device.listen_port = a.u16().unwrap(),
                        WGDEVICE_A_PEERS => {
                            for section in a.nested() {
                                apply_peer(device, &section);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn apply_peer(device: &mut ObservedDevice, section: &Attr<'_>) {
        let flags = section
            .nested()
            .get(WGPEER_A_FLAGS)
            .and_then(|f| f.u32())
            .unwrap_or(0);
        // The same reader the agent uses on a GET; flags and the presence of each setting
        // are what SET adds to it.
        let given = parse_peer(section).unwrap();
        let has = |ty| section.nested().get(ty).is_some();
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
        if has(WGPEER_A_PRESHARED_KEY) {
            peer.preshared_key = given.preshared_key;
        }
        if has(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL) {
            peer.persistent_keepalive = given.persistent_keepalive;
        }
        if has(WGPEER_A_ENDPOINT) {
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
                for msg in messages(m.bytes()) {
                    parse_device_message(&msg, &mut read).unwrap();
                }
            }
            let want: Vec<_> = desired.peers.iter().map(|p| (p.public_key, p.allowed_ips.clone(), p.endpoint)).collect();
            let got: Vec<_> = read.peers.iter().map(|p| (p.public_key, p.allowed_ips.clone(), p.endpoint)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
