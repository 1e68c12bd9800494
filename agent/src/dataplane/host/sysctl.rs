//! The host's IPv4 forwarding, through `/proc/sys`: what a `/proc/sys/net` file holds is the
//! setting of the namespace of the thread that opened it, so the host's is opened once, by
//! the agent's own thread, and read and written through that descriptor (a sandbox's is kept
//! open the same way, by a thread inside it: [`super::read::SandboxSockets`]). No `sysctl`
//! is run.
//!
//! Kept open because an open by path costs what the number of sandboxes does: each
//! namespace that ever looked up `/proc/sys/net` leaves its own dentry of that name under
//! the one `/proc/sys`, all in one hash chain the kernel walks (`proc_sys_compare`) to find
//! the calling namespace's. With 1,000 sandboxes, `perf` put 16% of the reconciler's CPU
//! there while slots came and went one at a time (a read per observation).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// `net.ipv4.ip_forward`.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// `net.ipv4.ip_forward` of the namespace it was opened in.
#[derive(Debug)]
pub struct Forwarding(File);

impl Forwarding {
    /// Opens the setting of the calling thread's namespace.
    pub fn open() -> io::Result<Forwarding> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(IP_FORWARD)
            .map(Forwarding)
    }

    /// Whether IPv4 forwarding is on.
    pub fn get(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        let n = self.0.read_at(&mut buf, 0)?;
        match std::str::from_utf8(&buf[..n]).map(str::trim) {
            Ok("0") => Ok(false),
            Ok("1") => Ok(true),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{IP_FORWARD} holds {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
            )),
        }
    }

    /// Turns IPv4 forwarding on (a write only when it is off).
    pub fn enable(&self) -> io::Result<()> {
        if self.get()? {
            return Ok(());
        }
        self.0.write_at(b"1\n", 0).map(drop)
    }
}
