//! The host role's kernel pieces that are not netlink, against the real kernel: named
//! namespaces as `ip netns` makes them, the persistent tap, forwarding through `/proc/sys`.
//! Observed with `ip netns`, `ip -j -d link` and `sysctl` run inside the namespaces. Every
//! name is unique to this process and removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use weft_agent::dataplane::host::{netns, sysctl, tap};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace name for this test, deleted (with `ip netns del`) on drop whatever made it.
struct Name(String);

impl Name {
    fn new(tag: &str) -> Name {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Name(format!("weft-hk{tag}-{}-{n}", std::process::id()))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        let _ = std::fs::remove_file(netns::path(&self.0));
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ip_netns_list() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_named_namespace_is_what_ip_netns_sees_and_deletes() {
    netns::prepare_dir().unwrap();
    let name = Name::new("ns");
    // Made, and something done inside it: a link there is in the new namespace only.
    let inside = netns::create(&name.0, || {
        std::fs::read_to_string("/proc/net/dev").unwrap()
    })
    .unwrap();
    assert!(inside.contains("lo:"), "{inside}");
    assert!(ip_netns_list().contains(&name.0));
    assert!(netns::is_mounted(&name.0));
    assert_eq!(netns::list(&name.0).unwrap(), std::slice::from_ref(&name.0));
    // `ip netns exec` runs in it: only a loopback, down.
    let links = run(&["ip", "-n", &name.0, "-j", "link"]);
    let links: serde_json::Value = serde_json::from_str(&links).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 1, "{links}");
    // Taken names are refused, never taken over.
    let again = netns::create(&name.0, || ()).unwrap_err();
    assert!(
        matches!(&again, netns::Error::File(_, e) if e.kind() == std::io::ErrorKind::AlreadyExists),
        "{again:?}"
    );
    assert!(netns::is_mounted(&name.0));
    // Deleted: gone from `ip netns`, and deleting again is not an error.
    netns::delete(&name.0).unwrap();
    assert!(!ip_netns_list().contains(&name.0));
    assert!(!netns::path(&name.0).exists());
    netns::delete(&name.0).unwrap();
}

#[test]
fn a_half_made_namespace_file_is_not_a_namespace_and_deletes() {
    netns::prepare_dir().unwrap();
    let name = Name::new("half");
    std::fs::write(netns::path(&name.0), b"").unwrap();
    assert!(!netns::is_mounted(&name.0));
    netns::delete(&name.0).unwrap();
    assert!(!netns::path(&name.0).exists());
}

#[test]
fn the_tap_persists_without_the_agent_holding_it() {
    netns::prepare_dir().unwrap();
    let name = Name::new("tap");
    netns::create(&name.0, || tap::create_persistent("tap0"))
        .unwrap()
        .unwrap();
    let shown = run(&["ip", "-n", &name.0, "-j", "-d", "link", "show", "tap0"]);
    let link: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let info = &link[0]["linkinfo"];
    assert_eq!(info["info_kind"], "tun", "{shown}");
    assert_eq!(info["info_data"]["type"], "tap", "{shown}");
    assert_eq!(info["info_data"]["pi"], false, "{shown}");
    assert_eq!(info["info_data"]["persist"], true, "{shown}");
    // Nobody holds it: a VMM (here this test) can attach to it by name.
    let guest = netns::enter(&name.0, || tap::open("tap0"))
        .unwrap()
        .unwrap();
    drop(guest);
    // Made again: the same device, taken as it is.
    netns::enter(&name.0, || tap::create_persistent("tap0"))
        .unwrap()
        .unwrap();
    let count = run(&["ip", "-n", &name.0, "-j", "link"]);
    let count: serde_json::Value = serde_json::from_str(&count).unwrap();
    assert_eq!(count.as_array().unwrap().len(), 2, "{count}");
}

#[test]
fn forwarding_is_the_namespaces_own() {
    netns::prepare_dir().unwrap();
    let name = Name::new("fwd");
    netns::create(&name.0, || ()).unwrap();
    // A new namespace may inherit forwarding: start from off, as a fresh host would be.
    run(&[
        "ip",
        "netns",
        "exec",
        &name.0,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    let here = sysctl::Forwarding::open().unwrap().get().unwrap();
    // Opened inside the namespace, the file stays that namespace's setting, read and written
    // from this thread (outside it).
    let theirs = netns::enter(&name.0, sysctl::Forwarding::open)
        .unwrap()
        .unwrap();
    assert!(!theirs.get().unwrap());
    theirs.enable().unwrap();
    let seen = run(&[
        "ip",
        "netns",
        "exec",
        &name.0,
        "sysctl",
        "-n",
        "net.ipv4.ip_forward",
    ]);
    assert_eq!(seen.trim(), "1");
    assert!(theirs.get().unwrap());
    // The test process's own namespace is untouched.
    assert_eq!(sysctl::Forwarding::open().unwrap().get().unwrap(), here);
}
