//! The host role's two owned tables as values. Pure.
//!
//! `ip weft-sb`, in each sandbox namespace, NATs the guest: its connections out leave as
//! VpeerIp (SNAT out of `eth0`), and what arrives on `eth0` for HostIp goes to the guest
//! (DNAT). It is the whole table of its namespace, made with the slot and gone with it.
//!
//! `ip weft-host`, on the host, holds the rules every slot shares (masquerade out of the
//! uplink, the forward and input policy around the `weft-v*` links) and each slot's own: a
//! drop of its new connections without `Egress`, and per port forward a DNAT in the two nat
//! chains that see packets for local addresses. Every rule carries its [`Key`] (as its
//! comment), so one slot's rules are found, compared and changed alone: adding or removing a
//! sandbox deletes and adds only its rules, and the others keep their handles and counters.
//! No rule's meaning depends on its place in its chain (the drops are of new connections and
//! the policy is accept), so a repaired rule may land anywhere and slots need no chains of
//! their own.
//!
//! ```text
//! table ip weft-host {
//!   chain prerouting  { type nat hook prerouting priority dstnat; policy accept;
//!                       fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080
//!                         dnat to 10.11.0.7:80                           (per forward) }
//!   chain output      { type nat hook output priority -100; policy accept;
//!                       (the same DNATs, for the host's own processes) }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!                       oifname "eth0" ip saddr 10.12.0.0/16 masquerade }
//!   chain forward     { type filter hook forward priority filter; policy accept;
//!                       ct state established,related accept
//!                       iifname "weft-v*" oifname "weft-v*" drop
//!                       oifname "weft-v*" ct state new ct status ! dnat drop
//!                       iifname "weft-v7" ct state new drop              (per slot without Egress) }
//!   chain input       { type filter hook input priority filter; policy accept;
//!                       iifname "weft-v*" ct state new drop }
//! }
//! ```
//!
//! Masquerading the whole veth range is "the egress slots' traffic": a slot without
//! `Egress` has its new connections dropped before they reach postrouting, and what comes
//! back to a forwarded port is translated by conntrack, not by this rule. A connection into
//! a slot is "to a forwarded port" when a DNAT brought it there (`ct status dnat`): the DNATs
//! are the forwards.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_schema::host::{Sandbox, Slot, L4};
use weft_schema::validate::IfName;

use super::slot::{SlotAddrs, GUEST_IP, HOST_LINK_PREFIX, SANDBOX_LINK};
use super::LOOPBACK;

/// The sandbox namespace's table (family `ip`).
pub const SANDBOX_TABLE: &str = "weft-sb";
/// The host's table (family `ip`).
pub const HOST_TABLE: &str = "weft-host";

/// Where a base chain hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    /// `NF_INET_*`.
    pub fn number(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// A base chain of an owned table: its name, type, hook and priority (every one's policy
/// is accept: the agent does not own a hook's policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainDef {
    pub name: &'static str,
    /// `nat` or `filter`.
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

const fn base(name: &'static str, kind: &'static str, hook: Hook, priority: i32) -> ChainDef {
    ChainDef {
        name,
        kind,
        hook,
        priority,
    }
}

/// `dstnat`, `srcnat` and `filter` as numbers.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;

/// The chains of `ip weft-sb`.
pub const SANDBOX_CHAINS: [ChainDef; 2] = [
    base("prerouting", "nat", Hook::Prerouting, DSTNAT),
    base("postrouting", "nat", Hook::Postrouting, SRCNAT),
];

/// The chains of `ip weft-host`.
pub const HOST_CHAINS: [ChainDef; 5] = [
    base("prerouting", "nat", Hook::Prerouting, DSTNAT),
    base("output", "nat", Hook::Output, DSTNAT),
    base("postrouting", "nat", Hook::Postrouting, SRCNAT),
    base("forward", "filter", Hook::Forward, FILTER),
    base("input", "filter", Hook::Input, FILTER),
];

/// Which part of the spec a rule belongs to; its comment on the kernel's rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// Shared by every slot.
    Base,
    Slot(Slot),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Base => f.write_str("weft base"),
            Key::Slot(s) => write!(f, "weft slot {s}"),
        }
    }
}

