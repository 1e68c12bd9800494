//! End to end: the real `weft-agent` binary in pod namespaces, a real `nats-server`, a
//! control plane publishing specs, a dashboard reading statuses, and the kernel checked with
//! independent observers (`nft`, `ip`, `wg`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec};
use weft_testkit::control::{headers, Dashboard};
use weft_testkit::observe::{ip_json, ipv4_addrs, kernel_snapshot, nft_table, wg_dump};
use weft_testkit::stack::{Pod, Stack};
use weft_testkit::{require_root, unique_ifname, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

/// A spec touching every subsystem of `pod`.
fn full_spec(pod: &Pod, generation: u64, wg_if: &str) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": pod.id,
        "Generation": generation,
        "Network": {
            "Interface": "eth0",
            "Address": pod.address(),
            "Gateway": pod.gateway(),
            "Mtu": 1400,
            "Nameservers": ["192.0.2.53"],
            "SearchDomains": ["pods.example"]
        },
        "Firewall": {
            "Ingress": [
                { "Protocol": "tcp", "Ports": ["22", "8000-8080"], "Sources": ["10.0.0.0/8"],
                  "Comment": format!("generation {generation}") }
            ],
            "Egress": [
                { "Destinations": ["203.0.113.0/24"], "Comment": "no test-net-3" }
            ]
        },
        "WireGuard": {
            "Interface": wg_if,
            "Address": format!("10.9.{}.1/24", pod.index),
            "ListenPort": 51820,
            "Peers": [
                { "PublicKey": "6aA5WnBB2fA1ZoY4R8M/rZ1xh8+0D+/Q/+cGhbNnl2U=",
                  "Endpoint": "10.0.200.5:51820", "AllowedIps": ["10.9.200.0/24"],
                  "PersistentKeepaliveSeconds": 25 }
            ]
        }
    }))
    .unwrap()
}

/// A firewall-only spec whose ingress port encodes the generation, to tell specs apart.
fn small_spec(pod: &str, generation: u64) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": pod, "Generation": generation,
        "Firewall": { "Ingress": [ { "Protocol": "tcp",
            "Ports": [ (1000 + generation % 60000).to_string() ],
            "Comment": format!("generation {generation}") } ] }
    }))
    .unwrap()
}

