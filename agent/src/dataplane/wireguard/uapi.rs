//! The cross-platform WireGuard configuration protocol (`set=1` / `get=1`) that boringtun
//! serves: rendering of a [`DevicePlan`] as one `set=1` request and parsing of a `get=1` reply.
//!
//! Keys travel in hex: boringtun silently takes a malformed base64 key as all zeros.
//! boringtun cannot modify a peer in place (it panics a worker and the device hangs), so a
//! changed peer is removed and added again within the same request, which boringtun applies
//! under one write lock: no packet sees the peer missing.

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;

use ipnet::IpNet;
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::validate::Peer;
use zeroize::Zeroizing;

use super::plan::{DevicePlan, ObservedDevice, ObservedPeer};

/// A `set=1` request. It may hold the private key, so its `Debug` is redacted, it has no
/// `Display` (it goes to the device and nowhere else), and it is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SetRequest(Zeroizing<String>);

impl SetRequest {
    /// The request text; handle with care.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SetRequest(<{} bytes, redacted>)", self.0.len())
    }
}

/// The `set=1` request that carries out `plan`, or `None` when there is nothing to do.
///
/// boringtun carries `remove`, `endpoint`, `persistent_keepalive_interval` and
/// `preshared_key` over from one peer section to the next, so every added section states
/// `remove=false`, its keepalive (0 for off) and its preshared key (zeros for none)
/// explicitly. An endpoint cannot be unset, so sections without one come before those with
/// one, and every removal comes first. A changed peer is removed and added again: the
/// endpoint the device had learned for it, when the spec names none, is stated again.
pub fn render_set(plan: &DevicePlan<'_>) -> Option<SetRequest> {
    if plan.is_empty() {
        return None;
    }
    // Sized for the whole request up front: growing would copy the private key into a new
    // buffer and free the old one unwiped.
    let mut out = Zeroizing::new(String::with_capacity(set_request_bound(plan)));
    out.push_str("set=1\n");
    if let Some(key) = plan.private_key {
        out.push_str("private_key=");
        push_hex(&mut out, key.expose());
        out.push('\n');
    }
    if let Some(port) = plan.listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    for key in plan
        .removed
        .iter()
        .chain(plan.changed.iter().map(|p| &p.public_key))
    {
        let _ = writeln!(
            out,
            "public_key={}\nremove=true",
            hex::encode(key.as_bytes())
        );
    }
    let mut adds: Vec<&Peer> = plan.added.iter().chain(&plan.changed).copied().collect();
    // Stable: the spec's order is kept within each group.
    let endpoint = |p: &Peer| p.endpoint.or_else(|| plan.learned(&p.public_key));
    adds.sort_by_key(|p| endpoint(p).is_some());
    for peer in adds {
        render_peer(&mut out, peer, endpoint(peer));
    }
    out.push('\n');
    debug_assert!(out.len() <= out.capacity(), "the bound held");
    Some(SetRequest(out))
}

/// The most bytes a `set=1` request for `plan` can take.
fn set_request_bound(plan: &DevicePlan<'_>) -> usize {
    const KEY_LINE: usize = "preshared_key=".len() + 64 + 1;
    const PEER: usize = 3 * KEY_LINE
        + "remove=false\n".len()
        + "persistent_keepalive_interval=65535\n".len()
        + "endpoint=[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535\n".len()
        + "replace_allowed_ips=true\n".len();
    const ALLOWED_IP: usize = "allowed_ip=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128\n".len();
    let removed = plan.removed.len() + plan.changed.len();
    let added = plan.added.len() + plan.changed.len();
    let ips: usize = plan
        .added
        .iter()
        .chain(&plan.changed)
        .map(|p| p.allowed_ips.len())
        .sum();
    "set=1\n".len()
        + KEY_LINE
        + "listen_port=65535\n".len()
        + removed * (KEY_LINE + "remove=true\n".len())
        + added * PEER
        + ips * ALLOWED_IP
        + 1
}

