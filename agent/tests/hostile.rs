//! The attacks of issue 11, replayed against the real agent as whoever may publish on the
//! bus would (CONTRACT.md v1.1 "Hostile input on the bus"): each now gets the contract's
//! answer, the status stream never goes silent, and the kernel is unchanged.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use weft_schema::text::LAST_ERROR_BYTES;
use weft_schema::{ApplyResult, Encoding, NetworkSpec, Overall, PodSpec, PodStatus};
use weft_testkit::control::{decode, headers, ControlPlane, Dashboard};
use weft_testkit::observe::{kernel_snapshot, nft_table};
use weft_testkit::stack::{Options, Stack};
use weft_testkit::{require_root, unique_ifname, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

/// A firewall-only spec whose ingress port is 1000 + generation.
fn spec(generation: u64) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": "web-1", "Generation": generation,
        "Firewall": { "Ingress": [ { "Protocol": "tcp",
            "Ports": [ (1000 + generation % 60000).to_string() ] } ] }
    }))
    .unwrap()
}

fn stack_with_agent(options: Options, extra: &[&str]) -> Stack {
    require_root();
    let mut stack = Stack::with(agent_bin(), options).unwrap();
    stack.add_pod("web-1").unwrap();
    let mut args = vec!["--status-interval", "1s"];
    args.extend_from_slice(extra);
    stack.start_agent("web-1", &args).unwrap();
    stack
}

/// The longest gap between two statuses that arrived after `since`.
fn longest_gap(dash: &Dashboard, since: Instant) -> Duration {
    let times: Vec<Instant> = dash
        .seen()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t >= since)
        .collect();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX)
}

