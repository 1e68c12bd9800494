//! The host role end to end: `weft-agent host` in a host namespace of a [`HostLab`], specs
//! from a control plane in the internet namespace, the kernel checked with `ip netns`,
//! `ip -j` and `nft -j` (independent observers), packets through real sockets.

use std::path::Path;
use std::time::Duration;

use weft_schema::{ApplyResult, Encoding, HostSpec, Overall};
use weft_testkit::control::ControlPlane;
use weft_testkit::host::HostLab;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn spec(generation: u64, sandboxes: serde_json::Value) -> HostSpec {
    serde_json::from_value(serde_json::json!({
        "HostId": "host-a", "Generation": generation, "Sandboxes": sandboxes
    }))
    .unwrap()
}

#[test]
fn two_sandboxes_are_made_as_the_contract_says() {
    weft_testkit::require_root();
    let lab = HostLab::new("hm").unwrap();
    let _agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let s = spec(
        1,
        serde_json::json!([
            {"Slot": 1, "Guest": "veth", "PortForwards": [
                {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80}]},
            {"Slot": 2, "Guest": "tap", "Egress": false},
        ]),
    );
    let (reply, status) = lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let reply = cp
            .request_host_when_ready("host-a", &s, Encoding::Json)
            .await;
        let status = cp.host_status_get("host-a", Encoding::Json).await.unwrap();
        (reply, status)
    });
    assert_eq!(
        reply.result,
        ApplyResult::Applied,
        "{reply:?}\n{}",
        _agent.log()
    );
    assert_eq!(status.overall, Overall::Healthy, "{status:#?}");
    assert_eq!(
        lab.namespaces().unwrap(),
        [lab.sandbox(1), lab.guest(1), lab.sandbox(2)]
    );
    let _ = Duration::from_secs(1);
    if std::env::var_os("WEFT_SHOW").is_some() {
        eprintln!("{status:#?}");
        for args in [
            vec!["ip", "-n", lab.host.name(), "-br", "addr"],
            vec!["ip", "-n", lab.host.name(), "route"],
            vec!["ip", "-n", lab.host.name(), "-d", "link", "show", "weft-v1"],
            vec![
                "ip",
                "netns",
                "exec",
                lab.host.name(),
                "nft",
                "list",
                "ruleset",
            ],
        ] {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            eprintln!(
                "$ {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for ns in [lab.sandbox(1), lab.sandbox(2), lab.guest(1)] {
            for args in [
                vec!["ip", "-n", &ns, "-br", "addr"],
                vec!["ip", "-n", &ns, "route"],
                vec!["ip", "netns", "exec", &ns, "nft", "list", "ruleset"],
                vec!["ip", "netns", "exec", &ns, "sysctl", "net.ipv4.ip_forward"],
            ] {
                let out = std::process::Command::new(args[0])
                    .args(&args[1..])
                    .output()
                    .unwrap();
                eprintln!(
                    "$ {}\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        eprintln!("{}", _agent.log());
    }
}

/// Gives the guest of a `Guest: veth` slot its address and route, as its pod agent would.
fn configure_guest(lab: &HostLab, n: u32) {
    let g = lab.guest(n);
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", "169.254.0.21/30", "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["route", "add", "default", "via", "169.254.0.22"],
    ] {
        weft_testkit::netns::run(
            std::process::Command::new("ip")
                .args(["-n", &g])
                .args(&args),
        )
        .unwrap();
    }
}

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

/// What `conntrack -L` lists in namespace `ns`.
fn conntrack(ns: &str) -> String {
    let out = weft_testkit::netns::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "conntrack",
        "-L",
    ]))
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies `spec` and waits for it to be Applied.
fn apply(lab: &HostLab, s: &HostSpec) -> weft_schema::HostStatus {
    lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let reply = cp
            .request_host_when_ready("host-a", s, Encoding::Json)
            .await;
        assert_eq!(reply.result, ApplyResult::Applied, "{reply:?}");
        cp.host_status_get("host-a", Encoding::Json).await.unwrap()
    })
}

