//! The pure half of the firewall: a validated [`Firewall`] spec becomes a [`Ruleset`], the
//! exact contents of table `inet weft-fw`, and a ruleset prints as the `nft` text that
//! `nft list table inet weft-fw` shows for it.
//!
//! The same model is what the kernel's table decodes back into (see `decode`), so "the kernel
//! already holds the desired ruleset" is a plain `==`, and [`Ruleset::hash`] digests the
//! canonical text: a rendered ruleset and a read-back one hash equal exactly when they are
//! equal.

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};
use weft_schema::validate::{Firewall, Protocol, Rule};

use crate::dataplane::nftables::keyed::RuleKey;

/// `meta l4proto` values (IANA protocol numbers).
pub(crate) const IPPROTO_ICMP: u8 = libc::IPPROTO_ICMP as u8;
pub(crate) const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
pub(crate) const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;
pub(crate) const IPPROTO_ICMPV6: u8 = libc::IPPROTO_ICMPV6 as u8;

/// The rendered table: the rules of chain `input` and chain `output`, in order. The chains
/// themselves (hooks, priorities, policies) are fixed by the contract and not part of the
/// value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub(crate) input: Vec<Line>,
    pub(crate) output: Vec<Line>,
}

/// One rule of the table. Every rule counts what it matches (`counter` before its verdict).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Line {
    /// `ct state established,related accept`
    Established,
    /// `icmpv6 type 134-136 accept`: router advertisement (134), neighbour solicitation
    /// (135) and advertisement (136), so IPv6 neighbour discovery works under policy drop.
    NeighbourDiscovery,
    /// `iifname "lo" accept`
    Loopback,
    /// `udp dport <port> accept`, right after the two baseline rules.
    WireGuardPort(u16),
    /// A rule derived from one family of one spec rule.
    Match(Match),
    /// `counter`, the last rule of chain input: it counts what falls through to the policy
    /// drop.
    Dropped,
    /// A rule this model does not produce, read back from the kernel; the text says what it
    /// was made of, so it never compares equal to a rendered rule.
    Foreign(String),
}

/// Which packets a spec-derived rule matches, and what it does with them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Match {
    /// `ip saddr` / `ip6 saddr` in chain input, `daddr` in chain output; `None`: any family.
    pub addr: Option<AddrMatch>,
    /// `meta l4proto`; `None`: any protocol.
    pub proto: Option<u8>,
    /// Destination port ranges (inclusive), sorted and merged; empty: any port.
    pub ports: Vec<(u16, u16)>,
    pub verdict: Verdict,
    pub comment: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// Address width in bytes.
    pub(crate) fn len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    pub(crate) fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }
}

/// Addresses of one family as sorted, merged, non-adjacent inclusive ranges. A single range
/// covering the whole family is `meta nfproto ipv4|ipv6` (a `/0` source).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AddrMatch {
    pub family: Family,
    pub ranges: Vec<(u128, u128)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Verdict {
    Accept,
    Drop,
}

/// How many rules open chain input whatever the spec: `ct state`, neighbour discovery, `lo`.
pub(crate) const BASELINE_RULES: usize = 3;

/// Renders the table for a validated firewall spec, with the WireGuard listen port opened
/// when there is an overlay.
pub fn render(fw: &Firewall, wireguard_port: Option<u16>) -> Ruleset {
    let mut input = vec![Line::Established, Line::NeighbourDiscovery, Line::Loopback];
    input.extend(wireguard_port.map(Line::WireGuardPort));
    for rule in &fw.ingress {
        spec_rule(&mut input, rule, Verdict::Accept);
    }
    input.push(Line::Dropped);
    let mut output = Vec::new();
    for rule in &fw.egress {
        spec_rule(&mut output, rule, Verdict::Drop);
    }
    Ruleset { input, output }.canonical()
}

/// One spec rule becomes one nftables rule per address family it names (one in all when it
/// names none).
fn spec_rule(lines: &mut Vec<Line>, rule: &Rule, verdict: Verdict) {
    let proto = match rule.protocol {
        Protocol::Any => None,
        Protocol::Tcp => Some(IPPROTO_TCP),
        Protocol::Udp => Some(IPPROTO_UDP),
        Protocol::Icmp => Some(IPPROTO_ICMP),
        Protocol::Icmpv6 => Some(IPPROTO_ICMPV6),
    };
    let ports = merge(rule.ports.iter().map(|p| (p.first, p.last)).collect());
    let line = |addr| {
        Line::Match(Match {
            addr,
            proto,
            ports: ports.clone(),
            verdict,
            comment: rule.comment.clone(),
        })
    };
    if rule.any_address() {
        lines.push(line(None));
        return;
    }
    if !rule.v4.is_empty() {
        let ranges = rule
            .v4
            .iter()
            .map(|n| {
                (
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                )
            })
            .collect();
        lines.push(line(Some(AddrMatch {
            family: Family::V4,
            ranges: merge(ranges),
        })));
    }
    if !rule.v6.is_empty() {
        let ranges = rule
            .v6
            .iter()
            .map(|n| (u128::from(n.network()), u128::from(n.broadcast())))
            .collect();
        lines.push(line(Some(AddrMatch {
            family: Family::V6,
            ranges: merge(ranges),
        })));
    }
}

