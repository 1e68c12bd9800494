//! Validation: a decoded [`PodSpec`] becomes a [`ValidSpec`] of typed values in one pass, or
//! a [`ValidationErrors`] naming every field that is wrong with its path
//! (`Firewall.Ingress[3].Ports[1]: 70000 is not a port (1-65535)`).
//!
//! Normalisation happens here too, so equal intent compares equal: firewall addresses are
//! truncated to their networks and merged where they overlap or touch, ports are merged into
//! sorted ranges, and WireGuard allowed IPs are truncated, sorted and deduplicated.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::key::{PublicKey, SecretKey};
use crate::spec::{FirewallSpec, NetworkSpec, PeerSpec, PodSpec, WireGuardSpec};
use crate::subject::PodId;
use crate::text::quote;

/// The bounds of contract v1; a spec over one is rejected with the bound in the message.
pub mod limits {
    /// 2^53 - 1: the largest integer every JSON decoder keeps exact (a float64 mantissa).
    pub const GENERATION_MAX: u64 = (1 << 53) - 1;
    pub const RULES_PER_DIRECTION: usize = 10_000;
    pub const ADDRESSES_PER_RULE: usize = 65_536;
    pub const PORTS_PER_RULE: usize = 1_024;
    pub const PEERS: usize = 10_000;
    pub const ALLOWED_IPS_PER_PEER: usize = 1_024;
    pub const NAMESERVERS: usize = 3;
    pub const SEARCH_DOMAINS: usize = 6;
    /// nftables keeps rule comments of up to 128 bytes.
    pub const COMMENT_BYTES: usize = 128;
    pub const MTU_MIN: u32 = 576;
    pub const MTU_MAX: u32 = 65_535;
    /// The default MTU of a WireGuard interface.
    pub const WIREGUARD_MTU: u32 = 1420;
}

/// A spec that passed validation: every value typed, every collection normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidSpec {
    pub pod_id: PodId,
    pub generation: u64,
    /// The spec is not to be applied after this time (seconds since the epoch).
    pub not_after_unix: Option<u64>,
    pub network: Option<Network>,
    /// Always present: an absent firewall is the baseline.
    pub firewall: Firewall,
    pub wireguard: Option<WireGuard>,
}

/// A Linux interface name: 1-15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 15 {
            return Err(format!(
                "{} is not an interface name (1-15 characters)",
                quote(text)
            ));
        }
        if text == "." || text == ".." {
            return Err(format!("{} is not an interface name", quote(text)));
        }
        if let Some(c) = text
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{} is not an interface name (has {c:?})",
                quote(text)
            ));
        }
        Ok(IfName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The pod interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub interface: IfName,
    /// The interface address with its prefix (host bits kept).
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The global IPv6 address with its prefix (host bits kept).
    pub address6: Option<Ipv6Net>,
    /// Global or link-local; only with `address6`.
    pub gateway6: Option<Ipv6Addr>,
    pub mtu: Option<u32>,
    pub nameservers: Vec<IpAddr>,
    pub search_domains: Vec<String>,
}

/// The firewall: allows in, drops out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Firewall {
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// A layer-4 protocol a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "any" => Ok(Protocol::Any),
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "icmpv6" => Ok(Protocol::Icmpv6),
            other => Err(format!(
                "{} is not a protocol (tcp, udp, icmp, icmpv6 or any)",
                quote(other)
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }

    /// Whether the protocol has ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `"N"` or `"N-M"` with 1 <= N <= M <= 65535.
    pub fn parse(text: &str) -> Result<Self, String> {
        let port = |t: &str| -> Result<u16, String> {
            // Digits only: `u32::from_str` would also take "+22", and " 22" is not "N" either.
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{} is not a port or range (\"N\" or \"N-M\")",
                    quote(text)
                ));
            }
            match t.parse::<u32>() {
                Ok(n) if (1..=65_535).contains(&n) => Ok(n as u16),
                Ok(n) => Err(format!("{n} is not a port (1-65535)")),
                Err(_) => Err(format!(
                    "{} is not a port or range (\"N\" or \"N-M\")",
                    quote(text)
                )),
            }
        };
        match text.split_once('-') {
            None => port(text).map(|p| PortRange { first: p, last: p }),
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last {
                    return Err(format!(
                        "{} is an empty range (start after end)",
                        quote(text)
                    ));
                }
                Ok(PortRange { first, last })
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One firewall rule. Empty `v4` and `v6` mean any address; otherwise the rule becomes one
/// nftables rule per family that is non-empty. Empty `ports` means every port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub protocol: Protocol,
    /// Sorted, merged ranges.
    pub ports: Vec<PortRange>,
    /// Sorted, truncated to networks, merged.
    pub v4: Vec<Ipv4Net>,
    /// Sorted, truncated to networks, merged.
    pub v6: Vec<Ipv6Net>,
    pub comment: Option<String>,
}