#[test]
fn packets_go_out_through_nat_and_in_through_the_forwards_only() {
    use weft_testkit::packets::{tcp_echo, udp_echo, EchoServer};
    weft_testkit::require_root();
    let lab = HostLab::new("hp").unwrap();
    let _agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let status = apply(
        &lab,
        &spec(
            1,
            serde_json::json!([
                {"Slot": 1, "Guest": "veth", "PortForwards": [
                    {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80},
                    {"Protocol": "udp", "HostPort": 5353, "SandboxPort": 53}]},
                {"Slot": 2, "Guest": "veth", "Egress": false, "PortForwards": [
                    {"Protocol": "tcp", "HostPort": 8081, "SandboxPort": 80}]},
            ]),
        ),
    );
    assert_eq!(status.overall, Overall::Healthy, "{status:#?}");
    configure_guest(&lab, 1);
    configure_guest(&lab, 2);
    let (g1, g2, host, net) = (
        lab.guest(1),
        lab.guest(2),
        lab.host.name().to_owned(),
        lab.internet.name().to_owned(),
    );
    let _servers = [
        EchoServer::start(&net, addr("198.51.100.1:7000"), "internet").unwrap(),
        EchoServer::start(&host, addr("198.51.100.2:9000"), "host").unwrap(),
        EchoServer::start(&g1, addr("0.0.0.0:80"), "guest1").unwrap(),
        EchoServer::start(&g1, addr("0.0.0.0:53"), "guest1").unwrap(),
        EchoServer::start(&g1, addr("0.0.0.0:81"), "guest1").unwrap(),
        EchoServer::start(&g2, addr("0.0.0.0:80"), "guest2").unwrap(),
    ];
    let t = Duration::from_secs(3);
    let no = Duration::from_millis(700);

    // Out: the guest reaches the internet, which sees the host's uplink address.
    assert_eq!(
        tcp_echo(&g1, addr("198.51.100.1:7000"), t).unwrap(),
        "internet from 198.51.100.2: ping"
    );
    assert_eq!(
        udp_echo(&g1, addr("198.51.100.1:7000"), t).unwrap(),
        "internet from 198.51.100.2: ping"
    );
    // The translations: SNAT to VpeerIp in the sandbox, masquerade to the uplink's address
    // on the host.
    let sb = conntrack(&lab.sandbox(1));
    assert!(
        sb.lines()
            .any(|l| l.contains("src=169.254.0.21 dst=198.51.100.1")
                && l.contains("src=198.51.100.1 dst=10.12.0.3")),
        "{sb}"
    );
    let h = conntrack(&host);
    assert!(
        h.lines()
            .any(|l| l.contains("src=10.12.0.3 dst=198.51.100.1")
                && l.contains("src=198.51.100.1 dst=198.51.100.2")),
        "{h}"
    );

    // In: the forwards reach the guest, from the internet and from the host itself, TCP and
    // UDP; the guest sees who connected.
    assert_eq!(
        tcp_echo(&net, addr("198.51.100.2:8080"), t).unwrap(),
        "guest1 from 198.51.100.1: ping"
    );
    assert_eq!(
        udp_echo(&net, addr("198.51.100.2:5353"), t).unwrap(),
        "guest1 from 198.51.100.1: ping"
    );
    assert_eq!(
        tcp_echo(&host, addr("198.51.100.2:8080"), t).unwrap(),
        "guest1 from 198.51.100.2: ping"
    );
    assert_eq!(
        udp_echo(&host, addr("198.51.100.2:5353"), t).unwrap(),
        "guest1 from 198.51.100.2: ping"
    );
    // A port that is not forwarded does not reach the guest, nor does the guest's own port
    // addressed straight to its HostIp.
    assert!(tcp_echo(&net, addr("198.51.100.2:81"), no).is_err());
    lab.internet
        .ip(&["route", "add", "10.11.0.0/16", "via", "198.51.100.2"])
        .unwrap();
    assert!(tcp_echo(&net, addr("10.11.0.1:81"), no).is_err());
    assert!(tcp_echo(&net, addr("10.11.0.1:80"), no).is_err());

    // A sandbox without Egress cannot reach out; its forward still works.
    assert!(tcp_echo(&g2, addr("198.51.100.1:7000"), no).is_err());
    assert!(udp_echo(&g2, addr("198.51.100.1:7000"), no).is_err());
    assert_eq!(
        tcp_echo(&net, addr("198.51.100.2:8081"), t).unwrap(),
        "guest2 from 198.51.100.1: ping"
    );

    // Sandboxes cannot reach each other (straight, or through the other's forward), nor the
    // host's own services.
    assert!(tcp_echo(&g1, addr("10.11.0.2:80"), no).is_err());
    assert!(tcp_echo(&g1, addr("198.51.100.2:8081"), no).is_err());
    assert!(tcp_echo(&g2, addr("198.51.100.2:8080"), no).is_err());
    assert!(tcp_echo(&g1, addr("198.51.100.2:9000"), no).is_err());
    assert!(tcp_echo(&g1, addr("10.12.0.4:9000"), no).is_err());
    // ...which the internet can.
    assert_eq!(
        tcp_echo(&net, addr("198.51.100.2:9000"), t).unwrap(),
        "host from 198.51.100.1: ping"
    );
}

