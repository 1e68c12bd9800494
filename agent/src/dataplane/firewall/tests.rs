//! Pure tests, no root: rendering, the batch's bytes decoded back into the same model, the
//! interval-set encoding, and what a refusal names.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use weft_schema::validate::{Firewall as FirewallSpec, PortRange, Protocol, Rule};

use super::batch::{self, Label};
use super::decode;
use super::render::{prefix_of, Family, Line};
use super::{describe, render};
use crate::dataplane::netlink::message::NLM_F_ACK;
use crate::dataplane::netlink::{messages, AttrExt};
use crate::dataplane::nftables;
use crate::dataplane::nftables::abi::*;
use crate::dataplane::nftables::expr::Value;

fn rule(protocol: Protocol, ports: &[(u16, u16)], v4: &[&str], v6: &[&str]) -> Rule {
    Rule {
        protocol,
        ports: ports
            .iter()
            .map(|&(first, last)| PortRange { first, last })
            .collect(),
        v4: v4.iter().map(|s| s.parse::<Ipv4Net>().unwrap()).collect(),
        v6: v6.iter().map(|s| s.parse::<Ipv6Net>().unwrap()).collect(),
        comment: None,
    }
}

fn varied() -> FirewallSpec {
    let mut ssh = rule(
        Protocol::Tcp,
        &[(22, 22), (8000, 8080)],
        &["10.0.0.0/8"],
        &[],
    );
    ssh.comment = Some("ssh and app".into());
    FirewallSpec {
        ingress: vec![
            ssh,
            rule(
                Protocol::Udp,
                &[(53, 53)],
                &["192.0.2.0/24", "198.51.100.7/32"],
                &["2001:db8::/32"],
            ),
            rule(
                Protocol::Udp,
                &[(1, 10), (65000, 65535)],
                &["0.0.0.0/1"],
                &[],
            ),
            rule(Protocol::Tcp, &[(5000, 5100)], &["10.0.0.0/9"], &["::/0"]),
            rule(Protocol::Icmp, &[], &["10.0.0.0/24", "10.0.1.0/25"], &[]),
            rule(
                Protocol::Icmpv6,
                &[],
                &[],
                &["2001:db8::/33", "2001:db8:8000::1/128"],
            ),
            rule(Protocol::Any, &[], &[], &[]),
        ],
        egress: vec![rule(Protocol::Any, &[], &["169.254.169.254/32"], &[])],
    }
}

use super::ruleset_of as decode_batch;

#[test]
fn baseline_renders_the_contracts_two_rules() {
    let r = render(&FirewallSpec::default(), None);
    assert_eq!(
        r.input,
        vec![
            Line::Established,
            Line::NeighbourDiscovery,
            Line::Loopback,
            Line::Dropped
        ]
    );
    assert!(r.output.is_empty());
    assert_eq!((r.ingress_rules(), r.egress_rules()), (0, 0));
    let wg = render(&FirewallSpec::default(), Some(51820));
    assert_eq!(wg.input[3], Line::WireGuardPort(51820));
    assert_eq!(
        wg.ingress_rules(),
        0,
        "the WireGuard allow is not an ingress rule"
    );
    assert!(wg
        .nft_text()
        .contains("\t\tudp dport 51820 counter accept\n"));
    assert!(
        wg.nft_text().ends_with("\t\tcounter\n\t}\n\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n}\n"),
        "chain input ends with the counter of what its policy drops"
    );
}

