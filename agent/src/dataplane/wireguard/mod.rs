//! The WireGuard overlay: one interface per pod, run by the kernel when it has WireGuard and
//! by an in-process boringtun device otherwise.
//!
//! - [`plan`]: the pure diff of spec and device (added, changed, removed peers) and the status.
//! - [`uapi`]: the `set=1` / `get=1` text protocol boringtun speaks.
//! - [`kernel`]: the generic netlink messages of the kernel's `wireguard` family.
//! - [`userspace`]: the boringtun device, its threads and the `wg` socket we serve for it.
//! - [`keys`]: the generated private key kept in the state directory.
//! - [`endpoints`]: host routes to the peers' endpoints while the tunnel may hold the default
//!   route.
//!
//! [`WireGuardManager`] has the shape of every subsystem once the device exists: read the
//! device and its link, plan the difference (peers through [`plan`], the link through the
//! shared link planner with [`Ownership::Whole`]: the interface is wholly the agent's), send
//! only that (so unchanged peers keep their sessions), and report. Creating or removing the
//! device, and choosing its backend, come before. Everything runs on the reconciler's thread
//! and in its network namespace; boringtun's threads are born there too.

pub mod endpoints;
pub mod kernel;
pub mod keys;
pub mod plan;
pub mod uapi;
pub mod userspace;

use std::fmt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use std::str::FromStr;

use tracing::{info, warn};
use weft_schema::key::SecretKey;
use weft_schema::text::error_line;
use weft_schema::validate::WireGuard;
use weft_schema::{Backend, Overall, WireGuardStatus};

use super::link::{self, Link, LinkSpec, LinkState, Ownership};
use super::netlink::genl::Genl;
use super::rtnl::{self, Rtnl};
use super::subsystem::Subsystem;
use plan::{DevicePlan, ObservedDevice};
use userspace::UserspaceDevice;

/// The MTU a new TUN has, which is all boringtun 0.7 ever reads in fd mode (it re-reads the
/// MTU only in socket mode).
const USERSPACE_READ_MTU: u32 = 1500;

/// Which WireGuard implementation to use (`--wireguard`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Kernel when it has WireGuard, else userspace (with a warning that says why).
    #[default]
    Auto,
    Kernel,
    Userspace,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "kernel" => Ok(Mode::Kernel),
            "userspace" => Ok(Mode::Userspace),
            other => Err(format!(
                "{other:?} is not a WireGuard mode (auto, kernel or userspace)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Kernel => "kernel",
            Mode::Userspace => "userspace",
        })
    }
}

