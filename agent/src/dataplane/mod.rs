//! The kernel subsystems the agent owns, each the same shape ([`subsystem::Subsystem`]):
//! read -> pure plan -> send -> status. Plans and statuses are unit-tested without root;
//! the thin halves do the socket I/O through one netlink layer ([`netlink`]). All of them
//! live on the reconciler's thread: their sockets are blocking, and a thread is the unit
//! that lives in a network namespace.
//!
//! - [`link`]: a link's MTU, up, address and routes, for the pod interface and the WireGuard
//!   interface alike; [`resolv`]: the resolver file; [`wireguard`]: the overlay;
//!   [`firewall`]: table `inet weft-fw`.
//! - [`host`]: the host role's slots (namespaces, veth pairs, taps, NAT tables).
//! - [`netlink`], [`rtnl`], [`nftables`]: the codec, and the rtnetlink and nftables layers
//!   on it; [`sockets`]: the sockets as one value; [`events`]: the notifications that wake a
//!   drift check.

pub mod events;
pub mod firewall;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
pub mod link;
pub mod netlink;
pub mod nftables;
pub mod resolv;
pub mod rtnl;
pub mod sockets;
pub mod subsystem;
pub mod wireguard;

use std::path::PathBuf;

use tracing::warn;
use weft_schema::text::ErrorLine;
use weft_schema::validate::ValidSpec;
use weft_schema::{FirewallStatus, NetworkStatus, Overall, Subsystem, WireGuardStatus};

pub use sockets::{OpenError, Sockets};

use crate::config::FirewallAtStart;
use subsystem::Subsystem as _;

/// Where the dataplane keeps and writes things.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub wireguard: wireguard::Mode,
    /// What to install before any spec is known.
    pub firewall_at_start: FirewallAtStart,
}

