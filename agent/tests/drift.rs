//! Staying converged when the world moves: outside changes to the agent's objects are
//! prevented (the owned nftables table, the agent's own WireGuard control socket) or
//! repaired, foreign objects are never touched, a restart rewrites nothing, and `kill -9` at
//! any moment leaves the firewall closed.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec, PodStatus, Subsystem};
use weft_testkit::control::Dashboard;
use weft_testkit::observe::{ip_json, ipv4_addrs, nft_table, nft_table_text};
use weft_testkit::stack::{Pod, Stack};
use weft_testkit::{require_root, unique_ifname, wait_until, Netns};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn spec(pod: &Pod, generation: u64, wg_if: &str, rules: usize) -> PodSpec {
    let ingress: Vec<Value> = (0..rules)
        .map(|i| {
            json!({ "Protocol": "tcp", "Ports": [(10_000 + i).to_string()],
                         "Sources": ["10.0.0.0/8"], "Comment": format!("g{generation} r{i}") })
        })
        .collect();
    serde_json::from_value(json!({
        "PodId": pod.id, "Generation": generation,
        "Network": { "Interface": "eth0", "Address": pod.address(), "Gateway": pod.gateway() },
        "Firewall": { "Ingress": ingress },
        "WireGuard": { "Interface": wg_if, "Address": format!("10.9.{}.1/24", pod.index),
            "Peers": [ { "PublicKey": "6aA5WnBB2fA1ZoY4R8M/rZ1xh8+0D+/Q/+cGhbNnl2U=",
                         "AllowedIps": ["10.9.200.0/24"] } ] }
    }))
    .unwrap()
}

