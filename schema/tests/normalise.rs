//! What validation accepts and what it makes of it: overlapping intent merges instead of
//! failing, address families split, defaults are the contract's, and equal intent compares
//! equal however it was spelled.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use support::*;
use weft_schema::validate::{limits, Firewall, PortRange, Protocol, Rule};
use weft_schema::{Encoding, ValidSpec};

fn v4(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn v6(text: &str) -> Ipv6Net {
    text.parse().unwrap()
}

fn ports(ranges: &[(u16, u16)]) -> Vec<PortRange> {
    ranges
        .iter()
        .map(|&(first, last)| PortRange { first, last })
        .collect()
}

fn valid(body: &str) -> ValidSpec {
    accept_json(body).unwrap_or_else(|e| panic!("{body}\n  refused: {e}"))
}

fn only_ingress(body: &str) -> Rule {
    let spec = valid(body);
    assert!(spec.firewall.egress.is_empty());
    assert_eq!(spec.firewall.ingress.len(), 1);
    spec.firewall.ingress.into_iter().next().unwrap()
}

#[test]
fn overlapping_and_duplicate_sources_merge() {
    let rule = only_ingress(
        r#"{"PodId":"web-1","Generation":1,"Firewall":{"Ingress":[{"Sources":[
            "10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8", "10.200.3.4",
            "192.0.2.0/25", "192.0.2.128/25", "198.51.100.77/24",
            "2001:db8::/33", "2001:db8:8000::/33", "2001:db8::1"]}]}}"#,
    );
    // Nested and duplicate networks fold into the widest; adjacent halves join; host bits
    // are dropped; a bare address is a host.
    assert_eq!(
        rule.v4,
        [v4("10.0.0.0/8"), v4("192.0.2.0/24"), v4("198.51.100.0/24")]
    );
    assert_eq!(rule.v6, [v6("2001:db8::/32")]);
    assert_eq!(rule.protocol, Protocol::Any);
    assert!(rule.ports.is_empty());
}

#[test]
fn overlapping_and_duplicate_ports_merge() {
    let rule = only_ingress(
        r#"{"PodId":"web-1","Generation":1,"Firewall":{"Ingress":[{"Protocol":"tcp",
            "Ports":["8000-8080","22","8081","8050-8060","22","443","65535","1-21"]}]}}"#,
    );
    // 1-21 touches 22; 8081 touches 8000-8080; 8050-8060 is inside it.
    assert_eq!(
        rule.ports,
        ports(&[(1, 22), (443, 443), (8000, 8081), (65535, 65535)])
    );
}

#[test]
fn destinations_merge_like_sources() {
    let spec = valid(
        r#"{"PodId":"web-1","Generation":1,"Firewall":{"Egress":[{"Protocol":"udp","Ports":["53","53"],
            "Destinations":["203.0.113.0/26","203.0.113.64/26","203.0.113.128/25","203.0.113.7"]}]}}"#,
    );
    let rule = &spec.firewall.egress[0];
    assert_eq!(rule.v4, [v4("203.0.113.0/24")]);
    assert!(rule.v6.is_empty());
    assert_eq!(rule.ports, ports(&[(53, 53)]));
}

#[test]
fn mixed_families_split() {
    let rule = only_ingress(
        r#"{"PodId":"web-1","Generation":1,"Firewall":{"Ingress":[{"Protocol":"tcp","Ports":["22"],
            "Sources":["2001:db8:1::/48","198.51.100.0/24"]}]}}"#,
    );
    // One rule per family downstream; neither family is lost or widened to "any".
    assert_eq!(rule.v4, [v4("198.51.100.0/24")]);
    assert_eq!(rule.v6, [v6("2001:db8:1::/48")]);
    assert!(!rule.any_address());
}

#[test]
fn empty_sources_mean_any_address() {
    let rule = only_ingress(
        r#"{"PodId":"web-1","Generation":1,"Firewall":{"Ingress":[{"Protocol":"icmpv6"}]}}"#,
    );
    assert!(rule.any_address());
    assert_eq!(rule.protocol, Protocol::Icmpv6);
}

#[test]
fn every_spelling_of_no_firewall_is_the_baseline() {
    let bodies = [
        r#"{"PodId":"web-1","Generation":1}"#,
        r#"{"PodId":"web-1","Generation":1,"Firewall":null}"#,
        r#"{"PodId":"web-1","Generation":1,"Firewall":{}}"#,
        r#"{"PodId":"web-1","Generation":1,"Firewall":{"Ingress":[]}}"#,
        r#"{"PodId":"web-1","Generation":1,"Firewall":{"Ingress":[],"Egress":[]}}"#,
    ];
    let baseline = valid(bodies[0]);
    assert_eq!(baseline.firewall, Firewall::default());
    for body in bodies {
        assert_eq!(valid(body), baseline, "{body}");
    }
    // The same in bincode: absent and empty firewalls validate alike.
    let mut spec = minimal_spec();
    spec.firewall = Some(Default::default());
    let bytes = Encoding::Bincode.encode(&spec);
    assert_eq!(
        accept(Some("application/x-bincode"), None, &bytes).unwrap(),
        baseline
    );
}