impl Key {
    /// The key a rule's comment names, if it is one of ours.
    pub fn parse(comment: &str) -> Option<Key> {
        if comment == "weft base" {
            return Some(Key::Base);
        }
        let n = comment.strip_prefix("weft slot ")?;
        if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Slot::new(n.parse().ok()?).ok().map(Key::Slot)
    }
}

/// What one rule does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `oifname "eth0" ip saddr 169.254.0.21 counter snat to <VpeerIp>`
    SnatGuest { to: Ipv4Addr },
    /// `iifname "eth0" ip daddr <HostIp> counter dnat to 169.254.0.21`
    DnatGuest { from: Ipv4Addr },
    /// `oifname "<uplink>" ip saddr <veth range> counter masquerade`
    Masquerade { uplink: IfName, from: Ipv4Net },
    /// `ct state established,related counter accept`
    Established,
    /// `iifname "weft-v*" oifname "weft-v*" counter drop`
    BetweenSandboxes,
    /// `oifname "weft-v*" ct state new ct status ! dnat counter drop` (the `dnat` bit clear)
    IntoSandboxes,
    /// `iifname "weft-v*" ct state new counter drop` (chain input)
    SandboxesToHost,
    /// `iifname "weft-v<N>" ct state new counter drop`
    NoEgress { link: String },
    /// `fib daddr type local ip daddr != 127.0.0.0/8 <proto> dport <HostPort> counter dnat to
    /// <HostIp>:<SandboxPort>`
    PortForward {
        protocol: L4,
        host_port: u16,
        to: Ipv4Addr,
        to_port: u16,
    },
}

impl fmt::Display for Rule {
    /// The rule as `nft` takes it (and as `nft list` prints it, but for the counter's
    /// numbers).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let any = format!("{HOST_LINK_PREFIX}*");
        match self {
            Rule::SnatGuest { to } => write!(
                f,
                "oifname \"{SANDBOX_LINK}\" ip saddr {GUEST_IP} counter snat to {to}"
            ),
            Rule::DnatGuest { from } => write!(
                f,
                "iifname \"{SANDBOX_LINK}\" ip daddr {from} counter dnat to {GUEST_IP}"
            ),
            Rule::Masquerade { uplink, from } => {
                write!(f, "oifname \"{uplink}\" ip saddr {from} counter masquerade")
            }
            Rule::Established => f.write_str("ct state established,related counter accept"),
            Rule::BetweenSandboxes => {
                write!(f, "iifname \"{any}\" oifname \"{any}\" counter drop")
            }
            Rule::IntoSandboxes => write!(
                f,
                "oifname \"{any}\" ct state new ct status ! dnat counter drop"
            ),
            Rule::SandboxesToHost => write!(f, "iifname \"{any}\" ct state new counter drop"),
            Rule::NoEgress { link } => write!(f, "iifname \"{link}\" ct state new counter drop"),
            Rule::PortForward {
                protocol,
                host_port,
                to,
                to_port,
            } => write!(
                f,
                "fib daddr type local ip daddr != {LOOPBACK} {} dport {host_port} counter dnat \
                 to {to}:{to_port}",
                protocol.as_str()
            ),
        }
    }
}

/// A rule, the chain it is in, and the key it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyed {
    pub key: Key,
    pub chain: &'static str,
    pub rule: Rule,
}

impl Keyed {
    fn new(key: Key, chain: &'static str, rule: Rule) -> Keyed {
        Keyed { key, chain, rule }
    }

    /// `add rule ip <table> <chain> <rule> comment "<key>"`: one line of an `nft -f` script.
    pub fn nft(&self, table: &str) -> String {
        format!(
            "add rule ip {table} {} {} comment \"{}\"",
            self.chain, self.rule, self.key
        )
    }
}

