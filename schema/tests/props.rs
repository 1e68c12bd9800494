//! Property tests: whatever arrives (random bytes, damaged valid bodies, valid bodies with
//! wrong values in them) decoding and validation never panic; anything that decodes
//! re-encodes to itself in both encodings; anything that validates satisfies the invariants
//! the dataplane relies on, and is a fixed point: its typed values, written back as a spec,
//! validate to the same thing, and `weft.schema.json` takes it too. A few seconds in the
//! normal test run; the fuzz target in `schema/fuzz` goes further.

mod support;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;
use support::json_schema;
use support::*;
use weft_schema::validate::{limits, Protocol, Rule};
use weft_schema::{
    DecodeError, EgressRule, Encoding, FirewallSpec, IngressRule, NetworkSpec, PeerSpec, PodSpec,
    Secret, ValidSpec, ValidationErrors, WireGuardSpec,
};

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::Bincode];

static SCHEMA: LazyLock<Value> = LazyLock::new(json_schema::load);

/// Decodes `body` as `encoding`, then checks everything that follows from what it holds.
fn check_body(encoding: Encoding, body: &[u8]) {
    match encoding.decode::<PodSpec>(body) {
        Ok(spec) => check_spec(&spec),
        Err(e) => check_decode_error(&e),
    }
}

fn check_decode_error(err: &DecodeError) {
    let line = err.to_line();
    assert!(!line.is_empty());
    assert!(!line.contains('\n'), "errors are one line: {line:?}");
}

/// A decoded spec: round trips in both encodings, then validation.
fn check_spec(spec: &PodSpec) {
    for encoding in ENCODINGS {
        let again: PodSpec = encoding
            .decode(&encoding.encode(spec))
            .unwrap_or_else(|e| panic!("{encoding} re-decode failed: {}", e.to_line()));
        assert_eq!(&again, spec, "{encoding} round trip changed the spec");
    }
    match ValidSpec::validate(spec, &pod()) {
        Ok(valid) => {
            // The JSON Schema may be looser than validation, never stricter.
            let doc = serde_json::to_value(spec).unwrap();
            if let Err(e) = json_schema::check(&SCHEMA, "PodSpec", &doc) {
                panic!("the agent takes a spec weft.schema.json refuses: {e:?}");
            }
            check_invariants(&valid);
            // Normalisation is idempotent: the typed values written back as a spec validate
            // to the very same values.
            let canonical = render(&valid);
            let again = ValidSpec::validate(&canonical, &pod())
                .unwrap_or_else(|e| panic!("the normal form of a valid spec is refused: {e}"));
            assert_eq!(again, valid, "normalising twice changed the spec");
        }
        Err(errs) => check_validation_errors(spec, &errs),
    }
}

fn check_validation_errors(spec: &PodSpec, errs: &ValidationErrors) {
    assert!(errs.total >= 1);
    assert!(!errs.errors.is_empty());
    assert!(errs.errors.len() <= ValidationErrors::KEPT);
    assert!(errs.errors.len() <= errs.total);
    let line = errs.to_string();
    assert!(!line.contains('\n'), "errors are one line: {line:?}");
    for e in &errs.errors {
        assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}");
    }
    // Secrets never show up in an error, even wrong ones. (The generators draw public and
    // secret keys from one pool: a public key may legitimately be quoted.)
    if let Some(wg) = &spec.wireguard {
        let public: HashSet<&str> = wg.peers.iter().map(|p| p.public_key.as_str()).collect();
        let secrets = wg
            .private_key
            .iter()
            .chain(wg.peers.iter().filter_map(|p| p.preshared_key.as_ref()))
            .map(Secret::expose)
            .filter(|s| s.len() >= 12 && !public.iter().any(|p| p.contains(s)));
        for secret in secrets {
            assert!(!line.contains(secret), "a key in {line}");
        }
    }
}