#[test]
fn a_spec_request_is_applied_the_kernel_matches_and_the_status_says_so() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent(
            "web-1",
            &["--status-interval", "1s", "--wireguard", "userspace"],
        )
        .unwrap();
    let wg = unique_ifname("wg", 1);
    let spec = full_spec(&stack.pods[0], 7, &wg);

    let (reply, status) = stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let since = Instant::now();
        let reply = cp.request_when_ready("web-1", &spec, Encoding::Json).await;
        let status = dash
            .wait_for(
                Duration::from_secs(5),
                "a healthy status at generation 7",
                since,
                |s| s.observed_generation == 7 && s.overall == Overall::Healthy,
            )
            .await;
        assert!(dash.errors().is_empty(), "{:?}", dash.errors());
        (reply, status)
    });
    assert_eq!(reply.result, ApplyResult::Applied, "{reply:?}");
    assert_eq!((reply.pod_id.as_str(), reply.generation), ("web-1", 7));
    assert!(reply.error.is_empty());
    assert!(status.published_at_unix > 1_700_000_000);

    let pod = &stack.pods[0];
    let ns = &pod.ns.ns;
    // Firewall: the table, its policy, and the spec's rule.
    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("table inet weft-fw");
    let text = serde_json::to_string(&table).unwrap();
    assert!(text.contains(r#""policy":"drop""#), "{text}");
    assert!(text.contains("generation 7"), "{text}");
    // Network: the only IPv4 address, MTU, default route.
    assert_eq!(ipv4_addrs(ns, "eth0").unwrap(), vec![pod.address()]);
    let link = ip_json(ns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(link[0]["mtu"], 1400);
    let route = ip_json(ns, &["route", "show", "default"]).unwrap();
    assert_eq!(route[0]["gateway"], pod.gateway());
    let resolv = std::fs::read_to_string(&pod.resolv_conf).unwrap();
    assert!(resolv.contains("nameserver 192.0.2.53"), "{resolv}");
    assert!(resolv.contains("search pods.example"), "{resolv}");
    // WireGuard: the peer as `wg` sees it.
    let dump = wg_dump(ns, &wg).unwrap();
    assert_eq!(dump.len(), 2, "{dump:?}");
    assert_eq!(dump[1][0], "6aA5WnBB2fA1ZoY4R8M/rZ1xh8+0D+/Q/+cGhbNnl2U=");
    assert_eq!(dump[1][3], "10.9.200.0/24");
    // The status says what the kernel holds.
    assert_eq!(
        status.network.as_ref().unwrap().addresses,
        vec![pod.address()]
    );
    assert!(status.firewall.as_ref().unwrap().table_present);
    assert_eq!(status.wireguard.as_ref().unwrap().peers.len(), 1);

    // SIGTERM: a clean exit within a second, kernel state left in place.
    let (exit, took) = stack.stop_agent("web-1").unwrap();
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let pod = &stack.pods[0];
    assert!(nft_table(&pod.ns.ns, "inet", "weft-fw").unwrap().is_some());
    assert_eq!(ipv4_addrs(&pod.ns.ns, "eth0").unwrap(), vec![pod.address()]);
}

#[test]
fn bad_input_is_rejected_named_and_changes_nothing() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent("web-1", &["--status-interval", "1s"])
        .unwrap();
    let good = small_spec("web-1", 5);

    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let r = cp.request_when_ready("web-1", &good, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let before = kernel_snapshot(&stack.pods[0].ns.ns).unwrap();

        let json = || Some(headers(Encoding::Json));
        let bincode = || Some(headers(Encoding::Bincode));
        let with = |k: &str, v: &str| {
            let mut h = headers(Encoding::Json);
            h.insert(k, v);
            Some(h)
        };
        let cases: Vec<(&str, Option<async_nats::HeaderMap>, Vec<u8>, &str)> = vec![
            ("bad JSON", json(), br#"{"PodId":"#.to_vec(), "invalid JSON"),
            ("no headers, bad JSON", None, b"not json".to_vec(), "invalid JSON"),
            (
                "unknown field",
                json(),
                br#"{"PodId":"web-1","Generation":6,"Firewall":{"Ingress":[{"Source":["0.0.0.0/0"]}]}}"#.to_vec(),
                "Firewall.Ingress[0].Source: unknown field `Source`",
            ),
            (
                "wrong pod",
                json(),
                br#"{"PodId":"web-2","Generation":6}"#.to_vec(),
                "PodId: web-2 is not this agent's pod (web-1)",
            ),
            (
                "bad CIDR",
                json(),
                br#"{"PodId":"web-1","Generation":6,"Firewall":{"Ingress":[{"Sources":["10.0.0.0/33"]}]}}"#.to_vec(),
                "Firewall.Ingress[0].Sources[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
            ),
            (
                "bad port",
                json(),
                br#"{"PodId":"web-1","Generation":6,"Firewall":{"Ingress":[{"Protocol":"tcp","Ports":["22","70000"]}]}}"#.to_vec(),
                "Firewall.Ingress[0].Ports[1]: 70000 is not a port (1-65535)",
            ),
            (
                "unknown schema version",
                with("Weft-Schema", "2"),
                serde_json::to_vec(&small_spec("web-1", 6)).unwrap(),
                "unsupported Weft-Schema \"2\"",
            ),
            (
                "unknown content type",
                with("Content-Type", "application/yaml"),
                serde_json::to_vec(&small_spec("web-1", 6)).unwrap(),
                "unsupported Content-Type \"application/yaml\"",
            ),
            ("bincode garbage", bincode(), vec![0xff; 64], "invalid bincode"),
        ];
        for (what, h, body, expect) in cases {
            let since = Instant::now();
            let r = cp
                .request_raw("web-1", h, body.into())
                .await
                .unwrap_or_else(|e| panic!("{what}: no reply: {e}"));
            assert_eq!(r.result, ApplyResult::Rejected, "{what}: {r:?}");
            assert!(r.error.contains(expect), "{what}: {:?} lacks {expect:?}", r.error);
            assert_eq!(r.pod_id, "web-1", "{what}");
            let s = dash
                .wait_for(Duration::from_secs(5), what, since, |s| s.last_error == r.error)
                .await;
            assert_eq!(s.overall, Overall::Degraded, "{what}");
            assert_eq!(s.observed_generation, 5, "{what}");
            assert_eq!(kernel_snapshot(&stack.pods[0].ns.ns).unwrap(), before, "{what} changed the kernel");
        }
        // A later clean apply clears the error.
        let since = Instant::now();
        let r = cp.request("web-1", &small_spec("web-1", 6), Encoding::Bincode).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        dash.wait_for(Duration::from_secs(5), "healthy again", since, |s| {
            s.overall == Overall::Healthy && s.last_error.is_empty() && s.observed_generation == 6
        })
        .await;
    });
    assert!(stack.pods[0].agent.as_mut().unwrap().running());
}

#[test]
fn stale_specs_change_nothing_and_bursts_coalesce() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent(
            "web-1",
            &["--status-interval", "1s", "--log-format", "json"],
        )
        .unwrap();
    const BURST: u64 = 1000;

    let converged = stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let r = cp
            .request_when_ready("web-1", &small_spec("web-1", 10), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied);
        let before = kernel_snapshot(&stack.pods[0].ns.ns).unwrap();
        let r = cp
            .request("web-1", &small_spec("web-1", 9), Encoding::Json)
            .await
            .unwrap();
        assert_eq!(r.result, ApplyResult::Stale, "{r:?}");
        assert_eq!(
            r.error,
            "generation 9 is older than the applied generation 10"
        );
        assert_eq!(kernel_snapshot(&stack.pods[0].ns.ns).unwrap(), before);
        // The same generation with other content is refused.
        let mut other = small_spec("web-1", 10);
        other.firewall.as_mut().unwrap().ingress[0].comment = Some("other".into());
        let r = cp.request("web-1", &other, Encoding::Json).await.unwrap();
        assert_eq!(r.result, ApplyResult::Rejected);
        assert_eq!(
            r.error,
            "generation 10 was already applied with other content"
        );
        // And the same content is re-asserted.
        let r = cp
            .request("web-1", &small_spec("web-1", 10), Encoding::Json)
            .await
            .unwrap();
        assert_eq!(r.result, ApplyResult::Applied);

        let since = Instant::now();
        for g in 11..11 + BURST {
            let spec = small_spec("web-1", g);
            cp.client
                .publish_with_headers(
                    "weft.pod.web-1.spec",
                    headers(Encoding::Json),
                    Encoding::Json.encode(&spec).into(),
                )
                .await
                .unwrap();
        }
        cp.client.flush().await.unwrap();
        let last = 10 + BURST;
        dash.wait_for(
            Duration::from_secs(30),
            "the burst's last generation",
            since,
            |s| s.observed_generation == last && s.overall == Overall::Healthy,
        )
        .await;
        since.elapsed()
    });
    let last = 10 + BURST;
    let table = nft_table(&stack.pods[0].ns.ns, "inet", "weft-fw")
        .unwrap()
        .unwrap();
    assert!(
        serde_json::to_string(&table)
            .unwrap()
            .contains(&format!("generation {last}")),
        "the kernel does not hold the last generation"
    );
    let log = stack.pods[0].agent.as_ref().unwrap().log();
    let applies = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"] == "applied" && v["fields"]["generation"].as_u64() > Some(10)
        })
        .count();
    println!("burst of {BURST} specs: {applies} applies, converged in {converged:?}");
    assert!(applies >= 1);
    assert!(
        applies < (BURST / 2) as usize,
        "{applies} applies for {BURST} specs"
    );
}