/// Runs a command in the namespace; returns whether it succeeded.
fn attempt(ns: &Netns, cmd: &[&str]) -> bool {
    ns.command(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap()
        .status
        .success()
}

fn default_gateway(ns: &Netns) -> Option<String> {
    let r = ip_json(ns, &["-4", "route", "show", "default"]).ok()?;
    r.get(0)?["gateway"].as_str().map(str::to_owned)
}

fn eth0_up(ns: &Netns) -> bool {
    let l = ip_json(ns, &["link", "show", "eth0"]).unwrap();
    l[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

/// Waits (polling as fast as the observer allows) until `holds`; returns how long it took.
fn repaired_within(what: &str, holds: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    wait_until(Duration::from_secs(10), what, || {
        if holds() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    start.elapsed()
}

#[test]
fn outside_changes_are_prevented_or_repaired_and_foreign_objects_left_alone() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("drift").unwrap();
    let pod_ns = stack.pods[0].ns.ns.name().to_owned();
    let ns = &stack.pods[0].ns.ns;
    // Foreign objects, present before the agent and across everything it does.
    ns.run("nft", &["add", "table", "ip", "foreign"]).unwrap();
    ns.run(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "foreign",
            "c",
            "{ type filter hook input priority 10; }",
        ],
    )
    .unwrap();
    ns.run(
        "nft",
        &[
            "add", "rule", "ip", "foreign", "c", "tcp", "dport", "9", "counter",
        ],
    )
    .unwrap();
    let foreign_before = nft_table_text(ns, "ip", "foreign").unwrap();

    stack
        .start_agent(
            "drift",
            &["--status-interval", "1s", "--wireguard", "userspace"],
        )
        .unwrap();
    let wg = unique_ifname("wg", 1);
    let desired = spec(&stack.pods[0], 1, &wg, 3);
    let addr = stack.pods[0].address();
    let gw = stack.pods[0].gateway();

    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "drift").await.unwrap();
        let r = cp
            .request_when_ready("drift", &desired, Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        // A foreign route, added after the agent's: never removed. (On ctl0: removing eth0's
        // address or downing eth0 makes the kernel itself drop routes through eth0.)
        let ns = &stack.pods[0].ns.ns;
        let hub = stack.pods[0].ns.hub_addr.clone();
        ns.ip(&[
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            &hub,
            "proto",
            "static",
        ])
        .unwrap();
        let table_before = nft_table_text(ns, "inet", "weft-fw").unwrap();

        // Prevented: the owned table refuses everyone else, and survives a flush.
        for cmd in [
            &["nft", "add", "rule", "inet", "weft-fw", "input", "accept"][..],
            &["nft", "delete", "table", "inet", "weft-fw"][..],
            &["nft", "add", "chain", "inet", "weft-fw", "sneaky"][..],
        ] {
            assert!(!attempt(ns, cmd), "{cmd:?} was allowed on the owned table");
            assert_eq!(
                nft_table_text(ns, "inet", "weft-fw").unwrap(),
                table_before,
                "{cmd:?}"
            );
            println!("{:<48} prevented (the table is owned)", cmd.join(" "));
        }
        // Prevented: the userspace device takes configuration only from the agent.
        let wg_cmd = [
            "wg",
            "set",
            &wg,
            "peer",
            "6aA5WnBB2fA1ZoY4R8M/rZ1xh8+0D+/Q/+cGhbNnl2U=",
            "remove",
        ];
        assert!(!attempt(ns, &wg_cmd), "wg set was allowed");
        println!(
            "{:<48} prevented (the agent owns the device)",
            "wg set <if> peer <key> remove"
        );
        assert_eq!(weft_testkit::observe::wg_dump(ns, &wg).unwrap().len(), 2);

        // Repaired: each within a bounded time, each counted and attributed in the status.
        // (what, `ip` arguments, restored?, does the kernel name the author?) Link state
        // notifications carry no sender (port 0), so that one is "unknown".
        type Case<'a> = (
            &'a str,
            Vec<&'a str>,
            Box<dyn Fn() -> bool + Send + Sync + 'a>,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "ip addr del",
                vec!["addr", "del", &addr, "dev", "eth0"],
                Box::new(|| ipv4_addrs(ns, "eth0").unwrap() == vec![addr.clone()]),
                true,
            ),
            (
                "ip route del default",
                vec!["route", "del", "default"],
                Box::new(|| default_gateway(ns).as_deref() == Some(gw.as_str())),
                true,
            ),
            (
                "ip link set eth0 down",
                vec!["link", "set", "eth0", "down"],
                Box::new(|| eth0_up(ns) && default_gateway(ns).as_deref() == Some(gw.as_str())),
                false,
            ),
        ];
        for (n, (what, args, holds, named)) in cases.into_iter().enumerate() {
            let repairs = n as u64 + 1;
            let since = Instant::now();
            ns.ip(&args).unwrap();
            let took = repaired_within(what, holds);
            println!("{what:<48} repaired in {:.1} ms", took.as_secs_f64() * 1e3);
            let s: PodStatus = dash
                .wait_for(Duration::from_secs(5), what, since, |s| {
                    s.drift_repairs >= repairs
                })
                .await;
            let d = s.last_drift.expect("LastDrift");
            assert_eq!(d.subsystem, Subsystem::Network, "{what}");
            if named {
                assert!(d.by.contains("pid"), "{what}: By {:?}", d.by);
            }
            println!("{:<48} LastDrift: {:?} by {:?}", "", d.change, d.by);
            assert!(!d.change.is_empty());
            assert_eq!(s.overall, Overall::Healthy, "{what}: {}", s.last_error);
        }

        // Flush: the owned table stays (policy drop and all); foreign tables go, as asked.
        assert!(attempt(ns, &["nft", "flush", "ruleset"]));
        assert_eq!(nft_table_text(ns, "inet", "weft-fw").unwrap(), table_before);
        println!("{:<48} prevented for weft-fw (owned)", "nft flush ruleset");
    });
    // The foreign route was never touched; the foreign table was, but only by the flush.
    let ns = &stack.pods[0].ns.ns;
    let routes = ip_json(ns, &["route", "show", "192.0.2.0/24"]).unwrap();
    assert_eq!(
        routes.as_array().unwrap().len(),
        1,
        "foreign route gone: {routes}"
    );
    assert!(!foreign_before.is_empty());
    assert_eq!(pod_ns, ns.name());
}