/// Sorts inclusive ranges and merges those that overlap or touch: an interval set holds
/// `[a, b]` as a start at `a` and an end at `b + 1`, so touching ranges must be one.
pub(crate) fn merge<T>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)>
where
    T: Copy + Ord + Into<u128>,
{
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(prev) if first.into() <= prev.1.into().saturating_add(1) => {
                if last > prev.1 {
                    prev.1 = last;
                }
            }
            _ => merged.push((first, last)),
        }
    }
    merged
}

impl Ruleset {
    /// Rules in chain input derived from the spec: not the baseline rules, not the
    /// WireGuard port allow, not the closing counter.
    pub fn ingress_rules(&self) -> u32 {
        self.input
            .iter()
            .filter(|l| {
                !matches!(
                    l,
                    Line::Established
                        | Line::NeighbourDiscovery
                        | Line::Loopback
                        | Line::WireGuardPort(_)
                        | Line::Dropped
                )
            })
            .count() as u32
    }

    /// Whether it holds a rule read back that this agent would not have written.
    pub fn has_foreign(&self) -> bool {
        self.input
            .iter()
            .chain(&self.output)
            .any(|l| matches!(l, Line::Foreign(_)))
    }

    /// Rules in chain output (each a drop).
    pub fn egress_rules(&self) -> u32 {
        self.output.len() as u32
    }

    /// The table as `nft list table inet weft-fw` prints it (without the table flags, which
    /// `nft` cannot set); `nft -f` of this text builds the same rules.
    pub fn nft_text(&self) -> String {
        let mut t = String::with_capacity(64 * (self.input.len() + self.output.len()) + 256);
        t.push_str("table inet weft-fw {\n\tchain input {\n");
        t.push_str("\t\ttype filter hook input priority filter; policy drop;\n");
        for line in &self.input {
            let _ = writeln!(t, "\t\t{}", Text(line, Dir::Src));
        }
        t.push_str("\t}\n\n\tchain output {\n");
        t.push_str("\t\ttype filter hook output priority filter; policy accept;\n");
        for line in &self.output {
            let _ = writeln!(t, "\t\t{}", Text(line, Dir::Dst));
        }
        t.push_str("\t}\n}\n");
        t
    }

    /// The keys of the rules of chain input and chain output, in order (see [`key`]).
    pub(crate) fn keys(&self) -> [Vec<RuleKey>; 2] {
        [
            self.input.iter().map(|l| key("input", l)).collect(),
            self.output.iter().map(|l| key("output", l)).collect(),
        ]
    }

    /// Hex SHA-256 of [`Ruleset::nft_text`]: equal rulesets hash equal, whether rendered or
    /// read back from the kernel.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.nft_text().as_bytes()))
    }

    /// The one place where two spellings of the same rule are made one: a spec without
    /// WireGuard whose first ingress rule is exactly `udp dport N accept` reads back like the
    /// WireGuard allow, so it is kept in that form on both sides.
    pub(crate) fn canonical(mut self) -> Ruleset {
        if let Some(Line::Match(m)) = self.input.get(BASELINE_RULES) {
            if let Some(port) = m.as_wireguard_port() {
                self.input[BASELINE_RULES] = Line::WireGuardPort(port);
            }
        }
        self
    }
}

impl Match {
    fn as_wireguard_port(&self) -> Option<u16> {
        match self {
            Match {
                addr: None,
                proto: Some(IPPROTO_UDP),
                ports,
                verdict: Verdict::Accept,
                comment: None,
            } if ports.len() == 1 && ports[0].0 == ports[0].1 => Some(ports[0].0),
            _ => None,
        }
    }
}

/// Whether addresses are matched as sources (chain input) or destinations (chain output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Src,
    Dst,
}

/// One rule as `nft list` prints it.
pub(crate) fn line_text(line: &Line, dir: Dir) -> String {
    Text(line, dir).to_string()
}

