//! Slot N: where its things are and what they are, as values. Pure.
//!
//! The addressing is wrenn's (seed 001), over the ranges the host agent was given: HostIp is
//! host-range + N, the veth pair holds veth-range + 2N (host end, VethIp) and + 2N + 1
//! (sandbox end, VpeerIp) as a /31. Inside every sandbox the same fixed link-local /30 links
//! the sandbox to its guest: 169.254.0.22 on the sandbox's `tap0`, 169.254.0.21 the guest's.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_schema::host::{Sandbox, Slot};
use weft_schema::Guest;

use super::tables::{self, SandboxTable};

/// The guest's address behind the sandbox's NAT.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The sandbox's address on the guest link (the guest's gateway).
pub const TAP_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// The guest link's prefix.
pub const TAP_PREFIX: u8 = 30;
/// The MAC a VMM gives the guest NIC on `tap0` (the tap keeps its own).
pub const GUEST_MAC: [u8; 6] = [0x02, 0xfc, 0x00, 0x00, 0x00, 0x05];
/// The guest link in the sandbox namespace: a tap, or a veth to the guest namespace.
pub const GUEST_LINK: &str = "tap0";
/// The sandbox end of the veth pair, in the sandbox namespace.
pub const SANDBOX_LINK: &str = "eth0";
/// The guest's end of the guest veth, in the guest namespace (left down and unaddressed:
/// the pod agent there configures it).
pub const GUEST_NS_LINK: &str = "eth0";
/// The host ends of the veth pairs are `weft-v<N>`; the tables match them as `weft-v*`.
pub const HOST_LINK_PREFIX: &str = "weft-v";
/// The guest namespace of slot N is the sandbox namespace's name and this.
pub const GUEST_NS_SUFFIX: &str = "-g";

/// The ranges and names every slot is derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    pub host_range: Ipv4Net,
    pub veth_range: Ipv4Net,
    pub netns_prefix: String,
}

/// Where slot N's things are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAddrs {
    pub slot: Slot,
    /// The sandbox's network namespace, as `ip netns` names it.
    pub namespace: String,
    /// The host end of the veth pair, `weft-v<N>`.
    pub host_link: String,
    /// The address the host reaches the guest at.
    pub host_ip: Ipv4Addr,
    /// The host end's address (the sandbox's gateway).
    pub veth_ip: Ipv4Addr,
    /// The sandbox end's address.
    pub vpeer_ip: Ipv4Addr,
}

impl SlotAddrs {
    /// `VethIp/31`.
    pub fn veth_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.veth_ip, 31).expect("31 is a prefix")
    }

    /// `VpeerIp/31`.
    pub fn vpeer_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.vpeer_ip, 31).expect("31 is a prefix")
    }

    /// `HostIp/32`, the host's route to the guest.
    pub fn host_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.host_ip, 32).expect("32 is a prefix")
    }

    /// The guest namespace of a `Guest: veth` sandbox.
    pub fn guest_namespace(&self) -> String {
        format!("{}{GUEST_NS_SUFFIX}", self.namespace)
    }
}

impl Addressing {
    /// Where slot `slot`'s things are. The ranges were checked wide enough for every slot.
    pub fn slot(&self, slot: Slot) -> SlotAddrs {
        let n = u32::from(slot.get());
        let at = |net: Ipv4Net, offset: u32| Ipv4Addr::from(u32::from(net.network()) + offset);
        SlotAddrs {
            slot,
            namespace: format!("{}{n}", self.netns_prefix),
            host_link: host_link(slot),
            host_ip: at(self.host_range, n),
            veth_ip: at(self.veth_range, 2 * n),
            vpeer_ip: at(self.veth_range, 2 * n + 1),
        }
    }

    /// The slot whose namespace is `name` (a sandbox's, not a guest's), if it is one of ours.
    pub fn slot_of_namespace(&self, name: &str) -> Option<Slot> {
        parse_slot(name.strip_prefix(&self.netns_prefix)?)
    }