#[test]
fn foreign_table_is_byte_identical_across_applies_and_repairs() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("fgn").unwrap();
    let ns = &stack.pods[0].ns.ns;
    ns.run("nft", &["add", "table", "inet", "mine"]).unwrap();
    ns.run(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "mine",
            "c",
            "{ type filter hook output priority 5; }",
        ],
    )
    .unwrap();
    ns.run(
        "nft",
        &[
            "add", "rule", "inet", "mine", "c", "udp", "dport", "53", "accept",
        ],
    )
    .unwrap();
    let before = nft_table_text(ns, "inet", "mine").unwrap();
    stack
        .start_agent("fgn", &["--status-interval", "1s"])
        .unwrap();
    let wg = unique_ifname("wg", 2);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        for g in 1..=3 {
            let mut s = spec(&stack.pods[0], g, &wg, g as usize);
            s.wireguard = None;
            let r = cp.request_when_ready("fgn", &s, Encoding::Json).await;
            assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        }
        let ns = &stack.pods[0].ns.ns;
        let addr = stack.pods[0].address();
        ns.ip(&["addr", "del", &addr, "dev", "eth0"]).unwrap();
        repaired_within("address", || {
            ipv4_addrs(ns, "eth0").unwrap() == vec![addr.clone()]
        });
    });
    assert_eq!(
        nft_table_text(&stack.pods[0].ns.ns, "inet", "mine").unwrap(),
        before
    );
}

/// The handles of the table's rules: equal handles mean the rules were not rewritten.
fn rule_handles(ns: &Netns) -> Vec<u64> {
    nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("table")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["handle"].as_u64())
        .collect()
}

fn input_policy(ns: &Netns) -> Option<String> {
    let t = nft_table(ns, "inet", "weft-fw").ok()??;
    t.as_array()?
        .iter()
        .find(|o| o["chain"]["name"] == "input")
        .and_then(|o| o["chain"]["policy"].as_str().map(str::to_owned))
}

#[test]
fn a_restart_rewrites_nothing_and_kill_9_never_opens_the_firewall() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("crash").unwrap();
    stack
        .start_agent("crash", &["--status-interval", "1s"])
        .unwrap();
    let wg = unique_ifname("wg", 3);
    let mut first = spec(&stack.pods[0], 1, &wg, 50);
    first.wireguard = None;
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp.request_when_ready("crash", &first, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });

    // A clean restart with the same kept spec: the firewall is adopted, not rewritten.
    let handles = rule_handles(&stack.pods[0].ns.ns);
    stack.stop_agent("crash").unwrap();
    let restarted = Instant::now();
    stack
        .start_agent("crash", &["--status-interval", "1s"])
        .unwrap();
    let converged = stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "crash").await.unwrap();
        dash.wait_for(
            Duration::from_secs(15),
            "healthy after restart",
            restarted,
            |s| s.observed_generation == 1 && s.overall == Overall::Healthy,
        )
        .await;
        restarted.elapsed()
    });
    println!("restart to converged (status seen): {converged:?}");
    assert_eq!(
        rule_handles(&stack.pods[0].ns.ns),
        handles,
        "the restart rewrote the table"
    );

    // kill -9 at random moments during applies, 50 times.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut generation = 1;
    for round in 0..50 {
        let delay = Duration::from_millis(rand(120));
        let burst: Vec<PodSpec> = (0..5)
            .map(|_| {
                generation += 1;
                let mut s = spec(&stack.pods[0], generation, &wg, 100 + rand(400) as usize);
                s.wireguard = None;
                s
            })
            .collect();
        stack.block_on(|| async {
            let cp = stack.control_plane().await.unwrap();
            for s in &burst {
                cp.publish("crash", s, Encoding::Json).await.unwrap();
            }
        });
        std::thread::sleep(delay);
        stack.pods[0].agent.as_mut().unwrap().kill9();
        let ns = &stack.pods[0].ns.ns;
        assert_eq!(
            input_policy(ns).as_deref(),
            Some("drop"),
            "round {round}: the firewall is not closed after kill -9"
        );
        stack
            .start_agent("crash", &["--status-interval", "1s"])
            .unwrap();
    }
    // The last agent converges to the newest spec.
    let mut last = spec(&stack.pods[0], generation + 1, &wg, 10);
    last.wireguard = None;
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp.request_when_ready("crash", &last, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    let ns = &stack.pods[0].ns.ns;
    let text = nft_table_text(ns, "inet", "weft-fw").unwrap();
    assert!(text.contains(&format!("g{} r9", generation + 1)), "{text}");
    assert_eq!(
        ipv4_addrs(ns, "eth0").unwrap(),
        vec![stack.pods[0].address()]
    );
}

