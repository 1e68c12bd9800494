//! A three-node (or n-node) NATS cluster in one namespace: `nats-server` processes joined by
//! routes, each on its own free client, route and monitoring ports, killed on drop.

use std::net::TcpListener;
use std::path::Path;

use anyhow::{Context, Result};

use crate::nats::NatsServer;
use crate::natsconf::{ServerConfig, Value};
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

/// Each node's route and monitoring port, and the cluster's name (unique to this process and
/// namespace); called inside `ns`.
fn plan(ns: &Netns, n: usize) -> Result<(Vec<u16>, Vec<u16>, String)> {
    let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
    let monitor: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
    Ok((routes, monitor, format!("weft-{}", ns.name())))
}

impl NatsCluster {
    /// Starts `n` nodes in `ns`, each routed to all the others, with a cluster name unique to
    /// this process and namespace.
    pub fn start(ns: &Netns, n: usize) -> Result<NatsCluster> {
        ns.enter(|| {
            let (routes, monitor, name) = plan(ns, n)?;
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

    /// Starts `n` nodes in `ns` from `config` (users, permissions), each with JetStream in a
    /// store of its own under `dir`, a server name (JetStream clustering needs one), a
    /// monitoring port and routes to all the others: a cluster as an operator would run one,
    /// where a bucket can have three replicas.
    pub fn start_configured(
        ns: &Netns,
        n: usize,
        config: &ServerConfig,
        dir: &Path,
    ) -> Result<NatsCluster> {
        ns.enter(|| {
            let (routes, monitor, name) = plan(ns, n)?;
            let mut nodes = Vec::new();
            for i in 0..n {
                let node_dir = dir.join(format!("n{i}"));
                std::fs::create_dir_all(&node_dir)
                    .with_context(|| format!("create {}", node_dir.display()))?;
                let mut node = config.clone();
                node.jetstream = Some(Value::Literal(
                    node_dir.join("jetstream").display().to_string(),
                ));
                let others: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("\"nats://127.0.0.1:{}\"", routes[j]))
                    .collect();
                let text = format!(
                    "server_name: \"{name}-n{i}\"\nhttp: \"127.0.0.1:{}\"\n\
                     cluster {{\n  name: \"{name}\"\n  listen: \"0.0.0.0:{}\"\n  \
                     routes: [{}]\n}}\n\n{}",
                    monitor[i],
                    routes[i],
                    others.join(", "),
                    node.render()
                );
                let file = node_dir.join("nats-server.conf");
                std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
                nodes.push(NatsServer::start_with_config(&file, Vec::new(), false)?);
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

    /// How many client connections node `i` has now (its `/varz`), read with `curl` in `ns`;
    /// 0 for a node that is not running.
    pub fn connections(&self, ns: &Netns, i: usize) -> Result<usize> {
        if !self.nodes[i].is_running() {
            return Ok(0);
        }
        let out = ns.run(
            "curl",
            &["-sf", &format!("http://127.0.0.1:{}/varz", self.monitor[i])],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("varz JSON")?;
        v["connections"]
            .as_u64()
            .map(|c| c as usize)
            .context("varz without connections")
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