/// Appends `bytes` to a buffer that holds secrets; when it must grow, the old buffer is
/// wiped before it is freed.
pub fn push_secret(buf: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    if buf.len() + bytes.len() > buf.capacity() {
        let mut grown = Vec::with_capacity((2 * buf.capacity()).max(buf.len() + bytes.len()));
        grown.extend_from_slice(buf);
        *buf = Zeroizing::new(grown);
    }
    buf.extend_from_slice(bytes);
}

/// Whether a reply read so far is whole: it ends with `errno=N` and an empty line.
pub fn reply_complete(reply: &[u8]) -> bool {
    let Some(body) = reply.strip_suffix(b"\n\n") else {
        return false;
    };
    let last = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    last.starts_with(b"errno=")
}

/// A peer section; `endpoint` is the spec's, or the one the device had learned.
fn render_peer(out: &mut String, peer: &Peer, endpoint: Option<SocketAddr>) {
    let psk = Zeroizing::new(
        peer.preshared_key
            .as_ref()
            .map(|k| *k.expose())
            .unwrap_or([0; 32]),
    );
    let _ = writeln!(
        out,
        "public_key={}\nremove=false",
        hex::encode(peer.public_key.as_bytes()),
    );
    out.push_str("preshared_key=");
    push_hex(out, &psk[..]);
    let _ = writeln!(
        out,
        "\npersistent_keepalive_interval={}",
        peer.persistent_keepalive.unwrap_or(0),
    );
    if let Some(endpoint) = endpoint {
        let _ = writeln!(out, "endpoint={endpoint}");
    }
    out.push_str("replace_allowed_ips=true\n");
    for net in &peer.allowed_ips {
        let _ = writeln!(out, "allowed_ip={net}");
    }
}

/// Writes `bytes` in hex straight into `out`, with no intermediate string to leave behind.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// How a `get=1` reply states the last handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeClock {
    /// Seconds since the epoch (the protocol as written; wireguard-go).
    SinceEpoch,
    /// Seconds elapsed since the handshake: what boringtun 0.7 actually sends.
    Elapsed { now_unix: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the device answered errno={0}")]
    Errno(i32),
    #[error("line {0} is not key=value")]
    NotKeyValue(usize),
    #[error("line {line}: bad value for {key}")]
    BadValue { line: usize, key: String },
    #[error("line {line}: {key} outside a peer section")]
    OutsidePeer { line: usize, key: String },
    #[error("the reply ended without errno")]
    Truncated,
}