/// The resolver file is one of the agent's objects (CONTRACT.md v1.1): an outside edit is
/// repaired and reported under Network, `By` naming the writer (this test process: the
/// fanotify watch reports the writer's pid with each event). The status
/// interval and the resync are a minute here, so only the watch on the file can wake the
/// repair in time.
#[test]
fn an_outside_edit_of_the_resolver_file_is_repaired_and_reported_under_network() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("rslv").unwrap();
    stack
        .start_agent(
            "rslv",
            &["--status-interval", "60s", "--resync-interval", "60s"],
        )
        .unwrap();
    let pod = &stack.pods[0];
    let path = pod.resolv_conf.clone();
    let desired: PodSpec = serde_json::from_value(json!({
        "PodId": pod.id, "Generation": 1,
        "Network": { "Interface": "eth0", "Address": pod.address(), "Gateway": pod.gateway(),
                     "Nameservers": ["192.0.2.53"], "SearchDomains": ["pods.example"] },
    }))
    .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "rslv").await.unwrap();
        let r = cp
            .request_when_ready("rslv", &desired, Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains("nameserver 192.0.2.53"), "{written}");

        // Edited in place, then replaced by rename (as `sed -i` does), then deleted.
        type Edit<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let edits: [Edit; 3] = [
            (
                "edited in place",
                Box::new(|| std::fs::write(&path, "nameserver 198.51.100.66\n").unwrap()),
            ),
            (
                "replaced by rename",
                Box::new(|| {
                    let tmp = path.with_extension("sed");
                    std::fs::write(&tmp, "nameserver 203.0.113.66\n").unwrap();
                    std::fs::rename(&tmp, &path).unwrap();
                }),
            ),
            ("deleted", Box::new(|| std::fs::remove_file(&path).unwrap())),
        ];
        for (n, (what, edit)) in edits.iter().enumerate() {
            let since = Instant::now();
            edit();
            let took = repaired_within(what, || {
                std::fs::read_to_string(&path).is_ok_and(|now| now == written)
            });
            println!(
                "resolver file {what:<32} repaired in {:.1} ms",
                took.as_secs_f64() * 1e3
            );
            let s: PodStatus = dash
                .wait_for(Duration::from_secs(5), what, since, |s| {
                    s.drift_repairs > n as u64
                })
                .await;
            let d = s.last_drift.expect("LastDrift");
            assert_eq!(d.subsystem, Subsystem::Network, "{what}");
            assert!(
                d.by.ends_with(&format!("(pid {})", std::process::id())),
                "{what}: By {:?}",
                d.by
            );
            assert!(d.change.contains("resolver file"), "{what}: {:?}", d.change);
            assert_eq!(s.overall, Overall::Healthy, "{what}: {}", s.last_error);
        }
    });
}