/// What the dataplane may take for granted in a `ValidSpec`.
fn check_invariants(v: &ValidSpec) {
    assert_eq!(v.pod_id.as_str(), POD);
    assert!(v.generation >= 1);
    if let Some(n) = &v.network {
        assert!((1..=15).contains(&n.interface.as_str().len()));
        if let Some(mtu) = n.mtu {
            assert!((limits::MTU_MIN..=limits::MTU_MAX).contains(&mtu));
        }
        if let Some(a) = n.address6 {
            let first = a.addr().segments()[0];
            assert!(first & 0xffc0 != 0xfe80 && first & 0xff00 != 0xff00, "{a}");
        }
        if let Some(g) = n.gateway6 {
            assert!(n.address6.is_some() && !g.is_multicast() && !g.is_unspecified());
        }
        assert!(n.nameservers.len() <= limits::NAMESERVERS);
        assert!(n.search_domains.len() <= limits::SEARCH_DOMAINS);
        for d in &n.search_domains {
            assert!(
                !d.is_empty() && d.len() <= 253 && !d.ends_with('.'),
                "{d:?}"
            );
            assert!(!d.chars().any(|c| c.is_whitespace() || c.is_control()));
        }
    }
    for rules in [&v.firewall.ingress, &v.firewall.egress] {
        assert!(rules.len() <= limits::RULES_PER_DIRECTION);
        for rule in rules {
            check_rule(rule);
        }
    }
    if let Some(wg) = &v.wireguard {
        assert!(wg.listen_port >= 1);
        assert!((limits::MTU_MIN..=limits::MTU_MAX).contains(&wg.mtu));
        assert!(wg.peers.len() <= limits::PEERS);
        let keys: HashSet<_> = wg.peers.iter().map(|p| p.public_key).collect();
        assert_eq!(keys.len(), wg.peers.len(), "peer keys are unique");
        if let Some(n) = &v.network {
            assert_ne!(n.interface, wg.interface);
        }
        for p in &wg.peers {
            assert!(p.allowed_ips.len() <= limits::ALLOWED_IPS_PER_PEER);
            assert!(
                p.allowed_ips.windows(2).all(|w| w[0] < w[1]),
                "sorted, unique"
            );
            assert!(p.allowed_ips.iter().all(|n| *n == n.trunc()));
            assert!(p.endpoint.is_none_or(|e| e.port() != 0));
            if let (Some(u), Some(e)) = (&wg.default_route, p.endpoint) {
                assert!(u.gateway_for(e.ip()).is_some(), "{e} has a way out");
            }
        }
        if let Some(u) = &wg.default_route {
            assert_eq!(Some(&u.interface), v.network.as_ref().map(|n| &n.interface));
        }
    }
}

fn check_rule(rule: &Rule) {
    if !rule.protocol.has_ports() {
        assert!(rule.ports.is_empty(), "ports only with tcp/udp: {rule:?}");
    }
    assert!(rule.ports.len() <= limits::PORTS_PER_RULE);
    for p in &rule.ports {
        assert!(1 <= p.first && p.first <= p.last, "{p:?}");
    }
    // Sorted and merged: each range starts past the end of the one before, with a gap.
    for w in rule.ports.windows(2) {
        assert!(
            u32::from(w[0].last) + 1 < u32::from(w[1].first),
            "{:?}",
            rule.ports
        );
    }
    // Sorted, truncated, no network inside another.
    for w in rule.v4.windows(2) {
        assert!(w[0] < w[1] && !w[0].contains(&w[1]) && !w[1].contains(&w[0]));
    }
    for w in rule.v6.windows(2) {
        assert!(w[0] < w[1] && !w[0].contains(&w[1]) && !w[1].contains(&w[0]));
    }
    assert!(rule.v4.iter().all(|n| *n == n.trunc()));
    assert!(rule.v6.iter().all(|n| *n == n.trunc()));
    match rule.protocol {
        Protocol::Icmp => assert!(rule.v6.is_empty()),
        Protocol::Icmpv6 => assert!(rule.v4.is_empty()),
        _ => {}
    }
    if let Some(c) = &rule.comment {
        assert!(c.len() <= limits::COMMENT_BYTES && !c.chars().any(char::is_control));
    }
}