    /// The slot whose guest namespace is `name`, if it is one of ours.
    pub fn slot_of_guest_namespace(&self, name: &str) -> Option<Slot> {
        self.slot_of_namespace(name.strip_suffix(GUEST_NS_SUFFIX)?)
    }
}

/// `weft-v<N>`.
pub fn host_link(slot: Slot) -> String {
    format!("{HOST_LINK_PREFIX}{slot}")
}

/// The slot of a host link named `weft-v<N>`.
pub fn slot_of_host_link(name: &str) -> Option<Slot> {
    parse_slot(name.strip_prefix(HOST_LINK_PREFIX)?)
}

/// A slot number as names spell it: decimal, no sign, no leading zero.
fn parse_slot(text: &str) -> Option<Slot> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Slot::new(text.parse().ok()?).ok()
}

/// A MAC address as `ip` prints it.
#[derive(Debug)]
pub struct Mac<'a>(pub &'a [u8]);

impl fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What the guest link of a slot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestLink {
    /// A persistent tap `tap0` that the agent does not hold open; a VMM attaches the guest
    /// NIC with [`GUEST_MAC`].
    Tap,
    /// A veth `tap0` whose peer `eth0` lives, down and unaddressed, in this namespace.
    Veth { guest_namespace: String },
}

/// Every object of one slot, in the order they are made (the reverse order unmakes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotObjects {
    pub addrs: SlotAddrs,
    pub guest: GuestLink,
    /// `tap0` (guest link) holds `169.254.0.22/30`, up.
    pub guest_link_addr: Ipv4Net,
    /// The sandbox's default route: via VethIp on `eth0`, protocol 87.
    pub sandbox_gateway: Ipv4Addr,
    /// Table `ip weft-sb` in the sandbox namespace.
    pub sandbox_table: SandboxTable,
    /// The slot's rules in the host's table `ip weft-host`.
    pub host_rules: Vec<tables::Keyed>,
}

impl SlotObjects {
    /// The objects of `sandbox`'s slot.
    pub fn of(addressing: &Addressing, sandbox: &Sandbox) -> SlotObjects {
        let addrs = addressing.slot(sandbox.slot);
        let guest = match sandbox.guest {
            Guest::Tap => GuestLink::Tap,
            Guest::Veth => GuestLink::Veth {
                guest_namespace: addrs.guest_namespace(),
            },
        };
        SlotObjects {
            guest,
            guest_link_addr: Ipv4Net::new(TAP_IP, TAP_PREFIX).expect("30 is a prefix"),
            sandbox_gateway: addrs.veth_ip,
            sandbox_table: SandboxTable {
                snat_to: addrs.vpeer_ip,
                dnat_from: addrs.host_ip,
            },
            host_rules: tables::slot_rules(&addrs, sandbox),
            addrs,
        }
    }