impl Rule {
    /// True when the rule matches every address.
    pub fn any_address(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The WireGuard overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireGuard {
    pub interface: IfName,
    /// The overlay address with its prefix (host bits kept); the connected route follows it.
    pub address: IpNet,
    pub listen_port: u16,
    /// `None`: the agent generates one and keeps it in its state directory.
    pub private_key: Option<SecretKey>,
    pub peers: Vec<Peer>,
    pub mtu: u32,
    /// `DefaultRoute: true`: the tunnel may take the default route, and the peers' endpoints
    /// stay reachable through this underlay.
    pub default_route: Option<Underlay>,
}

/// The pod interface and its gateways, through which the tunnel's own packets leave when
/// the tunnel holds the default route. Validation makes sure every peer endpoint has the
/// gateway of its family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub interface: IfName,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
}

impl Underlay {
    /// The gateway of `ip`'s family.
    pub fn gateway_for(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => self.gateway.map(IpAddr::V4),
            IpAddr::V6(_) => self.gateway6.map(IpAddr::V6),
        }
    }
}

/// One WireGuard peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    /// Sorted, truncated to networks, deduplicated.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds, `None` or 0 meaning off.
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<SecretKey>,
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// `Firewall.Ingress[3].Ports[1]`
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec (the first [`ValidationErrors::KEPT`] of them, and a count).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ValidationErrors {
    pub errors: Vec<ValidationError>,
    /// How many there were in all, including those not kept.
    pub total: usize,
}

