//! `--spec-source kv` and `--status-kv` end to end: the real agent, `nats-server` with
//! JetStream in the hub, specs written with the KV API as a control plane would.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde_json::json;
use weft_schema::{Encoding, Overall, PodSpec, PodStatus};
use weft_testkit::control::{headers, Dashboard};
use weft_testkit::observe::{nft_ruleset_text, nft_table};
use weft_testkit::stack::{Options, Pod, Stack};
use weft_testkit::{require_root, wait_until_async};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn spec(pod: &str, generation: u64) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": pod, "Generation": generation,
        "Firewall": { "Ingress": [ { "Protocol": "tcp", "Ports": [ (1000 + generation).to_string() ],
            "Comment": format!("generation {generation}") } ] }
    }))
    .unwrap()
}

const ARGS: &[&str] = &[
    "--spec-source",
    "kv",
    "--status-kv",
    "--status-interval",
    "1s",
];

fn holds(pod: &Pod, generation: u64) -> bool {
    nft_table(&pod.ns.ns, "inet", "weft-fw")
        .unwrap()
        .map(|t| t.to_string().contains(&format!("generation {generation}")))
        .unwrap_or(false)
}

async fn bucket(js: &jetstream::Context, name: &str) -> kv::Store {
    wait_until_async(
        Duration::from_secs(10),
        &format!("bucket {name}"),
        || async { js.get_key_value(name).await.map_err(|e| e.to_string()) },
    )
    .await
}

/// The newest status in the status bucket (JSON: the agent's default encoding).
async fn kv_status(store: &kv::Store, pod: &str) -> Option<PodStatus> {
    let v = store.get(pod).await.ok()??;
    Encoding::Json.decode(&v).ok()
}

