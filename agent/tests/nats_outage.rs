//! NATS outages end to end: the real agent in a pod namespace, `nats-server` in the hub. The
//! kernel keeps its state while the server is away; on its return the agent publishes a fresh
//! status at once and takes specs again. A control link that dies silently (no RST, no FIN)
//! is noticed by the client's pings within 15 s.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec};
use weft_testkit::control::Dashboard;
use weft_testkit::observe::{kernel_snapshot, nft_table};
use weft_testkit::stack::{Pod, Stack};
use weft_testkit::status_log::{now_unix_ms, StatusLog};
use weft_testkit::{require_root, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

/// A spec with an address, a default route and a firewall rule naming the generation.
fn spec(pod: &Pod, generation: u64) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": pod.id, "Generation": generation,
        "Network": { "Interface": "eth0", "Address": pod.address(), "Gateway": pod.gateway() },
        "Firewall": { "Ingress": [ { "Protocol": "tcp", "Ports": [ (1000 + generation).to_string() ],
            "Comment": format!("generation {generation}") } ] }
    }))
    .unwrap()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_server_restart_leaves_the_kernel_alone_and_the_status_resumes_at_once() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    // An hour between ticks: any status soon after the server's return is the reconnect's.
    stack
        .start_agent("web-1", &["--status-interval", "1h"])
        .unwrap();
    let first = spec(&stack.pods[0], 1);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        StatusLog::create(&cp.client, "weft", "web-1")
            .await
            .unwrap();
        let r = cp.request_when_ready("web-1", &first, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    let before = kernel_snapshot(&stack.pods[0].ns.ns).unwrap();
    assert!(before.contains("generation 1"), "{before}");

    stack.kill_nats();
    let agent = stack.pods[0].agent.as_ref().unwrap();
    wait_until(Duration::from_secs(5), "the agent sees the outage", || {
        let log = agent.log();
        (count(&log, "disconnected from NATS") >= 1)
            .then_some(())
            .ok_or(log)
    });
    // Long enough for a few reconnect attempts and resync ticks against an absent server.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        kernel_snapshot(&stack.pods[0].ns.ns).unwrap(),
        before,
        "the kernel changed while the server was away"
    );
    assert!(stack.pods[0].agent.as_mut().unwrap().running());

    stack.restart_nats().unwrap();
    let back = now_unix_ms();
    let second = spec(&stack.pods[0], 2);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let statuses = StatusLog::create(&cp.client, "weft", "web-1")
            .await
            .unwrap();
        let fresh = statuses
            .first_since(back, Duration::from_secs(5))
            .await
            .unwrap();
        let took = fresh.published_at_unix_ms - back;
        println!("fresh status {took} ms after the server was back");
        assert!(took <= 5_000, "{took} ms");
        assert_eq!(fresh.observed_generation, 1);
        assert_eq!(fresh.overall, Overall::Healthy, "{fresh:?}");

        // A spec published right after is applied (the subscription was re-made).
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let since = Instant::now();
        cp.publish("web-1", &second, Encoding::Json).await.unwrap();
        dash.wait_for(Duration::from_secs(5), "generation 2 applied", since, |s| {
            s.observed_generation == 2 && s.overall == Overall::Healthy
        })
        .await;
    });
    assert_eq!(
        kernel_snapshot(&stack.pods[0].ns.ns).unwrap(),
        before
            .replace("generation 1", "generation 2")
            .replace("1001", "1002")
    );
}

#[test]
fn a_silently_dead_control_link_is_noticed_within_15_s_and_recovers() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent("web-1", &["--status-interval", "1s"])
        .unwrap();
    let first = spec(&stack.pods[0], 1);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp.request_when_ready("web-1", &first, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    let before = kernel_snapshot(&stack.pods[0].ns.ns).unwrap();

    // The hub drops everything on the pod's control link: the agent's TCP connection gets
    // neither a reset nor a close, only silence. The table lives in the hub namespace,
    // which goes with the stack.
    let hub = &stack.hub.ns;
    let nft = |script: &str| {
        hub.command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait()
            })
            .map(|s| assert!(s.success(), "nft -f: {script}"))
            .unwrap()
    };
    let agent = stack.pods[0].agent.as_ref().unwrap();
    let disconnects = count(&agent.log(), "disconnected from NATS");
    nft("table inet cut {\n chain in { type filter hook input priority 0; iifname \"ctl1\" drop; }\n chain out { type filter hook output priority 0; oifname \"ctl1\" drop; }\n}\n");
    let cut = Instant::now();
    let noticed = wait_until(
        Duration::from_secs(20),
        "the agent logs the dead link",
        || {
            let log = agent.log();
            (count(&log, "disconnected from NATS") > disconnects)
                .then(|| cut.elapsed())
                .ok_or(log)
        },
    );
    println!("dead link noticed after {noticed:?}");
    // The contract's bound; the agent pings every 4 s and gives up at the third tick (~12 s).
    assert!(noticed <= Duration::from_secs(15), "{noticed:?}");
    assert_eq!(kernel_snapshot(&stack.pods[0].ns.ns).unwrap(), before);

    // The link returns: the agent reconnects and statuses flow again, newer than the cut.
    let connects =
        count(&agent.log(), "connected to NATS") - count(&agent.log(), "disconnected from NATS");
    nft("delete table inet cut\n");
    let restored = Instant::now();
    let back = now_unix_ms();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let s = dash
            .wait_for(
                Duration::from_secs(10),
                "a status after the link returned",
                restored,
                |s| s.published_at_unix_ms >= back,
            )
            .await;
        assert_eq!((s.observed_generation, s.overall), (1, Overall::Healthy));
    });
    println!(
        "statuses again {:?} after the link returned",
        restored.elapsed()
    );
    let log = agent.log();
    assert!(
        count(&log, "connected to NATS") - count(&log, "disconnected from NATS") > connects,
        "{log}"
    );
    assert!(nft_table(hub, "inet", "cut").unwrap().is_none());
}