/// The NAT of one sandbox, its namespace's table `ip weft-sb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxTable {
    /// VpeerIp: the guest's connections leave as it.
    pub snat_to: Ipv4Addr,
    /// HostIp: what arrives for it goes to the guest.
    pub dnat_from: Ipv4Addr,
}

impl SandboxTable {
    /// The table's rules, in chain order.
    pub fn rules(&self) -> Vec<Keyed> {
        vec![
            Keyed::new(
                Key::Base,
                "prerouting",
                Rule::DnatGuest {
                    from: self.dnat_from,
                },
            ),
            Keyed::new(
                Key::Base,
                "postrouting",
                Rule::SnatGuest { to: self.snat_to },
            ),
        ]
    }
}

/// The rules of `ip weft-host` that every slot shares. Without an uplink there is nothing
/// to masquerade out of (the apply fails naming `Uplink`).
pub fn host_base(uplink: Option<&IfName>, veth_range: Ipv4Net) -> Vec<Keyed> {
    let mut rules = Vec::new();
    if let Some(uplink) = uplink {
        rules.push(Keyed::new(
            Key::Base,
            "postrouting",
            Rule::Masquerade {
                uplink: uplink.clone(),
                from: veth_range,
            },
        ));
    }
    rules.extend([
        Keyed::new(Key::Base, "forward", Rule::Established),
        Keyed::new(Key::Base, "forward", Rule::BetweenSandboxes),
        Keyed::new(Key::Base, "forward", Rule::IntoSandboxes),
        Keyed::new(Key::Base, "input", Rule::SandboxesToHost),
    ]);
    rules
}

/// One slot's rules in `ip weft-host`: the drop of its new connections without `Egress`,
/// and per port forward a DNAT for packets from elsewhere (prerouting) and from the host's
/// own processes (output).
pub fn slot_rules(addrs: &SlotAddrs, sandbox: &Sandbox) -> Vec<Keyed> {
    let key = Key::Slot(sandbox.slot);
    let mut rules = Vec::new();
    if !sandbox.egress {
        rules.push(Keyed::new(
            key,
            "forward",
            Rule::NoEgress {
                link: addrs.host_link.clone(),
            },
        ));
    }
    for f in &sandbox.port_forwards {
        let rule = Rule::PortForward {
            protocol: f.protocol,
            host_port: f.host_port,
            to: addrs.host_ip,
            to_port: f.sandbox_port,
        };
        rules.push(Keyed::new(key, "prerouting", rule.clone()));
        rules.push(Keyed::new(key, "output", rule));
    }
    rules
}