#[test]
fn specs_come_from_the_bucket_even_written_while_the_agent_was_down() {
    require_root();
    // This pod's user may create the buckets (the shipped configuration leaves that to the
    // control plane: see trust_nats.rs).
    let options = Options {
        pods_create_buckets: true,
        ..Options::default()
    };
    let mut stack = Stack::with(agent_bin(), options).unwrap();
    stack.add_pod("web-1").unwrap();
    // No bucket yet: the agent creates both.
    stack.start_agent("web-1", ARGS).unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let js = jetstream::new(cp.client.clone());
        let specs = bucket(&js, "weft-specs").await;
        let status = bucket(&js, "weft-status").await;
        assert_eq!(status.status().await.unwrap().history(), 1);
        assert_eq!(specs.status().await.unwrap().history(), 10);
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let since = Instant::now();
        specs
            .put("web-1", Encoding::Json.encode(&spec("web-1", 1)).into())
            .await
            .unwrap();
        dash.wait_for(Duration::from_secs(5), "generation 1 from KV", since, |s| {
            s.observed_generation == 1 && s.overall == Overall::Healthy
        })
        .await;
    });
    assert!(holds(&stack.pods[0], 1));

    // Written while the agent is stopped, applied when it starts.
    stack.stop_agent("web-1").unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let specs = jetstream::new(cp.client.clone())
            .get_key_value("weft-specs")
            .await
            .unwrap();
        specs
            .put("web-1", Encoding::Json.encode(&spec("web-1", 2)).into())
            .await
            .unwrap();
    });
    assert!(
        holds(&stack.pods[0], 1),
        "nothing applies while the agent is down"
    );
    stack.start_agent("web-1", ARGS).unwrap();

    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let js = jetstream::new(cp.client.clone());
        let specs = js.get_key_value("weft-specs").await.unwrap();
        let status = js.get_key_value("weft-status").await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let start = Instant::now();
        dash.wait_for(
            Duration::from_secs(10),
            "generation 2 at start",
            start,
            |s| s.observed_generation == 2 && s.overall == Overall::Healthy,
        )
        .await;
        println!(
            "spec written while down applied {:?} after the restart",
            start.elapsed()
        );

        // A later put, in bincode with the contract's headers (a raw put on the key's subject).
        let since = Instant::now();
        js.publish_with_headers(
            "$KV.weft-specs.web-1",
            headers(Encoding::Bincode),
            Encoding::Bincode.encode(&spec("web-1", 3)).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        dash.wait_for(Duration::from_secs(5), "generation 3", since, |s| {
            s.observed_generation == 3 && s.overall == Overall::Healthy
        })
        .await;
        // The status bucket holds the newest status.
        wait_until_async(
            Duration::from_secs(5),
            "generation 3 in weft-status",
            || async {
                match kv_status(&status, "web-1").await {
                    Some(s) if s.observed_generation == 3 && s.overall == Overall::Healthy => {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;

        // One source of truth: the plain subject is not consumed; status.get still answers.
        cp.publish("web-1", &spec("web-1", 4), Encoding::Json)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s = cp.status_get("web-1", Encoding::Json).await.unwrap();
        assert_eq!(s.observed_generation, 3, "{s:?}");

        // A bad value has no one to reply to: the status says it, the kernel keeps gen 3.
        let since = Instant::now();
        specs.put("web-1", "{\"PodId\":".into()).await.unwrap();
        let s = dash
            .wait_for(Duration::from_secs(5), "the rejection", since, |s| {
                s.last_error.contains("invalid JSON")
            })
            .await;
        assert_eq!((s.observed_generation, s.overall), (3, Overall::Degraded));
    });
    assert!(holds(&stack.pods[0], 3));

    // Deleting and purging the key keep the kernel as it is, and say so in the log.
    let before = nft_ruleset_text(&stack.pods[0].ns.ns).unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let specs = jetstream::new(cp.client.clone())
            .get_key_value("weft-specs")
            .await
            .unwrap();
        specs.delete("web-1").await.unwrap();
        specs.purge("web-1").await.unwrap();
    });
    let agent = stack.pods[0].agent.as_ref().unwrap();
    weft_testkit::wait_until(Duration::from_secs(5), "the removals logged", || {
        let log = agent.log();
        let n = log
            .lines()
            .filter(|l| l.contains("spec key removed"))
            .count();
        (n == 2).then_some(()).ok_or(log)
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(nft_ruleset_text(&stack.pods[0].ns.ns).unwrap(), before);
    assert!(stack.pods[0].agent.as_mut().unwrap().running());

    // The watch outlives a server restart: the next put is applied.
    stack.kill_nats();
    stack.restart_nats().unwrap();
    let back = Instant::now();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let specs = bucket(&jetstream::new(cp.client.clone()), "weft-specs").await;
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let since = Instant::now();
        specs
            .put("web-1", Encoding::Json.encode(&spec("web-1", 5)).into())
            .await
            .unwrap();
        dash.wait_for(
            Duration::from_secs(15),
            "generation 5 after the restart",
            since,
            |s| s.observed_generation == 5 && s.overall == Overall::Healthy,
        )
        .await;
    });
    println!(
        "a put after a server restart applied {:?} after the server was back",
        back.elapsed()
    );
    assert!(holds(&stack.pods[0], 5));
}

#[test]
fn an_agent_that_may_not_create_the_buckets_says_so_until_the_control_plane_does() {
    require_root();
    // The shipped configuration: pods may not create buckets.
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack.start_agent("web-1", ARGS).unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let s = dash
            .wait_for(
                Duration::from_secs(20),
                "the missing buckets in the status",
                Instant::now(),
                |s| s.last_error.contains("unusable") || s.last_error.contains("mirror"),
            )
            .await;
        println!("status without buckets: {}", s.last_error);
        assert_eq!(s.overall, Overall::Degraded);
        // The control plane creates them; the agent's retries find them.
        let js = jetstream::new(cp.client.clone());
        let specs = weft_emitter::bus::open_bucket(&js, "weft-specs", 10)
            .await
            .unwrap();
        weft_emitter::bus::open_bucket(&js, "weft-status", 1)
            .await
            .unwrap();
        let since = Instant::now();
        specs
            .put("web-1", Encoding::Json.encode(&spec("web-1", 1)).into())
            .await
            .unwrap();
        dash.wait_for(Duration::from_secs(15), "generation 1, clean", since, |s| {
            s.observed_generation == 1 && s.overall == Overall::Healthy
        })
        .await;
        let status = js.get_key_value("weft-status").await.unwrap();
        wait_until_async(Duration::from_secs(5), "the mirror", || async {
            match kv_status(&status, "web-1").await {
                Some(s) if s.observed_generation == 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    });
    assert!(holds(&stack.pods[0], 1));
}