#[test]
fn mixed_families_split_and_ranges_merge() {
    let text = render(&varied(), Some(51820)).nft_text();
    for line in [
        "ip saddr 10.0.0.0/8 tcp dport { 22, 8000-8080 } counter accept comment \"ssh and app\"",
        "ip saddr { 192.0.2.0/24, 198.51.100.7 } udp dport 53 counter accept",
        "ip6 saddr 2001:db8::/32 udp dport 53 counter accept",
        "ip saddr 0.0.0.0/1 udp dport { 1-10, 65000-65535 } counter accept",
        "ip saddr 10.0.0.0/9 tcp dport 5000-5100 counter accept",
        "meta nfproto ipv6 tcp dport 5000-5100 counter accept",
        // Two touching CIDRs that are no single CIDR: one range.
        "ip saddr 10.0.0.0-10.0.1.127 meta l4proto icmp counter accept",
        "ip6 saddr { 2001:db8::/33, 2001:db8:8000::1 } meta l4proto ipv6-icmp counter accept",
        "\t\tcounter accept\n",
        "ip daddr 169.254.169.254 counter drop",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let r = render(&varied(), Some(51820));
    assert_eq!((r.ingress_rules(), r.egress_rules()), (9, 1));
}

#[test]
fn the_batch_decodes_back_to_the_rendered_ruleset() {
    for wg in [None, Some(51820)] {
        let r = render(&varied(), wg);
        let b = batch::replace(
            &r,
            NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST,
            true,
            Some(5),
            100,
        );
        let back = decode_batch(&b.bytes);
        assert_eq!(back, r);
        assert_eq!(back.hash(), r.hash());
    }
}

#[test]
fn a_first_rule_shaped_like_the_wireguard_allow_compares_equal_both_ways() {
    let spec = FirewallSpec {
        ingress: vec![rule(Protocol::Udp, &[(51820, 51820)], &[], &[])],
        egress: vec![],
    };
    let r = render(&spec, None);
    assert_eq!(r, render(&FirewallSpec::default(), Some(51820)));
    let b = batch::replace(&r, 0, false, None, 1);
    assert_eq!(decode_batch(&b.bytes), r);
}

#[test]
fn different_rulesets_hash_differently() {
    let a = render(&varied(), None);
    let b = render(&varied(), Some(1));
    assert_ne!(a.hash(), b.hash());
    assert_eq!(a.hash(), render(&varied(), None).hash());
    assert_eq!(a.hash().len(), 64);
}

#[test]
fn ten_thousand_sources_split_into_element_messages_under_64_kib() {
    let v4: Vec<String> = (0..10_000u32)
        .map(|i| Ipv4Addr::from(0x0a00_0000 + 2 * i).to_string() + "/32")
        .collect();
    let refs: Vec<&str> = v4.iter().map(String::as_str).collect();
    let spec = FirewallSpec {
        ingress: vec![rule(Protocol::Tcp, &[(443, 443)], &refs, &[])],
        egress: vec![],
    };
    let r = render(&spec, None);
    let b = batch::replace(&r, 0, false, None, 1);
    let mut element_messages = 0;
    let mut elements = 0;
    for msg in messages(&b.bytes) {
        if msg.ty & 0xff == NFT_MSG_NEWSETELEM && msg.ty >> 8 == 10 {
            element_messages += 1;
            let attrs = nftables::attrs(&msg);
            let list = attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
            // The list's length is a u16: a longer one would be cut short.
            assert!(list.bytes().len() + 4 <= usize::from(u16::MAX));
            elements += list.nested().len();
        }
    }
    // 10,000 starts, 10,000 ends and nft's leading end at 0, in several messages.
    assert_eq!(elements, 20_001);
    assert!(element_messages > 1);
    assert_eq!(decode_batch(&b.bytes), r);
}

#[test]
fn interval_elements_back_to_ranges() {
    let e = |k: u32, end: bool| (Value::new(&k.to_be_bytes()).unwrap(), end);
    // nft's leading end at 0, a range, and an open range up to the top.
    let elements = vec![e(0, true), e(10, false), e(20, true), e(0xffff_ff00, false)];
    assert_eq!(
        decode::ranges(&elements, 4),
        Some(vec![(10, 19), (0xffff_ff00, 0xffff_ffff)])
    );
    // Any order (the kernel dumps its tree in its own).
    let mut shuffled = elements.clone();
    shuffled.reverse();
    assert_eq!(decode::ranges(&shuffled, 4), decode::ranges(&elements, 4));
    // An end without its start is not ours.
    assert_eq!(decode::ranges(&[e(5, true)], 4), None);
    // Keys of the wrong width are not ours.
    let short = Value::new(&[1, 2]).unwrap();
    assert_eq!(decode::ranges(&[(short, false)], 4), None);
}

#[test]
fn prefixes() {
    assert_eq!(prefix_of(Family::V4, (0, 0xffff_ffff)), Some(0));
    assert_eq!(prefix_of(Family::V4, (0x0a00_0000, 0x0aff_ffff)), Some(8));
    assert_eq!(prefix_of(Family::V4, (5, 5)), Some(32));
    assert_eq!(prefix_of(Family::V4, (0x0a00_0000, 0x0a00_017f)), None);
    let net = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0));
    assert_eq!(
        prefix_of(Family::V6, (net, net | ((1u128 << 96) - 1))),
        Some(32)
    );
    assert_eq!(prefix_of(Family::V6, (0, u128::MAX)), Some(0));
}

#[test]
fn a_refusal_names_the_rule_and_its_text() {
    let r = render(&varied(), Some(51820));
    assert_eq!(
        describe(
            Some(Label::Rule {
                chain: "input",
                index: 4
            }),
            &r
        ),
        "rule 4 of chain input (`ip saddr 10.0.0.0/8 tcp dport { 22, 8000-8080 } counter accept comment \"ssh and app\"`)"
    );
    assert_eq!(
        describe(
            Some(Label::Set {
                chain: "output",
                index: 0
            }),
            &r
        ),
        "the set of rule 0 of chain output (`ip daddr 169.254.169.254 counter drop`)"
    );
    assert_eq!(
        describe(Some(Label::DeleteTable), &r),
        "deleting the old table inet weft-fw"
    );
}

