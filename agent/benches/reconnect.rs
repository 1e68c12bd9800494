//! Reconnect time: `nats-server` killed (SIGKILL) and restarted on the same port, measured
//! from the moment the restarted server says it is ready to the `PublishedAtUnixMs` of the
//! agent's first status after it (the agent runs with a one-hour status interval, so that
//! status is the reconnect's, not a tick's). Statuses are read from a JetStream stream, so
//! the measuring client's own reconnect does not matter.
//!
//! `cargo bench -p weft-agent --bench reconnect` prints median and p99 for a short outage
//! (0.2 s: the client's backoff is still small) and a long one (3 s: the backoff has reached
//! its 4 s cap), interleaved in one run. Without `--bench` it is a smoke pass of two short
//! rounds that still asserts each status arrives within 5 s.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec};
use weft_testkit::require_root;
use weft_testkit::stack::Stack;
use weft_testkit::status_log::{now_unix_ms, StatusLog};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 20 } else { 1 };
    let outages: &[Duration] = if full {
        &[Duration::from_millis(200), Duration::from_secs(3)]
    } else {
        &[Duration::from_millis(200)]
    };
    require_root();

    let mut stack = Stack::new(Path::new(env!("CARGO_BIN_EXE_weft-agent"))).expect("stack");
    stack.add_pod("bench-1").expect("pod");
    stack
        .start_agent("bench-1", &["--status-interval", "1h"])
        .expect("agent");
    let spec: PodSpec = serde_json::from_value(json!({
        "PodId": "bench-1", "Generation": 1,
        "Firewall": { "Ingress": [ { "Protocol": "tcp", "Ports": ["22"] } ] }
    }))
    .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        StatusLog::create(&cp.client, "weft", "bench-1")
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match cp.request("bench-1", &spec, Encoding::Json).await {
                Ok(r) => {
                    assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
                    break;
                }
                Err(e) if tokio::time::Instant::now() > deadline => panic!("no reply: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });

    let mut took: Vec<Vec<Duration>> = vec![Vec::new(); outages.len()];
    for _ in 0..rounds {
        for (i, outage) in outages.iter().enumerate() {
            let disconnects = |log: &str| log.matches("disconnected from NATS").count();
            let before = disconnects(&stack.pods[0].agent.as_ref().unwrap().log());
            stack.kill_nats();
            let agent = stack.pods[0].agent.as_ref().unwrap();
            weft_testkit::wait_until(Duration::from_secs(5), "the agent sees the outage", || {
                let log = agent.log();
                (disconnects(&log) > before).then_some(()).ok_or(log)
            });
            std::thread::sleep(*outage);
            stack.restart_nats().expect("restart nats-server");
            let back = now_unix_ms();
            let status = stack.block_on(|| async {
                let client = stack.client("control").await.unwrap().client;
                let log = StatusLog::create(&client, "weft", "bench-1").await.unwrap();
                log.first_since(back, Duration::from_secs(5)).await.unwrap()
            });
            assert_eq!(status.overall, Overall::Healthy, "{status:?}");
            assert_eq!(status.observed_generation, 1);
            took[i].push(Duration::from_millis(status.published_at_unix_ms - back));
        }
    }

    println!("reconnect: server ready -> first fresh status ({rounds} rounds each, interleaved)");
    for (outage, t) in outages.iter().zip(&mut took) {
        t.sort();
        let p = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        println!(
            "  outage {:>5.1} s   median {:>6} ms   p99 {:>6} ms   min {:>6} ms   max {:>6} ms",
            outage.as_secs_f64(),
            p(0.5).as_millis(),
            p(0.99).as_millis(),
            t[0].as_millis(),
            t[t.len() - 1].as_millis()
        );
    }
}
