//! Kernel WireGuard over generic netlink: the `wireguard` family's `WG_CMD_SET_DEVICE` and
//! `WG_CMD_GET_DEVICE` (include/uapi/linux/wireguard.h).
//!
//! The messages are rendered and parsed here as plain bytes by pure functions, so their
//! layout and the chunking of thousands of peers are unit-tested without root; the socket is
//! neli's [`NlSocket`], used only to send those bytes and read the replies.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::IpNet;
use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::validate::Peer;

use super::plan::{DevicePlan, ObservedDevice, ObservedPeer};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

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

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction, with a stack of open nests.
struct MessageWriter {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl MessageWriter {
    fn new(family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&family.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        MessageWriter {
            buf,
            nests: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn attr_u16(&mut self, kind: u16, v: u16) {
        self.attr(kind, &v.to_ne_bytes());
    }

    fn attr_u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_ne_bytes());
    }

    fn attr_str(&mut self, kind: u16, s: &str) {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn open(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn close(&mut self) {
        let start = self.nests.pop().expect("close without open");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        while !self.nests.is_empty() {
            self.close();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

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
) -> Vec<Vec<u8>> {
    assert!(
        max_len >= 512,
        "a message must hold at least one peer header"
    );
    let mut out = Vec::new();
    let mut seq = first_seq;
    let start = |seq: &mut u32| {
        let mut m = MessageWriter::new(
            family,
            NLM_F_REQUEST | NLM_F_ACK,
            *seq,
            WG_CMD_SET_DEVICE,
            WG_GENL_VERSION,
        );
        *seq += 1;
        m.attr_str(WGDEVICE_A_IFNAME, ifname);
        m
    };
    let mut msg = start(&mut seq);
    if let Some(key) = plan.private_key {
        msg.attr(WGDEVICE_A_PRIVATE_KEY, key.expose());
    }
    if let Some(port) = plan.listen_port {
        msg.attr_u16(WGDEVICE_A_LISTEN_PORT, port);
    }
    msg.open(WGDEVICE_A_PEERS);
    // The fixed part of a peer: key, flags, preshared key, keepalive, endpoint, nests.
    const PEER_HEADER: usize = 4 + (4 + 32) + 8 + (4 + 32) + 8 + (4 + 28) + 4 + 4;
    let mut index: u16 = 0;
    for key in &plan.removed {
        if msg.len() + PEER_HEADER > max_len {
            out.push(msg.finish());
            msg = start(&mut seq);
            msg.open(WGDEVICE_A_PEERS);
            index = 0;
        }
        msg.open(index);
        msg.attr(WGPEER_A_PUBLIC_KEY, key.as_bytes());
        msg.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME);
        msg.close();
        index = index.wrapping_add(1);
    }
    for peer in plan.added.iter().chain(&plan.changed) {
        if msg.len() + PEER_HEADER + ALLOWED_IP_COST > max_len {
            out.push(msg.finish());
            msg = start(&mut seq);
            msg.open(WGDEVICE_A_PEERS);
            index = 0;
        }
        render_peer_head(&mut msg, index, peer);
        msg.open(WGPEER_A_ALLOWEDIPS);
        for (i, net) in peer.allowed_ips.iter().enumerate() {
            if msg.len() + ALLOWED_IP_COST > max_len {
                // Close allowed IPs, the peer, the peer list; continue the same peer.
                out.push(msg.finish());
                msg = start(&mut seq);
                msg.open(WGDEVICE_A_PEERS);
                index = 0;
                msg.open(index);
                msg.attr(WGPEER_A_PUBLIC_KEY, peer.public_key.as_bytes());
                msg.open(WGPEER_A_ALLOWEDIPS);
            }
            render_allowed_ip(&mut msg, i as u16, net);
        }
        msg.close(); // allowed IPs
        msg.close(); // peer
        index = index.wrapping_add(1);
    }
    out.push(msg.finish());
    out
}

fn render_peer_head(msg: &mut MessageWriter, index: u16, peer: &Peer) {
    msg.open(index);
    msg.attr(WGPEER_A_PUBLIC_KEY, peer.public_key.as_bytes());
    msg.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS);
    let psk = peer
        .preshared_key
        .as_ref()
        .map(|k| *k.expose())
        .unwrap_or([0; 32]);
    msg.attr(WGPEER_A_PRESHARED_KEY, &psk);
    msg.attr_u16(
        WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
        peer.persistent_keepalive.unwrap_or(0),
    );
    if let Some(endpoint) = peer.endpoint {
        msg.attr(WGPEER_A_ENDPOINT, &sockaddr(endpoint));
    }
}

fn render_allowed_ip(msg: &mut MessageWriter, index: u16, net: &IpNet) {
    msg.open(index);
    match net.addr() {
        IpAddr::V4(a) => {
            msg.attr_u16(WGALLOWEDIP_A_FAMILY, AF_INET);
            msg.attr(WGALLOWEDIP_A_IPADDR, &a.octets());
        }
        IpAddr::V6(a) => {
            msg.attr_u16(WGALLOWEDIP_A_FAMILY, AF_INET6);
            msg.attr(WGALLOWEDIP_A_IPADDR, &a.octets());
        }
    }
    msg.attr(WGALLOWEDIP_A_CIDR_MASK, &[net.prefix_len()]);
    msg.close();
}

/// The `WG_CMD_GET_DEVICE` dump request for `ifname`.
pub fn render_get(family: u16, ifname: &str, seq: u32) -> Vec<u8> {
    let mut m = MessageWriter::new(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        WG_CMD_GET_DEVICE,
        WG_GENL_VERSION,
    );
    m.attr_str(WGDEVICE_A_IFNAME, ifname);
    m.finish()
}

/// The controller request that looks up the `wireguard` family's id.
pub fn render_get_family(seq: u32) -> Vec<u8> {
    let mut m = MessageWriter::new(GENL_ID_CTRL, NLM_F_REQUEST, seq, CTRL_CMD_GETFAMILY, 1);
    m.attr_str(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME);
    m.finish()
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("truncated netlink message")]
    Truncated,
    #[error("bad {0} attribute")]
    BadAttribute(&'static str),
}

/// One attribute: its type (flags masked off) and payload.
struct Attr<'a> {
    kind: u16,
    payload: &'a [u8],
}

fn attrs(mut buf: &[u8]) -> impl Iterator<Item = Result<Attr<'_>, ParseError>> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return Some(Err(ParseError::Truncated));
        }
        let attr = Attr {
            kind,
            payload: &buf[4..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(Ok(attr))
    })
}

