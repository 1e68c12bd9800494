//! Named network namespaces, made the way `ip netns add` makes them: a namespace bind-mounted
//! on `/run/netns/NAME`, with `/run/netns` made a shared mount first, so `ip netns list`,
//! `ip netns exec` and every other mount namespace that shares it see the namespace, and an
//! unmount anywhere frees it.
//!
//! A namespace is entered by a thread, never by the process: a short thread unshares (or
//! joins) the namespace, does what must be done inside (open sockets, create a tap, write a
//! sysctl), and ends. What it opened stays in the namespace.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// `statfs` magic of the namespace filesystem: what a bind-mounted namespace file is on.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("prepare {NETNS_DIR}")]
    Dir(#[source] io::Error),
    #[error("create namespace file {0}")]
    File(PathBuf, #[source] io::Error),
    #[error("create network namespace {0}")]
    Unshare(String, #[source] io::Error),
    #[error("mount network namespace {0}")]
    Mount(String, #[source] io::Error),
    #[error("enter network namespace {0}")]
    Enter(String, #[source] io::Error),
    #[error("delete network namespace {0}")]
    Delete(String, #[source] io::Error),
    #[error("list {NETNS_DIR}")]
    List(#[source] io::Error),
}

/// The path of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `mount(2)` with no data.
fn mount(source: &Path, target: &Path, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let (source, target) = (cstring(source)?, cstring(target)?);
    let fstype = CString::new(fstype).expect("no NUL");
    // SAFETY: three NUL-terminated strings that live across the call, and no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `/run/netns` exist and be a shared mount, as `ip netns add` does: namespace mounts
/// then propagate to every mount namespace that shares it.
pub fn prepare_dir() -> Result<(), Error> {
    let dir = Path::new(NETNS_DIR);
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::Dir(e)),
    }
    let shared = || mount(Path::new(""), dir, "none", libc::MS_SHARED | libc::MS_REC);
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one (bind it on itself), then shared.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            mount(dir, dir, "none", libc::MS_BIND | libc::MS_REC).map_err(Error::Dir)?;
            shared().map_err(Error::Dir)
        }
        Err(e) => Err(Error::Dir(e)),
    }
}

/// Whether `/run/netns/NAME` holds a namespace (a mounted namespace file, not a bare file
/// left by a create that did not finish).
pub fn is_mounted(name: &str) -> bool {
    let Ok(p) = cstring(&path(name)) else {
        return false;
    };
    // SAFETY: `st` is written by statfs; `p` is NUL-terminated and lives across the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(p.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Creates namespace `name` and runs `inside` on a thread that is in it, returning what it
/// returns (sockets it opened, devices it made, stay in the namespace). The namespace is
/// mounted before `inside` runs. `EEXIST` when the name is taken; a failure leaves nothing.
pub fn create<T: Send>(name: &str, inside: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let target = path(name);
    // O_EXCL: a name that exists (ours from before, or anyone's) is never taken over here.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(|e| Error::File(target.clone(), e))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes no pointers; it moves only this thread into a new
            // network namespace, and this thread ends with the scope.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Unshare(name.into(), io::Error::last_os_error()));
            }
            // The thread's own namespace (`/proc/self` is the process's first thread).
            mount(
                Path::new("/proc/thread-self/ns/net"),
                &target,
                "none",
                libc::MS_BIND,
            )
            .map_err(|e| Error::Mount(name.into(), e))?;
            Ok(inside())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    made
}

/// Runs `inside` on a thread that has entered namespace `name`, returning what it returns.
pub fn enter<T: Send>(name: &str, inside: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let file = File::open(path(name)).map_err(|e| Error::Enter(name.into(), e))?;
    enter_fd(name, &file, inside)
}

/// [`enter`] with the namespace already open (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn enter_fd<T: Send>(
    name: &str,
    netns: &File,
    inside: impl FnOnce() -> T + Send,
) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on an open namespace descriptor changes only this thread's
            // network namespace, and this thread ends with the scope.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Enter(name.into(), io::Error::last_os_error()));
            }
            Ok(inside())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Deletes namespace `name` as `ip netns delete` does: unmounted (detached, so a process
/// still inside keeps it until it leaves) and its file removed. A namespace that is not
/// there is not an error; one still held open somewhere lives on until it is closed.
pub fn delete(name: &str) -> Result<(), Error> {
    let target = path(name);
    let t = cstring(&target).map_err(|e| Error::Delete(name.into(), e))?;
    // SAFETY: `t` is NUL-terminated and lives across the call.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (a bare file from an unfinished create); ENOENT: gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(Error::Delete(name.into(), e));
        }
    }
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Delete(name.into(), e)),
    }
}

/// The names in `/run/netns` that start with `prefix` (mounted or not).
pub fn list(prefix: &str) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::List(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::List)?;
        if let Some(name) = entry.file_name().to_str() {
            if name.starts_with(prefix) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}