/// A valid spec written back as wire strings, the way a control plane could send it.
fn render(v: &ValidSpec) -> PodSpec {
    fn strings<T: ToString>(items: &[T]) -> Vec<String> {
        items.iter().map(T::to_string).collect()
    }
    fn addrs(rule: &Rule) -> Vec<String> {
        let mut out = strings(&rule.v4);
        out.extend(strings(&rule.v6));
        out
    }
    PodSpec {
        pod_id: v.pod_id.to_string(),
        generation: v.generation,
        not_after_unix: v.not_after_unix,
        network: v.network.as_ref().map(|n| NetworkSpec {
            interface: n.interface.to_string(),
            address: n.address.to_string(),
            gateway: n.gateway.map(|g| g.to_string()),
            address6: n.address6.map(|a| a.to_string()),
            gateway6: n.gateway6.map(|g| g.to_string()),
            mtu: n.mtu,
            nameservers: strings(&n.nameservers),
            search_domains: n.search_domains.clone(),
        }),
        firewall: Some(FirewallSpec {
            ingress: v
                .firewall
                .ingress
                .iter()
                .map(|r| IngressRule {
                    protocol: r.protocol.as_str().into(),
                    ports: strings(&r.ports),
                    sources: addrs(r),
                    comment: r.comment.clone(),
                })
                .collect(),
            egress: v
                .firewall
                .egress
                .iter()
                .map(|r| EgressRule {
                    protocol: r.protocol.as_str().into(),
                    ports: strings(&r.ports),
                    destinations: addrs(r),
                    comment: r.comment.clone(),
                })
                .collect(),
        }),
        wireguard: v.wireguard.as_ref().map(|w| WireGuardSpec {
            interface: w.interface.to_string(),
            address: w.address.to_string(),
            listen_port: w.listen_port.into(),
            private_key: w
                .private_key
                .as_ref()
                .map(|k| Secret::new(k.expose_base64())),
            peers: w
                .peers
                .iter()
                .map(|p| PeerSpec {
                    public_key: p.public_key.to_base64(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    allowed_ips: strings(&p.allowed_ips),
                    persistent_keepalive_seconds: p.persistent_keepalive.map(u32::from),
                    preshared_key: p
                        .preshared_key
                        .as_ref()
                        .map(|k| Secret::new(k.expose_base64())),
                })
                .collect(),
            mtu: Some(w.mtu),
            default_route: w.default_route.as_ref().map(|_| true),
        }),
    }
}

/// Valid specs to damage: the golden ones and a busier variant.
fn seeds() -> Vec<PodSpec> {
    let mut busy = full_spec();
    let fw = busy.firewall.as_mut().unwrap();
    fw.ingress[0].ports = vec!["1-100".into(), "50-200".into(), "65535".into()];
    fw.ingress[0].sources = vec!["10.0.0.0/8".into(), "10.1.2.3".into(), "::/0".into()];
    busy.network.as_mut().unwrap().gateway = None;
    vec![full_spec(), minimal_spec(), busy]
}

/// One byte-level damage.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    Extend(Vec<u8>),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| ByteEdit::Flip(i, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        2 => any::<Index>().prop_map(ByteEdit::Remove),
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
        1 => vec(any::<u8>(), 1..8).prop_map(ByteEdit::Extend),
    ]
}

fn apply_edits(mut body: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        if body.is_empty() {
            body.push(0);
        }
        match edit {
            ByteEdit::Flip(i, bit) => {
                let i = i.index(body.len());
                body[i] ^= 1 << bit;
            }
            ByteEdit::Set(i, b) => {
                let i = i.index(body.len());
                body[i] = *b;
            }
            ByteEdit::Insert(i, b) => {
                let i = i.index(body.len() + 1);
                body.insert(i, *b);
            }
            ByteEdit::Remove(i) => {
                let i = i.index(body.len());
                body.remove(i);
            }
            ByteEdit::Truncate(i) => {
                let i = i.index(body.len());
                body.truncate(i);
            }
            ByteEdit::Extend(tail) => body.extend_from_slice(tail),
        }
    }
    body
}

// ---- Strategies for values that are valid, nearly valid, or plainly wrong. ----

/// Prefix lengths up to one past the largest, so that a few are wrong.
fn v4_cidr() -> impl Strategy<Value = String> {
    (any::<u32>(), prop_oneof![20 => 0u8..=32, 1 => Just(33u8)])
        .prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a)))
}

fn v6_cidr() -> impl Strategy<Value = String> {
    (
        any::<u128>(),
        prop_oneof![20 => 0u8..=128, 1 => Just(129u8)],
    )
        .prop_map(|(a, p)| format!("{}/{p}", Ipv6Addr::from(a)))
}

/// Addresses clustered in a few networks, so that merging has work to do.
fn near_cidr() -> impl Strategy<Value = String> {
    (0u8..4, any::<u8>(), 20u8..=32).prop_map(|(net, host, p)| format!("10.{net}.0.{host}/{p}"))
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => near_cidr(),
        2 => v4_cidr(),
        2 => v6_cidr(),
        1 => any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        1 => any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
    ]
}