#[test]
fn only_the_last_message_asks_for_an_ack() {
    let r = render(&varied(), None);
    let b = batch::replace(&r, 0, true, Some(3), 7);
    let acked: Vec<u32> = messages(&b.bytes)
        .filter(|m| m.flags & NLM_F_ACK != 0)
        .map(|m| m.seq)
        .collect();
    assert_eq!(acked, vec![b.last_seq() - 1]);
    assert_eq!(b.label(7), Some(Label::Begin));
    assert_eq!(b.label(8), Some(Label::DeleteTable));
    assert_eq!(b.label(9), Some(Label::CreateTable));
}

/// Needs root: a batch planned at an old generation is refused whole, and `apply` plans
/// again.
#[test]
fn a_batch_planned_at_an_old_generation_is_refused_and_replanned() {
    weft_testkit::require_root();
    let ns = weft_testkit::Netns::new("fwgen").unwrap();
    let first = render(&varied(), None);
    let second = render(&FirewallSpec::default(), None);
    ns.enter(|| {
        let mut fw = super::Firewall::open().unwrap();
        fw.apply(&first).unwrap();
        let planned_at = fw.genid().unwrap();
        // Someone else commits something (anything) in between.
        ns.run("nft", &["add", "table", "inet", "elsewhere"])
            .unwrap();
        let stale = batch::replace(&second, fw.flags, true, Some(planned_at), 42);
        let err = fw.send(&stale, &second).unwrap_err();
        assert!(err.is_restart(), "{err:?}");
        assert!(
            err.to_string().contains("older ruleset generation"),
            "{err}"
        );
        // Nothing of it took effect; the cache is not trusted across the refusal.
        fw.verified = None;
        assert_eq!(
            fw.observe(Some(&first)).overall,
            weft_schema::Overall::Healthy
        );
        assert!(fw.apply(&second).unwrap());
        assert_eq!(
            fw.observe(Some(&second)).overall,
            weft_schema::Overall::Healthy
        );
    });
}

#[test]
fn the_batch_begin_carries_the_planned_generation_only_when_given() {
    let r = render(&varied(), None);
    let genid_of = |bytes: &[u8]| {
        let begin = messages(bytes).next().unwrap();
        assert_eq!(begin.ty, 0x10, "batch begin first");
        nftables::attrs(&begin)
            .get(NFNL_BATCH_GENID)
            .and_then(|a| a.be32())
    };
    let b = batch::replace(&r, 0, true, Some(77), 1);
    assert_eq!(genid_of(&b.bytes), Some(77));
    assert_eq!(decode_batch(&b.bytes), r);
    assert_eq!(genid_of(&batch::delete(1).bytes), None);
    // Every message numbered in order from the first sequence number.
    let seqs: Vec<u32> = messages(&b.bytes).map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=b.last_seq()).collect::<Vec<_>>());
}

mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn protocol() -> impl Strategy<Value = Protocol> {
        prop_oneof![
            Just(Protocol::Any),
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Icmp),
            Just(Protocol::Icmpv6),
        ]
    }

    fn v4() -> impl Strategy<Value = Ipv4Net> {
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, p)| Ipv4Net::new(Ipv4Addr::from(a), p).unwrap().trunc())
    }

    fn v6() -> impl Strategy<Value = Ipv6Net> {
        // Mostly near one prefix, so sets, ranges and merges all occur.
        (any::<u16>(), any::<u64>(), 0u8..=128).prop_map(|(hi, lo, p)| {
            let addr = (0x2001_0db8u128 << 96) | (u128::from(hi) << 64) | u128::from(lo);
            Ipv6Net::new(Ipv6Addr::from(addr), p.max(16))
                .unwrap()
                .trunc()
        })
    }

    fn port_range() -> impl Strategy<Value = PortRange> {
        (1u16..=65535, 0u16..200).prop_map(|(first, span)| PortRange {
            first,
            last: first.saturating_add(span),
        })
    }

    prop_compose! {
        fn rule()(protocol in protocol(),
                  ports in vec(port_range(), 0..5),
                  v4 in vec(v4(), 0..6),
                  v6 in vec(v6(), 0..4),
                  comment in proptest::option::of("[^\u{0}\"\\p{Cc}]{0,40}")) -> Rule {
            let ports = if matches!(protocol, Protocol::Tcp | Protocol::Udp) { ports } else { vec![] };
            Rule { protocol, ports, v4, v6, comment }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Random ruleset -> batch -> decode: the same ruleset, with the same hash.
        #[test]
        fn any_ruleset_decodes_from_its_batch(
            ingress in vec(rule(), 0..8),
            egress in vec(rule(), 0..5),
            wg in proptest::option::of(1u16..=65535),
            owned in any::<bool>(),
            genid in proptest::option::of(1u32..),
        ) {
            let r = render(&FirewallSpec { ingress, egress }, wg);
            let flags = if owned { NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST } else { 0 };
            let b = batch::replace(&r, flags, owned, genid, 1);
            let back = decode_batch(&b.bytes);
            prop_assert_eq!(back.hash(), r.hash());
            prop_assert_eq!(back, r);
        }
    }
}