/// Parses a `get=1` reply (up to and including `errno=0`).
pub fn parse_get(reply: &str, clock: HandshakeClock) -> Result<ObservedDevice, ParseError> {
    let mut device = ObservedDevice::default();
    let mut handshake_secs: Vec<Option<u64>> = Vec::new();
    for (i, line) in reply.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(ParseError::NotKeyValue(n))?;
        let bad = || ParseError::BadValue {
            line: n,
            key: key.to_owned(),
        };
        let peer = |device: &mut ObservedDevice| -> Result<usize, ParseError> {
            match device.peers.len() {
                0 => Err(ParseError::OutsidePeer {
                    line: n,
                    key: key.to_owned(),
                }),
                len => Ok(len - 1),
            }
        };
        match key {
            "errno" => {
                let errno: i32 = value.parse().map_err(|_| bad())?;
                if errno != 0 {
                    return Err(ParseError::Errno(errno));
                }
                finish(&mut device, &handshake_secs, clock);
                return Ok(device);
            }
            "own_public_key" => device.public_key = Some(PublicKey(hex32(value).ok_or_else(bad)?)),
            "private_key" => {
                let secret = SecretKey::from_bytes(hex32(value).ok_or_else(bad)?);
                if secret.expose() != &[0; 32] {
                    device.public_key = Some(super::keys::public_key(&secret));
                }
            }
            "listen_port" => device.listen_port = value.parse().map_err(|_| bad())?,
            "fwmark" | "protocol_version" | "last_handshake_time_nsec" => {}
            "public_key" => {
                device
                    .peers
                    .push(ObservedPeer::new(PublicKey(hex32(value).ok_or_else(bad)?)));
                handshake_secs.push(None);
            }
            "preshared_key" => {
                let i = peer(&mut device)?;
                let key = hex32(value).ok_or_else(bad)?;
                device.peers[i].preshared_key =
                    (key != [0; 32]).then(|| SecretKey::from_bytes(key));
            }
            "endpoint" => {
                let i = peer(&mut device)?;
                device.peers[i].endpoint = Some(value.parse::<SocketAddr>().map_err(|_| bad())?);
            }
            "persistent_keepalive_interval" => {
                let i = peer(&mut device)?;
                device.peers[i].persistent_keepalive = value.parse().map_err(|_| bad())?;
            }
            "allowed_ip" => {
                let i = peer(&mut device)?;
                let net: IpNet = value.parse().map_err(|_| bad())?;
                device.peers[i].allowed_ips.push(net.trunc());
            }
            "last_handshake_time_sec" => {
                let i = peer(&mut device)?;
                handshake_secs[i] = Some(value.parse().map_err(|_| bad())?);
            }
            "rx_bytes" => {
                let i = peer(&mut device)?;
                device.peers[i].rx_bytes = value.parse().map_err(|_| bad())?;
            }
            "tx_bytes" => {
                let i = peer(&mut device)?;
                device.peers[i].tx_bytes = value.parse().map_err(|_| bad())?;
            }
            // Later protocol versions may add keys: ignoring them is what `wg` does too.
            _ => {}
        }
    }
    Err(ParseError::Truncated)
}

fn finish(device: &mut ObservedDevice, handshake_secs: &[Option<u64>], clock: HandshakeClock) {
    for (peer, secs) in device.peers.iter_mut().zip(handshake_secs) {
        peer.allowed_ips.sort();
        peer.allowed_ips.dedup();
        // A peer section without the key has never shaken hands.
        peer.last_handshake_unix = match (clock, secs) {
            (_, None) => 0,
            (HandshakeClock::SinceEpoch, Some(secs)) => *secs,
            (HandshakeClock::Elapsed { now_unix }, Some(secs)) => now_unix.saturating_sub(*secs),
        };
    }
}