/// Mostly `valid`, sometimes junk: a list of a few entries is then valid often enough for
/// the valid paths to be exercised too.
fn mostly(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![15 => valid, 1 => junk()]
}

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("db.example".to_owned()),
        Just("10.0.0.0/8 ".to_owned()),
        Just("1.2.3.4.5".to_owned()),
        "\\PC{0,12}",
        "[ -~]{0,20}",
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (1u32..=65535).prop_map(|p| p.to_string()),
        6 => (1u32..=65535, 0u32..2000).prop_map(|(a, n)| format!("{a}-{}", (a + n).min(65535))),
        1 => (0u32..=70_000, 0u32..=70_000).prop_map(|(a, b)| format!("{a}-{b}")),
        1 => any::<u32>().prop_map(|p| p.to_string()),
    ]
}

fn protocol() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("tcp"),
        3 => Just("udp"),
        2 => Just("icmp"),
        2 => Just("icmpv6"),
        3 => Just("any"),
        1 => Just("TCP"),
        1 => Just(""),
    ]
    .prop_map(str::to_owned)
}

fn comment() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        8 => "[ -~]{0,40}",
        1 => "[ -~]{120,140}",
        1 => "\\PC{0,50}",
        1 => Just("a\nb".to_owned()),
    ])
}

/// Mostly `usual`, sometimes the other subsystem's usual name, sometimes anything.
fn ifname(usual: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => Just(usual.to_owned()),
        1 => Just("eth0".to_owned()),
        1 => Just("wg0".to_owned()),
        2 => "[a-z0-9]{1,16}",
        1 => junk(),
    ]
}

/// A key from a small pool, so duplicate peers happen; or something that is not a key.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (0u8..12).prop_map(public_key),
        1 => Just("AAAAAAAAAAAAAAAAAAAAAA==".to_owned()),
        1 => "[A-Za-z0-9+/=]{40,46}",
        1 => junk(),
    ]
}

fn bound_u32(lo: u32, hi: u32) -> impl Strategy<Value = u32> {
    prop_oneof![12 => lo..=hi, 1 => Just(0u32), 1 => Just(hi + 1), 1 => any::<u32>()]
}

fn network_spec() -> impl Strategy<Value = NetworkSpec> {
    (
        ifname("eth0"),
        prop_oneof![8 => v4_cidr(), 1 => v6_cidr(), 1 => junk()],
        prop::option::of(mostly(
            any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        )),
        prop::option::of(bound_u32(576, 65535)),
        vec(
            mostly(prop_oneof![
                any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
                any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
            ]),
            0..5,
        ),
        vec(
            mostly("[a-z0-9_-]{1,20}(\\.[a-z]{2,6}){0,3}\\.?".boxed()),
            0..8,
        ),
        prop::option::of(prop_oneof![6 => v6_cidr(), 1 => v4_cidr(), 1 => Just("fe80::5/64".to_owned()), 1 => junk()]),
        prop::option::of(mostly(prop_oneof![
            any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
            Just("fe80::1".to_owned()),
            Just("ff02::1".to_owned()),
        ])),
    )
        .prop_map(
            |(interface, address, gateway, mtu, nameservers, search_domains, address6, gateway6)| {
                NetworkSpec {
                    interface,
                    address,
                    gateway,
                    address6,
                    gateway6,
                    mtu,
                    nameservers,
                    search_domains,
                }
            },
        )
}

fn ingress_rule() -> impl Strategy<Value = IngressRule> {
    let ports = prop_oneof![vec(mostly(port()), 0..5), Just(vec![])];
    (protocol(), ports, vec(mostly(cidr()), 0..5), comment()).prop_map(
        |(protocol, ports, sources, comment)| IngressRule {
            protocol,
            ports,
            sources,
            comment,
        },
    )
}

fn egress_rule() -> impl Strategy<Value = EgressRule> {
    ingress_rule().prop_map(|r| EgressRule {
        protocol: r.protocol,
        ports: r.ports,
        destinations: r.sources,
        comment: r.comment,
    })
}

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (any::<u32>(), any::<u16>()).prop_map(|(a, p)| format!("{}:{p}", Ipv4Addr::from(a))),
        4 => (any::<u128>(), any::<u16>()).prop_map(|(a, p)| format!("[{}]:{p}", Ipv6Addr::from(a))),
        1 => Just("vpn.example:51820".to_owned()),
        1 => junk(),
    ]
}