#[test]
fn defaults_are_the_contract_s() {
    let spec = valid(
        r#"{"PodId":"web-1","Generation":3,
            "Network":{"Interface":"eth0","Address":"192.0.2.5/24"},
            "Firewall":{"Ingress":[{}],"Egress":[{}]},
            "WireGuard":{"Interface":"wg0","Address":"2001:db8:9::1/64",
                         "Peers":[{"PublicKey":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]}}"#,
    );
    let net = spec.network.unwrap();
    assert_eq!(net.gateway, None);
    assert_eq!(net.mtu, None, "no MTU means leave the link's MTU alone");
    assert!(
        net.nameservers.is_empty(),
        "no nameservers: resolv.conf untouched"
    );
    assert!(net.search_domains.is_empty());
    for rule in [&spec.firewall.ingress[0], &spec.firewall.egress[0]] {
        assert_eq!(rule.protocol, Protocol::Any);
        assert!(rule.ports.is_empty());
        assert!(rule.any_address());
        assert_eq!(rule.comment, None);
    }
    let wg = spec.wireguard.unwrap();
    assert_eq!(wg.listen_port, 51820);
    assert_eq!(wg.mtu, limits::WIREGUARD_MTU);
    assert_eq!(wg.mtu, 1420);
    assert!(
        wg.private_key.is_none(),
        "null: the agent generates and keeps one"
    );
    assert_eq!(wg.address, "2001:db8:9::1/64".parse::<IpNet>().unwrap());
    let peer = &wg.peers[0];
    assert_eq!(peer.endpoint, None);
    assert!(peer.allowed_ips.is_empty());
    assert_eq!(peer.persistent_keepalive, None);
    assert!(peer.preshared_key.is_none());
}

#[test]
fn values_are_typed_as_written() {
    let spec = valid(&String::from_utf8(Encoding::Json.encode(&full_spec())).unwrap());
    let net = spec.network.as_ref().unwrap();
    assert_eq!(net.interface.as_str(), "eth0");
    // The pod address keeps its host bits: it is an interface address, not a network.
    assert_eq!(net.address, v4("192.0.2.5/24"));
    assert_eq!(net.address.addr(), Ipv4Addr::new(192, 0, 2, 5));
    assert_eq!(net.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(net.mtu, Some(1500));
    assert_eq!(
        net.nameservers,
        [
            "192.0.2.53".parse::<IpAddr>().unwrap(),
            "2001:db8::53".parse().unwrap()
        ]
    );
    let wg = spec.wireguard.as_ref().unwrap();
    assert_eq!(wg.listen_port, 51821);
    assert_eq!(wg.mtu, 1380);
    assert_eq!(wg.address, "10.9.0.1/24".parse::<IpNet>().unwrap());
    assert_eq!(
        wg.private_key.as_ref().unwrap().expose_base64(),
        secret_key(0x11)
    );
    let [p0, p1] = &wg.peers[..] else {
        panic!("two peers")
    };
    assert_eq!(p0.public_key.to_base64(), public_key(0x21));
    assert_eq!(
        p0.endpoint,
        Some("203.0.113.10:51820".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(p0.persistent_keepalive, Some(25));
    assert_eq!(
        p0.preshared_key.as_ref().unwrap().expose_base64(),
        secret_key(0x31)
    );
    assert_eq!(
        p1.endpoint,
        Some("[2001:db8::10]:51820".parse::<SocketAddr>().unwrap())
    );
    let comments: Vec<_> = spec
        .firewall
        .ingress
        .iter()
        .chain(&spec.firewall.egress)
        .map(|r| r.comment.as_deref())
        .collect();
    assert_eq!(
        comments,
        [Some("ssh and app"), None, Some("no metadata"), None]
    );
}

#[test]
fn allowed_ips_are_truncated_sorted_and_deduplicated() {
    let spec = valid(&format!(
        r#"{{"PodId":"web-1","Generation":1,"WireGuard":{{"Interface":"wg0","Address":"10.9.0.1/24",
            "Peers":[{{"PublicKey":"{}","PersistentKeepaliveSeconds":0,
            "AllowedIps":["10.9.0.3/32","2001:db8:9::7/64","10.9.0.2","10.9.0.3/32","10.9.1.9/24"]}}]}}}}"#,
        public_key(1)
    ));
    let peer = &spec.wireguard.unwrap().peers[0];
    let want: Vec<IpNet> = [
        "10.9.0.2/32",
        "10.9.0.3/32",
        "10.9.1.0/24",
        "2001:db8:9::/64",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert_eq!(peer.allowed_ips, want);
    assert_eq!(
        peer.persistent_keepalive,
        Some(0),
        "0 is kept: it means off"
    );
}

