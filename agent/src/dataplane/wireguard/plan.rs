//! The pure half: the device as observed, the difference between it and the spec, and the
//! status a device reports. Unchanged peers are never touched, so their sessions and their
//! traffic survive an update.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::validate::{Peer, WireGuard};
use weft_schema::{Backend, Overall, PeerStatus, WireGuardStatus};

/// A WireGuard device as read back from the kernel or from boringtun.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedDevice {
    /// `None` until a private key is set.
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub peers: Vec<ObservedPeer>,
}

/// One peer as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPeer {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    /// Sorted and deduplicated, like the validated spec's.
    pub allowed_ips: Vec<IpNet>,
    /// 0 is off.
    pub persistent_keepalive: u16,
    /// `None` when unset or all zeros (the protocol's "no preshared key").
    pub preshared_key: Option<SecretKey>,
    /// Seconds since the epoch, 0 before the first handshake.
    pub last_handshake_unix: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl ObservedPeer {
    /// A peer as a reply first names it: its key, everything else not yet read.
    pub fn new(public_key: PublicKey) -> ObservedPeer {
        ObservedPeer {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: 0,
            preshared_key: None,
            last_handshake_unix: 0,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }
}

/// What must change on a device to make it match the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevicePlan<'a> {
    /// The private key, when the device holds another one (or none).
    pub private_key: Option<&'a SecretKey>,
    /// The listen port, when the device listens on another one.
    pub listen_port: Option<u16>,
    /// Peers the device lacks, in the spec's order.
    pub added: Vec<&'a Peer>,
    /// Peers the device has with other settings, in the spec's order.
    pub changed: Vec<&'a Peer>,
    /// Peers the device has that the spec does not name, sorted.
    pub removed: Vec<PublicKey>,
    /// For changed peers whose spec leaves the endpoint open: the endpoint the device had
    /// learned from their packets. A backend that replaces a changed peer (boringtun)
    /// states it again, so the peer stays reachable before it speaks first.
    pub learned: Vec<(PublicKey, SocketAddr)>,
}

impl DevicePlan<'_> {
    /// The endpoint the device had learned for changed peer `key`.
    pub fn learned(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.learned.iter().find(|(k, _)| k == key).map(|(_, e)| *e)
    }
}

impl DevicePlan<'_> {
    /// True when the device already matches: nothing to send.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
    }

    /// One line for logs and for `LastError`: counts, never keys.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.private_key.is_some() {
            parts.push("private key differs".to_owned());
        }
        if let Some(port) = self.listen_port {
            parts.push(format!("listen port is not {port}"));
        }
        for (n, what) in [
            (self.added.len(), "missing"),
            (self.changed.len(), "different"),
            (self.removed.len(), "extra"),
        ] {
            if n > 0 {
                parts.push(format!("{n} peers {what}"));
            }
        }
        parts.join(", ")
    }
}

/// The plan that takes `observed` to `desired`, whose private key is `key` (the spec's, or the
/// generated one).
pub fn plan<'a>(
    desired: &'a WireGuard,
    key: &'a SecretKey,
    observed: &ObservedDevice,
) -> DevicePlan<'a> {
    let mut plan = DevicePlan::default();
    if observed.public_key != Some(super::keys::public_key(key)) {
        plan.private_key = Some(key);
    }
    if observed.listen_port != desired.listen_port {
        plan.listen_port = Some(desired.listen_port);
    }
    let current: BTreeMap<&PublicKey, &ObservedPeer> =
        observed.peers.iter().map(|p| (&p.public_key, p)).collect();
    for peer in &desired.peers {
        match current.get(&peer.public_key) {
            None => plan.added.push(peer),
            Some(seen) if !peer_matches(peer, seen) => {
                plan.changed.push(peer);
                if let (None, Some(learned)) = (peer.endpoint, seen.endpoint) {
                    plan.learned.push((peer.public_key, learned));
                }
            }
            Some(_) => {}
        }
    }
    let wanted: BTreeSet<&PublicKey> = desired.peers.iter().map(|p| &p.public_key).collect();
    plan.removed = current
        .keys()
        .filter(|k| !wanted.contains(*k))
        .map(|k| **k)
        .collect();
    plan
}