fn peer_spec() -> impl Strategy<Value = PeerSpec> {
    (
        key(),
        prop::option::of(endpoint()),
        vec(mostly(cidr()), 0..4),
        prop::option::of(bound_u32(0, 65535)),
        prop::option::of(key()),
    )
        .prop_map(
            |(public_key, endpoint, allowed_ips, keepalive, psk)| PeerSpec {
                public_key,
                endpoint,
                allowed_ips,
                persistent_keepalive_seconds: keepalive,
                preshared_key: psk.map(Secret::new),
            },
        )
}

fn wireguard_spec() -> impl Strategy<Value = WireGuardSpec> {
    (
        ifname("wg0"),
        prop_oneof![4 => v4_cidr(), 4 => v6_cidr(), 1 => junk()],
        bound_u32(1, 65535),
        prop::option::of(key()),
        vec(peer_spec(), 0..5),
        prop::option::of(bound_u32(576, 65535)),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(interface, address, listen_port, private_key, peers, mtu, default_route)| {
                WireGuardSpec {
                    interface,
                    address,
                    listen_port,
                    private_key: private_key.map(Secret::new),
                    peers,
                    mtu,
                    default_route,
                }
            },
        )
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        prop_oneof![8 => Just(POD.to_owned()), 1 => Just("web-2".to_owned()), 1 => junk()],
        prop_oneof![16 => 1u64..=limits::GENERATION_MAX, 1 => Just(0u64), 1 => limits::GENERATION_MAX + 1..],
        prop::option::of(network_spec()),
        prop::option::of(
            (vec(ingress_rule(), 0..4), vec(egress_rule(), 0..4))
                .prop_map(|(ingress, egress)| FirewallSpec { ingress, egress }),
        ),
        prop::option::of(wireguard_spec()),
    )
        .prop_map(
            |(pod_id, generation, network, firewall, wireguard)| PodSpec {
                pod_id,
                generation,
                not_after_unix: None,
                network,
                firewall,
                wireguard,
            },
        )
}

// ---- Strategies for specs that are valid by construction. ----

fn any_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
    ]
}

fn good_v4() -> impl Strategy<Value = String> {
    prop_oneof![
        near_cidr(),
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a))),
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
    ]
}

fn good_v6() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u16..4, any::<u16>(), 100u8..=128)
            .prop_map(|(n, h, p)| format!("2001:db8:{n}::{h:x}/{p}")),
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| format!("{}/{p}", Ipv6Addr::from(a))),
    ]
}

fn good_port() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..=65535).prop_map(|p| p.to_string()),
        (1u32..=65535, 0u32..2000).prop_map(|(a, n)| format!("{a}-{}", (a + n).min(65535))),
    ]
}

/// (protocol, ports, addresses, comment) that make a valid rule together.
fn good_rule() -> impl Strategy<Value = (String, Vec<String>, Vec<String>, Option<String>)> {
    let comment = prop::option::of("[ -~]{0,128}");
    prop_oneof![
        (
            prop_oneof![Just("tcp"), Just("udp")],
            vec(good_port(), 0..6),
            vec(prop_oneof![good_v4(), good_v6()], 0..6),
            comment.clone(),
        )
            .prop_map(|(p, ports, a, c)| (p.to_owned(), ports, a, c)),
        (
            vec(prop_oneof![good_v4(), good_v6()], 0..6),
            comment.clone()
        )
            .prop_map(|(a, c)| ("any".to_owned(), vec![], a, c)),
        (vec(good_v4(), 0..4), comment.clone()).prop_map(|(a, c)| (
            "icmp".to_owned(),
            vec![],
            a,
            c
        )),
        (vec(good_v6(), 0..4), comment).prop_map(|(a, c)| ("icmpv6".to_owned(), vec![], a, c)),
    ]
}

fn good_firewall() -> impl Strategy<Value = FirewallSpec> {
    (vec(good_rule(), 0..5), vec(good_rule(), 0..5)).prop_map(|(ingress, egress)| FirewallSpec {
        ingress: ingress
            .into_iter()
            .map(|(protocol, ports, sources, comment)| IngressRule {
                protocol,
                ports,
                sources,
                comment,
            })
            .collect(),
        egress: egress
            .into_iter()
            .map(|(protocol, ports, destinations, comment)| EgressRule {
                protocol,
                ports,
                destinations,
                comment,
            })
            .collect(),
    })
}