/// `ip -j -6 addr show eth0 scope global` as CIDRs.
fn global_ipv6(ns: &Netns) -> Vec<String> {
    let v = ip_json(ns, &["-6", "addr", "show", "eth0", "scope", "global"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
        .collect()
}

/// The IPv6 default route's (gateway, protocol).
fn default6(ns: &Netns) -> Option<(String, String)> {
    let r = ip_json(ns, &["-6", "route", "show", "default"]).ok()?;
    let r = r.get(0)?;
    Some((
        r["gateway"].as_str()?.to_owned(),
        r["protocol"].as_str()?.to_owned(),
    ))
}

/// The dual-stack pod interface and the resolver file are the agent's objects: outside
/// changes to the IPv6 address and default route, an address someone adds later (IPv4 or
/// global IPv6) and an edit of the resolver file are each repaired, counted, and attributed
/// (the resolver file's writer by the fanotify watch).
#[test]
fn ipv6_foreign_addresses_and_the_resolver_file_are_repaired_and_attributed() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("drift6").unwrap();
    stack
        .start_agent("drift6", &["--status-interval", "1s"])
        .unwrap();
    let pod = &stack.pods[0];
    let (addr, gw) = (pod.address(), pod.gateway());
    let resolv = pod.resolv_conf.clone();
    let desired: PodSpec = serde_json::from_value(json!({
        "PodId": "drift6", "Generation": 1,
        "Network": { "Interface": "eth0", "Address": addr, "Gateway": gw,
                     "Address6": "2001:db8:77::5/64", "Gateway6": "fe80::1",
                     "Nameservers": ["192.0.2.53"] }
    }))
    .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "drift6")
            .await
            .unwrap();
        let r = cp
            .request_when_ready("drift6", &desired, Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let ns = &stack.pods[0].ns.ns;
        assert_eq!(global_ipv6(ns), vec!["2001:db8:77::5/64"]);
        assert_eq!(default6(ns), Some(("fe80::1".into(), "87".into())));
        let managed = std::fs::read_to_string(&resolv).unwrap();
        assert!(managed.contains("nameserver 192.0.2.53"), "{managed}");

        // (what, `ip` arguments, restored?, does the kernel name the author?) IPv6 address
        // notifications carry no sender port (IPv6 route and IPv4 ones do).
        type Holds<'a> = Box<dyn Fn() -> bool + Send + Sync + 'a>;
        let cases: Vec<(&str, Vec<&str>, Holds, bool)> = vec![
            (
                "ip -6 addr del (the agent's IPv6 address)",
                vec!["-6", "addr", "del", "2001:db8:77::5/64", "dev", "eth0"],
                Box::new(|| global_ipv6(ns) == vec!["2001:db8:77::5/64".to_owned()]),
                false,
            ),
            (
                "ip -6 route del default",
                vec!["-6", "route", "del", "default"],
                Box::new(|| default6(ns) == Some(("fe80::1".into(), "87".into()))),
                true,
            ),
            (
                "ip -6 addr add (a second global address)",
                vec![
                    "-6",
                    "addr",
                    "add",
                    "2001:db8:77::99/64",
                    "dev",
                    "eth0",
                    "nodad",
                ],
                Box::new(|| global_ipv6(ns) == vec!["2001:db8:77::5/64".to_owned()]),
                false,
            ),
            (
                "ip addr add (a second IPv4 address)",
                vec!["addr", "add", "10.0.1.77/24", "dev", "eth0"],
                Box::new(|| ipv4_addrs(ns, "eth0").unwrap() == vec![addr.clone()]),
                true,
            ),
        ];
        let mut repairs = 0;
        for (what, args, holds, named) in cases {
            repairs += 1;
            let since = Instant::now();
            ns.ip(&args).unwrap();
            let took = repaired_within(what, holds);
            let s: PodStatus = dash
                .wait_for(Duration::from_secs(5), what, since, |s| {
                    s.drift_repairs >= repairs
                })
                .await;
            let d = s.last_drift.expect("LastDrift");
            println!(
                "{what:<48} repaired in {:.1} ms; LastDrift: {:?} by {:?}",
                took.as_secs_f64() * 1e3,
                d.change,
                d.by
            );
            assert_eq!(d.subsystem, Subsystem::Network, "{what}");
            if named {
                // `ip (pid N)`, or `pid N` when `ip` was gone before the agent looked.
                assert!(d.by.contains("pid "), "{what}: By {:?}", d.by);
            } else {
                assert_eq!(d.by, "unknown", "{what}");
            }
            assert_eq!(s.overall, Overall::Healthy, "{what}: {}", s.last_error);
            let net = s.network.expect("Network");
            assert_eq!(net.addresses6, vec!["2001:db8:77::5/64"]);
            assert_eq!(net.gateway6.as_deref(), Some("fe80::1"));
        }

        // The resolver file, written by a process that is still running when the agent
        // looks: fanotify names it.
        repairs += 1;
        let since = Instant::now();
        let mut tee = std::process::Command::new("tee")
            .arg(&resolv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let tee_pid = tee.id();
        use std::io::Write as _;
        tee.stdin
            .as_mut()
            .unwrap()
            .write_all(b"nameserver 203.0.113.66\n")
            .unwrap();
        let took = repaired_within("the resolver file", || {
            std::fs::read_to_string(&resolv).is_ok_and(|c| c == managed)
        });
        let s: PodStatus = dash
            .wait_for(Duration::from_secs(5), "resolver drift", since, |s| {
                s.drift_repairs >= repairs
            })
            .await;
        drop(tee.stdin.take());
        tee.wait().unwrap();
        let d = s.last_drift.expect("LastDrift");
        println!(
            "{:<48} repaired in {:.1} ms; LastDrift: {:?} by {:?}",
            "tee resolv.conf",
            took.as_secs_f64() * 1e3,
            d.change,
            d.by
        );
        assert_eq!(d.subsystem, Subsystem::Network);
        assert!(d.change.contains("resolver file"), "{}", d.change);
        assert_eq!(d.by, format!("tee (pid {tee_pid})"));
    });
}
