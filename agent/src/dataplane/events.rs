//! Change notifications that wake the reconciler: rtnetlink (links, IPv4 addresses, IPv4
//! routes), nf_tables (`NFNLGRP_NFTABLES`), and an inotify watch on the resolver file's
//! directory. They only say *that* something may have drifted and, where the kernel tells,
//! *who* did it; whether anything drifted is decided by reading back and comparing with the
//! desired state. So the agent's own writes, which converge, never count as drift, and a lost
//! event costs only latency (the periodic resync catches it; an overrun asks for one at once).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::firewall::TABLE_REF;
use super::netlink::{Protocol, Socket};
use super::nftables::abi::NFNLGRP_NFTABLES;
use super::nftables::events::Decoder;
pub use super::nftables::events::Transaction;
use super::nftables::TableRef;
pub use super::rtnl::events::RouteChange;

/// Room for a burst of notifications (a 10,000-rule table replaced by someone else).
const RCVBUF: usize = 4 << 20;

/// What the event sockets said since the last drain.
#[derive(Debug, Default)]
pub struct Hints {
    pub network: Vec<RouteChange>,
    pub firewall: Vec<Transaction>,
    /// Someone wrote, replaced or removed the resolver file. Files carry no author.
    pub resolver: bool,
    /// A socket overflowed: events were lost, so everything must be checked.
    pub overrun: bool,
}

impl Hints {
    pub fn is_empty(&self) -> bool {
        self.network.is_empty() && self.firewall.is_empty() && !self.resolver && !self.overrun
    }
}

/// The notification sockets, opened on the reconciler's thread (so in its namespace).
#[derive(Debug)]
pub struct KernelEvents {
    route: Socket,
    nft: Socket,
    decoder: Decoder,
    resolver: Option<FileWatch>,
}

impl KernelEvents {
    /// Opens the sockets for the pod's objects (the firewall's table), and a watch on
    /// `resolv_conf` (when its directory cannot be watched, outside edits are found by the
    /// periodic resync only, and a warning says so).
    pub fn open(resolv_conf: &Path) -> io::Result<KernelEvents> {
        Self::open_for(TABLE_REF, Some(resolv_conf))
    }

    /// Opens the sockets, decoding nftables changes of `table`, and when there is a resolver
    /// file a watch on it.
    pub fn open_for(table: TableRef<'_>, resolv_conf: Option<&Path>) -> io::Result<KernelEvents> {
        let resolver = resolv_conf.and_then(|path| {
            FileWatch::new(path)
                .map_err(|e| {
                    tracing::warn!(
                        path = %path.display(),
                        cause = %e,
                        "cannot watch the resolver file; its drift is found by the periodic resync"
                    )
                })
                .ok()
        });
        Ok(KernelEvents {
            route: Socket::subscribe(Protocol::Route, &super::rtnl::events::GROUPS, RCVBUF)?,
            nft: Socket::subscribe(Protocol::Netfilter, &[NFNLGRP_NFTABLES], RCVBUF)?,
            decoder: Decoder::new(table),
            resolver,
        })
    }

    /// The descriptors to poll for readability.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.route.as_raw_fd(), self.nft.as_raw_fd()];
        fds.extend(self.resolver.as_ref().map(|w| w.file.as_raw_fd()));
        fds
    }

    /// Reads everything pending on both sockets without blocking.
    pub fn drain(&mut self) -> Hints {
        let mut hints = Hints::default();
        drain(&mut self.route, &mut hints.overrun, |datagram| {
            hints.network.extend(super::rtnl::events::changes(datagram))
        });
        let decoder = &mut self.decoder;
        drain(&mut self.nft, &mut hints.overrun, |datagram| {
            hints.firewall.extend(decoder.feed(datagram))
        });
        if let Some(watch) = &mut self.resolver {
            match watch.drain() {
                Ok(touched) => hints.resolver |= touched,
                Err(_) => hints.overrun = true,
            }
        }
        hints
    }
}

const IN_EVENT_HEADER: usize = 16;

