//! The persistent tap a micro-VM attaches to: made with `TUNSETIFF` and `TUNSETPERSIST` on
//! `/dev/net/tun`, then closed, so the device outlives the agent's descriptor and a VMM opens
//! it by name (`TUNSETIFF` with the same name attaches to it). The device belongs to the
//! namespace of the thread that opened `/dev/net/tun`: call these from inside the sandbox
//! namespace ([`super::netns::enter`]).
//!
//! Removing it is an rtnetlink link delete, like any link.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// From `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` attached to tap `name` (creating the device when there is none).
fn attach(name: &str) -> io::Result<std::fs::File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an interface name",
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back the name into) a live `struct ifreq`.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// Makes `name` a persistent tap in the calling thread's namespace, not held open: after
/// this the device exists with no process attached, for a VMM to open. A persistent tap of
/// that name is taken as it is.
pub fn create_persistent(name: &str) -> io::Result<()> {
    let tun = attach(name)?;
    // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens tap `name` the way a VMM does (`IFF_TAP | IFF_NO_PI`): frames read from the file
/// are what the host side sends the guest, frames written are the guest's. For tests and
/// tools that play the guest.
pub fn open(name: &str) -> io::Result<std::fs::File> {
    attach(name)
}
