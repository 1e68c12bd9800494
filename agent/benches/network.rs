//! Pod network apply: in-process over rtnetlink vs the same changes made by running `ip`.
//!
//! `cargo bench -p weft-agent --bench network` prints medians and ratios, both methods
//! measured side by side (interleaved) in one run, in a fresh namespace with a veth `eth0`.
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a quick smoke pass that
//! still checks both methods reach the same kernel state.
//!
//! - full apply: from a link that is down, at mtu 1500, without address or route, to up,
//!   mtu 1400, 192.0.2.10/24, default via 192.0.2.1 (4 changes). `ip`: `link set mtu`,
//!   `link set up`, `addr add`, `route replace`. The reset between rounds is not timed.
//! - no-op re-apply: the same spec again on a converged link. In-process this reads and
//!   sends nothing; `ip` has no diff, so a script re-runs its idempotent commands
//!   (`link set`, `addr replace`, `route replace`).

use std::process::Command;
use std::time::{Duration, Instant};

use weft_agent::dataplane::link;
use weft_agent::dataplane::rtnl::Rtnl;
use weft_schema::validate::{IfName, Network};
use weft_testkit::observe::{ip_json, ipv4_addrs};
use weft_testkit::{require_root, veth, Netns};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 300 } else { 5 };
    require_root();

    let ns = Netns::new("bench-net").expect("namespace");
    let peer = Netns::new("bench-net-peer").expect("peer namespace");
    veth(&ns, "eth0", &peer, "eth0").expect("veth");
    let desired = Network {
        interface: IfName::parse("eth0").unwrap(),
        address: "192.0.2.10/24".parse().unwrap(),
        gateway: Some("192.0.2.1".parse().unwrap()),
        address6: None,
        gateway6: None,
        mtu: Some(1400),
        nameservers: Vec::new(),
        search_domains: Vec::new(),
    };

    let mut t = Timings::default();
    ns.enter(|| {
        let mut rtnl = Rtnl::open().expect("rtnetlink socket");
        for _ in 0..rounds {
            reset(&ns);
            let start = Instant::now();
            let sent = link::apply(&mut rtnl, &desired).expect("full apply");
            t.full_rtnl.push(start.elapsed());
            assert_eq!(sent, 4);
            check(&ns);

            let start = Instant::now();
            let sent = link::apply(&mut rtnl, &desired).expect("no-op apply");
            t.noop_rtnl.push(start.elapsed());
            assert_eq!(sent, 0);

            reset(&ns);
            let start = Instant::now();
            ip_apply(&ns, "add");
            t.full_ip.push(start.elapsed());
            check(&ns);

            let start = Instant::now();
            ip_apply(&ns, "replace");
            t.noop_ip.push(start.elapsed());
            check(&ns);
        }
    });

    if full {
        println!("network apply, {rounds} rounds each, medians (in-process = link::apply over one rtnetlink socket):");
        row("full apply (4 changes)", &mut t.full_rtnl, &mut t.full_ip);
        row("no-op re-apply", &mut t.noop_rtnl, &mut t.noop_ip);
    } else {
        println!("network bench smoke pass ok ({rounds} rounds); run with --bench for figures");
    }
}

#[derive(Default)]
struct Timings {
    full_rtnl: Vec<Duration>,
    full_ip: Vec<Duration>,
    noop_rtnl: Vec<Duration>,
    noop_ip: Vec<Duration>,
}

/// Back to a bare link: down, mtu 1500, no address (its routes go with it).
fn reset(ns: &Netns) {
    ns.ip(&["link", "set", "eth0", "down", "mtu", "1500"])
        .unwrap();
    ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
}

/// The spec as `ip` commands; `verb` is `add` for a first apply, `replace` to re-assert.
fn ip_apply(ns: &Netns, verb: &str) {
    for args in [
        &["link", "set", "eth0", "mtu", "1400"][..],
        &["link", "set", "eth0", "up"],
        &["addr", verb, "192.0.2.10/24", "dev", "eth0"],
        &[
            "route",
            "replace",
            "default",
            "via",
            "192.0.2.1",
            "dev",
            "eth0",
            "proto",
            "87",
        ],
    ] {
        let status = Command::new("ip")
            .arg("-n")
            .arg(ns.name())
            .args(args)
            .status()
            .expect("spawn ip");
        assert!(status.success(), "ip {args:?}");
    }
}

/// Both methods must leave the same state.
fn check(ns: &Netns) {
    assert_eq!(ipv4_addrs(ns, "eth0").unwrap(), vec!["192.0.2.10/24"]);
    let link = ip_json(ns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(link[0]["mtu"], 1400);
    let route = ip_json(ns, &["route", "show", "default"]).unwrap();
    assert_eq!(route[0]["gateway"], "192.0.2.1");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn row(what: &str, rtnl: &mut [Duration], ip: &mut [Duration]) {
    let (a, b) = (median(rtnl), median(ip));
    println!(
        "  {what:<24} in-process {:>9.1} us   ip commands {:>9.1} us   ip/in-process {:>6.1}x",
        a.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        b.as_secs_f64() / a.as_secs_f64()
    );
}