fn good_network() -> impl Strategy<Value = NetworkSpec> {
    (
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a))),
        prop::option::of(any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string())),
        prop::option::of(576u32..=65535),
        vec(any_ip(), 0..=3),
        vec("[a-z0-9_-]{1,20}(\\.[a-z]{2,6}){0,3}\\.?", 0..=6),
        prop::option::of((
            (0u16..4, any::<u16>(), 1u8..=128)
                .prop_map(|(n, h, p)| format!("2001:db8:{n}::{h:x}/{p}")),
            prop::option::of(prop_oneof![
                Just("fe80::1".to_owned()),
                (0u16..4).prop_map(|n| format!("2001:db8:{n}::1")),
            ]),
        )),
    )
        .prop_map(
            |(address, gateway, mtu, nameservers, search_domains, v6)| NetworkSpec {
                interface: "eth0".into(),
                address,
                gateway,
                address6: v6.as_ref().map(|(a, _)| a.clone()),
                gateway6: v6.and_then(|(_, g)| g),
                mtu,
                nameservers,
                search_domains,
            },
        )
}

fn good_endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u32>(), 1u16..).prop_map(|(a, p)| format!("{}:{p}", Ipv4Addr::from(a))),
        (any::<u128>(), 1u16..).prop_map(|(a, p)| format!("[{}]:{p}", Ipv6Addr::from(a))),
    ]
}

fn good_wireguard() -> impl Strategy<Value = WireGuardSpec> {
    let peer = (
        prop::option::of(good_endpoint()),
        vec(prop_oneof![good_v4(), good_v6()], 0..5),
        prop::option::of(0u32..=65535),
        prop::option::of(any::<u8>()),
    );
    (
        prop_oneof![good_v4(), good_v6()].prop_filter("a CIDR", |a| a.contains('/')),
        1u32..=65535,
        prop::option::of(any::<u8>()),
        vec(peer, 0..6),
        prop::option::of(576u32..=65535),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(address, listen_port, private_key, peers, mtu, default_route)| WireGuardSpec {
                interface: "wg0".into(),
                address,
                listen_port,
                private_key: private_key.map(|n| Secret::new(secret_key(n))),
                peers: peers
                    .into_iter()
                    .enumerate()
                    .map(|(i, (endpoint, allowed_ips, keepalive, psk))| PeerSpec {
                        public_key: public_key(i as u8),
                        endpoint,
                        allowed_ips,
                        persistent_keepalive_seconds: keepalive,
                        preshared_key: psk.map(|n| Secret::new(secret_key(n))),
                    })
                    .collect(),
                mtu,
                default_route,
            },
        )
}

fn good_pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        1u64..=limits::GENERATION_MAX,
        prop::option::of(good_network()),
        prop::option::of(good_firewall()),
        prop::option::of(good_wireguard()),
    )
        .prop_map(|(generation, mut network, firewall, mut wireguard)| {
            // DefaultRoute needs a way out for every endpoint: the Network gateways.
            if let Some(w) = wireguard.as_mut().filter(|w| w.default_route == Some(true)) {
                match network.as_mut() {
                    None => w.default_route = None,
                    Some(n) => {
                        n.gateway.get_or_insert_with(|| "192.0.2.1".into());
                        if n.gateway6.is_none() {
                            n.address6 = Some("2001:db8::5/64".into());
                            n.gateway6 = Some("fe80::1".into());
                        }
                    }
                }
            }
            PodSpec {
                pod_id: POD.into(),
                generation,
                not_after_unix: None,
                network,
                firewall,
                wireguard,
            }
        })
}

/// A JSON value to put where another was.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop_oneof![cidr(), port(), protocol(), key(), junk()].prop_map(Value::String),
        vec(prop_oneof![cidr(), port()], 0..4).prop_map(Value::from),
        Just(Value::Object(Default::default())),
    ]
}

/// One structural change to a JSON tree.
#[derive(Clone, Debug)]
enum TreeEdit {
    Replace(Value),
    RemoveKey,
    AddKey(String, Value),
}

fn tree_edit() -> impl Strategy<Value = TreeEdit> {
    prop_oneof![
        6 => json_value().prop_map(TreeEdit::Replace),
        2 => Just(TreeEdit::RemoveKey),
        1 => (prop_oneof![Just("Source".to_owned()), "[A-Z][a-z]{0,8}"], json_value())
            .prop_map(|(k, v)| TreeEdit::AddKey(k, v)),
    ]
}

