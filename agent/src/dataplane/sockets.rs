//! The agent's kernel sockets as one value: opened together in the calling thread's network
//! namespace, or inside another one (the host role keeps a set per sandbox namespace).
//!
//! A socket belongs to the namespace of the thread that opened it and stays there when it
//! moves to another thread (KERNEL-NOTES); so opening inside a namespace is done by a short
//! thread that enters it, opens, and hands the sockets back.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::netlink::genl::Genl;
use super::nftables::Nft;
use super::rtnl::Rtnl;

/// rtnetlink for links, addresses and routes; nftables for the firewall (its table's
/// owner); generic netlink for kernel WireGuard.
#[derive(Debug)]
pub struct Sockets {
    pub rtnl: Rtnl,
    pub nft: Nft,
    pub genl: Genl,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("open rtnetlink socket")]
    Rtnl(#[source] io::Error),
    #[error("open nftables socket")]
    Nft(#[source] io::Error),
    #[error("open generic netlink socket")]
    Genl(#[source] io::Error),
    #[error("enter network namespace {0}")]
    Enter(String, #[source] io::Error),
}

impl Sockets {
    /// Opens them in the calling thread's network namespace.
    pub fn open() -> Result<Sockets, OpenError> {
        Ok(Sockets {
            rtnl: Rtnl::open().map_err(OpenError::Rtnl)?,
            nft: Nft::open().map_err(OpenError::Nft)?,
            genl: Genl::open().map_err(OpenError::Genl)?,
        })
    }

    /// Opens them inside the network namespace at `netns` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`), whatever namespace the calling thread is in.
    pub fn open_in(netns: &Path) -> Result<Sockets, OpenError> {
        in_namespace(netns, Sockets::open)?
    }
}

/// Runs `open` on a thread that has entered the network namespace at `netns`, and returns
/// what it made: sockets and devices made there stay in that namespace.
pub fn in_namespace<T: Send>(
    netns: &Path,
    open: impl FnOnce() -> T + Send,
) -> Result<T, OpenError> {
    let enter = |e| OpenError::Enter(netns.display().to_string(), e);
    let file = File::open(netns).map_err(enter)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a namespace descriptor we just opened changes only this
            // thread's network namespace, and this thread ends with the scope.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(open())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
    .map_err(enter)
}