#[test]
fn statuses_come_every_interval_and_on_request_in_either_encoding() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("tick").unwrap();
    stack.add_pod("slow").unwrap();
    stack
        .start_agent(
            "tick",
            &["--status-interval", "1s", "--status-encoding", "bincode"],
        )
        .unwrap();
    stack
        .start_agent("slow", &["--status-interval", "1h"])
        .unwrap();

    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        // Raw subscription: the headers themselves are part of the contract.
        let mut raw = cp.client.subscribe("weft.pod.tick.status").await.unwrap();
        cp.client.flush().await.unwrap();
        let r = cp
            .request_when_ready("tick", &small_spec("tick", 1), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied);
        let mut stamps = Vec::new();
        while stamps.len() < 4 {
            use futures::StreamExt;
            let msg = tokio::time::timeout(Duration::from_secs(3), raw.next())
                .await
                .expect("a status within 3 s")
                .unwrap();
            let h = msg.headers.as_ref().unwrap();
            assert_eq!(
                h.get("Content-Type").unwrap().as_str(),
                "application/x-bincode"
            );
            assert_eq!(h.get("Weft-Schema").unwrap().as_str(), "1");
            let s: weft_schema::PodStatus = Encoding::Bincode.decode(&msg.payload).unwrap();
            if s.observed_generation == 1 {
                stamps.push(s.published_at_unix_ms);
            }
        }
        for w in stamps.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                (700..=1600).contains(&gap),
                "statuses {gap} ms apart: {stamps:?}"
            );
        }

        // status.get answers at once, even with an hour between ticks, stamped now.
        let r = cp
            .request_when_ready("slow", &small_spec("slow", 3), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied);
        let asked = Instant::now();
        let s = cp.status_get("slow", Encoding::Bincode).await.unwrap();
        let took = asked.elapsed();
        let now_ms = weft_emitter::bus::Clock::now_unix_ms(&weft_emitter::bus::SystemClock);
        println!("status.get answered in {took:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(s.observed_generation, 3);
        assert!(now_ms.abs_diff(s.published_at_unix_ms) < 2_000);
    });
}

