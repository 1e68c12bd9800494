//! A three-node NATS cluster in the hub namespace, the real agent in a pod namespace given
//! all three URLs: killing the node the agent is connected to (found through the node's
//! `/connz`) moves it to another node, and specs and statuses keep flowing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec};
use weft_testkit::agent::AgentProcess;
use weft_testkit::cluster::NatsCluster;
use weft_testkit::control::{ControlPlane, Dashboard};
use weft_testkit::hub::Hub;
use weft_testkit::observe::nft_table;
use weft_testkit::{require_root, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn spec(generation: u64) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": "web-1", "Generation": generation,
        "Firewall": { "Ingress": [ { "Protocol": "tcp", "Ports": [ (1000 + generation).to_string() ],
            "Comment": format!("generation {generation}") } ] }
    }))
    .unwrap()
}

/// The agent's state directory and resolver file, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn agents_follow_the_cluster_when_their_node_dies() {
    require_root();
    let mut hub = Hub::new().unwrap();
    let mut cluster = NatsCluster::start(&hub.ns, 3).unwrap();
    let pod = hub.add_pod("web-1").unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!("weft-cluster-{}", hub.ns.name())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let args: Vec<String> = [
        "--nats-url",
        &cluster.urls_at(&pod.hub_addr),
        "--pod-id",
        "web-1",
        "--state-dir",
        &dir.0.join("state").display().to_string(),
        "--resolv-conf",
        &dir.0.join("resolv.conf").display().to_string(),
        "--status-interval",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent =
        AgentProcess::spawn(&pod.ns, agent_bin(), &args, dir.0.join("agent.log")).unwrap();

    let name = "weft-agent web-1";
    for round in 1..=3u64 {
        // The node the agent is on right now.
        let node = wait_until(
            Duration::from_secs(20),
            "the agent's node in /connz",
            || {
                cluster
                    .node_of(&hub.ns, name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        let per_node: Vec<_> = (0..3)
                            .map(|i| cluster.clients_named(&hub.ns, i, name).ok())
                            .collect();
                        format!("not on exactly one node: {per_node:?}")
                    })
            },
        );
        if round > 1 {
            cluster.kill(node);
        }
        let killed = Instant::now();
        hub.block_on(|| async {
            let urls: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
            let cp = ControlPlane {
                client: async_nats::ConnectOptions::new()
                    .connect(urls.as_slice())
                    .await
                    .unwrap(),
                prefix: "weft".into(),
                link: None,
            };
            let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
            // Routes and the agent's new connection settle in a moment: retry until answered.
            let deadline = Instant::now() + Duration::from_secs(20);
            let reply = loop {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    cp.request("web-1", &spec(round), Encoding::Json),
                )
                .await
                {
                    Ok(Ok(r)) => break r,
                    _ if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    other => panic!("round {round}: no reply within 20 s: {other:?}"),
                }
            };
            assert_eq!(reply.result, ApplyResult::Applied, "{reply:?}");
            let since = Instant::now();
            dash.wait_for(
                Duration::from_secs(5),
                "statuses after the failover",
                since,
                |s| s.observed_generation == round && s.overall == Overall::Healthy,
            )
            .await;
        });
        if round > 1 {
            let now_on = cluster.node_of(&hub.ns, name).unwrap();
            println!(
                "round {round}: node {node} killed; agent on node {now_on:?}, spec applied and status seen {:?} later",
                killed.elapsed()
            );
            assert_ne!(now_on, Some(node));
            cluster.restart(&hub.ns, node).unwrap();
        }
        let table = nft_table(&pod.ns, "inet", "weft-fw").unwrap().unwrap();
        assert!(table.to_string().contains(&format!("generation {round}")));
    }
    assert!(agent.running());
    let log = agent.log();
    let reconnects = log
        .lines()
        .filter(|l| l.contains("connected to NATS") && !l.contains("disconnected"))
        .count();
    assert!(reconnects >= 3, "{reconnects} connections: {log}");
}