#[test]
fn one_huge_generation_locks_nobody_out() {
    let mut stack = stack_with_agent(Options::default(), &[]);
    let before = kernel_snapshot(&stack.pods[0].ns.ns).unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp
            .request_when_ready("web-1", &spec(u64::MAX), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Rejected, "{r:?}");
        assert_eq!(
            r.error,
            "generation 18446744073709551615 rejected: Generation: 18446744073709551615 is \
             above 2^53 - 1 (9007199254740991), the largest integer every JSON decoder keeps \
             exact"
        );
        let r = cp.request("web-1", &spec(2), Encoding::Json).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    assert_ne!(kernel_snapshot(&stack.pods[0].ns.ns).unwrap(), before);
    // Nor across a restart.
    stack.stop_agent("web-1").unwrap();
    stack
        .start_agent("web-1", &["--status-interval", "1s"])
        .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp
            .request_when_ready("web-1", &spec(3), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
}

#[test]
fn no_reply_goes_under_the_subject_prefix() {
    let mut stack = stack_with_agent(Options::default(), &[]);
    // Pod web-2 only listens here: its agent is not started.
    stack.add_pod("web-2").unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dashboard = stack.client("dashboard").await.unwrap().client;
        let web2 = stack.client("web-2").await.unwrap().client;
        let mut web2_specs = web2.subscribe("weft.pod.web-2.spec").await.unwrap();
        web2.flush().await.unwrap();
        let r = cp
            .request_when_ready("web-1", &spec(2), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied);

        // An empty status.get whose reply subject is another pod's spec subject.
        dashboard
            .publish_with_reply(
                "weft.pod.web-1.status.get",
                "weft.pod.web-2.spec",
                Bytes::new(),
            )
            .await
            .unwrap();
        // A spec sent as a "request" whose reply subject is another pod's spec subject: it
        // is applied, and answered nowhere.
        let (mut h, body) = (headers(Encoding::Json), Encoding::Json.encode(&spec(3)));
        h.insert("Weft-Note", "reply into another pod");
        cp.client
            .publish_with_reply_and_headers(
                "weft.pod.web-1.spec",
                "weft.pod.web-2.spec",
                h,
                body.into(),
            )
            .await
            .unwrap();
        cp.client.flush().await.unwrap();
        dashboard.flush().await.unwrap();
        // Both were handled: a later status.get is answered, and generation 3 applied.
        let asker = ControlPlane {
            client: dashboard.clone(),
            prefix: "weft".into(),
            link: None,
        };
        weft_testkit::wait_until_async(Duration::from_secs(5), "generation 3", || async {
            match asker.status_get("web-1", Encoding::Json).await {
                Ok(s) if s.observed_generation == 3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let leaked = tokio::time::timeout(Duration::from_millis(500), web2_specs.next()).await;
        assert!(
            !matches!(leaked, Ok(Some(_))),
            "the agent published onto another pod's spec subject: {leaked:?}"
        );
    });
    let log = stack.pods[0].agent.as_ref().unwrap().log();
    assert!(log.contains("status.get not answered"), "{log}");
    assert!(log.contains("spec handled as a plain publish"), "{log}");
}

#[test]
fn a_megabyte_of_control_bytes_gets_a_short_answer_and_the_status_keeps_coming() {
    let stack = stack_with_agent(Options::default(), &[]);
    let ns = &stack.pods[0].ns.ns;
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let r = cp
            .request_when_ready("web-1", &spec(2), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied);
        let before = kernel_snapshot(ns).unwrap();
        let since = Instant::now();

        // bincode: an interface name of a megabyte of control bytes.
        let mut hostile = spec(3);
        hostile.network = Some(NetworkSpec {
            interface: "\u{1b}".repeat(1 << 20),
            address: "10.0.1.5/24".into(),
            gateway: None,
            address6: None,
            gateway6: None,
            mtu: None,
            nameservers: vec![],
            search_domains: vec![],
        });
        let body = Encoding::Bincode.encode(&hostile);
        assert!(body.len() > 1 << 20);
        let r = cp
            .request_raw("web-1", Some(headers(Encoding::Bincode)), body.into())
            .await
            .unwrap();
        assert_eq!(r.result, ApplyResult::Rejected);
        assert!(r.error.len() <= LAST_ERROR_BYTES, "{}", r.error.len());
        assert!(!r.error.contains(char::is_control));
        assert!(
            r.error
                .starts_with(r#"generation 3 rejected: Network.Interface: "\u{1b}\u{1b}"#),
            "{}",
            r.error
        );
        println!("bincode reply: {} bytes: {}", r.error.len(), r.error);

        // JSON: a field name of a megabyte of escaped control characters.
        let name = "\\u0001".repeat(1 << 18);
        let body = format!(r#"{{"PodId":"web-1","Generation":4,"{name}":1}}"#);
        let r = cp
            .request_raw("web-1", Some(headers(Encoding::Json)), body.into())
            .await
            .unwrap();
        assert_eq!((r.result, r.generation), (ApplyResult::Rejected, 0));
        assert!(r.error.len() <= LAST_ERROR_BYTES, "{}", r.error.len());
        println!("JSON reply: {} bytes: {}", r.error.len(), r.error);

        // The status says so, bounded, and never stops coming.
        let s = dash
            .wait_for(Duration::from_secs(5), "the rejection", since, |s| {
                s.last_error.starts_with("spec rejected: invalid JSON")
            })
            .await;
        assert!(s.last_error.len() <= LAST_ERROR_BYTES);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let gap = longest_gap(&dash, since);
        assert!(
            gap < Duration::from_millis(1800),
            "the status stream stopped for {gap:?}"
        );
        assert!(dash.errors().is_empty(), "{:?}", dash.errors());
        assert_eq!(kernel_snapshot(ns).unwrap(), before);
    });
}

#[test]
fn status_get_answers_at_most_100_requests_a_second() {
    let stack = stack_with_agent(Options::default(), &[]);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        cp.request_when_ready("web-1", &spec(2), Encoding::Json)
            .await;
        let dashboard = stack.client("dashboard").await.unwrap().client;
        let inbox = dashboard.new_inbox();
        let mut answers = dashboard.subscribe(format!("{inbox}.*")).await.unwrap();
        dashboard.flush().await.unwrap();
        let start = Instant::now();
        for i in 0..300 {
            dashboard
                .publish_with_reply(
                    "weft.pod.web-1.status.get",
                    format!("{inbox}.{i}"),
                    Bytes::new(),
                )
                .await
                .unwrap();
        }
        dashboard.flush().await.unwrap();
        let sent = start.elapsed();
        let mut answered = 0;
        let window = start + Duration::from_millis(950);
        while let Ok(Some(msg)) = tokio::time::timeout_at(window.into(), answers.next()).await {
            let status: PodStatus = decode(&msg).unwrap();
            assert_eq!(status.pod_id, "web-1");
            answered += 1;
        }
        println!("300 requests sent in {sent:?}: {answered} answered within the second");
        assert!(sent < Duration::from_millis(500), "sending took {sent:?}");
        assert_eq!(answered, 100);
        // The next second has room again.
        tokio::time::sleep_until((start + Duration::from_millis(1100)).into()).await;
        let asker = ControlPlane {
            client: dashboard.clone(),
            prefix: "weft".into(),
            link: None,
        };
        asker.status_get("web-1", Encoding::Json).await.unwrap();
    });
    let log = stack.pods[0].agent.as_ref().unwrap().log();
    assert!(log.contains("status.get requests dropped"), "{log}");
}