#[test]
fn an_agent_started_before_nats_applies_its_kept_spec_then_connects() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent("web-1", &["--status-interval", "1s"])
        .unwrap();
    let spec = serde_json::from_value::<PodSpec>(json!({
        "PodId": "web-1", "Generation": 4,
        "Network": { "Interface": "eth0", "Address": stack.pods[0].address(),
                     "Gateway": stack.pods[0].gateway() }
    }))
    .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp.request_when_ready("web-1", &spec, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    stack.stop_agent("web-1").unwrap();

    // Someone removes the address while the agent is down, and NATS goes away.
    let addr = stack.pods[0].address();
    stack.pods[0]
        .ns
        .ns
        .ip(&["addr", "del", &addr, "dev", "eth0"])
        .unwrap();
    stack.kill_nats();
    stack
        .start_agent("web-1", &["--status-interval", "1s"])
        .unwrap();
    // The kept spec is re-asserted without NATS.
    let ns = &stack.pods[0].ns.ns;
    wait_until(
        Duration::from_secs(10),
        "the address restored without NATS",
        || {
            let a = ipv4_addrs(ns, "eth0").map_err(|e| e.to_string())?;
            if a == vec![addr.clone()] {
                Ok(())
            } else {
                Err(format!("{a:?}"))
            }
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(stack.pods[0].agent.as_mut().unwrap().running());

    // The server comes up: the agent connects and reports.
    stack.restart_nats().unwrap();
    let back = Instant::now();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let s = dash
            .wait_for(
                Duration::from_secs(15),
                "a status after the server came up",
                back,
                |s| s.observed_generation == 4,
            )
            .await;
        println!("status {:?} after the server came back", back.elapsed());
        assert_eq!(s.overall, Overall::Healthy, "{s:?}");
    });
}