impl ValidationErrors {
    /// How many errors are kept; a spec with 70,000 bad sources does not need 70,000 lines.
    pub const KEPT: usize = 20;

    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.total += 1;
        if self.errors.len() < Self::KEPT {
            self.errors.push(ValidationError {
                path: path.into(),
                message: message.into(),
            });
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if self.total > self.errors.len() {
            write!(f, "; and {} more", self.total - self.errors.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Checks a collection's length against its bound; false (and an error) when over it.
pub(crate) fn within(errs: &mut ValidationErrors, path: &str, len: usize, bound: usize) -> bool {
    if len > bound {
        errs.push(path, format!("{len} entries, at most {bound}"));
        return false;
    }
    true
}

impl ValidSpec {
    /// Validates a whole spec for the agent of pod `pod`.
    pub fn validate(spec: &PodSpec, pod: &PodId) -> Result<ValidSpec, ValidationErrors> {
        Self::validate_owned(spec.clone(), pod)
    }

    /// [`Self::validate`], consuming the spec: each firewall rule and peer is dropped as soon
    /// as it is validated, so a large spec is never held twice (as strings and as typed
    /// values) at once.
    pub fn validate_owned(spec: PodSpec, pod: &PodId) -> Result<ValidSpec, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let pod_id = check_id(&mut errs, "PodId", &spec.pod_id, pod, "pod");
        check_generation(&mut errs, spec.generation);
        let network = spec
            .network
            .as_ref()
            .and_then(|n| network(&mut errs, "Network", n));
        let firewall = firewall(&mut errs, spec.firewall.unwrap_or_default());
        let default_route = spec
            .wireguard
            .as_ref()
            .is_some_and(|w| w.default_route == Some(true));
        let mut wireguard = spec
            .wireguard
            .and_then(|w| wireguard(&mut errs, "WireGuard", w));
        if let (Some(n), Some(w)) = (&network, &wireguard) {
            if n.interface == w.interface {
                errs.push(
                    "WireGuard.Interface",
                    format!("{} is already Network.Interface", w.interface),
                );
            }
        }
        if default_route {
            if let Some(w) = &mut wireguard {
                w.default_route = underlay(&mut errs, network.as_ref(), spec.network.is_some(), w);
            }
        }
        match (pod_id, errs.total) {
            (Some(pod_id), 0) => Ok(ValidSpec {
                pod_id,
                generation: spec.generation,
                not_after_unix: spec.not_after_unix,
                network,
                firewall: firewall.expect("no errors means a firewall"),
                wireguard,
            }),
            _ => Err(errs),
        }
    }
}

/// The spec's id, when it is the agent's own (`PodId`, `HostId`).
pub(crate) fn check_id(
    errs: &mut ValidationErrors,
    field: &str,
    text: &str,
    agent: &PodId,
    role: &str,
) -> Option<PodId> {
    match PodId::parse(text) {
        Ok(id) if &id == agent => Some(id),
        Ok(id) => {
            errs.push(field, format!("{id} is not this agent's {role} ({agent})"));
            None
        }
        Err(e) => {
            errs.push(field, e);
            None
        }
    }
}

/// `Generation`: 1 to 2^53 - 1.
pub(crate) fn check_generation(errs: &mut ValidationErrors, generation: u64) {
    if generation == 0 {
        errs.push("Generation", "must be at least 1 (0 means nothing applied)");
    } else if generation > limits::GENERATION_MAX {
        errs.push(
            "Generation",
            format!(
                "{generation} is above 2^53 - 1 ({}), the largest integer every JSON decoder keeps exact",
                limits::GENERATION_MAX
            ),
        );
    }
}

/// `WireGuard.DefaultRoute: true`: the tunnel's own packets must still leave by the pod
/// interface, so each peer endpoint needs the `Network` gateway of its family.
fn underlay(
    errs: &mut ValidationErrors,
    network: Option<&Network>,
    network_given: bool,
    w: &WireGuard,
) -> Option<Underlay> {
    let Some(net) = network else {
        if !network_given {
            errs.push(
                "WireGuard.DefaultRoute",
                "needs a Network section: the peers' endpoints stay reachable via its gateway",
            );
        }
        return None;
    };
    let underlay = Underlay {
        interface: net.interface.clone(),
        gateway: net.gateway,
        gateway6: net.gateway6,
    };
    let before = errs.total;
    for (i, p) in w.peers.iter().enumerate() {
        let Some(endpoint) = p.endpoint else { continue };
        if underlay.gateway_for(endpoint.ip()).is_none() {
            let field = match endpoint {
                SocketAddr::V4(_) => "Network.Gateway",
                SocketAddr::V6(_) => "Network.Gateway6",
            };
            errs.push(
                format!("WireGuard.Peers[{i}].Endpoint"),
                format!(
                    "with DefaultRoute the endpoint {endpoint} is reached via {field}, which is not set"
                ),
            );
        }
    }
    (errs.total == before).then_some(underlay)
}

fn ifname(errs: &mut ValidationErrors, path: &str, text: &str) -> Option<IfName> {
    IfName::parse(text).map_err(|e| errs.push(path, e)).ok()
}

fn mtu(errs: &mut ValidationErrors, path: &str, value: Option<u32>) -> Option<u32> {
    match value {
        Some(m) if !(limits::MTU_MIN..=limits::MTU_MAX).contains(&m) => {
            errs.push(
                path,
                format!(
                    "{m} is not an MTU ({}-{})",
                    limits::MTU_MIN,
                    limits::MTU_MAX
                ),
            );
            None
        }
        other => other,
    }
}

/// A DNS name for `search`: labels of 1-63 characters of `[A-Za-z0-9-_]`, at most 253 in all.
fn dns_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!("{} is not a DNS name", quote(text)))
    }
}

