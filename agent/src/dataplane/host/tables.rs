//! The host role's two owned tables as values. Pure.
//!
//! `ip weft-sb`, in each sandbox namespace, NATs the guest: its connections out leave as
//! VpeerIp (SNAT out of `eth0`), and what arrives on `eth0` for HostIp goes to the guest
//! (DNAT). It is the whole table of its namespace, made with the slot and gone with it.
//!
//! `ip weft-host`, on the host, holds the rules every slot shares (masquerade out of the
//! uplink, the forward and input policy around the `weft-v*` links, the hooks of the port
//! forwards) and each slot's own: a drop of new connections from a slot without `Egress`,
//! and for each port forward a DNAT and the accept that lets it in. Every rule carries its
//! [`Key`] (as its comment), so one slot's rules are found, compared and changed alone:
//! adding or removing a sandbox deletes and adds only its rules, and the others keep their
//! handles and counters. Slot rules live in chains of their own (`port-forwards`,
//! `sandboxes`) where their order does not matter; the base chains hold the shared rules in
//! a fixed order.
//!
//! ```text
//! table ip weft-host {
//!   chain prerouting    { type nat hook prerouting priority dstnat; policy accept;
//!                         fib daddr type local ip daddr != 127.0.0.0/8 jump port-forwards }
//!   chain output        { type nat hook output priority -100; policy accept;
//!                         fib daddr type local ip daddr != 127.0.0.0/8 jump port-forwards }
//!   chain port-forwards { tcp dport 8080 dnat to 10.11.0.7:80 ...            (per slot) }
//!   chain postrouting   { type nat hook postrouting priority srcnat; policy accept;
//!                         oifname "eth0" ip saddr 10.12.0.0/16 masquerade }
//!   chain forward       { type filter hook forward priority filter; policy accept;
//!                         ct state established,related accept
//!                         iifname "weft-v*" oifname "weft-v*" drop
//!                         jump sandboxes
//!                         oifname "weft-v*" ct state new drop }
//!   chain sandboxes     { iifname "weft-v7" ct state new drop                (per slot)
//!                         oifname "weft-v7" ip daddr 10.11.0.7 tcp dport 80 ct status dnat accept }
//!   chain input         { type filter hook input priority filter; policy accept;
//!                         iifname "weft-v*" ct state new drop }
//! }
//! ```
//!
//! Masquerading the whole veth range is "the egress slots' traffic": a slot without
//! `Egress` has its new connections dropped before they reach postrouting, and what comes
//! back to a forwarded port is translated by conntrack, not by this rule.

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

/// A chain of an owned table: its name, and for a base chain its type, hook and priority
/// (every base chain's policy is accept: the agent does not own a hook's policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainDef {
    pub name: &'static str,
    /// `None`: a regular chain, reached by a jump.
    pub base: Option<BaseChain>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// `nat` or `filter`.
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