/// What a subsystem's apply failed with, kept as a value up to the status (where
/// [`weft_schema::text::error_line`] flattens it, once).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Link(#[from] link::Error),
    #[error(transparent)]
    Resolver(#[from] resolv::Error),
    #[error(transparent)]
    WireGuard(#[from] wireguard::Error),
    #[error(transparent)]
    Firewall(#[from] firewall::Error),
    #[error(transparent)]
    Host(#[from] host::Error),
}

/// One part of a spec the kernel refused.
#[derive(Debug)]
pub struct Failure {
    pub subsystem: Subsystem,
    pub error: Error,
}

/// What the kernel holds, per subsystem (`None`: not managed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub network: Option<NetworkStatus>,
    pub firewall: FirewallStatus,
    pub wireguard: Option<WireGuardStatus>,
}

impl Observed {
    /// The managed subsystems that do not match the desired state, with what differs.
    pub fn degraded(&self) -> Vec<(Subsystem, String)> {
        let net = self
            .network
            .as_ref()
            .map(|s| (Subsystem::Network, s.overall, &s.last_error));
        let fw = Some((
            Subsystem::Firewall,
            self.firewall.overall,
            &self.firewall.last_error,
        ));
        let wg = self
            .wireguard
            .as_ref()
            .map(|s| (Subsystem::WireGuard, s.overall, &s.last_error));
        [net, fw, wg]
            .into_iter()
            .flatten()
            .filter(|(_, overall, _)| *overall != Overall::Healthy)
            .map(|(s, _, e)| (s, e.clone()))
            .collect()
    }
}

/// The kernel subsystems, in the order an apply visits them: the pod link first; WireGuard
/// before the firewall, which opens the listen port the overlay uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Link,
    Resolver,
    WireGuard,
    Firewall,
}

impl Part {
    const ALL: [Part; 4] = [Part::Link, Part::Resolver, Part::WireGuard, Part::Firewall];

    /// Where the contract's status reports it.
    fn reported_as(self) -> Subsystem {
        match self {
            Part::Link | Part::Resolver => Subsystem::Network,
            Part::WireGuard => Subsystem::WireGuard,
            Part::Firewall => Subsystem::Firewall,
        }
    }
}

/// Every kernel subsystem the agent owns, on its sockets.
#[derive(Debug)]
pub struct Dataplane {
    rtnl: rtnl::Rtnl,
    link: link::Link,
    resolver: resolv::Resolver,
    wireguard: wireguard::WireGuardManager,
    firewall: firewall::Firewall,
    firewall_at_start: FirewallAtStart,
}

impl Dataplane {
    /// Opens the sockets in the calling thread's namespace. Changes nothing in the kernel.
    pub fn open(settings: &Settings) -> Result<Dataplane, OpenError> {
        Ok(Dataplane::new(Sockets::open()?, settings))
    }

    /// The subsystems on sockets opened elsewhere (in the namespace they are to manage).
    pub fn new(sockets: Sockets, settings: &Settings) -> Dataplane {
        Dataplane {
            rtnl: sockets.rtnl,
            link: link::Link,
            resolver: resolv::Resolver::new(&settings.resolv_conf),
            wireguard: wireguard::WireGuardManager::new(
                settings.wireguard,
                &settings.state_dir,
                sockets.genl,
            ),
            firewall: firewall::Firewall::new(sockets.nft)
                .remember_in(settings.state_dir.join("firewall")),
            firewall_at_start: settings.firewall_at_start,
        }
    }

    /// What to install before any spec is known (`--firewall-at-start`).
    pub fn firewall_at_start(&self) -> FirewallAtStart {
        self.firewall_at_start
    }

    /// Makes the kernel match `spec`. Each subsystem is applied on its own: a WireGuard
    /// failure does not keep the firewall from being applied. Returns what failed.
    pub fn apply(&mut self, spec: &ValidSpec) -> Vec<Failure> {
        self.apply_parts(spec, |_| true)
    }

    /// Makes the parts reported as `subsystem` match `spec`, writing only what differs.
    pub fn apply_one(&mut self, subsystem: Subsystem, spec: &ValidSpec) -> Vec<Failure> {
        self.apply_parts(spec, |part| part.reported_as() == subsystem)
    }

    fn apply_parts(&mut self, spec: &ValidSpec, which: impl Fn(Part) -> bool) -> Vec<Failure> {
        let mut failures = Vec::new();
        // Per subsystem as the status reports it (the link and the resolver are Network).
        let mut took: Vec<(Subsystem, std::time::Duration)> = Vec::new();
        for part in Part::ALL.into_iter().filter(|p| which(*p)) {
            let started = std::time::Instant::now();
            let applied = self.apply_part(part, spec);
            let (subsystem, elapsed) = (part.reported_as(), started.elapsed());
            match took.iter_mut().find(|(s, _)| *s == subsystem) {
                Some((_, d)) => *d += elapsed,
                None => took.push((subsystem, elapsed)),
            }
            if let Err(error) = applied {
                let subsystem = part.reported_as();
                warn!(?subsystem, error = %ErrorLine(&error), generation = spec.generation, "apply failed");
                failures.push(Failure { subsystem, error });
            }
        }
        for (subsystem, elapsed) in took {
            if subsystem != Subsystem::Network || spec.network.is_some() {
                crate::metrics::apply_took(subsystem, elapsed);
            }
        }
        failures
    }

    fn apply_part(&mut self, part: Part, spec: &ValidSpec) -> Result<(), Error> {
        let rtnl = &mut self.rtnl;
        match part {
            Part::Link => match &spec.network {
                Some(net) => Ok(self
                    .link
                    .apply(rtnl, &link::LinkSpec::pod(net, spec.wireguard.as_ref()))?),
                None => Ok(()), // not managed
            },
            Part::Resolver => match &spec.network {
                Some(net) => Ok(self.resolver.apply(rtnl, net)?),
                None => Ok(()),
            },
            Part::WireGuard => {
                // The key is loaded, or generated into the state directory, before anything
                // else: reads never write it.
                self.wireguard.prepare(spec.wireguard.as_ref())?;
                Ok(self.wireguard.apply(rtnl, &spec.wireguard)?)
            }
            // Through the trait: the firewall's own `apply` also says whether it wrote.
            Part::Firewall => Ok(subsystem::Subsystem::apply(
                &mut self.firewall,
                rtnl,
                &ruleset(spec),
            )?),
        }
    }

    /// Installs the baseline firewall alone (policy drop; `--firewall-at-start baseline`,
    /// before any spec is known) and reads it back.
    pub fn apply_baseline_firewall(&mut self) -> Result<FirewallStatus, Error> {
        let ruleset = firewall::render(&Default::default(), None);
        self.firewall.apply(&ruleset)?;
        Ok(self.firewall.observe(Some(&ruleset)))
    }

    /// Reads back what the kernel holds for `spec`'s subsystems.
    pub fn observe(&mut self, spec: &ValidSpec) -> Observed {
        let mut observed = Observed {
            network: None,
            firewall: FirewallStatus {
                overall: Overall::Pending,
                last_error: String::new(),
                table_present: false,
                ingress_rules: 0,
                egress_rules: 0,
                ruleset_hash: String::new(),
                input_dropped: None,
                egress_dropped: None,
            },
            wireguard: None,
        };
        let rtnl = &mut self.rtnl;
        for part in Part::ALL {
            match part {
                Part::Link => {
                    observed.network = spec.network.as_ref().map(|net| {
                        let desired = link::LinkSpec::pod(net, spec.wireguard.as_ref());
                        self.link.observe(rtnl, &desired).network(&desired)
                    })
                }
                Part::Resolver => {
                    if let (Some(net), Some(status)) = (&spec.network, &mut observed.network) {
                        if let Some(problem) = self.resolver.observe(rtnl, net) {
                            status.overall = Overall::Degraded;
                            if !status.last_error.is_empty() {
                                status.last_error.push_str("; ");
                            }
                            status.last_error.push_str(&problem);
                        }
                    }
                }
                Part::WireGuard => {
                    observed.wireguard = self.wireguard.observe(rtnl, &spec.wireguard)
                }
                Part::Firewall => {
                    observed.firewall =
                        subsystem::Subsystem::observe(&mut self.firewall, rtnl, &ruleset(spec))
                }
            }
        }
        observed
    }

    /// Makes the next observation read every table back whole (see
    /// [`firewall::Firewall::distrust`]).
    pub fn distrust(&mut self) {
        self.firewall.distrust();
    }

    /// Names the WireGuard interface an earlier agent process made (see
    /// [`wireguard::WireGuardManager::inherit`]).
    pub fn inherit_wireguard(&mut self, ifname: &str) {
        self.wireguard.inherit(ifname);
    }

    /// The netlink port of our rtnetlink socket (see [`events::RouteChange::port`]).
    pub fn rtnl_port(&self) -> u32 {
        self.rtnl.portid()
    }

    /// The resolver file the Network subsystem manages (for the event watch).
    pub fn resolv_conf(&self) -> &std::path::Path {
        self.resolver.path()
    }

    /// Stops what lives only in this process (a userspace WireGuard device). Kernel state
    /// stays in place.
    pub fn shutdown(&mut self) {
        self.wireguard.shutdown();
    }
}

fn ruleset(spec: &ValidSpec) -> firewall::Ruleset {
    firewall::render(
        &spec.firewall,
        spec.wireguard.as_ref().map(|w| w.listen_port),
    )
}

pub use weft_schema::text::error_line;