/// Whether a peer on the device has the spec's settings.
fn peer_matches(desired: &Peer, seen: &ObservedPeer) -> bool {
    // An endpoint the spec leaves open is learned from the peer's packets (roaming): any
    // observed value is right. One the spec names must be there.
    let endpoint_ok = desired.endpoint.is_none() || desired.endpoint == seen.endpoint;
    endpoint_ok
        && same_set(&desired.allowed_ips, &seen.allowed_ips)
        && desired.persistent_keepalive.unwrap_or(0) == seen.persistent_keepalive
        && preshared(desired.preshared_key.as_ref()) == preshared(seen.preshared_key.as_ref())
}

/// Whether two lists of networks hold the same networks. Validated specs and parsed devices
/// are both sorted and deduplicated, so this is usually a plain comparison.
fn same_set(a: &[IpNet], b: &[IpNet]) -> bool {
    if a == b {
        return true;
    }
    let norm = |v: &[IpNet]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    norm(a) == norm(b)
}

/// All zeros is what the protocol uses when there is no preshared key.
fn preshared(key: Option<&SecretKey>) -> Option<&SecretKey> {
    key.filter(|k| k.expose() != &[0; 32])
}

/// The status of a device read back from the kernel, compared with the spec.
pub fn status(
    backend: Backend,
    desired: &WireGuard,
    key: &SecretKey,
    observed: &ObservedDevice,
    link_problems: &[String],
) -> WireGuardStatus {
    let diff = plan(desired, key, observed);
    let mut problems: Vec<String> = link_problems.to_vec();
    if !diff.is_empty() {
        problems.push(format!(
            "device {} differs from the spec: {}",
            desired.interface,
            diff.summary()
        ));
    }
    WireGuardStatus {
        overall: if problems.is_empty() {
            Overall::Healthy
        } else {
            Overall::Degraded
        },
        last_error: problems.join("; "),
        backend,
        interface: desired.interface.to_string(),
        public_key: observed
            .public_key
            .map(|k| k.to_base64())
            .unwrap_or_default(),
        listen_port: observed.listen_port,
        peers: observed
            .peers
            .iter()
            .map(|p| PeerStatus {
                public_key: p.public_key.to_base64(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                last_handshake_unix: p.last_handshake_unix,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use weft_schema::validate::IfName;

    /// A network as validation leaves it: truncated to its prefix.
    pub(crate) fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(
                std::net::IpAddr::from(a),
                p
            )
            .unwrap()
            .trunc()),
            (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(
                std::net::IpAddr::from(a),
                p
            )
            .unwrap()
            .trunc()),
        ]
    }

    fn arb_endpoint() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), 1u16..).prop_map(|(a, port)| SocketAddr::from((a, port))),
            (any::<[u8; 16]>(), 1u16..).prop_map(|(a, port)| SocketAddr::from((a, port))),
        ]
    }

    fn arb_secret() -> impl Strategy<Value = SecretKey> {
        any::<[u8; 32]>()
            .prop_filter("all zeros means none", |k| *k != [0; 32])
            .prop_map(SecretKey::from_bytes)
    }

    /// A key from a small pool, so a spec and a device share peers.
    fn pool_key(i: u8) -> PublicKey {
        let mut k = [i; 32];
        k[31] = 0xa5;
        PublicKey(k)
    }

    prop_compose! {
        /// A peer as a validated spec holds it (allowed IPs sorted, deduplicated).
        pub(crate) fn arb_peer(key: u8)(
            endpoint in proptest::option::of(arb_endpoint()),
            mut allowed_ips in vec(arb_net(), 0..12),
            persistent_keepalive in proptest::option::of(1u16..),
            preshared_key in proptest::option::of(arb_secret()),
        ) -> Peer {
            allowed_ips.sort();
            allowed_ips.dedup();
            Peer { public_key: pool_key(key), endpoint, allowed_ips, persistent_keepalive, preshared_key }
        }
    }

    /// Peers with distinct keys from the pool, in a random order.
    pub(crate) fn arb_peers(max: usize) -> impl Strategy<Value = Vec<Peer>> {
        proptest::sample::subsequence((0u8..24).collect::<Vec<_>>(), 0..=max)
            .prop_flat_map(|keys| keys.into_iter().map(arb_peer).collect::<Vec<_>>())
            .prop_shuffle()
    }

    prop_compose! {
        /// What a device might hold: some of the pool's peers with any settings.
        pub(crate) fn arb_device()(
            peers in arb_peers(12),
            listen_port in any::<u16>(),
            public_key in proptest::option::of(any::<[u8; 32]>().prop_map(PublicKey)),
        ) -> ObservedDevice {
            ObservedDevice { public_key, listen_port, peers: peers.iter().map(seen).collect() }
        }
    }

    prop_compose! {
        /// A spec over the pool's peers.
        pub(crate) fn arb_spec()(peers in arb_peers(12), listen_port in 1u16..) -> WireGuard {
            let mut s = spec(peers);
            s.listen_port = listen_port;
            s
        }
    }

    /// What a device holds once `plan` (against `before`) has been carried out correctly.
    pub(crate) fn expected(desired: &WireGuard, before: &ObservedDevice) -> ObservedDevice {
        let mut peers: Vec<ObservedPeer> = desired
            .peers
            .iter()
            .map(|p| {
                let mut o = seen(p);
                // An endpoint the spec leaves open keeps what the device had learned.
                if p.endpoint.is_none() {
                    o.endpoint = before
                        .peers
                        .iter()
                        .find(|b| b.public_key == p.public_key)
                        .and_then(|b| b.endpoint);
                }
                o
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        ObservedDevice {
            public_key: Some(super::super::keys::public_key(
                desired.private_key.as_ref().unwrap(),
            )),
            listen_port: desired.listen_port,
            peers,
        }
    }

    /// `device` with its peers in key order and their allowed IPs normalised, to compare.
    pub(crate) fn normalised(mut device: ObservedDevice) -> ObservedDevice {
        device.peers.sort_by_key(|p| p.public_key);
        for p in &mut device.peers {
            p.allowed_ips.sort();
            p.allowed_ips.dedup();
        }
        device
    }

    pub(crate) fn pk(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    pub(crate) fn peer(n: u8, allowed: &[&str]) -> Peer {
        Peer {
            public_key: pk(n),
            endpoint: None,
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            persistent_keepalive: None,
            preshared_key: None,
        }
    }

    pub(crate) fn spec(peers: Vec<Peer>) -> WireGuard {
        WireGuard {
            interface: IfName::parse("wg0").unwrap(),
            address: "10.9.0.1/24".parse().unwrap(),
            listen_port: 51820,
            private_key: Some(SecretKey::from_bytes([9; 32])),
            peers,
            mtu: 1420,
            default_route: None,
        }
    }

    pub(crate) fn seen(p: &Peer) -> ObservedPeer {
        ObservedPeer {
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.persistent_keepalive.unwrap_or(0),
            preshared_key: p.preshared_key.clone(),
            last_handshake_unix: 0,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    fn device_for(desired: &WireGuard) -> ObservedDevice {
        ObservedDevice {
            public_key: Some(super::super::keys::public_key(
                desired.private_key.as_ref().unwrap(),
            )),
            listen_port: desired.listen_port,
            peers: desired.peers.iter().map(seen).collect(),
        }
    }

    #[test]
    fn a_new_device_needs_everything() {
        let s = spec(vec![peer(1, &["10.9.0.2/32"]), peer(2, &[])]);
        let key = s.private_key.clone().unwrap();
        let p = plan(&s, &key, &ObservedDevice::default());
        assert!(p.private_key.is_some());
        assert_eq!(p.listen_port, Some(51820));
        assert_eq!(p.added.len(), 2);
        assert!(p.changed.is_empty() && p.removed.is_empty());
    }

    #[test]
    fn a_matching_device_needs_nothing() {
        let mut s = spec(vec![peer(1, &["10.9.0.2/32"]), peer(2, &["10.9.1.0/24"])]);
        s.peers[0].endpoint = Some("192.0.2.1:51820".parse().unwrap());
        s.peers[0].persistent_keepalive = Some(25);
        s.peers[1].preshared_key = Some(SecretKey::from_bytes([4; 32]));
        let key = s.private_key.clone().unwrap();
        let p = plan(&s, &key, &device_for(&s));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.summary(), "");
    }

    #[test]
    fn added_changed_removed_and_unchanged_untouched() {
        let before = spec(vec![
            peer(1, &["10.9.0.2/32"]),
            peer(2, &["10.9.0.3/32"]),
            peer(3, &["10.9.0.4/32"]),
        ]);
        let observed = device_for(&before);
        let after = spec(vec![
            peer(1, &["10.9.0.2/32"]),
            peer(3, &["10.9.0.4/32", "10.9.9.0/24"]),
            peer(4, &["10.9.0.5/32"]),
        ]);
        let key = after.private_key.clone().unwrap();
        let p = plan(&after, &key, &observed);
        assert_eq!(p.private_key, None);
        assert_eq!(p.listen_port, None);
        assert_eq!(
            p.added.iter().map(|p| p.public_key).collect::<Vec<_>>(),
            [pk(4)]
        );
        assert_eq!(
            p.changed.iter().map(|p| p.public_key).collect::<Vec<_>>(),
            [pk(3)]
        );
        assert_eq!(p.removed, [pk(2)]);
        assert_eq!(
            p.summary(),
            "1 peers missing, 1 peers different, 1 peers extra"
        );
    }

    #[test]
    fn each_peer_setting_is_compared() {
        let base = spec(vec![peer(1, &["10.9.0.2/32"])]);
        let observed = device_for(&base);
        let key = base.private_key.clone().unwrap();
        let variants: [fn(&mut Peer); 4] = [
            |p| p.endpoint = Some("192.0.2.7:1".parse().unwrap()),
            |p| p.persistent_keepalive = Some(5),
            |p| p.preshared_key = Some(SecretKey::from_bytes([1; 32])),
            |p| p.allowed_ips.clear(),
        ];
        for change in variants {
            let mut s = base.clone();
            change(&mut s.peers[0]);
            assert_eq!(plan(&s, &key, &observed).changed.len(), 1);
        }
    }

    #[test]
    fn a_learned_endpoint_and_zero_settings_are_not_differences() {
        let mut s = spec(vec![peer(1, &["10.9.0.2/32"])]);
        let mut observed = device_for(&s);
        observed.peers[0].endpoint = Some("198.51.100.3:40000".parse().unwrap());
        observed.peers[0].preshared_key = Some(SecretKey::from_bytes([0; 32]));
        s.peers[0].persistent_keepalive = Some(0);
        let key = s.private_key.clone().unwrap();
        assert!(plan(&s, &key, &observed).is_empty());
    }

    #[test]
    fn another_key_or_port_is_a_difference() {
        let s = spec(vec![]);
        let mut observed = device_for(&s);
        observed.listen_port = 1;
        let other = SecretKey::from_bytes([8; 32]);
        let p = plan(&s, &other, &observed);
        assert!(p.private_key.is_some());
        assert_eq!(p.listen_port, Some(51820));
        assert_eq!(p.summary(), "private key differs, listen port is not 51820");
    }

    #[test]
    fn status_reports_the_device_and_degrades_on_difference() {
        let s = spec(vec![peer(1, &["10.9.0.2/32"])]);
        let key = s.private_key.clone().unwrap();
        let mut observed = device_for(&s);
        observed.peers[0].last_handshake_unix = 1_700_000_000;
        observed.peers[0].rx_bytes = 10;
        observed.peers[0].tx_bytes = 20;
        observed.peers[0].endpoint = Some("192.0.2.1:51820".parse().unwrap());
        let st = status(Backend::Userspace, &s, &key, &observed, &[]);
        assert_eq!(st.overall, Overall::Healthy);
        assert_eq!(st.interface, "wg0");
        assert_eq!(st.listen_port, 51820);
        assert_eq!(st.public_key, observed.public_key.unwrap().to_base64());
        assert_eq!(st.peers[0].endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert_eq!(
            (
                st.peers[0].last_handshake_unix,
                st.peers[0].rx_bytes,
                st.peers[0].tx_bytes
            ),
            (1_700_000_000, 10, 20)
        );
        observed.peers.clear();
        let st = status(Backend::Kernel, &s, &key, &observed, &["no route".into()]);
        assert_eq!(st.overall, Overall::Degraded);
        assert_eq!(
            st.last_error,
            "no route; device wg0 differs from the spec: 1 peers missing"
        );
    }
}
