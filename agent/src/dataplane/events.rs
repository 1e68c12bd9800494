//! Change notifications that wake the reconciler: rtnetlink (links, addresses and routes of
//! both families), nf_tables (`NFNLGRP_NFTABLES`), and a watch on the resolver file's
//! directory (fanotify, whose events name the writing process, where the kernel and the
//! agent's privileges allow it; else inotify, whose events name nobody). They only say
//! *that* something may have drifted and, where the kernel tells, *who* did it; whether anything drifted is decided by reading back and comparing with the
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
    /// Someone other than the agent wrote, replaced or removed the resolver file: each time,
    /// the writer's process (`sh (pid 4242)`) when the watch can tell, `None` when not.
    pub resolver: Vec<Option<String>>,
    /// A socket overflowed: events were lost, so everything must be checked.
    pub overrun: bool,
}

impl Hints {
    pub fn is_empty(&self) -> bool {
        self.network.is_empty()
            && self.firewall.is_empty()
            && self.resolver.is_empty()
            && !self.overrun
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
            let watch = FileWatch::new(path)
                .map_err(|e| {
                    tracing::warn!(
                        path = %path.display(),
                        cause = %e,
                        "cannot watch the resolver file; its drift is found by the periodic resync"
                    )
                })
                .ok()?;
            tracing::debug!(
                path = %path.display(),
                names_writers = watch.names_writers(),
                "watching the resolver file"
            );
            Some(watch)
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
        fds.extend(self.resolver.as_ref().map(FileWatch::fd));
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
            if watch.drain(&mut hints.resolver).is_err() {
                hints.overrun = true;
            }
        }
        hints
    }
}

const IN_EVENT_HEADER: usize = 16;

/// A watch on a file's directory, reporting changes to that one name: editors and the agent
/// itself replace the file by rename, which a watch on the file would not follow.
///
/// fanotify reports the writer's process id with each event, so the drift record can name
/// it; it needs `CAP_SYS_ADMIN` and a file system that gives file handles (ext4, xfs, btrfs,
/// tmpfs, overlayfs on 6.6+). inotify needs neither and names nobody: `By: unknown`.
#[derive(Debug)]
enum FileWatch {
    Fanotify(Watch),
    Inotify(Watch),
}

#[derive(Debug)]
struct Watch {
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
        let watch = |file| Watch {
            file,
            name: name.as_bytes().to_vec(),
            buf: vec![0; 16 << 10],
        };
        match fanotify(&dir) {
            Ok(file) => Ok(FileWatch::Fanotify(watch(file))),
            Err(e) => {
                tracing::debug!(cause = %e, "no fanotify watch; inotify names no writer");
                Ok(FileWatch::Inotify(watch(inotify(&dir)?)))
            }
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            FileWatch::Fanotify(w) | FileWatch::Inotify(w) => w.file.as_raw_fd(),
        }
    }

    /// Whether the events name the writing process.
    fn names_writers(&self) -> bool {
        matches!(self, FileWatch::Fanotify(_))
    }

    /// Reads every pending event; adds one entry to `touched` for each that named the file
    /// and was not the agent's own (the writer where known). A queue overflow is an error
    /// (events were lost).
    fn drain(&mut self, touched: &mut Vec<Option<String>>) -> io::Result<()> {
        let fanotify = self.names_writers();
        let (FileWatch::Fanotify(w) | FileWatch::Inotify(w)) = self;
        let own = std::process::id();
        loop {
            let n = match w.file.read(&mut w.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if fanotify {
                for event in fanotify_events(&w.buf[..n]) {
                    if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                        return Err(io::Error::other("fanotify queue overflow"));
                    }
                    if event.name == Some(w.name.as_slice()) && event.pid != own {
                        touched.push(Some(describe_port(event.pid)));
                    }
                }
            } else {
                for (mask, name) in inotify_events(&w.buf[..n]) {
                    if mask & libc::IN_Q_OVERFLOW != 0 {
                        return Err(io::Error::other("inotify queue overflow"));
                    }
                    // The agent's own writes are among these: the read-back tells.
                    if name == w.name.as_slice() {
                        touched.push(None);
                    }
                }
            }
        }
    }
}

