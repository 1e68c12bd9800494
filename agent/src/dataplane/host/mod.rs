//! The host role's kernel half (CONTRACT.md v1.1 "Host role"): one slot per sandbox, each a
//! named network namespace with its links, addresses, routes and NAT table, plus the host's
//! route to it and its rules in the host's own table.
//!
//! - [`slot`]: where everything of slot N is (names, addresses), and the objects it is made
//!   of, as values: pure.
//! - [`tables`]: the two owned tables, `ip weft-sb` in each sandbox and `ip weft-host` on the
//!   host, rendered as values (rules keyed by the slot they belong to), and as the `nft`
//!   text that lists them: pure.
//! - [`netns`]: named namespaces as `ip netns` makes them, entered by a thread;
//!   [`tap`]: the persistent tap; [`sysctl`]: IPv4 forwarding through `/proc/sys`.

pub mod exprs;
pub mod hosttable;
pub mod netns;
pub mod plan;
pub mod plane;
pub mod read;
pub mod slot;
pub mod status;
pub mod sysctl;
pub mod tables;
pub mod tap;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

pub use plane::{Error, HostPlane};
pub use slot::{Addressing, SlotAddrs, SlotObjects};

/// Where the host plane keeps and makes things (`weft-agent host`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub state_dir: PathBuf,
    /// Slot N's HostIp is this network's address N.
    pub host_range: Ipv4Net,
    /// Slot N's veth pair is this network's addresses 2N and 2N + 1.
    pub veth_range: Ipv4Net,
    /// Slot N's namespace is `<netns_prefix>N`.
    pub netns_prefix: String,
}

impl Settings {
    pub fn addressing(&self) -> Addressing {
        Addressing {
            host_range: self.host_range,
            veth_range: self.veth_range,
            netns_prefix: self.netns_prefix.clone(),
        }
    }
}

/// The widest prefix `--host-range` may have: a /18 holds addresses 1 to 16383.
pub const HOST_RANGE_WIDEST: u8 = 18;
/// The widest prefix `--veth-range` may have: a /17 holds the /31 of slot 16383.
pub const VETH_RANGE_WIDEST: u8 = 17;

/// Neither range may overlap the loopback network...
pub const LOOPBACK: Ipv4Net = net(Ipv4Addr::new(127, 0, 0, 0), 8);
/// ...nor the guests' link-local /30, which every sandbox holds.
pub const GUEST_NET: Ipv4Net = net(Ipv4Addr::new(169, 254, 0, 20), 30);

const fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, prefix) {
        Ok(n) => n,
        Err(_) => panic!("a valid prefix"),
    }
}

/// The longest `--netns-prefix`: a namespace name is a file name in `/run/netns`, and the
/// guest namespace's adds `16383-g`.
pub const NETNS_PREFIX_MAX: usize = 200;

/// Checks `--netns-prefix`: 1 to 200 characters of `[A-Za-z0-9_.-]`, so `<prefix>N` and
/// `<prefix>N-g` are plain file names in `/run/netns`.
pub fn check_netns_prefix(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > NETNS_PREFIX_MAX {
        return Err(format!(
            "{text:?} must be 1 to {NETNS_PREFIX_MAX} characters"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{text:?} has {c:?}; only A-Z a-z 0-9 _ - . are allowed"
        ));
    }
    if text.starts_with('.') {
        return Err(format!("{text:?} must not start with '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_prefixes_are_plain_file_names() {
        assert!(check_netns_prefix("weft-sb-").is_ok());
        assert!(check_netns_prefix("t.1_a-").is_ok());
        for bad in ["", "a/b", "a b", "..", ".x", "ä"] {
            assert!(check_netns_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(check_netns_prefix(&"a".repeat(201)).is_err());
        assert_eq!(LOOPBACK.to_string(), "127.0.0.0/8");
        assert_eq!(GUEST_NET.to_string(), "169.254.0.20/30");
    }
}