fn key32(payload: &[u8], what: &'static str) -> Result<[u8; 32], ParseError> {
    payload
        .try_into()
        .map_err(|_| ParseError::BadAttribute(what))
}

fn u64_of(payload: &[u8], what: &'static str) -> Result<u64, ParseError> {
    Ok(u64::from_ne_bytes(
        payload
            .try_into()
            .map_err(|_| ParseError::BadAttribute(what))?,
    ))
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

fn parse_allowed_ip(payload: &[u8]) -> Result<IpNet, ParseError> {
    let (mut family, mut addr, mut mask) = (None, None, None);
    for a in attrs(payload) {
        let a = a?;
        match a.kind {
            WGALLOWEDIP_A_FAMILY if a.payload.len() == 2 => {
                family = Some(u16::from_ne_bytes([a.payload[0], a.payload[1]]))
            }
            WGALLOWEDIP_A_IPADDR => addr = Some(a.payload),
            WGALLOWEDIP_A_CIDR_MASK if a.payload.len() == 1 => mask = Some(a.payload[0]),
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

fn parse_peer(payload: &[u8]) -> Result<ObservedPeer, ParseError> {
    let mut peer = ObservedPeer::new(PublicKey([0; 32]));
    let mut has_key = false;
    for a in attrs(payload) {
        let a = a?;
        match a.kind {
            WGPEER_A_PUBLIC_KEY => {
                peer.public_key = PublicKey(key32(a.payload, "peer public key")?);
                has_key = true;
            }
            WGPEER_A_PRESHARED_KEY => {
                let k = key32(a.payload, "preshared key")?;
                peer.preshared_key = (k != [0; 32]).then(|| SecretKey::from_bytes(k));
            }
            WGPEER_A_ENDPOINT => peer.endpoint = parse_endpoint(a.payload)?,
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL if a.payload.len() == 2 => {
                peer.persistent_keepalive = u16::from_ne_bytes([a.payload[0], a.payload[1]])
            }
            WGPEER_A_LAST_HANDSHAKE_TIME if a.payload.len() >= 8 => {
                // struct __kernel_timespec { s64 tv_sec; s64 tv_nsec; }
                peer.last_handshake_unix = u64_of(&a.payload[..8], "handshake time")?;
            }
            WGPEER_A_RX_BYTES => peer.rx_bytes = u64_of(a.payload, "rx bytes")?,
            WGPEER_A_TX_BYTES => peer.tx_bytes = u64_of(a.payload, "tx bytes")?,
            WGPEER_A_ALLOWEDIPS => {
                for ip in attrs(a.payload) {
                    peer.allowed_ips.push(parse_allowed_ip(ip?.payload)?);
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

/// Folds the attributes of one `WG_CMD_GET_DEVICE` dump message (after the genl header) into
/// `device`. The kernel splits a large device over several messages, continuing the last
/// peer of one message at the start of the next: those are merged.
pub fn parse_device_message(
    attrs_bytes: &[u8],
    device: &mut ObservedDevice,
) -> Result<(), ParseError> {
    for a in attrs(attrs_bytes) {
        let a = a?;
        match a.kind {
            WGDEVICE_A_PUBLIC_KEY => {
                let k = key32(a.payload, "public key")?;
                device.public_key = (k != [0; 32]).then_some(PublicKey(k));
            }
            WGDEVICE_A_LISTEN_PORT if a.payload.len() == 2 => {
                device.listen_port = u16::from_ne_bytes([a.payload[0], a.payload[1]])
            }
            WGDEVICE_A_PEERS => {
                for p in attrs(a.payload) {
                    let peer = parse_peer(p?.payload)?;
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

/// One message out of a netlink reply buffer.
#[derive(Debug)]
pub enum Reply<'a> {
    /// A data message: its type and the bytes after the genl header.
    Data {
        kind: u16,
        payload: &'a [u8],
    },
    /// An ack (errno 0) or an error (a positive errno).
    Ack {
        seq: u32,
        errno: i32,
    },
    Done,
}

/// Splits a buffer read from a netlink socket into messages.
pub fn replies(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, ParseError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(ParseError::Truncated);
        }
        let body = &buf[NLMSG_HDRLEN..len];
        out.push(match kind {
            NLMSG_ERROR => {
                let errno = i32::from_ne_bytes(
                    body.get(0..4)
                        .ok_or(ParseError::Truncated)?
                        .try_into()
                        .expect("4 bytes"),
                );
                Reply::Ack { seq, errno: -errno }
            }
            NLMSG_DONE => Reply::Done,
            _ => Reply::Data {
                kind,
                payload: body.get(GENL_HDRLEN..).ok_or(ParseError::Truncated)?,
            },
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The family id in a controller reply's attributes.
fn parse_family_id(payload: &[u8]) -> Result<Option<u16>, ParseError> {
    for a in attrs(payload) {
        let a = a?;
        if a.kind == CTRL_ATTR_FAMILY_ID && a.payload.len() == 2 {
            return Ok(Some(u16::from_ne_bytes([a.payload[0], a.payload[1]])));
        }
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open generic netlink socket")]
    Open(#[source] io::Error),
    #[error("send to generic netlink")]
    Send(#[source] io::Error),
    #[error("receive from generic netlink")]
    Receive(#[source] io::Error),
    #[error("parse generic netlink reply")]
    Parse(#[source] ParseError),
    #[error("look up the wireguard genl family")]
    Family(#[source] io::Error),
    #[error("the kernel refused the request")]
    Refused(#[source] io::Error),
}

/// A generic netlink socket bound to the `wireguard` family.
pub struct Genl {
    socket: NlSocket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Genl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Genl")
            .field("family", &self.family)
            .finish()
    }
}

impl Genl {
    /// Opens the socket and looks up the family (ENOENT when the kernel has no WireGuard).
    pub fn open() -> Result<Genl, Error> {
        let socket =
            NlSocket::connect(NlFamily::Generic, None, Groups::empty()).map_err(Error::Open)?;
        let mut genl = Genl {
            socket,
            family: 0,
            seq: 1,
            buf: vec![0; 64 * 1024],
        };
        let msg = render_get_family(genl.next_seq());
        let mut family = None;
        genl.exchange(&[msg], |kind, payload| {
            if kind == GENL_ID_CTRL {
                family = parse_family_id(payload)?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            Error::Refused(io) => Error::Family(io),
            other => other,
        })?;
        genl.family = family.ok_or(Error::Parse(ParseError::BadAttribute("family id")))?;
        Ok(genl)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `plan` to device `ifname`.
    pub fn set_device(&mut self, ifname: &str, plan: &DevicePlan<'_>) -> Result<(), Error> {
        let first = self.seq.wrapping_add(1);
        let messages = render_set(self.family, ifname, plan, first, MAX_MESSAGE);
        self.seq = first.wrapping_add(messages.len() as u32);
        self.exchange(&messages, |_, _| Ok(()))
    }

    /// Reads device `ifname` back.
    pub fn get_device(&mut self, ifname: &str) -> Result<ObservedDevice, Error> {
        let seq = self.next_seq();
        let msg = render_get(self.family, ifname, seq);
        let mut device = ObservedDevice::default();
        let family = self.family;
        self.exchange(&[msg], |kind, payload| {
            if kind == family {
                parse_device_message(payload, &mut device)?;
            }
            Ok(())
        })?;
        for p in &mut device.peers {
            p.allowed_ips.sort();
            p.allowed_ips.dedup();
        }
        Ok(device)
    }

    /// Sends each message and reads until it is answered: an ack or error for a request, the
    /// DONE (or an error) for a dump, the reply for a lookup. Data messages go to `on_data`.
    /// The first error the kernel returns is the result.
    fn exchange(
        &mut self,
        messages: &[Vec<u8>],
        mut on_data: impl FnMut(u16, &[u8]) -> Result<(), ParseError>,
    ) -> Result<(), Error> {
        let mut first_error = None;
        for msg in messages {
            self.socket.send(msg, Msg::empty()).map_err(Error::Send)?;
            let flags = u16::from_ne_bytes([msg[6], msg[7]]);
            let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
            let wants_ack = flags & NLM_F_ACK != 0;
            let mut answered = false;
            while !answered {
                let (n, _) = self
                    .socket
                    .recv(&mut self.buf[..], Msg::empty())
                    .map_err(Error::Receive)?;
                for reply in replies(&self.buf[..n]).map_err(Error::Parse)? {
                    match reply {
                        Reply::Data { kind, payload } => {
                            on_data(kind, payload).map_err(Error::Parse)?;
                            answered |= !dump && !wants_ack;
                        }
                        Reply::Done => answered = true,
                        Reply::Ack { errno, .. } => {
                            if errno != 0 && first_error.is_none() {
                                first_error = Some(io::Error::from_raw_os_error(errno));
                            }
                            answered = true;
                        }
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(Error::Refused(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{peer, pk, spec};
    use super::super::plan::{plan, DevicePlan};
    use super::*;

    const FAMILY: u16 = 0x1c;

    /// Parses rendered SET messages as if they were a GET dump: the peer attributes are the
    /// same, so a round trip must give back the spec.
    fn read_back(messages: &[Vec<u8>]) -> ObservedDevice {
        let mut device = ObservedDevice::default();
        for m in messages {
            let replies = replies(m).unwrap();
            assert_eq!(replies.len(), 1);
            let Reply::Data { kind, payload } = &replies[0] else {
                panic!("not data")
            };
            assert_eq!(*kind, FAMILY);
            parse_device_message(payload, &mut device).unwrap();
        }
        device
    }

    /// (peer key, flags) of every peer section of one message.
    fn peer_flags(message: &[u8]) -> Vec<(PublicKey, u32)> {
        let payload = &message[NLMSG_HDRLEN + GENL_HDRLEN..];
        let mut out = Vec::new();
        for a in attrs(payload) {
            let a = a.unwrap();
            if a.kind == WGDEVICE_A_PEERS {
                for p in attrs(a.payload) {
                    let (mut key, mut flags) = (None, 0);
                    for pa in attrs(p.unwrap().payload) {
                        let pa = pa.unwrap();
                        match pa.kind {
                            WGPEER_A_PUBLIC_KEY => {
                                key = Some(PublicKey(key32(pa.payload, "k").unwrap()))
                            }
                            WGPEER_A_FLAGS => {
                                flags = u32::from_ne_bytes(pa.payload.try_into().unwrap())
                            }
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
        let m = &msgs[0];
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
        assert!(peer_flags(m)
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
    fn get_and_family_requests() {
        let get = render_get(FAMILY, "wg7", 3);
        assert_eq!(
            u16::from_ne_bytes([get[6], get[7]]),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(&get[16..20], &[WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0, 0]);
        assert_eq!(
            &get[20..28],
            &[8, 0, WGDEVICE_A_IFNAME as u8, 0, b'w', b'g', b'7', 0]
        );
        let fam = render_get_family(4);
        assert_eq!(u16::from_ne_bytes([fam[4], fam[5]]), GENL_ID_CTRL);
        assert_eq!(&fam[16..18], &[CTRL_CMD_GETFAMILY, 1]);
        assert_eq!(fam.len(), 20 + 4 + align4("wireguard".len() + 1));
    }

    #[test]
    fn replies_split_acks_errors_done_and_data() {
        let mut buf = Vec::new();
        // An error reply: header, then -errno and the offending header.
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&0u16.to_ne_bytes());
        err.extend_from_slice(&9u32.to_ne_bytes());
        err.extend_from_slice(&0u32.to_ne_bytes());
        err.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        buf.extend_from_slice(&err);
        let mut done = vec![0; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        buf.extend_from_slice(&done);
        let parsed = replies(&buf).unwrap();
        assert!(matches!(parsed[0], Reply::Ack { seq: 9, errno } if errno == libc::ENODEV));
        assert!(matches!(parsed[1], Reply::Done));
        assert!(replies(&buf[..30]).is_err());
    }

    #[test]
    fn a_dump_message_with_handshake_and_counters_parses() {
        let mut m = MessageWriter::new(FAMILY, 0, 1, WG_CMD_GET_DEVICE, 1);
        m.attr(WGDEVICE_A_PUBLIC_KEY, &[4; 32]);
        m.attr_u16(WGDEVICE_A_LISTEN_PORT, 51821);
        m.open(WGDEVICE_A_PEERS);
        m.open(0);
        m.attr(WGPEER_A_PUBLIC_KEY, &[1; 32]);
        let mut ts = Vec::new();
        ts.extend_from_slice(&1_700_000_000i64.to_ne_bytes());
        ts.extend_from_slice(&5i64.to_ne_bytes());
        m.attr(WGPEER_A_LAST_HANDSHAKE_TIME, &ts);
        m.attr(WGPEER_A_RX_BYTES, &123u64.to_ne_bytes());
        m.attr(WGPEER_A_TX_BYTES, &456u64.to_ne_bytes());
        m.attr(
            WGPEER_A_ENDPOINT,
            &sockaddr("198.51.100.9:51820".parse().unwrap()),
        );
        let msg = m.finish();
        let mut d = ObservedDevice::default();
        let Reply::Data { payload, .. } = &replies(&msg).unwrap()[0] else {
            panic!()
        };
        parse_device_message(payload, &mut d).unwrap();
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
