//! A three-node (or n-node) NATS cluster in one namespace: `nats-server` processes joined by
//! routes, each on its own free client, route and monitoring ports, killed on drop.

use std::net::TcpListener;

use anyhow::{Context, Result};

use crate::nats::NatsServer;
use crate::netns::Netns;

/// The nodes of a cluster, in start order.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    /// Each node's monitoring port (`/connz`, `/routez`).
    pub monitor: Vec<u16>,
}

/// A port nobody in the calling thread's namespace listens on right now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("0.0.0.0:0")
        .context("bind a free port")?
        .local_addr()?
        .port())
}

impl NatsCluster {
    /// Starts `n` nodes in `ns`, each routed to all the others, with a cluster name unique to
    /// this process and namespace.
    pub fn start(ns: &Netns, n: usize) -> Result<NatsCluster> {
        ns.enter(|| {
            let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
            let monitor: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
            let name = format!("weft-{}", ns.name());
            let mut nodes = Vec::new();
            for i in 0..n {
                let others: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect();
                let (listen, server, mon) = (
                    format!("nats://0.0.0.0:{}", routes[i]),
                    format!("{name}-n{i}"),
                    monitor[i].to_string(),
                );
                let others = others.join(",");
                nodes.push(NatsServer::start_with(
                    0,
                    &[
                        "-n",
                        &server,
                        "--cluster_name",
                        &name,
                        "--cluster",
                        &listen,
                        "--routes",
                        &others,
                        "-m",
                        &mon,
                    ],
                )?);
            }
            Ok(NatsCluster { nodes, monitor })
        })
    }

    /// Every node's URL as reached at `addr`, comma-separated (the agent's `--nats-url`).
    pub fn urls_at(&self, addr: &str) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url_at(addr)).collect();
        urls.join(",")
    }

    /// Every node's loopback URL, comma-separated, for clients in the cluster's namespace.
    pub fn urls(&self) -> String {
        self.urls_at("127.0.0.1")
    }

    /// How many client connections node `i` has whose name is `name`, read from its `/connz`
    /// with `curl` in `ns`.
    pub fn clients_named(&self, ns: &Netns, i: usize, name: &str) -> Result<usize> {
        let out = ns.run(
            "curl",
            &[
                "-sf",
                &format!("http://127.0.0.1:{}/connz?limit=1024", self.monitor[i]),
            ],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("connz JSON")?;
        Ok(v["connections"]
            .as_array()
            .map(|c| c.iter().filter(|c| c["name"] == name).count())
            .unwrap_or(0))
    }

    /// The running node whose `/connz` lists a client named `name`, if exactly one does.
    pub fn node_of(&self, ns: &Netns, name: &str) -> Result<Option<usize>> {
        let mut found = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_running() && self.clients_named(ns, i, name)? > 0 {
                found.push(i);
            }
        }
        Ok((found.len() == 1).then(|| found[0]))
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again in `ns` on the same ports and store.
    pub fn restart(&mut self, ns: &Netns, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        ns.enter(|| node.restart())
    }
}