/// An inotify watch on a file's directory, reporting changes to that one name: editors and
/// the agent itself replace the file by rename, which a watch on the file would not follow.
#[derive(Debug)]
struct FileWatch {
    file: File,
    name: Vec<u8>,
    buf: Vec<u8>,
}

impl FileWatch {
    fn new(path: &Path) -> io::Result<FileWatch> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: inotify_init1 has no memory preconditions; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_ATTRIB;
        // SAFETY: `dir` is a NUL-terminated path that lives across the call.
        if unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileWatch {
            file,
            name: name.as_bytes().to_vec(),
            buf: vec![0; 16 << 10],
        })
    }

    /// Reads every pending event; true when one named the file. A queue overflow is an
    /// error (events were lost).
    fn drain(&mut self) -> io::Result<bool> {
        let mut touched = false;
        loop {
            let n = match self.file.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(touched),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for (mask, name) in inotify_events(&self.buf[..n]) {
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    return Err(io::Error::other("inotify queue overflow"));
                }
                touched |= name == self.name.as_slice();
            }
        }
    }
}

/// The (mask, name) of each `struct inotify_event` in `data`.
fn inotify_events(mut data: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        let header = data.get(..IN_EVENT_HEADER)?;
        let mask = u32::from_ne_bytes(header[4..8].try_into().ok()?);
        let len = u32::from_ne_bytes(header[12..16].try_into().ok()?) as usize;
        let name = data.get(IN_EVENT_HEADER..IN_EVENT_HEADER + len)?;
        data = &data[IN_EVENT_HEADER + len..];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some((mask, OsStr::from_bytes(&name[..end]).as_bytes()))
    })
}

/// Hands every pending datagram of `socket` to `each`; sets `overrun` when the kernel
/// dropped notifications (ENOBUFS) or the socket failed otherwise.
fn drain(socket: &mut Socket, overrun: &mut bool, mut each: impl FnMut(&[u8])) {
    loop {
        match socket.recv() {
            Ok(datagram) => each(datagram),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                *overrun = true;
                return;
            }
        }
    }
}

/// Whether a committed nftables transaction is this process's own. The kernel names the
/// thread that committed it (its thread id and name, `reconciler`), not the process, so a
/// thread of this process counts.
pub fn own_transaction(t: &Transaction) -> bool {
    t.pid.is_some_and(|pid| {
        pid == std::process::id() || Path::new(&format!("/proc/self/task/{pid}")).exists()
    })
}

/// `ip (pid 4242)` when the port is a live process's id, else `pid 4242`, or `the kernel`.
pub fn describe_port(port: u32) -> String {
    if port == 0 {
        return "the kernel".into();
    }
    match std::fs::read_to_string(format!("/proc/{port}/comm")) {
        Ok(comm) => format!("{} (pid {port})", comm.trim()),
        Err(_) => format!("pid {port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_sees_edits_and_replacements_of_its_file_only() {
        let dir = std::env::temp_dir().join(format!("weft-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        let mut watch = FileWatch::new(&path).unwrap();
        assert!(!watch.drain().unwrap());
        std::fs::write(dir.join("other"), "x").unwrap();
        assert!(!watch.drain().unwrap(), "another file of the directory");
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        assert!(watch.drain().unwrap(), "written");
        crate::atomic_file::replace(&path, b"nameserver 192.0.2.2\n", 0o644).unwrap();
        assert!(watch.drain().unwrap(), "replaced by rename");
        std::fs::remove_file(&path).unwrap();
        assert!(watch.drain().unwrap(), "removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn transactions_of_any_of_our_threads_are_ours() {
        let t = |pid| Transaction {
            changes: vec![],
            pid: Some(pid),
            process: None,
        };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(own_transaction(&t(std::process::id())));
        assert!(own_transaction(&t(tid)));
        assert!(!own_transaction(&t(1)));
        assert!(!own_transaction(&Transaction {
            changes: vec![],
            pid: None,
            process: None
        }));
    }

    #[test]
    fn ports_name_their_process() {
        assert_eq!(describe_port(0), "the kernel");
        assert!(
            describe_port(std::process::id()).ends_with(&format!("(pid {})", std::process::id()))
        );
    }
}