fn network(errs: &mut ValidationErrors, path: &str, spec: &NetworkSpec) -> Option<Network> {
    let before = errs.total;
    let interface = ifname(errs, &format!("{path}.Interface"), &spec.interface);
    let address = match spec.address.parse::<Ipv4Net>() {
        Ok(a) => Some(a),
        Err(_) if spec.address.parse::<IpNet>().is_ok() => {
            errs.push(
                format!("{path}.Address"),
                format!(
                    "{} is not IPv4 (an IPv6 address goes in Address6)",
                    quote(&spec.address)
                ),
            );
            None
        }
        Err(_) => {
            errs.push(
                format!("{path}.Address"),
                format!(
                    "{} is not a CIDR with its prefix (10.0.0.5/24)",
                    quote(&spec.address)
                ),
            );
            None
        }
    };
    let gateway = spec.gateway.as_deref().and_then(|g| {
        g.parse::<Ipv4Addr>()
            .map_err(|_| {
                errs.push(
                    format!("{path}.Gateway"),
                    format!("{} is not an IPv4 address", quote(g)),
                )
            })
            .ok()
    });
    let address6 = spec.address6.as_deref().and_then(|a| {
        ipv6_address(a)
            .map_err(|e| errs.push(format!("{path}.Address6"), e))
            .ok()
    });
    let gateway6 = spec.gateway6.as_deref().and_then(|g| {
        ipv6_gateway(g)
            .map_err(|e| errs.push(format!("{path}.Gateway6"), e))
            .ok()
    });
    if gateway6.is_some() && spec.address6.is_none() {
        errs.push(
            format!("{path}.Gateway6"),
            "needs Network.Address6 (without a global IPv6 address there is nothing to route)",
        );
    }
    let mtu = mtu(errs, &format!("{path}.Mtu"), spec.mtu);
    let mut nameservers = Vec::new();
    if within(
        errs,
        &format!("{path}.Nameservers"),
        spec.nameservers.len(),
        limits::NAMESERVERS,
    ) {
        for (i, ns) in spec.nameservers.iter().enumerate() {
            match ns.parse::<IpAddr>() {
                Ok(a) => nameservers.push(a),
                Err(_) => errs.push(
                    format!("{path}.Nameservers[{i}]"),
                    format!("{} is not an IP address", quote(ns)),
                ),
            }
        }
    }
    let mut search_domains = Vec::new();
    if within(
        errs,
        &format!("{path}.SearchDomains"),
        spec.search_domains.len(),
        limits::SEARCH_DOMAINS,
    ) {
        for (i, d) in spec.search_domains.iter().enumerate() {
            match dns_name(d) {
                Ok(d) => search_domains.push(d),
                Err(e) => errs.push(format!("{path}.SearchDomains[{i}]"), e),
            }
        }
    }
    if errs.total > before {
        return None;
    }
    Some(Network {
        interface: interface?,
        address: address?,
        gateway,
        address6,
        gateway6,
        mtu,
        nameservers,
        search_domains,
    })
}

/// What an IPv6 address may not be to be a pod's own or its gateway, if anything.
fn not_unicast6(a: Ipv6Addr) -> Option<&'static str> {
    if a.is_unspecified() || a.is_loopback() {
        Some("is not a unicast address")
    } else if a.is_multicast() {
        Some("is multicast")
    } else if a.to_ipv4_mapped().is_some() {
        Some("is IPv4-mapped (an IPv4 address goes in Address or Gateway)")
    } else {
        None
    }
}

fn is_link_local6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// `Address6`: a global (or unique local) IPv6 CIDR with its prefix.
fn ipv6_address(text: &str) -> Result<Ipv6Net, String> {
    let net = match text.parse::<IpNet>() {
        Ok(IpNet::V6(n)) => n,
        Ok(IpNet::V4(_)) => {
            return Err(format!(
                "{} is not IPv6 (the IPv4 address goes in Address)",
                quote(text)
            ))
        }
        Err(_) => {
            return Err(format!(
                "{} is not an IPv6 CIDR with its prefix (2001:db8::5/64)",
                quote(text)
            ))
        }
    };
    if let Some(why) = not_unicast6(net.addr()) {
        return Err(format!("{} {why}", quote(text)));
    }
    if is_link_local6(net.addr()) {
        return Err(format!(
            "{} is link-local (the kernel keeps the link-local address; Address6 is the global one)",
            quote(text)
        ));
    }
    Ok(net)
}

/// `Gateway6`: an IPv6 unicast address, global or link-local (on the pod interface).
fn ipv6_gateway(text: &str) -> Result<Ipv6Addr, String> {
    let a = match text.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => a,
        Ok(IpAddr::V4(_)) => {
            return Err(format!(
                "{} is not an IPv6 address (the IPv4 gateway goes in Gateway)",
                quote(text)
            ))
        }
        Err(_) => return Err(format!("{} is not an IPv6 address", quote(text))),
    };
    match not_unicast6(a) {
        Some(why) => Err(format!("{} {why}", quote(text))),
        None => Ok(a),
    }
}

/// What one rule's address list is called on the wire.
#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