/// The rules of `ip weft-host` as `nft -j` lists them: (handle, chain, comment, packets).
fn host_rules(lab: &HostLab) -> Vec<(u64, String, String, u64)> {
    let table = weft_testkit::observe::nft_table(&lab.host, "ip", "weft-host")
        .unwrap()
        .expect("table ip weft-host");
    table
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| {
            let packets = r["expr"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|e| e.get("counter").map(|c| c["packets"].as_u64().unwrap()))
                .unwrap_or(0);
            (
                r["handle"].as_u64().unwrap(),
                r["chain"].as_str().unwrap().to_owned(),
                r["comment"].as_str().unwrap_or("").to_owned(),
                packets,
            )
        })
        .collect()
}

/// Everything in the host namespace that is not the agent's: foreign tables, routes, links,
/// as text.
fn foreign(lab: &HostLab) -> String {
    let run = |args: &[&str]| {
        let out = weft_testkit::netns::run(
            std::process::Command::new("ip")
                .args(["netns", "exec", lab.host.name()])
                .args(args),
        )
        .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    [
        run(&["nft", "-a", "list", "table", "inet", "foreign"]),
        run(&["ip", "-j", "-d", "link", "show", "fx0"]),
        run(&["ip", "-j", "-d", "link", "show", "up0"]),
        run(&["ip", "-j", "route", "show", "proto", "static"]),
        run(&["ip", "-j", "route", "show", "proto", "boot"]),
        run(&["ip", "-j", "addr", "show", "up0"]),
    ]
    .join("\n")
    .replace("\"tentative\":true,", "")
}

#[test]
fn a_removed_slot_is_gone_whole_and_nothing_else_moves() {
    use weft_testkit::packets::{tcp_connect, tcp_say, EchoServer};
    weft_testkit::require_root();
    let lab = HostLab::new("hr").unwrap();
    // Someone else's objects on the host: a table, a link, a route.
    lab.host
        .run(
            "nft",
            &["add table inet foreign; add chain inet foreign c { type filter hook forward priority 10; policy accept; }; add rule inet foreign c meta mark 0x5 accept"],
        )
        .unwrap();
    lab.host
        .ip(&["link", "add", "fx0", "type", "veth", "peer", "name", "fx1"])
        .unwrap();
    lab.host
        .ip(&[
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "198.51.100.1",
            "proto",
            "static",
        ])
        .unwrap();
    let _agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let both = serde_json::json!([
        {"Slot": 1, "Guest": "veth", "PortForwards": [
            {"Protocol": "tcp", "HostPort": 8081, "SandboxPort": 80}]},
        {"Slot": 2, "Guest": "veth", "Egress": false, "PortForwards": [
            {"Protocol": "tcp", "HostPort": 8082, "SandboxPort": 80}]},
    ]);
    apply(&lab, &spec(1, both.clone()));
    configure_guest(&lab, 1);
    configure_guest(&lab, 2);
    let net = lab.internet.name().to_owned();
    let _servers = [
        EchoServer::start(&lab.guest(2), addr("0.0.0.0:80"), "guest2").unwrap(),
        EchoServer::start(&lab.guest(1), addr("0.0.0.0:80"), "guest1").unwrap(),
    ];
    let t = Duration::from_secs(3);
    // An established connection into slot 2, through its forward.
    let mut kept = tcp_connect(&net, addr("198.51.100.2:8082"), t).unwrap();
    assert_eq!(
        tcp_say(&mut kept, "one").unwrap(),
        "guest2 from 198.51.100.1: one"
    );
    let before = foreign(&lab);
    let rules_before = host_rules(&lab);

    // Slot 1 goes.
    let status = apply(&lab, &spec(2, serde_json::json!([both[1]])));
    assert_eq!(status.overall, Overall::Healthy, "{status:#?}");
    assert_eq!(status.sandboxes.len(), 1);
    // At the reply: its namespaces, links, routes and rules are gone...
    assert_eq!(lab.namespaces().unwrap(), [lab.sandbox(2), lab.guest(2)]);
    let links = lab.ip_json(lab.host.name(), &["link"]).unwrap();
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"weft-v1") && names.contains(&"weft-v2"),
        "{names:?}"
    );
    let routes = lab
        .ip_json(lab.host.name(), &["route", "show", "proto", "87"])
        .unwrap();
    assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
    assert_eq!(routes[0]["dst"], "10.11.0.2");
    // ...and every other rule kept its handle and its counter.
    let rules_after = host_rules(&lab);
    let expected: Vec<_> = rules_before
        .iter()
        .filter(|r| r.2 != "weft slot 1")
        .cloned()
        .collect();
    let handles = |rules: &[(u64, String, String, u64)]| {
        rules.iter().map(|r| (r.0, r.2.clone())).collect::<Vec<_>>()
    };
    assert_eq!(handles(&rules_after), handles(&expected));
    for (a, b) in rules_after.iter().zip(&expected) {
        assert!(
            a.3 >= b.3,
            "counter of rule {} went back: {} < {}",
            a.0,
            a.3,
            b.3
        );
    }
    assert!(
        rules_after.iter().any(|r| r.2 == "weft slot 2" && r.3 > 0),
        "{rules_after:?}"
    );
    // The other slot's connection lives on; foreign objects are byte-identical.
    assert_eq!(
        tcp_say(&mut kept, "two").unwrap(),
        "guest2 from 198.51.100.1: two"
    );
    assert_eq!(foreign(&lab), before);
    assert!(weft_testkit::packets::tcp_echo(
        &net,
        addr("198.51.100.2:8081"),
        Duration::from_millis(500)
    )
    .is_err());
}