#[test]
fn rejections_are_logged_once_a_second_per_reason_with_a_count() {
    let stack = stack_with_agent(Options::default(), &["--log-format", "json"]);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        cp.request_when_ready("web-1", &spec(2), Encoding::Json)
            .await;
        for i in 0..200 {
            cp.client
                .publish("weft.pod.web-1.spec", format!("not json {i}").into())
                .await
                .unwrap();
        }
        cp.client.flush().await.unwrap();
        // One more, a second later, carries the count of those not logged.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = cp
            .request_raw("web-1", None, Bytes::from_static(b"still not json"))
            .await
            .unwrap();
        assert_eq!(r.result, ApplyResult::Rejected);
    });
    let agent = stack.pods[0].agent.as_ref().unwrap();
    let lines: Vec<String> = wait_until(Duration::from_secs(5), "the last rejection", || {
        let log = agent.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("spec rejected"))
            .map(str::to_owned)
            .collect();
        lines
            .last()
            .filter(|l| l.contains("still not json") || l.contains("invalid JSON"))
            .filter(|_| lines.len() >= 2)
            .map(|_| lines.clone())
            .ok_or(log)
    });
    println!("{} lines for 201 rejections:", lines.len());
    for l in &lines {
        println!("  {l}");
    }
    assert!(lines.len() <= 4, "{lines:#?}");
    let skipped: u64 = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["fields"]["skipped"].as_u64())
        .sum();
    assert!(
        skipped >= 190,
        "{skipped} counted as not logged: {lines:#?}"
    );
}