fn firewall(errs: &mut ValidationErrors, spec: FirewallSpec) -> Option<Firewall> {
    let before = errs.total;
    let mut fw = Firewall::default();
    if within(
        errs,
        "Firewall.Ingress",
        spec.ingress.len(),
        limits::RULES_PER_DIRECTION,
    ) {
        // Each rule's strings are freed once it is validated.
        for (i, r) in spec.ingress.into_iter().enumerate() {
            let path = format!("Firewall.Ingress[{i}]");
            if let Some(rule) = rule(
                errs,
                &path,
                Direction::Ingress,
                &r.protocol,
                &r.ports,
                &r.sources,
                &r.comment,
            ) {
                fw.ingress.push(rule);
            }
        }
    }
    if within(
        errs,
        "Firewall.Egress",
        spec.egress.len(),
        limits::RULES_PER_DIRECTION,
    ) {
        for (i, r) in spec.egress.into_iter().enumerate() {
            let path = format!("Firewall.Egress[{i}]");
            if let Some(rule) = rule(
                errs,
                &path,
                Direction::Egress,
                &r.protocol,
                &r.ports,
                &r.destinations,
                &r.comment,
            ) {
                fw.egress.push(rule);
            }
        }
    }
    (errs.total == before).then_some(fw)
}

/// Parses a CIDR, or a bare address as a host route.
fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{} is not an IP address or CIDR", quote(text)))
}

#[allow(clippy::too_many_arguments)]
fn rule(
    errs: &mut ValidationErrors,
    path: &str,
    direction: Direction,
    protocol: &str,
    ports: &[String],
    addrs: &[String],
    comment: &Option<String>,
) -> Option<Rule> {
    let before = errs.total;
    let protocol = Protocol::parse(protocol)
        .map_err(|e| errs.push(format!("{path}.Protocol"), e))
        .ok();

    let mut ranges = Vec::new();
    if within(
        errs,
        &format!("{path}.Ports"),
        ports.len(),
        limits::PORTS_PER_RULE,
    ) {
        if let Some(p) = protocol.filter(|p| !p.has_ports() && !ports.is_empty()) {
            errs.push(
                format!("{path}.Ports"),
                format!("ports need protocol tcp or udp, not {}", p.as_str()),
            );
        } else {
            for (i, p) in ports.iter().enumerate() {
                match PortRange::parse(p) {
                    Ok(r) => ranges.push(r),
                    Err(e) => errs.push(format!("{path}.Ports[{i}]"), e),
                }
            }
        }
    }

    let field = match direction {
        Direction::Ingress => "Sources",
        Direction::Egress => "Destinations",
    };
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    if within(
        errs,
        &format!("{path}.{field}"),
        addrs.len(),
        limits::ADDRESSES_PER_RULE,
    ) {
        for (i, a) in addrs.iter().enumerate() {
            match cidr(a) {
                Ok(IpNet::V4(n)) => v4.push(n.trunc()),
                Ok(IpNet::V6(n)) => v6.push(n.trunc()),
                Err(e) => errs.push(format!("{path}.{field}[{i}]"), e),
            }
        }
    }
    match protocol {
        Some(Protocol::Icmp) if !v6.is_empty() => errs.push(
            format!("{path}.{field}"),
            "protocol icmp matches IPv4 only, but IPv6 addresses are named (use icmpv6)",
        ),
        Some(Protocol::Icmpv6) if !v4.is_empty() => errs.push(
            format!("{path}.{field}"),
            "protocol icmpv6 matches IPv6 only, but IPv4 addresses are named (use icmp)",
        ),
        _ => {}
    }

    if let Some(c) = comment {
        if c.len() > limits::COMMENT_BYTES {
            errs.push(
                format!("{path}.Comment"),
                format!("{} bytes, at most {}", c.len(), limits::COMMENT_BYTES),
            );
        } else if c.chars().any(char::is_control) {
            errs.push(format!("{path}.Comment"), "has control characters");
        }
    }

    if errs.total > before {
        return None;
    }
    Some(Rule {
        protocol: protocol?,
        ports: merge_ports(ranges),
        v4: Ipv4Net::aggregate(&v4),
        v6: Ipv6Net::aggregate(&v6),
        comment: comment.clone(),
    })
}

/// Sorts ranges and merges those that overlap or touch.
fn merge_ports(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort_unstable();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last);
            }
            _ => merged.push(r),
        }
    }
    merged
}

