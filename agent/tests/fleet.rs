//! The fleet harness at CI size (`weft-fleet` runs it at 100 to 1,000 pods, by hand): real
//! agents in namespaces of their own on a three-node nats-server cluster with one nkey user
//! per pod, a control plane applying specs to all of them by subject and by the spec bucket
//! (three replicas), and a node killed halfway through a fan-out. Every spec must still be
//! applied (the kernel of the pods says so, not only their statuses), and everything the fleet
//! made must be gone once it drops. Figures are printed, never asserted.

use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use weft_testkit::fleet::{Fleet, Options, SpecSource};
use weft_testkit::observe::{ipv4_addrs, nft_table_text};
use weft_testkit::require_root;

const PODS: usize = 24;

fn namespaces_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_pod_applies_every_spec_by_subject_and_by_bucket_through_a_server_kill() {
    require_root();
    let mut fleet = Fleet::new(Options {
        pods: PODS,
        servers: 3,
        status_interval: Duration::from_secs(1),
        agent_bin: PathBuf::from(env!("CARGO_BIN_EXE_weft-agent")),
    })
    .unwrap();
    let deadline = Duration::from_secs(90);
    let mut generation = 0;
    for source in [SpecSource::Subject, SpecSource::Kv] {
        if source == SpecSource::Kv {
            fleet
                .block_on(|f| {
                    async move {
                        let cp = f.control_plane().await?;
                        f.create_spec_bucket(&cp).await
                    }
                    .boxed()
                })
                .unwrap();
        }
        fleet.start_agents(source).unwrap();
        let (first, second) = (generation + 1, generation + 2);
        fleet
            .block_on(|f| {
                async move {
                    let cp = f.control_plane().await?;
                    let dash = f.dashboard().await?;
                    dash.wait_all_seen(deadline).await?;
                    let plain = f
                        .fan_out(&cp, &dash, source, first, false, deadline)
                        .await?;
                    let killed = f
                        .fan_out(&cp, &dash, source, second, true, deadline)
                        .await?;
                    let idle = f.idle(&dash, Duration::from_secs(3)).await?;
                    eprintln!("{}: {plain:?}\n{killed:?}\n{idle:?}", source.name());
                    anyhow::ensure!(killed.killed.is_some(), "a node was killed");
                    anyhow::ensure!(
                        dash.generations().iter().all(|g| *g == second),
                        "every pod reports generation {second}: {:?}",
                        dash.generations()
                    );
                    anyhow::ensure!(idle.statuses_per_second > 0.0, "statuses flow");
                    anyhow::ensure!(dash.errors().is_empty(), "{:?}", dash.errors());
                    Ok(())
                }
                .boxed()
            })
            .unwrap();
        // The kernel of every pod holds the last generation: its address, and the app port
        // that generation opened.
        let port = format!("tcp dport {}", 8000 + second);
        for (i, pod) in fleet.pods.iter().enumerate() {
            let table = nft_table_text(pod.ns(), "inet", "weft-fw").unwrap();
            assert!(table.contains(&port), "pod {i} lacks {port}:\n{table}");
            assert_eq!(
                ipv4_addrs(pod.ns(), "eth0").unwrap(),
                [format!("{}/16", pod.addr)]
            );
        }
        fleet.restart_stopped_servers().unwrap();
        fleet.stop_agents().unwrap();
        generation = second;
    }
    let prefixes = [
        format!("weft-fp-{}-", std::process::id()),
        format!("weft-fh-{}-", std::process::id()),
    ];
    let dir = fleet.dir().to_owned();
    drop(fleet);
    for prefix in &prefixes {
        assert_eq!(namespaces_named(prefix), Vec::<String>::new());
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
