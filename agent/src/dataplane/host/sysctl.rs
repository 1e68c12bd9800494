//! IPv4 forwarding, through `/proc/sys`: what a `/proc/sys/net` file holds is the setting of
//! the namespace of the thread that opens it, so a sandbox's forwarding is read and written
//! from a thread inside it ([`super::netns::enter`]), the host's from the agent's own threads.
//! No `sysctl` is run.

use std::io;

/// `net.ipv4.ip_forward`.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether IPv4 forwarding is on in the calling thread's namespace.
pub fn forwarding() -> io::Result<bool> {
    let text = std::fs::read_to_string(IP_FORWARD)?;
    match text.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{IP_FORWARD} holds {other:?}"),
        )),
    }
}

/// Turns IPv4 forwarding on in the calling thread's namespace (a write only when it is off).
pub fn enable_forwarding() -> io::Result<()> {
    if forwarding()? {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, b"1\n")
}