/// What failed, on which interface. The cause is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("load or generate the WireGuard private key")]
    Key(#[source] keys::KeyFileError),
    #[error("no private key for {0}: the generated key is not in the state directory yet")]
    NoKey(String),
    #[error("create wireguard interface {0}")]
    CreateLink(String, #[source] rtnl::Error),
    #[error("interface {0} exists and is not a WireGuard device (kind {1})")]
    Occupied(String, String),
    #[error("reach the kernel's WireGuard for {0}")]
    Kernel(String, #[source] kernel::Error),
    #[error("start userspace WireGuard device {0}")]
    StartUserspace(String, #[source] userspace::Error),
    #[error("read WireGuard device {0}")]
    GetDevice(String, #[source] DeviceError),
    #[error("set peers on {0}")]
    SetDevice(String, #[source] DeviceError),
    #[error("look up interface {0}")]
    LookUp(String, #[source] rtnl::Error),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error(transparent)]
    Link(link::Error),
    #[error("remove interface {0}")]
    DeleteLink(String, #[source] rtnl::Error),
    #[error("read the routes to the peers' endpoints")]
    ReadRoutes(#[source] rtnl::Error),
    #[error("{}", .0.iter().map(|f| error_line(f)).collect::<Vec<_>>().join("; "))]
    Endpoints(Vec<endpoints::Failure>),
}

/// A failure of either backend's device control.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Userspace(#[from] userspace::Error),
}

impl DeviceError {
    /// True when the device no longer answers (a userspace device that timed out or went
    /// away), as opposed to refusing a request.
    pub fn is_stuck(&self) -> bool {
        matches!(self, DeviceError::Userspace(userspace::Error::Talk(_)))
    }
}

/// The running device behind the interface.
#[derive(Debug)]
enum Device {
    /// The kernel's, reached through the `wireguard` generic netlink family (its id).
    Kernel(u16),
    Userspace(UserspaceDevice),
}

impl Device {
    fn backend(&self) -> Backend {
        match self {
            Device::Kernel(_) => Backend::Kernel,
            Device::Userspace(_) => Backend::Userspace,
        }
    }

    fn get(&mut self, genl: &mut Genl, ifname: &str) -> Result<ObservedDevice, DeviceError> {
        match self {
            Device::Kernel(family) => Ok(kernel::get_device(genl, *family, ifname)?),
            Device::Userspace(dev) => Ok(dev.get()?),
        }
    }

    fn set(
        &mut self,
        genl: &mut Genl,
        ifname: &str,
        plan: &DevicePlan<'_>,
    ) -> Result<(), DeviceError> {
        match self {
            Device::Kernel(family) => Ok(kernel::set_device(genl, *family, ifname, plan)?),
            Device::Userspace(dev) => match uapi::render_set(plan) {
                Some(request) => Ok(dev.set(&request)?),
                None => Ok(()),
            },
        }
    }
}

#[derive(Debug)]
struct Active {
    ifname: String,
    device: Device,
}

/// What the kernel holds for the overlay, as far as the plan needs.
#[derive(Debug)]
pub enum State {
    /// The spec has no WireGuard section.
    Unmanaged,
    Present {
        /// The private key the device must hold (the spec's, or the generated one).
        key: SecretKey,
        device: ObservedDevice,
        link: Box<LinkState>,
        endpoints: endpoints::State,
    },
}

/// The changes: to the device (peers, key, port) and to its link.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub device: DevicePlan<'a>,
    pub link: Vec<link::Change>,
    pub endpoints: Vec<endpoints::Change>,
}

/// The default routes the tunnel takes: those of the families a peer allows whole
/// (`0.0.0.0/0`, `::/0`), only with `DefaultRoute: true`.
pub fn default_routes(desired: &WireGuard) -> Vec<IpNet> {
    if desired.default_route.is_none() {
        return Vec::new();
    }
    let mut all: Vec<IpNet> = desired
        .peers
        .iter()
        .flat_map(|p| &p.allowed_ips)
        .filter(|n| n.prefix_len() == 0)
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The link a WireGuard spec asks for: MTU, exactly its address, up, the connected route,
/// and a route for every peer's allowed IPs outside the address's prefix (wg-quick adds the
/// same); a whole family (`/0`) only as [`default_routes`] says.
pub fn link_spec(desired: &WireGuard) -> LinkSpec {
    let prefix = desired.address.trunc();
    let defaults = default_routes(desired);
    let mut allowed: Vec<IpNet> = desired
        .peers
        .iter()
        .flat_map(|p| &p.allowed_ips)
        .filter(|n| match n.prefix_len() {
            0 => defaults.contains(n),
            _ => !prefix.contains(*n),
        })
        .copied()
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    let mut routes = vec![(prefix, None)];
    routes.extend(allowed.into_iter().map(|dst| (dst, None)));
    LinkSpec {
        interface: desired.interface.clone(),
        mtu: Some(desired.mtu),
        addresses: vec![desired.address],
        routes,
        left_to_others: Vec::new(),
        loopback: false,
        ownership: Ownership::Whole,
    }
}

/// Keeps the pod's WireGuard interface in the state of the spec. Lives on the reconciler's
/// thread: its sockets and devices belong to that thread's network namespace.
pub struct WireGuardManager {
    mode: Mode,
    state_dir: PathBuf,
    /// The generic netlink socket the kernel backend talks through.
    genl: Genl,
    active: Option<Active>,
    /// The interface a previous agent process made for this pod (the kept spec names it),
    /// until this process adopts or removes it.
    inherited: Option<String>,
    /// The generated key, once loaded (only when the spec leaves `PrivateKey` null).
    generated: Option<SecretKey>,
    /// Auto mode's decision, made once, with the reason when it fell back.
    decided: Option<Backend>,
    fallback_reason: Option<String>,
}

impl fmt::Debug for WireGuardManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireGuardManager")
            .field("mode", &self.mode)
            .field("state_dir", &self.state_dir)
            .field("active", &self.active)
            .field("decided", &self.decided)
            .finish_non_exhaustive()
    }
}

impl WireGuardManager {
    /// `genl` is a generic netlink socket opened in the namespace the overlay lives in.
    pub fn new(mode: Mode, state_dir: &Path, genl: Genl) -> WireGuardManager {
        WireGuardManager {
            mode,
            state_dir: state_dir.to_owned(),
            genl,
            active: None,
            inherited: None,
            generated: None,
            decided: match mode {
                Mode::Auto => None,
                Mode::Kernel => Some(Backend::Kernel),
                Mode::Userspace => Some(Backend::Userspace),
            },
            fallback_reason: None,
        }
    }

    /// The backend in use (or chosen), `None` before auto mode has probed.
    pub fn backend(&self) -> Option<Backend> {
        self.active
            .as_ref()
            .map(|a| a.device.backend())
            .or(self.decided)
    }

    /// Why auto mode fell back to userspace, when it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Names the interface an earlier agent process created for this pod (from the spec it
    /// kept), so that a spec without WireGuard, or naming another interface, removes it even
    /// though this process did not create it (`weft-agent apply` runs are separate processes).
    pub fn inherit(&mut self, ifname: &str) {
        if self.active.is_none() {
            self.inherited = Some(ifname.to_owned());
        }
    }

    /// Before an apply: when the spec leaves `PrivateKey` null, loads the key kept in the
    /// state directory, generating and storing one the first time. The only place that
    /// writes the key file; reads never do.
    pub fn prepare(&mut self, desired: Option<&WireGuard>) -> Result<(), Error> {
        let Some(desired) = desired else {
            return Ok(());
        };
        if desired.private_key.is_none() && self.generated.is_none() {
            self.generated = Some(keys::load_or_generate(&self.state_dir).map_err(Error::Key)?);
        }
        Ok(())
    }

    /// The private key for `desired`: the spec's, or the generated one (read from the state
    /// directory if this process has not loaded it, never generated here).
    fn key(&mut self, desired: &WireGuard) -> Result<SecretKey, Error> {
        if let Some(key) = &desired.private_key {
            return Ok(key.clone());
        }
        if self.generated.is_none() {
            self.generated = keys::load(&self.state_dir).map_err(Error::Key)?;
        }
        self.generated
            .clone()
            .ok_or_else(|| Error::NoKey(desired.interface.to_string()))
    }

    /// Stops a userspace device (its interface goes with it). A kernel interface stays: it
    /// keeps the overlay up while the agent restarts, and the next agent adopts it.
    pub fn shutdown(&mut self) {
        self.discard();
    }

    /// Drops the active device without touching the kernel (its interface goes with it
    /// when it is a userspace one).
    fn discard(&mut self) {
        if let Some(active) = self.active.take() {
            if let Device::Userspace(mut dev) = active.device {
                dev.stop();
            }
        }
    }

    /// Creates the interface with the chosen backend; in auto mode the first creation is the
    /// probe.
    fn create(&mut self, rtnl: &mut Rtnl, ifname: &str) -> Result<Device, Error> {
        match self.decided {
            Some(Backend::Userspace) => start_userspace(ifname),
            Some(Backend::Kernel) => create_kernel(rtnl, &mut self.genl, ifname),
            None => match create_kernel(rtnl, &mut self.genl, ifname) {
                Ok(device) => {
                    self.decided = Some(Backend::Kernel);
                    info!(interface = ifname, "using kernel WireGuard");
                    Ok(device)
                }
                Err(Error::CreateLink(_, e)) if e.errno() == Some(libc::EOPNOTSUPP) => {
                    let reason = format!(
                        "the kernel has no WireGuard: creating a wireguard link failed with {e}"
                    );
                    warn!(interface = ifname, reason = %reason, "falling back to userspace WireGuard (boringtun)");
                    self.decided = Some(Backend::Userspace);
                    self.fallback_reason = Some(reason);
                    start_userspace(ifname)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Removes the interface this manager created, if any.
    fn remove(&mut self, rtnl: &mut Rtnl) -> Result<(), Error> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let ifname = active.ifname;
        match active.device {
            Device::Userspace(mut dev) => dev.stop(),
            Device::Kernel(_) => {}
        }
        // A kernel link is deleted here; a TUN link normally went with its device, but one
        // that lingers is deleted too.
        if let Some(link) = rtnl
            .link(&ifname)
            .map_err(|e| Error::LookUp(ifname.clone(), e))?
        {
            match rtnl.delete_link(link.index) {
                Err(e) if e.errno() != Some(libc::ENODEV) => {
                    return Err(Error::DeleteLink(ifname, e))
                }
                _ => {}
            }
        }
        info!(interface = %ifname, "removed WireGuard interface");
        Ok(())
    }

    /// Makes sure the device named by `desired` runs: replaces one of another name, and one
    /// whose interface someone deleted (the device behind it is an orphan).
    fn ensure_device(&mut self, rtnl: &mut Rtnl, desired: &WireGuard) -> Result<(), Error> {
        let ifname = desired.interface.as_str();
        if self.active.as_ref().is_some_and(|a| a.ifname != ifname) {
            self.remove(rtnl)?;
        }
        if self.active.is_some()
            && rtnl
                .link(ifname)
                .map_err(|e| Error::LookUp(ifname.into(), e))?
                .is_none()
        {
            warn!(
                interface = ifname,
                "WireGuard interface vanished; recreating it"
            );
            self.discard();
        }
        if self.active.is_none() {
            let device = self.create(rtnl, ifname)?;
            self.active = Some(Active {
                ifname: ifname.to_owned(),
                device,
            });
        }
        if matches!(
            self.active.as_ref().map(|a| &a.device),
            Some(Device::Userspace(_))
        ) && desired.mtu > USERSPACE_READ_MTU
        {
            // boringtun (fd mode) sizes its TUN reads by the MTU the TUN had when it started.
            warn!(
                interface = ifname,
                mtu = desired.mtu,
                "boringtun reads at most {USERSPACE_READ_MTU}-byte packets: larger ones are truncated"
            );
        }
        Ok(())
    }

    /// After a device error: a device that stopped answering does not recover, so it is
    /// replaced on the next apply rather than timed out on forever.
    fn check_stuck(&mut self, ifname: &str, e: &DeviceError) {
        if e.is_stuck() {
            warn!(
                interface = ifname,
                "WireGuard device stopped answering; it will be restarted"
            );
            self.discard();
        }
    }
}

impl Subsystem for WireGuardManager {
    type Desired = Option<WireGuard>;
    type State = State;
    type Plan<'a> = Plan<'a>;
    type Error = Error;
    type Status = Option<WireGuardStatus>;

    /// The device and its link. Without its interface a userspace device no longer answers:
    /// the interface is looked up first, and the device not asked then.
    fn read(&mut self, rtnl: &mut Rtnl, desired: &Option<WireGuard>) -> Result<State, Error> {
        let Some(desired) = desired else {
            return Ok(State::Unmanaged);
        };
        let key = self.key(desired)?;
        let ifname = desired.interface.as_str();
        let missing = || Error::NoInterface(ifname.into());
        if self.active.as_ref().is_none_or(|a| a.ifname != ifname) {
            return Err(missing());
        }
        let link = match Link.read(rtnl, &link_spec(desired)) {
            Err(link::Error::NoInterface(_)) => return Err(missing()),
            other => other.map_err(Error::Link)?,
        };
        let endpoints = endpoints::read(rtnl, Some(desired)).map_err(Error::ReadRoutes)?;
        let active = self.active.as_mut().expect("checked above");
        let device = match active.device.get(&mut self.genl, ifname) {
            Ok(device) => device,
            Err(e) => {
                self.check_stuck(ifname, &e);
                return Err(Error::GetDevice(ifname.into(), e));
            }
        };
        Ok(State::Present {
            key,
            device,
            link: Box::new(link),
            endpoints,
        })
    }

    fn plan<'a>(&self, desired: &'a Option<WireGuard>, state: &'a State) -> Plan<'a> {
        match (desired, state) {
            (
                Some(desired),
                State::Present {
                    key,
                    device,
                    link,
                    endpoints,
                },
            ) => Plan {
                device: plan::plan(desired, key, device),
                link: link::plan(&link_spec(desired), link),
                endpoints: endpoints::plan(Some(desired), Some(link.index), endpoints),
            },
            _ => Plan::default(),
        }
    }

    fn send(
        &mut self,
        rtnl: &mut Rtnl,
        desired: &Option<WireGuard>,
        state: &State,
        plan: Plan<'_>,
    ) -> Result<(), Error> {
        let (Some(desired), State::Present { link, .. }) = (desired, state) else {
            return Ok(());
        };
        let ifname = desired.interface.as_str();
        // Before the tunnel can take the default route, its endpoints have their own.
        let failed = endpoints::send(rtnl, plan.endpoints);
        if !failed.is_empty() {
            return Err(Error::Endpoints(failed));
        }
        if plan.device.is_empty() {
            tracing::debug!(interface = ifname, "peers are already up to date");
        } else {
            info!(
                interface = ifname,
                added = plan.device.added.len(),
                changed = plan.device.changed.len(),
                removed = plan.device.removed.len(),
                "updating WireGuard device"
            );
            let active = self
                .active
                .as_mut()
                .ok_or_else(|| Error::NoInterface(ifname.into()))?;
            if let Err(e) = active.device.set(&mut self.genl, ifname, &plan.device) {
                self.check_stuck(ifname, &e);
                return Err(Error::SetDevice(ifname.into(), e));
            }
        }
        if plan.link.is_empty() {
            return Ok(());
        }
        Link.send(rtnl, &link_spec(desired), link, plan.link)
            .map_err(Error::Link)
    }

    fn status(
        &self,
        desired: &Option<WireGuard>,
        read: Result<&State, &Error>,
    ) -> Option<WireGuardStatus> {
        let desired = desired.as_ref()?;
        let backend = self.backend().unwrap_or(Backend::Kernel);
        match read {
            Ok(State::Present {
                key,
                device,
                link,
                endpoints,
            }) => {
                let mut problems = Link.status(&link_spec(desired), Ok(link)).problems;
                problems.extend(endpoints::problems(
                    Some(desired),
                    Some(link.index),
                    endpoints,
                ));
                Some(plan::status(backend, desired, key, device, &problems))
            }
            Ok(State::Unmanaged) => None,
            Err(e) => Some(WireGuardStatus {
                overall: Overall::Degraded,
                last_error: error_line(e),
                backend,
                interface: desired.interface.to_string(),
                public_key: String::new(),
                listen_port: 0,
                peers: Vec::new(),
            }),
        }
    }

    /// Makes the kernel hold `desired`: the interface with its key, port, exactly its peers,
    /// MTU, address and connected route; or no interface when `desired` is `None`. The key
    /// must have been loaded by [`WireGuardManager::prepare`].
    fn apply(&mut self, rtnl: &mut Rtnl, desired: &Option<WireGuard>) -> Result<(), Error> {
        if let Some(old) = self.inherited.take() {
            if desired.as_ref().map(|d| d.interface.as_str()) != Some(old.as_str()) {
                remove_inherited(rtnl, &old)?;
            }
        }
        let Some(spec) = desired else {
            self.remove(rtnl)?;
            // Endpoint routes an earlier spec (or process) left.
            let state = endpoints::read(rtnl, None).map_err(Error::ReadRoutes)?;
            let failed = endpoints::send(rtnl, endpoints::plan(None, None, &state));
            return match failed.is_empty() {
                true => Ok(()),
                false => Err(Error::Endpoints(failed)),
            };
        };
        self.ensure_device(rtnl, spec)?;
        let state = self.read(rtnl, desired)?;
        let plan = self.plan(desired, &state);
        self.send(rtnl, desired, &state, plan)
    }
}

/// Deletes an earlier process's interface: a kernel WireGuard link, or the TUN link of a
/// userspace device whose process is gone. A link of any other kind by that name is not ours.
fn remove_inherited(rtnl: &mut Rtnl, ifname: &str) -> Result<(), Error> {
    let Some(link) = rtnl
        .link(ifname)
        .map_err(|e| Error::LookUp(ifname.into(), e))?
    else {
        return Ok(());
    };
    if !matches!(link.kind.as_deref(), Some("wireguard" | "tun")) {
        return Ok(());
    }
    match rtnl.delete_link(link.index) {
        Err(e) if e.errno() != Some(libc::ENODEV) => Err(Error::DeleteLink(ifname.into(), e)),
        _ => {
            info!(interface = %ifname, "removed the WireGuard interface an earlier agent made");
            Ok(())
        }
    }
}

impl Drop for WireGuardManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn start_userspace(ifname: &str) -> Result<Device, Error> {
    let dev =
        UserspaceDevice::start(ifname).map_err(|e| Error::StartUserspace(ifname.into(), e))?;
    info!(interface = ifname, "started userspace WireGuard device");
    Ok(Device::Userspace(dev))
}

/// Creates (or adopts, after an agent restart) a kernel `wireguard` link.
fn create_kernel(rtnl: &mut Rtnl, genl: &mut Genl, ifname: &str) -> Result<Device, Error> {
    match rtnl.create_link(ifname, "wireguard") {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            let link = rtnl
                .link(ifname)
                .map_err(|e| Error::LookUp(ifname.into(), e))?
                .ok_or_else(|| Error::NoInterface(ifname.into()))?;
            if link.kind.as_deref() != Some("wireguard") {
                return Err(Error::Occupied(
                    ifname.into(),
                    link.kind.unwrap_or_else(|| "none".into()),
                ));
            }
        }
        Err(e) => return Err(Error::CreateLink(ifname.into(), e)),
    }
    let family = kernel::family(genl).map_err(|e| Error::Kernel(ifname.into(), e))?;
    Ok(Device::Kernel(family))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_can_move_to_the_reconciler_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<WireGuardManager>();
    }

    #[test]
    fn mode_parses_and_prints() {
        for (text, mode) in [
            ("auto", Mode::Auto),
            ("kernel", Mode::Kernel),
            ("userspace", Mode::Userspace),
        ] {
            assert_eq!(text.parse::<Mode>(), Ok(mode));
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(Mode::default(), Mode::Auto);
        assert!("Kernel"
            .parse::<Mode>()
            .unwrap_err()
            .contains("auto, kernel or userspace"));
    }

    #[test]
    fn errors_name_the_operation_and_interface() {
        let e = Error::SetDevice(
            "wg0".into(),
            DeviceError::Userspace(userspace::Error::Refused(22)),
        );
        assert_eq!(
            error_line(&e),
            "set peers on wg0: the device refused the configuration (errno 22)"
        );
    }
}