    /// Every namespace the slot has: the sandbox's, and the guest's for a veth guest.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut names = vec![self.addrs.namespace.as_str()];
        if let GuestLink::Veth { guest_namespace } = &self.guest {
            names.push(guest_namespace);
        }
        names
    }

    /// The MAC to report for the guest NIC (a tap's guest), `None` for a veth guest.
    pub fn guest_mac(&self) -> Option<String> {
        matches!(self.guest, GuestLink::Tap).then(|| Mac(&GUEST_MAC).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::host::{Forward, L4};

    fn addressing() -> Addressing {
        Addressing {
            host_range: "10.11.0.0/16".parse().unwrap(),
            veth_range: "10.12.0.0/16".parse().unwrap(),
            netns_prefix: "weft-sb-".into(),
        }
    }

    fn slot(n: u32) -> Slot {
        Slot::new(n).unwrap()
    }

    #[test]
    fn slot_addresses_are_wrenns_scheme() {
        // The contract's example: slot 7.
        let a = addressing().slot(slot(7));
        assert_eq!(a.namespace, "weft-sb-7");
        assert_eq!(a.host_link, "weft-v7");
        assert_eq!(a.host_ip.to_string(), "10.11.0.7");
        assert_eq!(a.veth_net().to_string(), "10.12.0.14/31");
        assert_eq!(a.vpeer_net().to_string(), "10.12.0.15/31");
        assert_eq!(a.guest_namespace(), "weft-sb-7-g");
        // Past the first /24, as wrenn's byte arithmetic carries.
        let a = addressing().slot(slot(300));
        assert_eq!(a.host_ip.to_string(), "10.11.1.44");
        assert_eq!(a.veth_ip.to_string(), "10.12.2.88");
        assert_eq!(a.vpeer_ip.to_string(), "10.12.2.89");
        // The last slot fits the narrowest ranges allowed.
        let narrow = Addressing {
            host_range: "10.64.0.0/18".parse().unwrap(),
            veth_range: "10.128.0.0/17".parse().unwrap(),
            netns_prefix: "s".into(),
        };
        let last = narrow.slot(slot(16_383));
        assert_eq!(last.host_ip.to_string(), "10.64.63.255");
        assert_eq!(last.veth_net().to_string(), "10.128.127.254/31");
        assert_eq!(last.vpeer_net().to_string(), "10.128.127.255/31");
        assert!(narrow.host_range.contains(&last.host_ip));
        assert!(narrow.veth_range.contains(&last.vpeer_ip));
        assert_eq!(last.host_link, "weft-v16383");
        assert!(last.host_link.len() <= 15);
    }

    #[test]
    fn names_lead_back_to_their_slot() {
        let a = addressing();
        assert_eq!(a.slot_of_namespace("weft-sb-7"), Some(slot(7)));
        assert_eq!(a.slot_of_guest_namespace("weft-sb-7-g"), Some(slot(7)));
        assert_eq!(a.slot_of_namespace("weft-sb-7-g"), None);
        assert_eq!(slot_of_host_link("weft-v16383"), Some(slot(16_383)));
        for bad in [
            "weft-v0",
            "weft-v07",
            "weft-v16384",
            "weft-v",
            "weft-v1x",
            "eth0",
        ] {
            assert_eq!(slot_of_host_link(bad), None, "{bad}");
        }
        assert_eq!(a.slot_of_namespace("other-7"), None);
        assert_eq!(a.slot_of_namespace("weft-sb-+7"), None);
    }

    #[test]
    fn the_objects_of_a_slot() {
        let tap = Sandbox {
            slot: slot(7),
            guest: Guest::Tap,
            egress: true,
            port_forwards: vec![Forward {
                protocol: L4::Tcp,
                host_port: 8080,
                sandbox_port: 80,
            }],
        };
        let o = SlotObjects::of(&addressing(), &tap);
        assert_eq!(o.namespaces(), ["weft-sb-7"]);
        assert_eq!(o.guest, GuestLink::Tap);
        assert_eq!(o.guest_link_addr.to_string(), "169.254.0.22/30");
        assert_eq!(o.sandbox_gateway.to_string(), "10.12.0.14");
        assert_eq!(o.guest_mac().as_deref(), Some("02:fc:00:00:00:05"));
        assert_eq!(o.sandbox_table.snat_to.to_string(), "10.12.0.15");
        assert_eq!(o.sandbox_table.dnat_from.to_string(), "10.11.0.7");
        assert_eq!(o.host_rules.len(), 2, "{:?}", o.host_rules);

        let veth = Sandbox {
            guest: Guest::Veth,
            egress: false,
            port_forwards: vec![],
            ..tap
        };
        let o = SlotObjects::of(&addressing(), &veth);
        assert_eq!(o.namespaces(), ["weft-sb-7", "weft-sb-7-g"]);
        assert_eq!(o.guest_mac(), None);
        // No egress, no forwards: one rule, the drop of its new connections.
        assert_eq!(o.host_rules.len(), 1, "{:?}", o.host_rules);
    }
}