/// Walks `path` down the tree (each index picks a child) and applies `edit` there.
fn edit_tree(value: &mut Value, path: &[Index], edit: &TreeEdit) {
    if let Some((step, rest)) = path.split_first() {
        match value {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(step.index(map.len())).unwrap().clone();
                let child = map.get_mut(&key).unwrap();
                let descend = !rest.is_empty() && (child.is_object() || child.is_array());
                if descend {
                    return edit_tree(child, rest, edit);
                }
                match edit {
                    TreeEdit::Replace(v) => *child = v.clone(),
                    TreeEdit::RemoveKey => {
                        map.remove(&key);
                    }
                    TreeEdit::AddKey(k, v) => {
                        map.insert(k.clone(), v.clone());
                    }
                }
                return;
            }
            Value::Array(items) if !items.is_empty() => {
                let i = step.index(items.len());
                if !rest.is_empty() && (items[i].is_object() || items[i].is_array()) {
                    return edit_tree(&mut items[i], rest, edit);
                }
                match edit {
                    TreeEdit::Replace(v) => items[i] = v.clone(),
                    TreeEdit::RemoveKey => {
                        items.remove(i);
                    }
                    TreeEdit::AddKey(_, v) => items.push(v.clone()),
                }
                return;
            }
            _ => {}
        }
    }
    if let TreeEdit::Replace(v) = edit {
        *value = v.clone();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(body in vec(any::<u8>(), 0..256)) {
        for encoding in ENCODINGS {
            check_body(encoding, &body);
        }
    }

    #[test]
    fn damaged_json_never_panics(seed in 0usize..3, edits in vec(byte_edit(), 1..5)) {
        let body = Encoding::Json.encode(&seeds()[seed]);
        check_body(Encoding::Json, &apply_edits(body, &edits));
    }

    #[test]
    fn damaged_bincode_never_panics(seed in 0usize..3, edits in vec(byte_edit(), 1..5)) {
        let body = Encoding::Bincode.encode(&seeds()[seed]);
        check_body(Encoding::Bincode, &apply_edits(body, &edits));
    }

    #[test]
    fn edited_json_trees_never_panic(
        seed in 0usize..3,
        edits in vec((vec(any::<Index>(), 1..6), tree_edit()), 1..4),
    ) {
        let mut tree = serde_json::to_value(&seeds()[seed]).unwrap();
        for (path, edit) in &edits {
            edit_tree(&mut tree, path, edit);
        }
        let body = serde_json::to_vec(&tree).unwrap();
        check_body(Encoding::Json, &body);
    }

}

// Generating whole specs costs more per case; fewer cases keep the run within seconds.
proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_specs_validate_or_say_why(spec in pod_spec()) {
        check_spec(&spec);
    }

    #[test]
    fn valid_specs_are_accepted(spec in good_pod_spec()) {
        if let Err(e) = ValidSpec::validate(&spec, &pod()) {
            panic!("a valid spec was refused: {e}");
        }
        check_spec(&spec);
    }

    #[test]
    fn edited_valid_specs_never_panic(
        spec in good_pod_spec(),
        edits in vec((vec(any::<Index>(), 1..7), tree_edit()), 1..3),
    ) {
        let mut tree = serde_json::to_value(&spec).unwrap();
        for (path, edit) in &edits {
            edit_tree(&mut tree, path, edit);
        }
        check_body(Encoding::Json, &serde_json::to_vec(&tree).unwrap());
    }
}

#[test]
fn the_generators_reach_both_outcomes() {
    // A property test whose inputs all fail validation would prove little about valid
    // specs; make sure the structured generator produces plenty of both.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = pod_spec();
    let (mut ok, mut bad, mut rules, mut peers) = (0, 0, 0, 0);
    for _ in 0..500 {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        match ValidSpec::validate(&spec, &pod()) {
            Ok(v) => {
                ok += 1;
                rules += v.firewall.ingress.len() + v.firewall.egress.len();
                peers += v.wireguard.map_or(0, |w| w.peers.len());
            }
            Err(_) => bad += 1,
        }
    }
    assert!(ok >= 25 && bad >= 25, "{ok} valid, {bad} invalid");
    assert!(
        rules >= 10 && peers >= 5,
        "{rules} rules, {peers} peers in valid specs"
    );
}