#[cfg(debug_assertions)] // the fault hook exists in debug builds of the agent only
#[test]
fn a_panic_ends_the_agent_and_a_spec_that_crashes_it_twice_is_not_reapplied() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    let fault = [("WEFT_FAULT_PANIC_AT_GENERATION", "3")];
    let args = ["--status-interval", "1s"];
    stack.start_agent_with_env("web-1", &args, &fault).unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp
            .request_when_ready("web-1", &spec(2), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied);
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            cp.request("web-1", &spec(3), Encoding::Json),
        )
        .await;
        assert!(!matches!(r, Ok(Ok(_))), "answered: {r:?}");
    });
    let holds_2 = kernel_snapshot(&stack.pods[0].ns.ns).unwrap();
    let mut exits = Vec::new();
    for round in 1..=2 {
        let agent = stack.pods[0].agent.as_mut().unwrap();
        let status = wait_until(Duration::from_secs(10), "the agent to exit", || {
            agent.exited().ok_or_else(|| "still running".to_owned())
        });
        let log = agent.log();
        assert!(!status.success(), "round {round}: {status}\n{log}");
        assert!(log.contains("the reconciler panicked"), "{log}");
        assert!(
            log.contains("injected fault in the apply of generation 3"),
            "{log}"
        );
        exits.push(status);
        // A supervisor restarts it: the kept spec is generation 3.
        stack.start_agent_with_env("web-1", &args, &fault).unwrap();
    }
    println!("exit statuses: {exits:?}");
    // Third start: generation 3 crashed it twice in a row, so it is not applied.
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let s = weft_testkit::wait_until_async(Duration::from_secs(20), "the guard", || async {
            match cp.status_get("web-1", Encoding::Json).await {
                Ok(s) if s.last_error.contains("crashed") => Ok(s),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(s.overall, Overall::Degraded);
        assert_eq!(
            s.last_error,
            "kept spec generation 3 crashed the agent; waiting for a new spec"
        );
        let r = cp.request("web-1", &spec(4), Encoding::Json).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    assert!(stack.pods[0].agent.as_mut().unwrap().running());
    assert_ne!(kernel_snapshot(&stack.pods[0].ns.ns).unwrap(), holds_2);
}

#[test]
fn the_baseline_firewall_closes_the_pod_before_any_spec() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    let started = Instant::now();
    stack
        .start_agent(
            "web-1",
            &["--status-interval", "1s", "--firewall-at-start", "baseline"],
        )
        .unwrap();
    let ns = &stack.pods[0].ns.ns;
    let table = wait_until(Duration::from_secs(5), "the baseline table", || {
        nft_table(ns, "inet", "weft-fw")
            .unwrap()
            .ok_or_else(|| "no table".to_owned())
    });
    println!(
        "baseline table present {:?} after the agent started",
        started.elapsed()
    );
    let text = table.to_string();
    assert!(text.contains(r#""policy":"drop""#), "{text}");
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let s = weft_testkit::wait_until_async(Duration::from_secs(20), "a status", || async {
            cp.status_get("web-1", Encoding::Json)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        assert_eq!((s.overall, s.observed_generation), (Overall::Pending, 0));
        let fw = s.firewall.expect("the Firewall subsystem is reported");
        assert!(fw.table_present);
        assert_eq!(fw.overall, Overall::Healthy);
        assert!(s.network.is_none() && s.wireguard.is_none());
        // The first spec replaces it as usual.
        let r = cp.request("web-1", &spec(2), Encoding::Json).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied);
    });
}

#[test]
fn a_status_with_10000_peers_fits_the_servers_max_payload() {
    // nats-server's default max_payload (1 MiB): a 10,000-peer status is about 1.1 MB.
    let options = Options {
        max_payload: None,
        ..Options::default()
    };
    let stack = stack_with_agent(options, &["--wireguard", "userspace"]);
    let wg = unique_ifname("wgh", 1);
    let peers: Vec<serde_json::Value> = (0..10_000u32)
        .map(|i| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&(i + 1).to_be_bytes());
            key[31] = 0x40;
            json!({ "PublicKey": weft_schema::PublicKey(key).to_base64() })
        })
        .collect();
    // Written as a control plane would, absent fields left out.
    let body = serde_json::to_vec(&json!({
        "PodId": "web-1", "Generation": 2,
        "WireGuard": { "Interface": wg, "Address": "10.99.0.1/16", "Peers": peers }
    }))
    .unwrap();
    println!("spec of 10,000 peers: {} bytes", body.len());
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let max = cp.client.max_payload();
        let since = Instant::now();
        let r = loop {
            match tokio::time::timeout(
                Duration::from_secs(60),
                cp.request_raw("web-1", Some(headers(Encoding::Json)), body.clone().into()),
            )
            .await
            {
                Ok(Ok(r)) => break r,
                Ok(Err(e)) if since.elapsed() < Duration::from_secs(20) => {
                    println!("retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let s = dash
            .wait_for(Duration::from_secs(30), "the big status", since, |s| {
                s.observed_generation == 2
            })
            .await;
        let w = s.wireguard.as_ref().unwrap();
        println!(
            "max_payload {max}: the status lists {} peers; WireGuard.LastError: {}",
            w.peers.len(),
            w.last_error
        );
        assert!(w.peers.len() < 10_000 && w.peers.len() > 1_000);
        assert!(w.last_error.contains("of 10000 peers"), "{}", w.last_error);
        assert!(Encoding::Json.encode(&s).len() <= max);
        // status.get answers too, within the same bound.
        let got = cp.status_get("web-1", Encoding::Json).await.unwrap();
        assert_eq!(got.wireguard.unwrap().peers.len(), w.peers.len());
        // And the stream keeps going.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let gap = longest_gap(&dash, since + Duration::from_secs(1));
        assert!(gap < Duration::from_secs(3), "statuses stopped for {gap:?}");
    });
}