const fn base(name: &'static str, kind: &'static str, hook: Hook, priority: i32) -> ChainDef {
    ChainDef {
        name,
        base: Some(BaseChain {
            kind,
            hook,
            priority,
        }),
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

/// The regular chain of the port forwards' DNATs.
pub const PORT_FORWARDS: &str = "port-forwards";
/// The regular chain of the slots' forward rules.
pub const SANDBOXES: &str = "sandboxes";

/// The chains of `ip weft-host`, regular ones before the base chains that jump to them.
pub const HOST_CHAINS: [ChainDef; 7] = [
    ChainDef {
        name: PORT_FORWARDS,
        base: None,
    },
    ChainDef {
        name: SANDBOXES,
        base: None,
    },
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
    /// `fib daddr type local ip daddr != 127.0.0.0/8 jump port-forwards`
    LocalPorts,
    /// `oifname "<uplink>" ip saddr <veth range> counter masquerade`
    Masquerade { uplink: IfName, from: Ipv4Net },
    /// `ct state established,related counter accept`
    Established,
    /// `iifname "weft-v*" oifname "weft-v*" counter drop`
    BetweenSandboxes,
    /// `jump sandboxes`
    JumpSandboxes,
    /// `oifname "weft-v*" ct state new counter drop`
    IntoSandboxes,
    /// `iifname "weft-v*" ct state new counter drop` (chain input)
    SandboxesToHost,
    /// `iifname "weft-v<N>" ct state new counter drop`
    NoEgress { link: String },
    /// `<proto> dport <HostPort> counter dnat to <HostIp>:<SandboxPort>`
    PortForward {
        protocol: L4,
        host_port: u16,
        to: Ipv4Addr,
        to_port: u16,
    },
    /// `oifname "weft-v<N>" ip daddr <HostIp> <proto> dport <SandboxPort> ct status dnat
    /// counter accept`
    Forwarded {
        link: String,
        to: Ipv4Addr,
        protocol: L4,
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
            Rule::LocalPorts => write!(
                f,
                "fib daddr type local ip daddr != {LOOPBACK} jump {PORT_FORWARDS}"
            ),
            Rule::Masquerade { uplink, from } => {
                write!(f, "oifname \"{uplink}\" ip saddr {from} counter masquerade")
            }
            Rule::Established => f.write_str("ct state established,related counter accept"),
            Rule::BetweenSandboxes => {
                write!(f, "iifname \"{any}\" oifname \"{any}\" counter drop")
            }
            Rule::JumpSandboxes => write!(f, "jump {SANDBOXES}"),
            Rule::IntoSandboxes => write!(f, "oifname \"{any}\" ct state new counter drop"),
            Rule::SandboxesToHost => write!(f, "iifname \"{any}\" ct state new counter drop"),
            Rule::NoEgress { link } => write!(f, "iifname \"{link}\" ct state new counter drop"),
            Rule::PortForward {
                protocol,
                host_port,
                to,
                to_port,
            } => write!(
                f,
                "{} dport {host_port} counter dnat to {to}:{to_port}",
                protocol.as_str()
            ),
            Rule::Forwarded {
                link,
                to,
                protocol,
                to_port,
            } => write!(
                f,
                "oifname \"{link}\" ip daddr {to} {} dport {to_port} ct status dnat counter accept",
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

/// The rules of `ip weft-host` that every slot shares, in chain order. Without an uplink
/// there is nothing to masquerade out of (the apply fails naming `Uplink`; the rest holds).
pub fn host_base(uplink: Option<&IfName>, veth_range: Ipv4Net) -> Vec<Keyed> {
    let mut rules = vec![
        Keyed::new(Key::Base, "prerouting", Rule::LocalPorts),
        Keyed::new(Key::Base, "output", Rule::LocalPorts),
    ];
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
        Keyed::new(Key::Base, "forward", Rule::JumpSandboxes),
        Keyed::new(Key::Base, "forward", Rule::IntoSandboxes),
        Keyed::new(Key::Base, "input", Rule::SandboxesToHost),
    ]);
    rules
}

/// One slot's rules in `ip weft-host`: the drop of its new connections without `Egress`,
/// and a DNAT and an accept per port forward.
pub fn slot_rules(addrs: &SlotAddrs, sandbox: &Sandbox) -> Vec<Keyed> {
    let key = Key::Slot(sandbox.slot);
    let mut rules = Vec::new();
    if !sandbox.egress {
        rules.push(Keyed::new(
            key,
            SANDBOXES,
            Rule::NoEgress {
                link: addrs.host_link.clone(),
            },
        ));
    }
    for f in &sandbox.port_forwards {
        rules.push(Keyed::new(
            key,
            PORT_FORWARDS,
            Rule::PortForward {
                protocol: f.protocol,
                host_port: f.host_port,
                to: addrs.host_ip,
                to_port: f.sandbox_port,
            },
        ));
        rules.push(Keyed::new(
            key,
            SANDBOXES,
            Rule::Forwarded {
                link: addrs.host_link.clone(),
                to: addrs.host_ip,
                protocol: f.protocol,
                to_port: f.sandbox_port,
            },
        ));
    }
    rules
}

/// An `nft -f` script that makes `table` with `chains` (empty) from nothing.
pub fn nft_table(table: &str, chains: &[ChainDef]) -> String {
    let mut text = format!("add table ip {table}\n");
    for c in chains {
        match c.base {
            None => text.push_str(&format!("add chain ip {table} {}\n", c.name)),
            Some(b) => text.push_str(&format!(
                "add chain ip {table} {} {{ type {} hook {} priority {}; policy accept; }}\n",
                c.name,
                b.kind,
                b.hook.name(),
                b.priority
            )),
        }
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
                r#"add rule ip weft-host prerouting fib daddr type local ip daddr != 127.0.0.0/8 jump port-forwards comment "weft base""#,
                r#"add rule ip weft-host output fib daddr type local ip daddr != 127.0.0.0/8 jump port-forwards comment "weft base""#,
                r#"add rule ip weft-host postrouting oifname "eth0" ip saddr 10.12.0.0/16 counter masquerade comment "weft base""#,
                r#"add rule ip weft-host forward ct state established,related counter accept comment "weft base""#,
                r#"add rule ip weft-host forward iifname "weft-v*" oifname "weft-v*" counter drop comment "weft base""#,
                r#"add rule ip weft-host forward jump sandboxes comment "weft base""#,
                r#"add rule ip weft-host forward oifname "weft-v*" ct state new counter drop comment "weft base""#,
                r#"add rule ip weft-host input iifname "weft-v*" ct state new counter drop comment "weft base""#,
            ]
        );
        // No uplink: everything but the masquerade.
        assert_eq!(host_base(None, "10.12.0.0/16".parse().unwrap()).len(), 7);
        // Regular chains first: a base chain's jump needs its target.
        let script = nft_table(HOST_TABLE, &HOST_CHAINS);
        assert!(script.find("port-forwards").unwrap() < script.find("prerouting").unwrap());
        assert!(script.contains(
            "add chain ip weft-host forward { type filter hook forward priority 0; policy accept; }"
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
                r#"add rule ip weft-host sandboxes iifname "weft-v7" ct state new counter drop comment "weft slot 7""#,
                r#"add rule ip weft-host port-forwards tcp dport 8080 counter dnat to 10.11.0.7:80 comment "weft slot 7""#,
                r#"add rule ip weft-host sandboxes oifname "weft-v7" ip daddr 10.11.0.7 tcp dport 80 ct status dnat counter accept comment "weft slot 7""#,
                r#"add rule ip weft-host port-forwards udp dport 5353 counter dnat to 10.11.0.7:53 comment "weft slot 7""#,
                r#"add rule ip weft-host sandboxes oifname "weft-v7" ip daddr 10.11.0.7 udp dport 53 ct status dnat counter accept comment "weft slot 7""#,
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