struct Text<'a>(&'a Line, Dir);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Line::Established => f.write_str("ct state established,related counter accept"),
            Line::NeighbourDiscovery => f.write_str("icmpv6 type 134-136 counter accept"),
            Line::Loopback => f.write_str("iifname \"lo\" counter accept"),
            Line::WireGuardPort(p) => write!(f, "udp dport {p} counter accept"),
            Line::Dropped => f.write_str("counter"),
            Line::Foreign(what) => write!(f, "# not written by weft: {what}"),
            Line::Match(m) => {
                if let Some(a) = &m.addr {
                    let (kw, name) = match a.family {
                        Family::V4 => ("ip", "ipv4"),
                        Family::V6 => ("ip6", "ipv6"),
                    };
                    if a.ranges == [(0, a.family.max())] {
                        write!(f, "meta nfproto {name} ")?;
                    } else {
                        let field = match self.1 {
                            Dir::Src => "saddr",
                            Dir::Dst => "daddr",
                        };
                        write!(f, "{kw} {field} ")?;
                        elements(f, &a.ranges, |f, r| addr_range(f, a.family, *r))?;
                        f.write_str(" ")?;
                    }
                }
                match (m.proto, m.ports.is_empty()) {
                    (Some(p), false) => {
                        write!(f, "{} dport ", proto_name(p))?;
                        elements(f, &m.ports, |f, (a, b)| {
                            if a == b {
                                write!(f, "{a}")
                            } else {
                                write!(f, "{a}-{b}")
                            }
                        })?;
                        f.write_str(" ")?;
                    }
                    (Some(p), true) => write!(f, "meta l4proto {} ", proto_name(p))?,
                    (None, _) => {}
                }
                f.write_str(match m.verdict {
                    Verdict::Accept => "counter accept",
                    Verdict::Drop => "counter drop",
                })?;
                if let Some(c) = &m.comment {
                    write!(f, " comment \"{c}\"")?;
                }
                Ok(())
            }
        }
    }
}

fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "ipv6-icmp".into(),
        other => other.to_string(),
    }
}

/// One element bare, several as an anonymous set `{ a, b }`.
fn elements<T>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    mut one: impl FnMut(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    if let [single] = items {
        return one(f, single);
    }
    f.write_str("{ ")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        one(f, item)?;
    }
    f.write_str(" }")
}

/// The prefix length when `[first, last]` is exactly one CIDR of `family`.
pub(crate) fn prefix_of(family: Family, (first, last): (u128, u128)) -> Option<u32> {
    let bits = family.len() as u32 * 8;
    let size = last.wrapping_sub(first).wrapping_add(1);
    if first == 0 && last == family.max() {
        return Some(0);
    }
    if size == 0 || !size.is_power_of_two() || first & (size - 1) != 0 {
        return None;
    }
    Some(bits - size.trailing_zeros())
}

fn addr_range(f: &mut fmt::Formatter<'_>, family: Family, range: (u128, u128)) -> fmt::Result {
    let show = |f: &mut fmt::Formatter<'_>, v: u128| match family {
        Family::V4 => write!(f, "{}", Ipv4Addr::from(v as u32)),
        Family::V6 => write!(f, "{}", Ipv6Addr::from(v)),
    };
    let full = family.len() as u32 * 8;
    match prefix_of(family, range) {
        Some(p) if p == full => show(f, range.0),
        Some(p) => {
            show(f, range.0)?;
            write!(f, "/{p}")
        }
        None => {
            show(f, range.0)?;
            f.write_str("-")?;
            show(f, range.1)
        }
    }
}

/// The key of `line` in `chain` (see `nftables::keyed`): SHA-256 over the model itself (its
/// derived `Hash`, which writes every field, lengths and variants included), not over its
/// text, which costs a formatting per rule. Keys are computed alike for rendered rules and
/// for rules decoded from the kernel, so the keys in a table's userdata, which anyone could
/// have written, are never what decides that a rule is right.
pub(crate) fn key(chain: &str, line: &Line) -> RuleKey {
    struct Feed(Sha256);
    impl Hasher for Feed {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            unreachable!("only fed")
        }
    }
    let mut feed = Feed(Sha256::new());
    chain.hash(&mut feed);
    // The one rule with two spellings (see `Ruleset::canonical`) has one key wherever it
    // stands: a rule moved past the WireGuard allow must not make that rule another.
    match line {
        Line::Match(m) => match m.as_wireguard_port() {
            Some(port) => Line::WireGuardPort(port).hash(&mut feed),
            None => line.hash(&mut feed),
        },
        _ => line.hash(&mut feed),
    }
    let digest = feed.0.finalize();
    RuleKey::from_slice(&digest[..RuleKey::LEN]).expect("16 of 32 bytes")
}
