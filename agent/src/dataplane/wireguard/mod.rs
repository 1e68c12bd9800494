//! The WireGuard overlay: one interface per pod, run by the kernel when it has WireGuard and
//! by an in-process boringtun device otherwise.
//!
//! - [`plan`]: the pure diff of spec and device (added, changed, removed peers) and the status.
//! - [`uapi`]: the `set=1` / `get=1` text protocol boringtun speaks.
//! - [`kernel`]: the generic netlink messages of the kernel's `wireguard` family.
//! - [`userspace`]: the boringtun device, its threads and the `wg` socket we serve for it.
//! - [`keys`]: the generated private key kept in the state directory.
//!
//! Both backends get the same treatment: read the device, diff, send only the difference (so
//! unchanged peers keep their sessions), then make the link match (MTU, the overlay address,
//! up, the connected route). Everything runs on the reconciler's thread and in its network
//! namespace; boringtun's threads are born there too.

pub mod kernel;
pub mod keys;
pub mod plan;
pub mod uapi;
pub mod userspace;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use tracing::{info, warn};
use weft_schema::key::SecretKey;
use weft_schema::validate::WireGuard;
use weft_schema::{Backend, Overall, WireGuardStatus};

use crate::dataplane::error_line;
use crate::dataplane::rtnl::{self, Family, LinkInfo, Route, Rtnl};
use plan::ObservedDevice;
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
    #[error("create wireguard interface {0}")]
    CreateLink(String, #[source] rtnl::Error),
    #[error("interface {0} exists and is not a WireGuard device (kind {1})")]
    Occupied(String, String),
    #[error("open the kernel WireGuard control for {0}")]
    OpenGenl(String, #[source] kernel::Error),
    #[error("start userspace WireGuard device {0}")]
    StartUserspace(String, #[source] userspace::Error),
    #[error("read WireGuard device {0}")]
    GetDevice(String, #[source] DeviceError),
    #[error("set peers on {0}")]
    SetDevice(String, #[source] DeviceError),
    #[error("look up interface {0}")]
    Link(String, #[source] rtnl::Error),
    #[error("interface {0} vanished")]
    Vanished(String),
    #[error("set MTU {mtu} on {ifname}")]
    SetMtu {
        ifname: String,
        mtu: u32,
        #[source]
        source: rtnl::Error,
    },
    #[error("read addresses of {0}")]
    Addresses(String, #[source] rtnl::Error),
    #[error("add address {addr} to {ifname}")]
    AddAddress {
        ifname: String,
        addr: IpNet,
        #[source]
        source: rtnl::Error,
    },
    #[error("remove stale address {addr} from {ifname}")]
    DeleteAddress {
        ifname: String,
        addr: IpNet,
        #[source]
        source: rtnl::Error,
    },
    #[error("bring {0} up")]
    SetUp(String, #[source] rtnl::Error),
    #[error("read routes for {0}")]
    Routes(String, #[source] rtnl::Error),
    #[error("install route {route} on {ifname}")]
    AddRoute {
        ifname: String,
        route: IpNet,
        #[source]
        source: rtnl::Error,
    },
    #[error("remove interface {0}")]
    DeleteLink(String, #[source] rtnl::Error),
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
    Kernel(kernel::Genl),
    Userspace(UserspaceDevice),
}

impl Device {
    fn backend(&self) -> Backend {
        match self {
            Device::Kernel(_) => Backend::Kernel,
            Device::Userspace(_) => Backend::Userspace,
        }
    }

    fn get(&mut self, ifname: &str) -> Result<ObservedDevice, DeviceError> {
        match self {
            Device::Kernel(genl) => Ok(genl.get_device(ifname)?),
            Device::Userspace(dev) => Ok(dev.get()?),
        }
    }

    fn set(&mut self, ifname: &str, plan: &plan::DevicePlan<'_>) -> Result<(), DeviceError> {
        match self {
            Device::Kernel(genl) => Ok(genl.set_device(ifname, plan)?),
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

/// Keeps the pod's WireGuard interface in the state of the spec. Lives on the reconciler's
/// thread: its sockets and devices belong to that thread's network namespace.
pub struct WireGuardManager {
    mode: Mode,
    state_dir: PathBuf,
    active: Option<Active>,
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
    pub fn new(mode: Mode, state_dir: &Path) -> WireGuardManager {
        WireGuardManager {
            mode,
            state_dir: state_dir.to_owned(),
            active: None,
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

    /// Makes the kernel hold `desired`: the interface with its key, port, exactly its peers,
    /// MTU, address and connected route; or no interface when `desired` is `None`.
    pub fn apply(&mut self, rtnl: &mut Rtnl, desired: Option<&WireGuard>) -> Result<(), Error> {
        let Some(desired) = desired else {
            return self.remove(rtnl);
        };
        let ifname = desired.interface.as_str();
        if self.active.as_ref().is_some_and(|a| a.ifname != ifname) {
            self.remove(rtnl)?;
        }
        let key = self.private_key(desired)?;
        if self.active.is_some()
            && rtnl
                .link(ifname)
                .map_err(|e| Error::Link(ifname.into(), e))?
                .is_none()
        {
            // Someone deleted the interface: the device behind it is an orphan. Start over.
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
        let active = self.active.as_mut().expect("created above");
        if matches!(active.device, Device::Userspace(_)) && desired.mtu > USERSPACE_READ_MTU {
            // boringtun (fd mode) sizes its TUN reads by the MTU the TUN had when it started.
            warn!(
                interface = ifname,
                mtu = desired.mtu,
                "boringtun reads at most {USERSPACE_READ_MTU}-byte packets: larger ones are truncated"
            );
        }
        let result = configure_device(&mut active.device, ifname, desired, &key);
        if let Err(Error::GetDevice(_, e) | Error::SetDevice(_, e)) = &result {
            if e.is_stuck() {
                // A device that stopped answering does not recover: replace it on the next
                // apply rather than time out on it forever.
                warn!(
                    interface = ifname,
                    "WireGuard device stopped answering; it will be restarted"
                );
                self.discard();
            }
        }
        result?;
        configure_link(rtnl, desired)
    }

    /// The device as it is now, compared with `desired`; `None` when WireGuard is not
    /// managed.
    pub fn observe(
        &mut self,
        rtnl: &mut Rtnl,
        desired: Option<&WireGuard>,
    ) -> Option<WireGuardStatus> {
        let desired = desired?;
        let backend = self.backend().unwrap_or(Backend::Kernel);
        let degraded = |error: String| WireGuardStatus {
            overall: Overall::Degraded,
            last_error: error,
            backend,
            interface: desired.interface.to_string(),
            public_key: String::new(),
            listen_port: 0,
            peers: Vec::new(),
        };
        let key = match self.private_key(desired) {
            Ok(key) => key,
            Err(e) => return Some(degraded(error_line(&e))),
        };
        let ifname = desired.interface.as_str();
        let Some(active) = self.active.as_mut().filter(|a| a.ifname == ifname) else {
            return Some(degraded(format!("interface {ifname} does not exist")));
        };
        // Without its interface a userspace device no longer answers: do not wait on it.
        match rtnl.link(ifname) {
            Ok(Some(_)) => {}
            Ok(None) => return Some(degraded(format!("interface {ifname} does not exist"))),
            Err(e) => return Some(degraded(error_line(&Error::Link(ifname.into(), e)))),
        }
        let observed = match active.device.get(ifname) {
            Ok(o) => o,
            Err(e) => return Some(degraded(error_line(&Error::GetDevice(ifname.into(), e)))),
        };
        let problems = match link_problems(rtnl, desired) {
            Ok(p) => p,
            Err(e) => vec![error_line(&e)],
        };
        Some(plan::status(
            active.device.backend(),
            desired,
            &key,
            &observed,
            &problems,
        ))
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

    fn private_key(&mut self, desired: &WireGuard) -> Result<SecretKey, Error> {
        if let Some(key) = &desired.private_key {
            return Ok(key.clone());
        }
        if self.generated.is_none() {
            let key = keys::load_or_generate(&self.state_dir).map_err(Error::Key)?;
            self.generated = Some(key);
        }
        Ok(self.generated.clone().expect("loaded above"))
    }

    /// Creates the interface with the chosen backend; in auto mode the first creation is the
    /// probe.
    fn create(&mut self, rtnl: &mut Rtnl, ifname: &str) -> Result<Device, Error> {
        match self.decided {
            Some(Backend::Userspace) => start_userspace(ifname),
            Some(Backend::Kernel) => create_kernel(rtnl, ifname),
            None => match create_kernel(rtnl, ifname) {
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
            .map_err(|e| Error::Link(ifname.clone(), e))?
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
}

impl Drop for WireGuardManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads the device, diffs it against the spec and sends only the difference.
fn configure_device(
    device: &mut Device,
    ifname: &str,
    desired: &WireGuard,
    key: &SecretKey,
) -> Result<(), Error> {
    let observed = device
        .get(ifname)
        .map_err(|e| Error::GetDevice(ifname.into(), e))?;
    let plan = plan::plan(desired, key, &observed);
    if plan.is_empty() {
        tracing::debug!(interface = ifname, "peers are already up to date");
        return Ok(());
    }
    info!(
        interface = ifname,
        added = plan.added.len(),
        changed = plan.changed.len(),
        removed = plan.removed.len(),
        "updating WireGuard device"
    );
    device
        .set(ifname, &plan)
        .map_err(|e| Error::SetDevice(ifname.into(), e))
}

fn start_userspace(ifname: &str) -> Result<Device, Error> {
    let dev =
        UserspaceDevice::start(ifname).map_err(|e| Error::StartUserspace(ifname.into(), e))?;
    info!(interface = ifname, "started userspace WireGuard device");
    Ok(Device::Userspace(dev))
}

/// Creates (or adopts, after an agent restart) a kernel `wireguard` link.
fn create_kernel(rtnl: &mut Rtnl, ifname: &str) -> Result<Device, Error> {
    match rtnl.create_link(ifname, "wireguard") {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            let link = rtnl
                .link(ifname)
                .map_err(|e| Error::Link(ifname.into(), e))?
                .ok_or_else(|| Error::Vanished(ifname.into()))?;
            if link.kind.as_deref() != Some("wireguard") {
                return Err(Error::Occupied(
                    ifname.into(),
                    link.kind.unwrap_or_else(|| "none".into()),
                ));
            }
        }
        Err(e) => return Err(Error::CreateLink(ifname.into(), e)),
    }
    let genl = kernel::Genl::open().map_err(|e| Error::OpenGenl(ifname.into(), e))?;
    Ok(Device::Kernel(genl))
}

/// The link's state as the spec wants it: MTU, exactly the overlay address, up, and the
/// connected route to the address's prefix.
fn configure_link(rtnl: &mut Rtnl, desired: &WireGuard) -> Result<(), Error> {
    let ifname = desired.interface.as_str();
    let link = find_link(rtnl, ifname)?;
    if link.mtu != desired.mtu {
        rtnl.set_link_mtu(link.index, desired.mtu)
            .map_err(|source| Error::SetMtu {
                ifname: ifname.into(),
                mtu: desired.mtu,
                source,
            })?;
    }
    let addresses = rtnl
        .addresses(link.index)
        .map_err(|e| Error::Addresses(ifname.into(), e))?;
    for stale in addresses
        .iter()
        .map(|a| a.addr)
        .filter(|a| *a != desired.address && !is_link_local(a))
    {
        rtnl.delete_address(link.index, stale)
            .map_err(|source| Error::DeleteAddress {
                ifname: ifname.into(),
                addr: stale,
                source,
            })?;
    }
    if !addresses.iter().any(|a| a.addr == desired.address) {
        rtnl.add_address(link.index, desired.address)
            .map_err(|source| Error::AddAddress {
                ifname: ifname.into(),
                addr: desired.address,
                source,
            })?;
    }
    if !link.up {
        rtnl.set_link_up(link.index)
            .map_err(|e| Error::SetUp(ifname.into(), e))?;
    }
    // The kernel adds the connected route with the address once the link is up; it is put
    // back only when someone removed it.
    if !has_connected_route(rtnl, desired, link.index)? {
        let dst = desired.address.trunc();
        rtnl.replace_route(&Route {
            dst,
            gateway: None,
            oif: link.index,
            metric: 0,
        })
        .map_err(|source| Error::AddRoute {
            ifname: ifname.into(),
            route: dst,
            source,
        })?;
    }
    Ok(())
}

fn find_link(rtnl: &mut Rtnl, ifname: &str) -> Result<LinkInfo, Error> {
    rtnl.link(ifname)
        .map_err(|e| Error::Link(ifname.into(), e))?
        .ok_or_else(|| Error::Vanished(ifname.into()))
}

fn is_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.addr().is_link_local(),
        IpNet::V6(n) => (n.addr().segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn has_connected_route(rtnl: &mut Rtnl, desired: &WireGuard, index: u32) -> Result<bool, Error> {
    let ifname = desired.interface.as_str();
    let family = match desired.address {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    };
    let dst = desired.address.trunc();
    Ok(rtnl
        .routes(family)
        .map_err(|e| Error::Routes(ifname.into(), e))?
        .iter()
        .any(|r| r.dst == dst && r.oif == Some(index) && r.gateway.is_none()))
}

/// What differs on the link from the spec, as status lines.
fn link_problems(rtnl: &mut Rtnl, desired: &WireGuard) -> Result<Vec<String>, Error> {
    let ifname = desired.interface.as_str();
    let Some(link) = rtnl
        .link(ifname)
        .map_err(|e| Error::Link(ifname.into(), e))?
    else {
        return Ok(vec![format!("interface {ifname} does not exist")]);
    };
    let mut problems = Vec::new();
    if !link.up {
        problems.push(format!("{ifname} is down"));
    }
    if link.mtu != desired.mtu {
        problems.push(format!(
            "{ifname} has MTU {}, not {}",
            link.mtu, desired.mtu
        ));
    }
    let addresses = rtnl
        .addresses(link.index)
        .map_err(|e| Error::Addresses(ifname.into(), e))?;
    if !addresses.iter().any(|a| a.addr == desired.address) {
        problems.push(format!("{ifname} lacks address {}", desired.address));
    }
    if !has_connected_route(rtnl, desired, link.index)? {
        problems.push(format!(
            "no route to {} on {ifname}",
            desired.address.trunc()
        ));
    }
    Ok(problems)
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
