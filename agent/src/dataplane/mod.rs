//! The kernel subsystems the agent owns. Each has a pure half (spec -> the exact objects to
//! write; kernel dump -> observed status), unit-tested without root, and a thin half that does
//! the socket I/O. All of them live on the reconciler's thread: their sockets are blocking,
//! and a thread is the unit that lives in a network namespace.

pub mod events;
pub mod firewall;
pub mod link;
pub mod resolv;
pub mod rtnl;
pub mod wireguard;

use std::path::PathBuf;

use tracing::warn;
use weft_schema::validate::ValidSpec;
use weft_schema::{FirewallStatus, NetworkStatus, Overall, Subsystem, WireGuardStatus};

/// Where the dataplane keeps and writes things.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub wireguard: wireguard::Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("open rtnetlink socket")]
    Rtnl(#[source] rtnl::Error),
    #[error("open nftables socket")]
    Firewall(#[source] firewall::Error),
}

/// One part of a spec the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub subsystem: Subsystem,
    pub error: String,
}

/// What the kernel holds, per subsystem (`None`: not managed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub network: Option<NetworkStatus>,
    pub firewall: FirewallStatus,
    pub wireguard: Option<WireGuardStatus>,
}

/// Every kernel socket the agent owns.
#[derive(Debug)]
pub struct Dataplane {
    rtnl: rtnl::Rtnl,
    firewall: firewall::Firewall,
    wireguard: wireguard::WireGuardManager,
    resolv_conf: PathBuf,
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

impl Dataplane {
    /// Opens the sockets. Changes nothing in the kernel.
    pub fn open(settings: &Settings) -> Result<Dataplane, OpenError> {
        Ok(Dataplane {
            rtnl: rtnl::Rtnl::open().map_err(OpenError::Rtnl)?,
            firewall: firewall::Firewall::open().map_err(OpenError::Firewall)?,
            wireguard: wireguard::WireGuardManager::new(settings.wireguard, &settings.state_dir),
            resolv_conf: settings.resolv_conf.clone(),
        })
    }

    /// Makes the kernel match `spec`. Each subsystem is applied on its own: a WireGuard
    /// failure does not keep the firewall from being applied. Returns what failed.
    pub fn apply(&mut self, spec: &ValidSpec) -> Vec<Failure> {
        // WireGuard before the firewall: the firewall opens the listen port the overlay uses.
        [
            Subsystem::Network,
            Subsystem::WireGuard,
            Subsystem::Firewall,
        ]
        .into_iter()
        .filter_map(|subsystem| {
            let error = self.apply_one(subsystem, spec).err()?;
            warn!(?subsystem, %error, generation = spec.generation, "apply failed");
            Some(Failure { subsystem, error })
        })
        .collect()
    }

    /// Makes one subsystem match `spec`, writing only what differs. The error names the part
    /// the kernel refused.
    pub fn apply_one(&mut self, subsystem: Subsystem, spec: &ValidSpec) -> Result<(), String> {
        match subsystem {
            Subsystem::Network => {
                let Some(net) = &spec.network else {
                    return Ok(()); // not managed
                };
                link::apply(&mut self.rtnl, net).map_err(|e| error_line(&e))?;
                if !net.nameservers.is_empty() {
                    resolv::write(&self.resolv_conf, &net.nameservers, &net.search_domains)
                        .map_err(|e| format!("write {}: {e}", self.resolv_conf.display()))?;
                }
                Ok(())
            }
            Subsystem::WireGuard => self
                .wireguard
                .apply(&mut self.rtnl, spec.wireguard.as_ref())
                .map_err(|e| error_line(&e)),
            Subsystem::Firewall => {
                let ruleset = self.ruleset(spec);
                self.firewall
                    .apply(&ruleset)
                    .map(|_wrote| ())
                    .map_err(|e| error_line(&e))
            }
        }
    }

    /// Installs the baseline firewall alone (policy drop; `--firewall-at-start baseline`,
    /// before any spec is known) and reads it back.
    pub fn apply_baseline_firewall(&mut self) -> Result<FirewallStatus, String> {
        let ruleset = firewall::render(&Default::default(), None);
        self.firewall.apply(&ruleset).map_err(|e| error_line(&e))?;
        Ok(self.firewall.observe(Some(&ruleset)))
    }

    /// Reads back what the kernel holds for `spec`'s subsystems.
    pub fn observe(&mut self, spec: &ValidSpec) -> Observed {
        let ruleset = self.ruleset(spec);
        Observed {
            network: spec
                .network
                .as_ref()
                .map(|n| link::observe(&mut self.rtnl, n)),
            firewall: self.firewall.observe(Some(&ruleset)),
            wireguard: self
                .wireguard
                .observe(&mut self.rtnl, spec.wireguard.as_ref()),
        }
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

    /// Stops what lives only in this process (a userspace WireGuard device). Kernel state
    /// stays in place.
    pub fn shutdown(&mut self) {
        self.wireguard.shutdown();
    }

    fn ruleset(&self, spec: &ValidSpec) -> firewall::Ruleset {
        firewall::render(
            &spec.firewall,
            spec.wireguard.as_ref().map(|w| w.listen_port),
        )
    }
}

pub use weft_schema::text::error_line;