#[test]
fn bounds_are_inclusive() {
    let spec = valid(&format!(
        r#"{{"PodId":"{pod}","Generation":9007199254740991,
            "Network":{{"Interface":"{if15}","Address":"192.0.2.5/24","Mtu":576,
                       "SearchDomains":["{d253}","example.org."]}},
            "Firewall":{{"Ingress":[{{"Protocol":"tcp","Ports":["1-65535"],"Comment":"{c128}"}}]}},
            "WireGuard":{{"Interface":"wg0","Address":"10.9.0.1/24","ListenPort":65535,"Mtu":65535,
                         "Peers":[{{"PublicKey":"{key}","Endpoint":"203.0.113.1:65535",
                                    "PersistentKeepaliveSeconds":65535}}]}}}}"#,
        pod = POD,
        if15 = "e".repeat(15),
        // Four labels of 63, 63, 63 and 61 characters: 253 with the dots.
        d253 = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        ]
        .join("."),
        c128 = "\u{20ac}".repeat(42) + "xy",
        key = public_key(9),
    ));
    assert_eq!(spec.generation, (1 << 53) - 1);
    let net = spec.network.unwrap();
    assert_eq!(net.mtu, Some(576));
    assert_eq!(
        net.search_domains[1], "example.org",
        "the root dot is dropped"
    );
    assert_eq!(spec.firewall.ingress[0].ports, ports(&[(1, 65535)]));
    let wg = spec.wireguard.unwrap();
    assert_eq!((wg.listen_port, wg.mtu), (65535, 65535));
    assert_eq!(wg.peers[0].persistent_keepalive, Some(65535));

    // One more than each of those is refused (see rejects.rs for the messages).
    let d254 = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(62),
    ]
    .join(".");
    let err = accept_json(&format!(
        r#"{{"PodId":"{}","Generation":1,"Network":{{"Interface":"eth0","Address":"192.0.2.5/24","SearchDomains":["{d254}"]}}}}"#,
        "p".repeat(64)
    ))
    .unwrap_err();
    assert!(err.starts_with("PodId: "), "{err}");
    assert!(err.contains("Network.SearchDomains[0]"), "{err}");
    // One message locks no pod out: a generation no JSON decoder keeps exact is refused.
    for too_big in ["9007199254740992", "18446744073709551615"] {
        let err =
            accept_json(&format!(r#"{{"PodId":"web-1","Generation":{too_big}}}"#)).unwrap_err();
        assert_eq!(
            err,
            format!(
                "Generation: {too_big} is above 2^53 - 1 (9007199254740991), the largest \
                 integer every JSON decoder keeps exact"
            )
        );
    }
}

#[test]
fn equal_intent_validates_equal() {
    // Two control planes writing the same policy differently must not make the agent
    // see a change (and so re-apply, or refuse a re-sent generation).
    let a = valid(
        r#"{"PodId":"web-1","Generation":5,"Firewall":{"Ingress":[{"Protocol":"tcp",
            "Ports":["80","443","81-90"],"Sources":["198.51.100.0/25","198.51.100.128/25"]}]}}"#,
    );
    let b = valid(
        r#"{"Firewall":{"Ingress":[{"Sources":["198.51.100.9/24"],"Protocol":"tcp",
            "Ports":["443","80-90","85"]}]},"Generation":5,"PodId":"web-1"}"#,
    );
    assert_eq!(a, b);
}

#[test]
fn headers_are_read_as_the_contract_says() {
    let body = br#"{"PodId":"web-1","Generation":1}"#;
    for content_type in [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
        Some(" application/json ;charset=UTF-8"),
    ] {
        for schema in [None, Some("1"), Some(" 1 ")] {
            assert!(
                accept(content_type, schema, body).is_ok(),
                "{content_type:?} {schema:?}"
            );
        }
    }
    let bincode = Encoding::Bincode.encode(&minimal_spec());
    for content_type in ["application/x-bincode", "application/x-bincode; v=2"] {
        assert_eq!(
            accept(Some(content_type), Some("1"), &bincode).unwrap(),
            accept(None, None, body).unwrap()
        );
    }
}