#[test]
fn drift_of_a_slot_link_a_host_route_or_a_host_rule_is_repaired_and_named() {
    use weft_testkit::control::HostDashboard;
    weft_testkit::require_root();
    let lab = HostLab::new("hd").unwrap();
    let _agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let s = spec(
        1,
        serde_json::json!([
            {"Slot": 1, "Guest": "tap", "Egress": false, "PortForwards": [
                {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80}]},
            {"Slot": 2, "Guest": "veth"},
        ]),
    );
    let host = lab.host.name().to_owned();
    let ip = |args: &[&str]| {
        weft_testkit::netns::run(
            std::process::Command::new("ip")
                .args(["-n", &host])
                .args(args),
        )
        .unwrap()
    };
    lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let dash = HostDashboard::watch_host(&cp.client, "weft", "host-a")
            .await
            .unwrap();
        let reply = cp
            .request_host_when_ready("host-a", &s, Encoding::Json)
            .await;
        assert_eq!(reply.result, ApplyResult::Applied, "{reply:?}");
        let wait = |repairs: u64, what: &'static str| {
            let dash = dash.clone();
            async move {
                dash.wait_for(
                    Duration::from_secs(10),
                    what,
                    std::time::Instant::now() - Duration::from_secs(60),
                    |st| st.drift_repairs >= repairs && st.overall == Overall::Healthy,
                )
                .await
            }
        };

        // The host end of slot 1's veth pair.
        ip(&["link", "del", "weft-v1"]);
        let st = wait(1, "weft-v1 repaired").await;
        let d = st.last_drift.clone().unwrap();
        assert_eq!(d.subsystem, weft_schema::Subsystem::Network, "{d:?}");
        assert!(
            d.change.starts_with("slot 1: link weft-v1 missing"),
            "{d:?}"
        );
        // The kernel names nobody for a link deletion (nor for what goes with it).
        assert_eq!(d.by, "unknown", "{d:?}");
        let link = lab.ip_json(&host, &["link", "show", "weft-v1"]).unwrap();
        assert_eq!(link[0]["operstate"], "UP", "{link}");

        // The host route to slot 2.
        ip(&["route", "del", "10.11.0.2/32"]);
        let st = wait(2, "route repaired").await;
        let d = st.last_drift.clone().unwrap();
        assert!(
            d.change.contains("slot 2: route 10.11.0.2/32 missing"),
            "{d:?}"
        );
        // The writer's name is read from /proc while it lives; `ip` may be gone by then.
        assert!(
            d.by.starts_with("ip (pid ") || d.by.starts_with("pid "),
            "{d:?}"
        );
        let routes = lab.ip_json(&host, &["route", "show", "10.11.0.2"]).unwrap();
        assert_eq!(routes[0]["gateway"], "10.12.0.5", "{routes}");

        // A rule of ip weft-host: slot 1's drop of new connections.
        let rules = host_rules(&lab);
        let handle = rules
            .iter()
            .find(|r| r.1 == "forward" && r.2 == "weft slot 1")
            .unwrap()
            .0;
        weft_testkit::netns::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &host,
            "nft",
            "delete",
            "rule",
            "ip",
            "weft-host",
            "forward",
            "handle",
            &handle.to_string(),
        ]))
        .unwrap();
        let st = wait(3, "rule repaired").await;
        let d = st.last_drift.clone().unwrap();
        assert_eq!(d.subsystem, weft_schema::Subsystem::Firewall, "{d:?}");
        assert!(d.by.starts_with("nft (pid "), "{d:?}");
        assert!(d.change.contains("rule"), "{d:?}");
        let rules = host_rules(&lab);
        assert!(
            rules
                .iter()
                .any(|r| r.1 == "forward" && r.2 == "weft slot 1"),
            "{rules:?}"
        );
        assert_eq!(st.drift_repairs, 3, "{st:#?}");
    });
}