/// Rewrites boringtun's `get=1` reply so its handshake times are times, as the protocol
/// says and `wg` expects (boringtun 0.7 sends the time elapsed since the handshake, which
/// `wg show` would print as decades ago). `now` is the time since the epoch.
pub fn handshake_elapsed_to_epoch(reply: &str, now: std::time::Duration) -> Zeroizing<String> {
    // The reply carries preshared keys. Each rewritten handshake grows by at most the
    // digits of a time: room for that up front, so the text is never copied while it grows.
    let handshakes = reply.matches("last_handshake_time_sec=").count();
    let mut out = Zeroizing::new(String::with_capacity(reply.len() + 24 * handshakes + 1));
    let mut lines = reply.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        let elapsed_secs = line_body(line)
            .strip_prefix("last_handshake_time_sec=")
            .and_then(|v| v.parse::<u64>().ok());
        let Some(secs) = elapsed_secs else {
            out.push_str(line);
            continue;
        };
        let nanos = lines
            .next_if(|l| l.starts_with("last_handshake_time_nsec="))
            .and_then(|l| {
                line_body(l)
                    .strip_prefix("last_handshake_time_nsec=")?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap_or(0);
        let at = now.saturating_sub(std::time::Duration::new(secs, nanos.min(999_999_999)));
        let _ = writeln!(
            out,
            "last_handshake_time_sec={}\nlast_handshake_time_nsec={}",
            at.as_secs(),
            at.subsec_nanos()
        );
    }
    out
}

/// A line without its ending, as `str::lines` gives it (so a value the parser would refuse,
/// `5   ` say, is not rewritten into one it takes).
fn line_body(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{peer, pk, spec};
    use super::super::plan::{plan, ObservedDevice};
    use super::*;

    #[test]
    fn a_new_device_is_one_request_with_keys_in_hex() {
        let mut s = spec(vec![
            peer(1, &["10.9.0.2/32", "2001:db8::/64"]),
            peer(2, &[]),
        ]);
        s.peers[0].endpoint = Some("[2001:db8::1]:51820".parse().unwrap());
        s.peers[0].persistent_keepalive = Some(25);
        s.peers[1].preshared_key = Some(SecretKey::from_bytes([3; 32]));
        let key = s.private_key.clone().unwrap();
        let req = render_set(&plan(&s, &key, &ObservedDevice::default())).unwrap();
        let h = |b: u8| hex::encode([b; 32]);
        // Peer 2 has no endpoint, so it comes first: the endpoint would carry over otherwise.
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\n\
             public_key={}\nremove=false\npreshared_key={}\npersistent_keepalive_interval=0\n\
             replace_allowed_ips=true\n\
             public_key={}\nremove=false\npreshared_key={}\npersistent_keepalive_interval=25\n\
             endpoint=[2001:db8::1]:51820\nreplace_allowed_ips=true\n\
             allowed_ip=10.9.0.2/32\nallowed_ip=2001:db8::/64\n\n",
            h(9),
            h(2),
            h(3),
            h(1),
            h(0),
        );
        assert_eq!(req.expose(), expected);
        assert_eq!(
            format!("{req:?}"),
            format!("SetRequest(<{} bytes, redacted>)", expected.len())
        );
    }

    #[test]
    fn a_changed_peer_is_removed_then_added_and_unchanged_peers_are_absent() {
        let before = spec(vec![
            peer(1, &["10.9.0.2/32"]),
            peer(2, &["10.9.0.3/32"]),
            peer(5, &[]),
        ]);
        let key = before.private_key.clone().unwrap();
        let observed = parse_get(&get_reply_for(&before), HandshakeClock::SinceEpoch).unwrap();
        let after = spec(vec![
            peer(1, &["10.9.0.2/32"]),
            peer(2, &["10.9.0.9/32"]),
            peer(3, &[]),
        ]);
        let req = render_set(&plan(&after, &key, &observed)).unwrap();
        let h = |b: u8| hex::encode([b; 32]);
        let expected = format!(
            "set=1\npublic_key={}\nremove=true\npublic_key={}\nremove=true\n\
             public_key={}\nremove=false\npreshared_key={}\npersistent_keepalive_interval=0\n\
             replace_allowed_ips=true\n\
             public_key={}\nremove=false\npreshared_key={}\npersistent_keepalive_interval=0\n\
             replace_allowed_ips=true\nallowed_ip=10.9.0.9/32\n\n",
            h(5),
            h(2),
            h(3),
            h(0),
            h(2),
            h(0),
        );
        assert_eq!(req.expose(), expected);
        assert!(
            !req.expose().contains(&h(1)),
            "unchanged peer 1 must not be touched"
        );
        // Nothing to do renders nothing.
        let done = parse_get(&get_reply_for(&after), HandshakeClock::SinceEpoch).unwrap();
        assert_eq!(render_set(&plan(&after, &key, &done)), None);
    }

    /// A reply as boringtun would give for a device configured exactly as `s`.
    fn get_reply_for(s: &weft_schema::validate::WireGuard) -> String {
        let key = s.private_key.as_ref().unwrap();
        let mut out = format!(
            "own_public_key={}\nlisten_port={}\n",
            hex::encode(super::super::keys::public_key(key).as_bytes()),
            s.listen_port
        );
        for p in &s.peers {
            out += &format!("public_key={}\n", hex::encode(p.public_key.as_bytes()));
            for net in &p.allowed_ips {
                out += &format!("allowed_ip={net}\n");
            }
            out += "rx_bytes=0\ntx_bytes=0\n";
        }
        out + "errno=0\n\n"
    }

    #[test]
    fn parses_a_boringtun_reply() {
        let reply = format!(
            "own_public_key={}\nlisten_port=51820\nfwmark=0\n\
             public_key={}\npreshared_key={}\npersistent_keepalive_interval=25\n\
             endpoint=192.0.2.1:51820\nallowed_ip=10.9.0.0/24\nallowed_ip=10.9.0.2/32\n\
             last_handshake_time_sec=7\nlast_handshake_time_nsec=500\nrx_bytes=100\ntx_bytes=200\n\
             public_key={}\nrx_bytes=0\ntx_bytes=0\nerrno=0\n\n",
            hex::encode([1; 32]),
            hex::encode([2; 32]),
            hex::encode([0; 32]),
            hex::encode([3; 32]),
        );
        let d = parse_get(&reply, HandshakeClock::Elapsed { now_unix: 1_000 }).unwrap();
        assert_eq!(d.public_key, Some(pk(1)));
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        let p = &d.peers[0];
        assert_eq!(p.public_key, pk(2));
        assert_eq!(p.preshared_key, None);
        assert_eq!(p.persistent_keepalive, 25);
        assert_eq!(p.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(
            p.allowed_ips,
            [
                "10.9.0.0/24".parse::<IpNet>().unwrap(),
                "10.9.0.2/32".parse().unwrap()
            ]
        );
        assert_eq!(
            (p.last_handshake_unix, p.rx_bytes, p.tx_bytes),
            (993, 100, 200)
        );
        assert_eq!(d.peers[1].last_handshake_unix, 0);
        let epoch = parse_get(&reply, HandshakeClock::SinceEpoch).unwrap();
        assert_eq!(epoch.peers[0].last_handshake_unix, 7);
    }

    #[test]
    fn a_private_key_in_a_reply_yields_only_its_public_key() {
        let secret = SecretKey::from_bytes([9; 32]);
        let reply = format!("private_key={}\nerrno=0\n\n", hex::encode([9; 32]));
        let d = parse_get(&reply, HandshakeClock::SinceEpoch).unwrap();
        assert_eq!(d.public_key, Some(super::super::keys::public_key(&secret)));
        assert!(!format!("{d:?}").contains(&hex::encode([9; 32])));
    }

    /// Found by the `uapi_get` fuzz target: a handshake time with trailing blanks does not
    /// parse, and the rewrite must not make it parse.
    #[test]
    fn the_rewrite_keeps_a_refused_handshake_time_refused() {
        let valid = format!(
            "public_key={}\nlast_handshake_time_sec=5\nerrno=0\n\n",
            hex::encode([1; 32])
        );
        let now = std::time::Duration::new(1_000, 0);
        assert!(parse_get(&valid, HandshakeClock::Elapsed { now_unix: 1_000 }).is_ok());
        let reply = valid.replace("=5\n", "=00000    \n");
        assert_eq!(
            parse_get(&reply, HandshakeClock::Elapsed { now_unix: 1_000 }),
            Err(ParseError::BadValue {
                line: 2,
                key: "last_handshake_time_sec".into()
            })
        );
        let rewritten = handshake_elapsed_to_epoch(&reply, now);
        assert_eq!(rewritten.as_str(), reply);
        assert!(parse_get(&rewritten, HandshakeClock::SinceEpoch).is_err());
    }

    #[test]
    fn replies_are_whole_at_errno_and_an_empty_line() {
        assert!(!reply_complete(b""));
        assert!(!reply_complete(b"listen_port=1\n"));
        assert!(!reply_complete(b"listen_port=1\nerrno=0\n"));
        assert!(reply_complete(b"listen_port=1\nerrno=0\n\n"));
        assert!(reply_complete(b"errno=0\n\n"));
        assert!(!reply_complete(b"a=1\n\n"));
        let mut buf = Zeroizing::new(Vec::with_capacity(2));
        push_secret(&mut buf, b"abc");
        push_secret(&mut buf, b"def");
        assert_eq!(&buf[..], b"abcdef");
    }

    #[test]
    fn a_set_request_never_outgrows_its_first_buffer() {
        let mut peers: Vec<Peer> = (1..=50u8)
            .map(|n| {
                let mut p = peer(
                    n,
                    &["ffff:ffff:ffff:ffff:ffff:ffff:ffff:0/112", "10.0.0.0/8"],
                );
                p.endpoint = Some(
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                        .parse()
                        .unwrap(),
                );
                p.persistent_keepalive = Some(65535);
                p.preshared_key = Some(SecretKey::from_bytes([n; 32]));
                p
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        let s = spec(peers);
        let key = s.private_key.clone().unwrap();
        let req = render_set(&plan(&s, &key, &ObservedDevice::default())).unwrap();
        assert!(req.0.len() <= set_request_bound(&plan(&s, &key, &ObservedDevice::default())));
        assert_eq!(
            req.0.capacity(),
            set_request_bound(&plan(&s, &key, &ObservedDevice::default()))
        );
    }

    #[test]
    fn elapsed_handshake_times_become_times() {
        let reply = "listen_port=1\npublic_key=aa\nlast_handshake_time_sec=7\n\
                     last_handshake_time_nsec=500000000\nrx_bytes=1\n\
                     public_key=bb\nrx_bytes=0\nerrno=0\n";
        let now = std::time::Duration::new(1_000, 0);
        assert_eq!(
            handshake_elapsed_to_epoch(reply, now).as_str(),
            "listen_port=1\npublic_key=aa\nlast_handshake_time_sec=992\n\
             last_handshake_time_nsec=500000000\nrx_bytes=1\n\
             public_key=bb\nrx_bytes=0\nerrno=0\n"
        );
    }

    #[test]
    fn bad_replies_are_errors() {
        let cases = [
            ("errno=5\n\n", ParseError::Errno(5)),
            ("listen_port=1\n", ParseError::Truncated),
            ("garbage\n", ParseError::NotKeyValue(1)),
            (
                "listen_port=x\nerrno=0\n",
                ParseError::BadValue {
                    line: 1,
                    key: "listen_port".into(),
                },
            ),
            (
                "rx_bytes=1\nerrno=0\n",
                ParseError::OutsidePeer {
                    line: 1,
                    key: "rx_bytes".into(),
                },
            ),
            (
                "public_key=zz\nerrno=0\n",
                ParseError::BadValue {
                    line: 1,
                    key: "public_key".into(),
                },
            ),
        ];
        for (reply, err) in cases {
            assert_eq!(
                parse_get(reply, HandshakeClock::SinceEpoch),
                Err(err),
                "{reply:?}"
            );
        }
    }
}

#[cfg(test)]
mod props {
    use super::super::plan::tests::{arb_device, arb_spec, expected, normalised};
    use super::super::plan::{plan, ObservedDevice, ObservedPeer};
    use super::*;
    use proptest::prelude::*;

    fn key(hex: &str) -> [u8; 32] {
        hex32(hex).expect("a hex key")
    }

    /// boringtun 0.7's `set=1` (`device/api.rs`), as a model: a peer section's settings carry
    /// over into the next section (only its allowed IPs start empty), a section commits when
    /// the next begins or at the empty line, and changing a peer that exists panics the
    /// device, which the model refuses too.
    fn apply(device: &mut ObservedDevice, request: &str) {
        #[derive(Default)]
        struct Section {
            key: Option<PublicKey>,
            remove: bool,
            endpoint: Option<SocketAddr>,
            keepalive: Option<u16>,
            psk: Option<[u8; 32]>,
            ips: Vec<IpNet>,
        }
        fn commit(device: &mut ObservedDevice, s: &mut Section) {
            let Some(key) = s.key else { return };
            if s.remove {
                device.peers.retain(|p| p.public_key != key);
            } else {
                assert!(
                    device.peers.iter().all(|p| p.public_key != key),
                    "boringtun panics: modifying existing peer {key:?}"
                );
                let mut p = ObservedPeer::new(key);
                p.endpoint = s.endpoint;
                p.persistent_keepalive = s.keepalive.unwrap_or(0);
                p.preshared_key = s.psk.filter(|k| *k != [0; 32]).map(SecretKey::from_bytes);
                p.allowed_ips = s.ips.clone();
                device.peers.push(p);
            }
            s.ips.clear();
        }
        let mut lines = request.lines();
        assert_eq!(lines.next(), Some("set=1"));
        let mut section = Section::default();
        for line in lines {
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once('=').expect("key=value");
            match k {
                "private_key" => {
                    let secret = SecretKey::from_bytes(key(v));
                    device.public_key = Some(super::super::keys::public_key(&secret));
                }
                "listen_port" => device.listen_port = v.parse().unwrap(),
                "public_key" => {
                    commit(device, &mut section);
                    section.key = Some(PublicKey(key(v)));
                }
                "remove" => section.remove = v.parse().unwrap(),
                "preshared_key" => section.psk = Some(key(v)),
                "endpoint" => section.endpoint = Some(v.parse().unwrap()),
                "persistent_keepalive_interval" => section.keepalive = Some(v.parse().unwrap()),
                "replace_allowed_ips" => {}
                "allowed_ip" => section.ips.push(v.parse().unwrap()),
                other => panic!("boringtun refuses {other}"),
            }
        }
        commit(device, &mut section);
    }

    /// A `get=1` reply as boringtun writes one, handshake times as times.
    fn get_reply(device: &ObservedDevice) -> String {
        let mut out = String::new();
        if let Some(k) = device.public_key {
            out += &format!("own_public_key={}\n", hex::encode(k.as_bytes()));
        }
        out += &format!("listen_port={}\nfwmark=0\n", device.listen_port);
        for p in &device.peers {
            out += &format!("public_key={}\n", hex::encode(p.public_key.as_bytes()));
            if let Some(k) = &p.preshared_key {
                out += &format!("preshared_key={}\n", hex::encode(k.expose()));
            }
            if p.persistent_keepalive != 0 {
                out += &format!("persistent_keepalive_interval={}\n", p.persistent_keepalive);
            }
            if let Some(e) = p.endpoint {
                out += &format!("endpoint={e}\n");
            }
            for ip in &p.allowed_ips {
                out += &format!("allowed_ip={ip}\n");
            }
            if p.last_handshake_unix != 0 {
                out += &format!(
                    "last_handshake_time_sec={}\nlast_handshake_time_nsec=0\n",
                    p.last_handshake_unix
                );
            }
            out += &format!("rx_bytes={}\ntx_bytes={}\n", p.rx_bytes, p.tx_bytes);
        }
        out + "errno=0\n\n"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random peer set and device -> plan -> one `set=1` -> (boringtun's semantics) the
        /// device the spec describes, never modifying a peer in place.
        #[test]
        fn a_set_request_takes_any_device_to_the_spec(desired in arb_spec(), before in arb_device()) {
            let key = desired.private_key.clone().unwrap();
            let mut device = before.clone();
            if let Some(req) = render_set(&plan(&desired, &key, &before)) {
                apply(&mut device, req.expose());
            }
            prop_assert_eq!(normalised(device), normalised(expected(&desired, &before)));
        }

        /// Random device -> `get=1` reply -> parse: the same device.
        #[test]
        fn a_get_reply_parses_to_the_device(before in arb_device(), handshake in any::<u32>(), rx in any::<u64>()) {
            let mut device = normalised(before);
            for (i, p) in device.peers.iter_mut().enumerate() {
                p.last_handshake_unix = u64::from(handshake) * (i as u64 % 2);
                p.rx_bytes = rx;
            }
            let parsed = parse_get(&get_reply(&device), HandshakeClock::SinceEpoch).unwrap();
            prop_assert_eq!(normalised(parsed), device);
        }
    }
}