/// An `nft -f` script that makes `table` with `chains` (empty) from nothing.
pub fn nft_table(table: &str, chains: &[ChainDef]) -> String {
    let mut text = format!("add table ip {table}\n");
    for c in chains {
        text.push_str(&format!(
            "add chain ip {table} {} {{ type {} hook {} priority {}; policy accept; }}\n",
            c.name,
            c.kind,
            c.hook.name(),
            c.priority
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::host::slot::Addressing;
    use weft_schema::host::Forward;
    use weft_schema::Guest;

    fn addrs(n: u32) -> SlotAddrs {
        Addressing {
            host_range: "10.11.0.0/16".parse().unwrap(),
            veth_range: "10.12.0.0/16".parse().unwrap(),
            netns_prefix: "weft-sb-".into(),
        }
        .slot(Slot::new(n).unwrap())
    }

    fn lines(rules: &[Keyed], table: &str) -> Vec<String> {
        rules.iter().map(|r| r.nft(table)).collect()
    }

    #[test]
    fn the_sandbox_table_nats_the_guest() {
        let a = addrs(7);
        let t = SandboxTable {
            snat_to: a.vpeer_ip,
            dnat_from: a.host_ip,
        };
        assert_eq!(
            lines(&t.rules(), SANDBOX_TABLE),
            [
                r#"add rule ip weft-sb prerouting iifname "eth0" ip daddr 10.11.0.7 counter dnat to 169.254.0.21 comment "weft base""#,
                r#"add rule ip weft-sb postrouting oifname "eth0" ip saddr 169.254.0.21 counter snat to 10.12.0.15 comment "weft base""#,
            ]
        );
        assert_eq!(
            nft_table(SANDBOX_TABLE, &SANDBOX_CHAINS),
            "add table ip weft-sb\n\
             add chain ip weft-sb prerouting { type nat hook prerouting priority -100; policy accept; }\n\
             add chain ip weft-sb postrouting { type nat hook postrouting priority 100; policy accept; }\n"
        );
    }

    #[test]
    fn the_host_table_base_rules() {
        let uplink = IfName::parse("eth0").unwrap();
        let rules = host_base(Some(&uplink), "10.12.0.0/16".parse().unwrap());
        assert_eq!(
            lines(&rules, HOST_TABLE),
            [
                r#"add rule ip weft-host postrouting oifname "eth0" ip saddr 10.12.0.0/16 counter masquerade comment "weft base""#,
                r#"add rule ip weft-host forward ct state established,related counter accept comment "weft base""#,
                r#"add rule ip weft-host forward iifname "weft-v*" oifname "weft-v*" counter drop comment "weft base""#,
                r#"add rule ip weft-host forward oifname "weft-v*" ct state new ct status ! dnat counter drop comment "weft base""#,
                r#"add rule ip weft-host input iifname "weft-v*" ct state new counter drop comment "weft base""#,
            ]
        );
        // No uplink: everything but the masquerade.
        assert_eq!(host_base(None, "10.12.0.0/16".parse().unwrap()).len(), 4);
        let script = nft_table(HOST_TABLE, &HOST_CHAINS);
        assert!(script.contains(
            "add chain ip weft-host forward { type filter hook forward priority 0; policy accept; }"
        ));
        assert!(script.contains(
            "add chain ip weft-host output { type nat hook output priority -100; policy accept; }"
        ));
    }

    #[test]
    fn a_slots_rules_carry_its_key() {
        let sandbox = Sandbox {
            slot: Slot::new(7).unwrap(),
            guest: Guest::Tap,
            egress: false,
            port_forwards: vec![
                Forward {
                    protocol: L4::Tcp,
                    host_port: 8080,
                    sandbox_port: 80,
                },
                Forward {
                    protocol: L4::Udp,
                    host_port: 5353,
                    sandbox_port: 53,
                },
            ],
        };
        assert_eq!(
            lines(&slot_rules(&addrs(7), &sandbox), HOST_TABLE),
            [
                r#"add rule ip weft-host forward iifname "weft-v7" ct state new counter drop comment "weft slot 7""#,
                r#"add rule ip weft-host prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 counter dnat to 10.11.0.7:80 comment "weft slot 7""#,
                r#"add rule ip weft-host output fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 counter dnat to 10.11.0.7:80 comment "weft slot 7""#,
                r#"add rule ip weft-host prerouting fib daddr type local ip daddr != 127.0.0.0/8 udp dport 5353 counter dnat to 10.11.0.7:53 comment "weft slot 7""#,
                r#"add rule ip weft-host output fib daddr type local ip daddr != 127.0.0.0/8 udp dport 5353 counter dnat to 10.11.0.7:53 comment "weft slot 7""#,
            ]
        );
    }

    #[test]
    fn keys_read_back_from_comments() {
        for key in [Key::Base, Key::Slot(Slot::new(16_383).unwrap())] {
            assert_eq!(Key::parse(&key.to_string()), Some(key));
        }
        for other in [
            "",
            "weft slot 0",
            "weft slot 07",
            "weft slot 16384",
            "ssh",
            "weft",
        ] {
            assert_eq!(Key::parse(other), None, "{other}");
        }
    }
}