/// A spec of `n` veth sandboxes, slots 1..=n, each with one port forward.
fn many(generation: u64, n: u32) -> HostSpec {
    let sandboxes: Vec<serde_json::Value> = (1..=n)
        .map(|i| {
            serde_json::json!({"Slot": i, "Guest": if i % 2 == 0 { "tap" } else { "veth" },
                "PortForwards": [{"Protocol": "tcp", "HostPort": 10_000 + i, "SandboxPort": 80}]})
        })
        .collect();
    spec(generation, serde_json::Value::Array(sandboxes))
}

#[test]
fn kill_9_in_a_100_slot_apply_then_a_restart_converges_without_duplicates() {
    weft_testkit::require_root();
    let lab = HostLab::new("hk").unwrap();
    let mut agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let s = many(1, 100);
    lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        // Published once the agent listens (a status says so), then left to apply.
        weft_testkit::wait_until_async(Duration::from_secs(20), "agent up", || {
            let cp = cp.clone();
            async move {
                cp.host_status_get("host-a", Encoding::Json)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        cp.client
            .publish(
                "weft.host.host-a.spec".to_owned(),
                Encoding::Json.encode(&s).into(),
            )
            .await
            .unwrap();
        cp.client.flush().await.unwrap();
    });
    // Killed half-way: some namespaces made, not all.
    let made = weft_testkit::wait_until(Duration::from_secs(30), "half the slots", || {
        let n = lab.namespaces().unwrap().len();
        if (20..150).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} namespaces"))
        }
    });
    agent.kill9();
    assert!(made < 150, "{made}");
    let partial = lab.namespaces().unwrap().len();
    eprintln!("killed with {partial} of 150 namespaces made");

    // Restarted with the same state directory: the kept spec is applied again.
    let agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let status = lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        weft_testkit::wait_until_async(Duration::from_secs(60), "converged", || {
            let cp = cp.clone();
            async move {
                match cp.host_status_get("host-a", Encoding::Json).await {
                    Ok(st) if st.overall == Overall::Healthy && st.sandboxes.len() == 100 => Ok(st),
                    Ok(st) => Err(format!(
                        "{:?} {} {}",
                        st.overall,
                        st.sandboxes.len(),
                        st.last_error
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    });
    assert_eq!(status.observed_generation, 1);
    // Exactly one of everything.
    let namespaces = lab.namespaces().unwrap();
    assert_eq!(
        namespaces.len(),
        150,
        "{partial} before the restart: {namespaces:?}"
    );
    let host = lab.host.name();
    // (`ip -j link show group` prints empty objects for the links of other groups.)
    let links = lab
        .ip_json(host, &["link", "show", "group", "1464157780"])
        .unwrap();
    let mut names: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    let mut want: Vec<String> = (1..=100).map(|i| format!("weft-v{i}")).collect();
    want.sort();
    assert_eq!(names, want);
    let routes = lab
        .ip_json(host, &["route", "show", "proto", "87"])
        .unwrap();
    assert_eq!(routes.as_array().unwrap().len(), 100);
    let rules = host_rules(&lab);
    for i in 1..=100 {
        let n = rules
            .iter()
            .filter(|r| r.2 == format!("weft slot {i}"))
            .count();
        assert_eq!(n, 2, "slot {i}: {n} rules");
    }
    assert_eq!(rules.iter().filter(|r| r.2 == "weft base").count(), 5);
    for i in [1u32, 2, 99, 100] {
        let addrs = lab
            .ip_json(&lab.sandbox(i), &["-4", "addr", "show", "eth0"])
            .unwrap();
        assert_eq!(
            addrs[0]["addr_info"].as_array().unwrap().len(),
            1,
            "{addrs}"
        );
    }
    assert!(
        agent.log().contains("re-asserting the kept spec"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_tap_guest_has_its_address_and_mac_and_its_packets_go_both_ways() {
    use weft_testkit::packets::{udp_echo, EchoServer};
    use weft_testkit::tapguest::{parse_mac, TapGuest};
    weft_testkit::require_root();
    let lab = HostLab::new("ht").unwrap();
    let _agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let status = apply(
        &lab,
        &spec(
            1,
            serde_json::json!([{"Slot": 3, "Guest": "tap", "PortForwards": [
                {"Protocol": "udp", "HostPort": 5353, "SandboxPort": 53}]}]),
        ),
    );
    let sb = &status.sandboxes[0];
    assert_eq!(sb.guest_mac.as_deref(), Some("02:fc:00:00:00:05"));
    assert_eq!(
        (sb.guest_ip.as_str(), sb.host_ip.as_str()),
        ("169.254.0.21", "10.11.0.3")
    );
    // The tap: in the sandbox's namespace, persistent, nobody attached, with the contract's
    // address.
    let ns = lab.sandbox(3);
    let tap = lab.ip_json(&ns, &["-d", "addr", "show", "tap0"]).unwrap();
    assert_eq!(tap[0]["linkinfo"]["info_kind"], "tun", "{tap}");
    assert_eq!(tap[0]["linkinfo"]["info_data"]["type"], "tap", "{tap}");
    assert_eq!(tap[0]["linkinfo"]["info_data"]["persist"], true, "{tap}");
    assert_eq!(tap[0]["addr_info"][0]["local"], "169.254.0.22", "{tap}");
    assert_eq!(tap[0]["addr_info"][0]["prefixlen"], 30, "{tap}");
    let gateway = parse_mac(tap[0]["address"].as_str().unwrap()).unwrap();

    // A process that opens it as the guest: its packets go out and come back...
    let guest = TapGuest::open(
        &ns,
        "tap0",
        [0x02, 0xfc, 0, 0, 0, 5],
        "169.254.0.21".parse().unwrap(),
    )
    .unwrap();
    let _internet =
        EchoServer::start(lab.internet.name(), addr("198.51.100.1:7000"), "internet").unwrap();
    guest
        .send_udp(
            40_000,
            "198.51.100.1:7000".parse().unwrap(),
            gateway,
            b"ping",
        )
        .unwrap();
    let back = guest.recv_udp(40_000, Duration::from_secs(3)).unwrap();
    assert_eq!(back.from, "198.51.100.1:7000".parse().unwrap());
    assert_eq!(back.payload, b"internet from 198.51.100.2: ping");
    // ...and the internet reaches it through its forward.
    assert_eq!(
        udp_echo(
            lab.internet.name(),
            addr("198.51.100.2:5353"),
            Duration::from_secs(3)
        )
        .unwrap(),
        "tapguest: ping"
    );
    let got = guest.recv_udp(53, Duration::from_secs(1)).unwrap();
    assert_eq!(
        *got.from.ip(),
        "198.51.100.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
}

#[test]
fn bad_input_is_rejected_or_failed_naming_the_field_and_nothing_is_half_built() {
    weft_testkit::require_root();
    let lab = HostLab::new("hb").unwrap();
    let _agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let host = lab.host.name().to_owned();
    let snapshot = || {
        format!(
            "{:?}\n{}",
            lab.namespaces().unwrap(),
            weft_testkit::observe::kernel_snapshot(&lab.host).unwrap()
        )
    };
    let before = snapshot();
    let cases: Vec<(serde_json::Value, ApplyResult, &str)> = vec![
        (
            serde_json::json!({"HostId": "host-a", "Generation": 1, "Sandboxes": [
                {"Slot": 4, "Guest": "veth"}, {"Slot": 4, "Guest": "tap"}]}),
            ApplyResult::Rejected,
            "generation 1 rejected: Sandboxes[1].Slot: 4 is already the slot of Sandboxes[0]",
        ),
        (
            serde_json::json!({"HostId": "host-a", "Generation": 2, "Sandboxes": [
                {"Slot": 1, "Guest": "veth", "PortForwards": [
                    {"Protocol": "tcp", "HostPort": 80, "SandboxPort": 80}]},
                {"Slot": 2, "Guest": "veth", "PortForwards": [
                    {"Protocol": "tcp", "HostPort": 80, "SandboxPort": 8080}]}]}),
            ApplyResult::Rejected,
            "generation 2 rejected: Sandboxes[1].PortForwards[0].HostPort: tcp 80 is already \
             forwarded by Sandboxes[0].PortForwards[0]",
        ),
        (
            serde_json::json!({"HostId": "host-a", "Generation": 3, "Sandboxes": [
                {"Slot": 0, "Guest": "veth"}]}),
            ApplyResult::Rejected,
            "generation 3 rejected: Sandboxes[0].Slot: 0 is not a slot (1-16383)",
        ),
        (
            serde_json::json!({"HostId": "host-a", "Generation": 4, "Sandboxes": [
                {"Slot": 16384, "Guest": "veth"}]}),
            ApplyResult::Rejected,
            "generation 4 rejected: Sandboxes[0].Slot: 16384 is not a slot (1-16383)",
        ),
        (
            serde_json::json!({"HostId": "host-a", "Generation": 5, "Uplink": "eth9",
                "Sandboxes": [{"Slot": 1, "Guest": "veth"}]}),
            ApplyResult::Failed,
            "Network: Uplink: interface eth9 does not exist",
        ),
    ];
    let replies = lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let mut replies = Vec::new();
        for (body, result, error) in &cases {
            let s: HostSpec = serde_json::from_value(body.clone()).unwrap();
            let reply = cp
                .request_host_when_ready("host-a", &s, Encoding::Json)
                .await;
            // A rejection reaches the status a moment after its answer.
            let status = weft_testkit::wait_until_async(Duration::from_secs(5), "status", || {
                let cp = cp.clone();
                async move {
                    let st = cp
                        .host_status_get("host-a", Encoding::Json)
                        .await
                        .map_err(|e| e.to_string())?;
                    if *result == ApplyResult::Failed || st.last_error == *error {
                        Ok(st)
                    } else {
                        Err(st.last_error)
                    }
                }
            })
            .await;
            replies.push((reply, status));
        }
        replies
    });
    for ((_, result, error), (reply, status)) in cases.iter().zip(&replies) {
        assert_eq!(
            (reply.result, reply.error.as_str()),
            (*result, *error),
            "{reply:?}"
        );
        assert_eq!(status.overall, Overall::Degraded);
        if *result == ApplyResult::Rejected {
            assert_eq!(status.last_error, *error);
            assert_eq!(status.observed_generation, 0);
        } else {
            // Failed is applied (in part: here nothing could be), and says so after the
            // rejection it follows (a rejection is reported until a spec applies cleanly).
            assert_eq!(status.observed_generation, 5);
            assert!(
                status.sandboxes[0].last_error.contains("missing"),
                "{status:#?}"
            );
        }
    }
    // Not one namespace, link, address, route or table of any of them.
    assert_eq!(snapshot(), before);

    // No default route at all: the same, naming Uplink.
    lab.host.ip(&["route", "del", "default"]).unwrap();
    let before = snapshot();
    let (reply, status) = lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let s = spec(6, serde_json::json!([{"Slot": 1, "Guest": "tap"}]));
        let reply = cp
            .request_host_when_ready("host-a", &s, Encoding::Json)
            .await;
        (
            reply,
            cp.host_status_get("host-a", Encoding::Json).await.unwrap(),
        )
    });
    assert_eq!(reply.result, ApplyResult::Failed, "{reply:?}");
    assert_eq!(reply.error, "Network: Uplink: no IPv4 default route");
    assert_eq!(status.observed_generation, 6);
    assert_eq!(snapshot(), before);
    let _ = host;
}

#[test]
fn with_trust_keys_only_signed_host_specs_are_applied_and_the_signer_named() {
    use weft_schema::sign::{SigningKey, HEADER_KEY, HEADER_SIGNATURE};
    weft_testkit::require_root();
    let lab = HostLab::new("hs").unwrap();
    let key = SigningKey::generate();
    let trust = lab.dir.join("trust-keys");
    std::fs::write(&trust, format!("{}\n", key.verifying_key())).unwrap();
    let _agent = lab
        .start_agent(bin(), "host-a", &["--trust-keys", trust.to_str().unwrap()])
        .unwrap();
    let send = |generation: u64, signed: bool| {
        let body = Encoding::Json.encode(&spec(
            generation,
            serde_json::json!([{"Slot": 1, "Guest": "tap"}]),
        ));
        let mut h = weft_testkit::control::headers(Encoding::Json);
        if signed {
            let s = key.sign(Some("application/json"), Some("1"), &body);
            h.insert(HEADER_KEY, s.key.as_str());
            h.insert(HEADER_SIGNATURE, s.signature.as_str());
        }
        lab.block_on(|| async {
            let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
            weft_testkit::wait_until_async(Duration::from_secs(20), "answer", || {
                let (cp, h, body) = (cp.clone(), h.clone(), body.clone());
                async move {
                    let msg = cp
                        .client
                        .request_with_headers("weft.host.host-a.spec".to_owned(), h, body.into())
                        .await
                        .map_err(|e| e.to_string())?;
                    let reply: weft_schema::ApplyReply =
                        weft_testkit::control::decode(&msg).map_err(|e| e.to_string())?;
                    let status = cp.host_status_get("host-a", Encoding::Json).await.unwrap();
                    Ok::<_, String>((reply, status))
                }
            })
            .await
        })
    };
    let (reply, _) = send(1, false);
    assert_eq!(reply.result, ApplyResult::Rejected);
    assert_eq!(
        reply.error,
        "spec rejected: unsigned spec (no Weft-Key and Weft-Signature headers)"
    );
    assert!(lab.namespaces().unwrap().is_empty());
    let (reply, status) = send(2, true);
    assert_eq!(reply.result, ApplyResult::Applied, "{reply:?}");
    assert_eq!(reply.pod_id, "host-a");
    assert_eq!(status.signed_by, Some(key.verifying_key().to_string()));
    assert_eq!(lab.namespaces().unwrap(), [lab.sandbox(1)]);
}