/// A fanotify group reporting directory entry events and writes to the children of `dir`,
/// with the directory's file handle and the child's name (`FAN_REPORT_DFID_NAME`, 5.9+).
fn fanotify(dir: &CString) -> io::Result<File> {
    let flags =
        libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME;
    // SAFETY: fanotify_init has no memory preconditions; the result is checked.
    let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let mask = libc::FAN_MODIFY
        | libc::FAN_CLOSE_WRITE
        | libc::FAN_ATTRIB
        | libc::FAN_CREATE
        | libc::FAN_DELETE
        | libc::FAN_MOVED_FROM
        | libc::FAN_MOVED_TO
        | libc::FAN_EVENT_ON_CHILD;
    // SAFETY: `dir` is a NUL-terminated path that lives across the call.
    let rc =
        unsafe { libc::fanotify_mark(fd, libc::FAN_MARK_ADD, mask, libc::AT_FDCWD, dir.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn inotify(dir: &CString) -> io::Result<File> {
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
    Ok(file)
}

/// One fanotify event as far as the watch needs it.
#[derive(Debug, PartialEq, Eq)]
struct FanEvent<'a> {
    mask: u64,
    pid: u32,
    /// The child's name, from the `DFID_NAME` record.
    name: Option<&'a [u8]>,
}

/// `struct fanotify_event_metadata`: event_len u32, vers u8, reserved u8, metadata_len u16,
/// mask u64, fd i32, pid i32.
const FAN_METADATA: usize = 24;
/// `struct fanotify_event_info_header` (4) + `__kernel_fsid_t` (8) + `struct file_handle`'s
/// handle_bytes u32 and handle_type i32 (8), then the handle, then the name.
const FAN_FID_HEAD: usize = 20;

/// The events in one read of a fanotify group (each bounded by its own length).
fn fanotify_events(mut data: &[u8]) -> impl Iterator<Item = FanEvent<'_>> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let event = data.get(..len).filter(|_| len >= FAN_METADATA)?;
        data = &data[len..];
        let meta_len = u16::from_ne_bytes(event[6..8].try_into().ok()?) as usize;
        let mask = u64::from_ne_bytes(event[8..16].try_into().ok()?);
        let pid = i32::from_ne_bytes(event[20..24].try_into().ok()?);
        let mut name = None;
        let mut info = event.get(meta_len.max(FAN_METADATA)..).unwrap_or_default();
        while let Some(head) = info.get(..4) {
            let info_len = u16::from_ne_bytes([head[2], head[3]]) as usize;
            let Some(record) = info.get(..info_len).filter(|_| info_len >= 4) else {
                break;
            };
            info = &info[info_len..];
            if head[0] != libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
                continue;
            }
            let handle = record
                .get(12..16)
                .and_then(|b| b.try_into().ok())
                .map_or(0, |b| u32::from_ne_bytes(b) as usize);
            if let Some(raw) = record.get(FAN_FID_HEAD + handle..) {
                let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                name = Some(&raw[..end]);
            }
        }
        Some(FanEvent {
            mask,
            pid: pid.max(0) as u32,
            name,
        })
    })
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

    /// Writes by another process: `sh -c 'printf ... > path'` and friends.
    fn by_another_process(script: &str, path: &Path) {
        let ok = std::process::Command::new("sh")
            .args(["-c", script, "sh", path.to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }

    #[test]
    fn the_watch_sees_others_edits_and_replacements_of_its_file_only() {
        let dir = std::env::temp_dir().join(format!("weft-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        let mut watch = FileWatch::new(&path).unwrap();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(
            watch.names_writers(),
            root,
            "fanotify as root, inotify otherwise"
        );
        let drained = |watch: &mut FileWatch| {
            let mut t = Vec::new();
            watch.drain(&mut t).unwrap();
            t
        };
        assert!(drained(&mut watch).is_empty());
        by_another_process("echo x > \"$(dirname \"$1\")/other\"", &path);
        assert!(
            drained(&mut watch).is_empty(),
            "another file of the directory"
        );
        by_another_process("echo nameserver 192.0.2.1 > \"$1\"", &path);
        let t = drained(&mut watch);
        assert!(!t.is_empty(), "written");
        if root {
            assert!(
                t.iter()
                    .all(|by| by.as_deref().is_some_and(|b| b.contains("pid "))),
                "{t:?}"
            );
        }
        by_another_process(
            "echo nameserver 192.0.2.2 > \"$1.new\" && mv \"$1.new\" \"$1\"",
            &path,
        );
        assert!(!drained(&mut watch).is_empty(), "replaced by rename");
        by_another_process("rm \"$1\"", &path);
        assert!(!drained(&mut watch).is_empty(), "removed");
        // The agent's own replacement names the agent: not an outside change for fanotify.
        crate::atomic_file::replace(&path, b"nameserver 192.0.2.3\n", 0o644).unwrap();
        assert_eq!(drained(&mut watch).is_empty(), root);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One fanotify event as the kernel lays it out: metadata, then a `DFID_NAME` record.
    fn fan_event(mask: u64, pid: i32, handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut record = vec![libc::FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 0, 0];
        record.extend_from_slice(&[7; 8]); // fsid
        record.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        record.extend_from_slice(&1i32.to_ne_bytes());
        record.extend_from_slice(handle);
        record.extend_from_slice(name);
        record.push(0);
        while record.len() % 4 != 0 {
            record.push(0);
        }
        let rlen = record.len() as u16;
        record[2..4].copy_from_slice(&rlen.to_ne_bytes());
        let mut e = Vec::new();
        e.extend_from_slice(&((FAN_METADATA + record.len()) as u32).to_ne_bytes());
        e.extend_from_slice(&[3, 0]);
        e.extend_from_slice(&(FAN_METADATA as u16).to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&(-1i32).to_ne_bytes());
        e.extend_from_slice(&pid.to_ne_bytes());
        e.extend_from_slice(&record);
        e
    }

    #[test]
    fn fanotify_events_give_mask_pid_and_name() {
        let mut data = fan_event(libc::FAN_MODIFY, 4242, &[1; 8], b"resolv.conf");
        data.extend(fan_event(libc::FAN_MOVED_TO, 7, &[2; 12], b"x"));
        let events: Vec<_> = fanotify_events(&data).collect();
        assert_eq!(
            events,
            vec![
                FanEvent {
                    mask: libc::FAN_MODIFY,
                    pid: 4242,
                    name: Some(b"resolv.conf")
                },
                FanEvent {
                    mask: libc::FAN_MOVED_TO,
                    pid: 7,
                    name: Some(b"x")
                },
            ]
        );
    }

    proptest::proptest! {
        /// Whatever a read returns, the decoder ends without panicking, cut short or not.
        #[test]
        fn fanotify_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                                      cut in 0usize..512) {
            let _ = fanotify_events(&data).count();
            let whole = fan_event(libc::FAN_CLOSE_WRITE, 1, &data[..data.len().min(64)], b"f");
            let _ = fanotify_events(&whole[..cut.min(whole.len())]).count();
        }
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