fn wireguard(errs: &mut ValidationErrors, path: &str, spec: WireGuardSpec) -> Option<WireGuard> {
    let before = errs.total;
    let interface = ifname(errs, &format!("{path}.Interface"), &spec.interface);
    let address = match spec.address.parse::<IpNet>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                format!("{path}.Address"),
                format!(
                    "{} is not a CIDR with its prefix (10.9.0.1/24)",
                    quote(&spec.address)
                ),
            );
            None
        }
    };
    let listen_port = match u16::try_from(spec.listen_port) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.push(
                format!("{path}.ListenPort"),
                format!("{} is not a port (1-65535)", spec.listen_port),
            );
            None
        }
    };
    let private_key = spec.private_key.as_ref().and_then(|k| {
        SecretKey::parse(k.expose())
            .map_err(|e| errs.push(format!("{path}.PrivateKey"), format!("not a key: {e}")))
            .ok()
    });
    let mtu = mtu(errs, &format!("{path}.Mtu"), spec.mtu).unwrap_or(limits::WIREGUARD_MTU);

    let mut peers: Vec<Peer> = Vec::new();
    if within(
        errs,
        &format!("{path}.Peers"),
        spec.peers.len(),
        limits::PEERS,
    ) {
        let mut seen = std::collections::HashMap::new();
        for (i, p) in spec.peers.into_iter().enumerate() {
            let ppath = format!("{path}.Peers[{i}]");
            if let Some(peer) = peer(errs, &ppath, &p) {
                if let Some(first) = seen.insert(peer.public_key, i) {
                    errs.push(
                        format!("{ppath}.PublicKey"),
                        format!("the same key as Peers[{first}]"),
                    );
                } else {
                    peers.push(peer);
                }
            }
        }
    }
    if errs.total > before {
        return None;
    }
    Some(WireGuard {
        interface: interface?,
        address: address?,
        listen_port: listen_port?,
        private_key,
        peers,
        mtu,
        default_route: None, // set with the Network section in view
    })
}

fn peer(errs: &mut ValidationErrors, path: &str, spec: &PeerSpec) -> Option<Peer> {
    let before = errs.total;
    let public_key = PublicKey::parse(&spec.public_key)
        .map_err(|e| {
            errs.push(
                format!("{path}.PublicKey"),
                format!("{} is not a key: {e}", quote(&spec.public_key)),
            )
        })
        .ok();
    let endpoint = spec.endpoint.as_deref().and_then(|e| {
        match e.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => return Some(a),
            Ok(_) => errs.push(
                format!("{path}.Endpoint"),
                format!("{} has port 0", quote(e)),
            ),
            Err(_) => errs.push(
                format!("{path}.Endpoint"),
                format!(
                    "{} is not IP:port or [IPv6]:port (host names are not resolved)",
                    quote(e)
                ),
            ),
        }
        None
    });
    let mut allowed_ips = Vec::new();
    if within(
        errs,
        &format!("{path}.AllowedIps"),
        spec.allowed_ips.len(),
        limits::ALLOWED_IPS_PER_PEER,
    ) {
        for (i, a) in spec.allowed_ips.iter().enumerate() {
            match cidr(a) {
                Ok(n) => allowed_ips.push(n.trunc()),
                Err(e) => errs.push(format!("{path}.AllowedIps[{i}]"), e),
            }
        }
    }
    allowed_ips.sort_unstable();
    allowed_ips.dedup();
    let persistent_keepalive = spec.persistent_keepalive_seconds.and_then(|s| {
        u16::try_from(s)
            .map_err(|_| {
                errs.push(
                    format!("{path}.PersistentKeepaliveSeconds"),
                    format!("{s} is more than 65535"),
                )
            })
            .ok()
    });
    let preshared_key = spec.preshared_key.as_ref().and_then(|k| {
        SecretKey::parse(k.expose())
            .map_err(|e| errs.push(format!("{path}.PresharedKey"), format!("not a key: {e}")))
            .ok()
    });
    if errs.total > before {
        return None;
    }
    Some(Peer {
        public_key: public_key?,
        endpoint,
        allowed_ips,
        persistent_keepalive,
        preshared_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_merge_when_they_overlap_or_touch() {
        let r = |a, b| PortRange { first: a, last: b };
        assert_eq!(
            merge_ports(vec![
                r(8000, 8080),
                r(22, 22),
                r(8081, 8090),
                r(8050, 8060),
                r(22, 22)
            ]),
            vec![r(22, 22), r(8000, 8090)]
        );
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(PortRange::parse("22").unwrap().to_string(), "22");
        assert_eq!(PortRange::parse("1-65535").unwrap().to_string(), "1-65535");
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("9-8").is_err());
        assert!(PortRange::parse("a").is_err());
        assert!(PortRange::parse("+22").is_err());
        assert!(PortRange::parse(" 22").is_err());
        assert!(PortRange::parse("1 - 5").is_err());
    }
}
