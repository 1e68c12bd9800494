//! A fleet: N real `weft-agent` processes, each in a network namespace of its own whose pod
//! interface (`eth0`) is a veth to a bridge in a hub namespace, against a nats-server cluster
//! (three nodes by default) in the hub with JetStream and the shipped authorization (one nkey
//! user per pod with its own subjects only, a control plane, a dashboard; all generated for
//! the run). A control plane applies specs to every pod, as requests on the spec subjects or
//! as puts into the spec bucket with three replicas, and a dashboard follows every status.
//!
//! Bounded: every wait has a deadline, and every namespace, link, process and file the fleet
//! made goes when it drops (agents first, then the pods' namespaces, the servers, the hub).
//! All traffic stays inside the namespaces: the agents reach NATS over their own `eth0`, at
//! the hub's address on their bridge (a thousand pods to a bridge, each bridge its own /16
//! from 10.201.0.0/16 on: a Linux bridge takes at most 1,024 ports).
//!
//! The host's neighbour table is shared by every namespace, and its default hard limit (1,024
//! entries) is below what a fleet of 1,000 pods needs (one entry in each pod, one per pod in
//! the hub); [`NeighbourLimits`] raises it for the fleet's life and puts it back.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use weft_schema::{ApplyReply, ApplyResult, Encoding, PodStatus};

use crate::agent::AgentProcess;
use crate::cluster::NatsCluster;
use crate::control::{decode, headers};
use crate::identity::{write_secret, Auth, Identity};
use crate::natsconf::{
    control_plane_permissions, dashboard_permissions, pod_permissions, user_nkey, Authorization,
    Credential, ServerConfig, User, Value,
};
use crate::netns::{enter_named, runtime, Netns};

/// Pods on one bridge of the hub: a Linux bridge takes at most 1,024 ports.
const PODS_PER_BRIDGE: usize = 1000;
/// Bridges `br0`.. have the LANs 10.201.0.0/16 to 10.254.0.0/16.
const MAX_BRIDGES: usize = 54;
/// The prefix length of each LAN.
const PREFIX_LEN: u8 = 16;
/// The most pods one fleet can address.
pub const MAX_PODS: usize = PODS_PER_BRIDGE * MAX_BRIDGES;
/// The spec bucket's values per key (as the agent creates it).
const SPEC_HISTORY: i64 = 10;
/// How long one request or put waits for its answer before it is sent again.
/// Longer than a whole fan-out of a thousand pods takes here, so only lost specs are resent.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Between a failed attempt and the next.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How many threads make the pods' namespaces and links.
const SETUP_THREADS: usize = 4;

/// Where the agents take their specs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecSource {
    /// Requests on `weft.pod.<pod>.spec`; the reply says `Applied`.
    Subject,
    /// Puts into key `<pod>` of bucket `weft-specs` (three replicas); the status says the
    /// generation was applied.
    Kv,
}

impl SpecSource {
    pub fn name(self) -> &'static str {
        match self {
            SpecSource::Subject => "subject",
            SpecSource::Kv => "kv",
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    pub pods: usize,
    /// nats-server nodes in the cluster.
    pub servers: usize,
    /// The agents' `--status-interval`.
    pub status_interval: Duration,
    /// The `weft-agent` binary.
    pub agent_bin: PathBuf,
}

/// One pod: its namespace, address, NATS identity and agent.
#[derive(Debug)]
pub struct FleetPod {
    pub id: String,
    pub addr: Ipv4Addr,
    /// The hub's address on the pod's bridge: where it reaches NATS, and its gateway.
    pub gateway: Ipv4Addr,
    nkey: PathBuf,
    state_dir: PathBuf,
    resolv_conf: PathBuf,
    log: PathBuf,
    agent: Option<AgentProcess>,
    ns: Netns,
}

impl FleetPod {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(AgentProcess::pid)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.agent
            .as_ref()
            .map(AgentProcess::log)
            .unwrap_or_default()
    }
}

/// The fleet. Fields drop in order: agents and their namespaces, the servers, the hub, the
/// files, and last the neighbour limits are put back.
#[derive(Debug)]
pub struct Fleet {
    pub pods: Vec<FleetPod>,
    pub cluster: NatsCluster,
    pub hub: Netns,
    control: Identity,
    dashboard: Identity,
    dir: RemoveOnDrop,
    _neighbours: NeighbourLimits,
    options: Options,
}

impl Fleet {
    /// Builds the hub, the cluster and `options.pods` pods (agents not started).
    pub fn new(options: Options) -> Result<Fleet> {
        let n = options.pods;
        if n == 0 || n > MAX_PODS {
            bail!("a fleet has 1 to {MAX_PODS} pods, not {n}");
        }
        if options.servers == 0 {
            bail!("a fleet needs at least one nats-server");
        }
        // Each pod holds the hub's entry, the hub one per pod; room for the rest of the host.
        let neighbours = NeighbourLimits::at_least(2 * n + 1024)?;
        let hub = Netns::new("fh")?;
        let mut bridges = String::new();
        for b in 0..n.div_ceil(PODS_PER_BRIDGE) {
            bridges.push_str(&format!(
                "link add br{b} type bridge
addr add {}/{PREFIX_LEN} dev br{b}
link set br{b} up
",
                hub_addr(b)
            ));
        }
        ip_batch(&hub, &bridges)?;
        let dir = RemoveOnDrop(std::env::temp_dir().join(format!("weft-fleet-{}", hub.name())));
        for sub in ["keys", "pods", "servers"] {
            std::fs::create_dir_all(dir.0.join(sub))?;
        }

        let mut users = Vec::with_capacity(n + 2);
        let mut identity = |name: &str, role: String, permissions| -> Result<Identity> {
            let (seed, public) = user_nkey();
            let file = write_secret(&dir.0.join("keys").join(format!("{name}.nk")), &seed)?;
            users.push(User {
                role,
                credential: Credential::Nkey(Value::Literal(public)),
                permissions,
            });
            Ok(Identity {
                name: name.to_owned(),
                auth: Auth::Nkey(file),
                ca: None,
                client_cert: None,
            })
        };
        let control = identity(
            "control",
            "control plane".into(),
            control_plane_permissions("weft"),
        )?;
        let dashboard = identity(
            "dashboard",
            "dashboard".into(),
            dashboard_permissions("weft"),
        )?;
        let ids: Vec<String> = (0..n).map(pod_id).collect();
        let mut nkeys = Vec::with_capacity(n);
        for id in &ids {
            let who = identity(id, format!("pod {id}"), pod_permissions("weft", id))?;
            let Auth::Nkey(file) = who.auth else {
                unreachable!("made with an nkey")
            };
            nkeys.push(file);
        }
        let config = ServerConfig {
            jetstream: None,
            authorization: Authorization::Users(users),
            tls: None,
            max_payload: None,
        };
        let cluster =
            NatsCluster::start_configured(&hub, options.servers, &config, &dir.0.join("servers"))?;

        let namespaces = make_namespaces(n)?;
        join_to_hub(&hub, &namespaces)?;
        let pods = namespaces
            .into_iter()
            .zip(ids)
            .zip(nkeys)
            .enumerate()
            .map(|(i, ((ns, id), nkey))| {
                let pod_dir = dir.0.join("pods").join(&id);
                FleetPod {
                    addr: pod_addr(i),
                    gateway: hub_addr(i / PODS_PER_BRIDGE),
                    nkey,
                    state_dir: pod_dir.join("state"),
                    resolv_conf: pod_dir.join("resolv.conf"),
                    log: pod_dir.join("agent.log"),
                    agent: None,
                    id,
                    ns,
                }
            })
            .collect::<Vec<_>>();
        for p in &pods {
            std::fs::create_dir_all(&p.state_dir)?;
        }
        Ok(Fleet {
            pods,
            cluster,
            hub,
            control,
            dashboard,
            dir,
            _neighbours: neighbours,
            options,
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Starts every pod's agent, taking specs from `source`.
    pub fn start_agents(&mut self, source: SpecSource) -> Result<()> {
        let interval = humantime::format_duration(self.options.status_interval).to_string();
        for pod in &mut self.pods {
            let mut args: Vec<String> = vec![
                "--nats-url".into(),
                self.cluster.urls_at(&pod.gateway.to_string()),
                "--pod-id".into(),
                pod.id.clone(),
                "--state-dir".into(),
                pod.state_dir.display().to_string(),
                "--resolv-conf".into(),
                pod.resolv_conf.display().to_string(),
                "--status-interval".into(),
                interval.clone(),
                "--nats-nkey".into(),
                pod.nkey.display().to_string(),
            ];
            if source == SpecSource::Kv {
                args.extend(["--spec-source".into(), "kv".into()]);
            }
            pod.agent = Some(AgentProcess::spawn(
                &pod.ns,
                &self.options.agent_bin,
                &args,
                pod.log.clone(),
            )?);
        }
        Ok(())
    }

    /// Stops every agent with SIGTERM (all signalled first, then each waited for).
    pub fn stop_agents(&mut self) -> Result<()> {
        for pid in self.pods.iter().filter_map(FleetPod::pid) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        for pod in &mut self.pods {
            if let Some(mut agent) = pod.agent.take() {
                agent
                    .terminate(Duration::from_secs(10))
                    .with_context(|| format!("stop the agent of {}", pod.id))?;
            }
        }
        Ok(())
    }

    /// The pods whose agent has exited, with their log's last lines.
    pub fn exited_agents(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for pod in &mut self.pods {
            if let Some(agent) = pod.agent.as_mut() {
                if let Some(status) = agent.exited() {
                    let log = agent.log();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    out.push(format!("{} exited {status}: {}", pod.id, tail.join(" | ")));
                }
            }
        }
        out
    }

    /// Runs `body` on a tokio runtime whose threads live in the hub namespace (the control
    /// plane's and the dashboard's sockets are there), with the fleet at hand.
    pub fn block_on<R, F>(&mut self, body: F) -> R
    where
        F: for<'a> FnOnce(&'a mut Fleet) -> futures::future::BoxFuture<'a, R> + Send,
        R: Send,
    {
        let hub = self.hub.name().to_owned();
        enter_named(&hub, || runtime().block_on(body(self)))
    }

    /// The control plane's connection (call inside [`Self::block_on`]).
    pub async fn control_plane(&self) -> Result<Client> {
        Ok(self
            .control
            .connect(&self.cluster.urls(), None)
            .await?
            .client)
    }

    /// The dashboard, subscribed to every pod's status (call inside [`Self::block_on`]).
    pub async fn dashboard(&self) -> Result<Dashboard> {
        let client = self
            .dashboard
            .connect(&self.cluster.urls(), None)
            .await?
            .client;
        Dashboard::follow(client, &self.pods).await
    }

    /// Creates the spec bucket with as many replicas as there are servers, up to three,
    /// waiting for the cluster's JetStream to elect its leader.
    pub async fn create_spec_bucket(&self, cp: &Client) -> Result<()> {
        let js = jetstream::new(cp.clone());
        let replicas = self.options.servers.min(3);
        let config = weft_emitter::bus::bucket_stream("weft-specs", SPEC_HISTORY, replicas);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => return Ok(()),
                // No JetStream leader yet, a node still catching up.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context("create bucket weft-specs"),
            }
        }
    }

    /// The spec of pod `i` at `generation`: its address on the LAN (the one it has, so its
    /// link to NATS stays), the hub as gateway and resolver, and a firewall whose app port
    /// follows the generation, so each generation changes one rule in every pod.
    pub fn spec(&self, i: usize, generation: u64) -> Bytes {
        let pod = &self.pods[i];
        let spec = json!({
            "PodId": pod.id,
            "Generation": generation,
            "Network": {
                "Interface": "eth0",
                "Address": format!("{}/{PREFIX_LEN}", pod.addr),
                "Gateway": pod.gateway.to_string(),
                "Nameservers": [pod.gateway.to_string()],
                "SearchDomains": ["fleet.test"],
            },
            "Firewall": {
                "Ingress": [
                    { "Protocol": "tcp", "Ports": [(8000 + generation % 1000).to_string()],
                      "Sources": [format!("{}/32", pod.gateway)], "Comment": "app" },
                    { "Protocol": "icmp", "Sources": [format!("{}/{PREFIX_LEN}", pod.gateway)],
                      "Comment": "ping" },
                ],
                "Egress": [
                    { "Protocol": "any", "Destinations": ["169.254.169.254/32"],
                      "Comment": "no metadata" },
                ],
            },
        });
        Bytes::from(serde_json::to_vec(&spec).expect("a spec serializes"))
    }

    /// Applies `generation` to every pod through `source` and waits until each has applied
    /// it (the reply, or for the bucket the status). With `kill`, the node with the most
    /// client connections is killed (SIGKILL) once half the specs are out; the control plane
    /// sends again what got no answer, as a real one would. Errors name the pods that did not
    /// get there within `deadline`.
    pub async fn fan_out(
        &mut self,
        cp: &Client,
        dash: &Dashboard,
        source: SpecSource,
        generation: u64,
        kill: bool,
        deadline: Duration,
    ) -> Result<FanOut> {
        let n = self.pods.len();
        // Chosen before the first publish, so the kill follows the half-way mark at once.
        let victim = if kill { Some(self.busiest()?) } else { None };
        dash.expect(generation);
        let published = Arc::new(AtomicUsize::new(0));
        let js = jetstream::new(cp.clone());
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let body = self.spec(i, generation);
            let id = self.pods[i].id.clone();
            let (cp, js, published) = (cp.clone(), js.clone(), published.clone());
            tasks.spawn(async move {
                let sent = Instant::now();
                published.fetch_add(1, Ordering::Relaxed);
                let mut attempts = 0u32;
                loop {
                    attempts += 1;
                    let answer = match source {
                        SpecSource::Subject => request(&cp, &id, generation, body.clone()).await,
                        SpecSource::Kv => put(&js, &id, body.clone()).await,
                    };
                    match answer {
                        Ok(()) => return Ok((i, sent, Instant::now(), attempts)),
                        Err(Attempt::Refused(e)) => return Err(anyhow::anyhow!("{id}: {e}")),
                        Err(Attempt::Again) => tokio::time::sleep(RETRY_PAUSE).await,
                    }
                }
            });
        }
        let mut killed = None;
        if let Some((node, connections)) = victim {
            while published.load(Ordering::Relaxed) < n.div_ceil(2) {
                tokio::task::yield_now().await;
            }
            self.cluster.kill(node);
            killed = Some((node, connections, Instant::now()));
        }
        let mut sent = vec![start; n];
        let mut answered = vec![start; n];
        let mut attempts = 0u64;
        let limit = tokio::time::Instant::now() + deadline;
        let mut done = 0;
        while done < n {
            match tokio::time::timeout_at(limit, tasks.join_next()).await {
                Ok(Some(joined)) => {
                    let (i, s, a, tries) = joined.context("a fan-out task panicked")??;
                    sent[i] = s;
                    answered[i] = a;
                    attempts += u64::from(tries);
                    done += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    tasks.abort_all();
                    bail!(
                        "generation {generation} by {}: {} of {n} pods got no answer within {}",
                        source.name(),
                        n - done,
                        humantime::format_duration(deadline)
                    );
                }
            }
        }
        // Applied means the status says so too (for the bucket that is the only answer).
        let applied = match dash.wait_applied(generation, limit).await {
            Ok(applied) => applied,
            Err(e) => {
                let behind = dash.generations().iter().position(|g| *g < generation);
                let log = behind
                    .map(|i| tail(&self.pods[i].log(), 40))
                    .unwrap_or_default();
                let id = behind.map(|i| self.pods[i].id.as_str()).unwrap_or("?");
                let servers: Vec<String> = self
                    .cluster
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.is_running())
                    .map(|(i, n)| {
                        let log = n.log();
                        let last: Vec<&String> = log
                            .iter()
                            .rev()
                            .filter(|l| !l.contains("connect to route"))
                            .take(12)
                            .collect();
                        format!(
                            "node {i}:\n{}",
                            last.iter()
                                .rev()
                                .map(|l| l.as_str())
                                .collect::<Vec<_>>()
                                .join("\n")
                        )
                    })
                    .collect();
                bail!(
                    "generation {generation} by {}: {e:#}\nthe log of {id}:\n{log}\nservers:\n{}",
                    source.name(),
                    servers.join("\n")
                );
            }
        };
        // The stream's acknowledgements (the bucket) or the replies (the subject): when the
        // bus had taken every spec.
        let last_accepted = *answered.iter().max().expect("n > 0");
        let applied_at: Vec<Instant> = match source {
            SpecSource::Subject => answered,
            SpecSource::Kv => applied,
        };
        let last_publish = *sent.iter().max().expect("n > 0");
        let last_applied = *applied_at.iter().max().expect("n > 0");
        let mut latencies: Vec<Duration> = sent
            .iter()
            .zip(&applied_at)
            .map(|(s, a)| a.saturating_duration_since(*s))
            .collect();
        latencies.sort();
        Ok(FanOut {
            source,
            generation,
            pods: n,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            after_last_publish: last_applied.saturating_duration_since(last_publish),
            total: last_applied.saturating_duration_since(start),
            resends: attempts - n as u64,
            killed: killed.map(|(node, connections, at)| Killed {
                node,
                connections,
                converged_after: last_applied.saturating_duration_since(at),
                accepted_after: last_accepted.saturating_duration_since(at),
            }),
        })
    }

    /// The node with the most client connections, and how many it has.
    fn busiest(&self) -> Result<(usize, usize)> {
        let counts = (0..self.cluster.nodes.len())
            .map(|i| self.cluster.connections(&self.hub, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(counts
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|(_, c)| *c)
            .expect("at least one node"))
    }

    /// Starts every node that is not running again (same ports and store).
    pub fn restart_stopped_servers(&mut self) -> Result<()> {
        for i in 0..self.cluster.nodes.len() {
            if !self.cluster.nodes[i].is_running() {
                self.cluster.restart(&self.hub, i)?;
            }
        }
        Ok(())
    }

    /// Samples every agent and server over `window` while the dashboard counts statuses:
    /// CPU, memory, and the statuses' ingest lag.
    pub async fn idle(&self, dash: &Dashboard, window: Duration) -> Result<Idle> {
        let agents: Vec<u32> = self.pods.iter().filter_map(FleetPod::pid).collect();
        let servers: Vec<u32> = self.cluster.nodes.iter().filter_map(|n| n.pid()).collect();
        let me = std::process::id();
        let before_agents = agents
            .iter()
            .map(|p| proc_cpu_ticks(*p))
            .collect::<Result<Vec<_>>>()?;
        let before_servers = servers
            .iter()
            .map(|p| proc_cpu_ticks(*p))
            .collect::<Result<Vec<_>>>()?;
        let before_me = proc_cpu_ticks(me)?;
        dash.take_lags();
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let (mut lags, bytes) = dash.take_lags();
        let cores = |before: u64, pid: u32| -> Result<f64> {
            Ok((proc_cpu_ticks(pid)?.saturating_sub(before)) as f64 / clock_ticks() / elapsed)
        };
        let mut agent_cpu = 0.0;
        for (pid, before) in agents.iter().zip(&before_agents) {
            agent_cpu += cores(*before, *pid)?;
        }
        let mut server_cpu = Vec::new();
        for (pid, before) in servers.iter().zip(&before_servers) {
            server_cpu.push(cores(*before, *pid)?);
        }
        let harness_cpu = cores(before_me, me)?;
        let mut agent_rss = 0u64;
        let mut agent_pss = 0u64;
        for pid in &agents {
            let m = proc_memory(*pid)?;
            agent_rss += m.rss_kib;
            agent_pss += m.pss_kib;
        }
        let server_rss = servers
            .iter()
            .map(|p| proc_memory(*p).map(|m| m.rss_kib))
            .collect::<Result<Vec<_>>>()?;
        lags.sort_unstable();
        Ok(Idle {
            agents: agents.len(),
            window,
            statuses_per_second: lags.len() as f64 / elapsed,
            status_bytes: bytes / (lags.len() as u64).max(1),
            lag_p50_ms: percentile(&lags, 50.0),
            lag_p99_ms: percentile(&lags, 99.0),
            lag_max_ms: lags.last().copied().unwrap_or(0),
            agent_cpu_cores: agent_cpu,
            agent_rss_kib: agent_rss,
            agent_pss_kib: agent_pss,
            server_cpu_cores: server_cpu,
            server_rss_kib: server_rss,
            harness_cpu_cores: harness_cpu,
        })
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `pod-00042`.
fn pod_id(i: usize) -> String {
    format!("pod-{i:05}")
}

/// Pod `i`'s address on the LAN: host number `i + 2` of 10.201.0.0/16.
fn pod_addr(i: usize) -> Ipv4Addr {
    let host = u32::try_from(i % PODS_PER_BRIDGE + 2).expect("a small number");
    Ipv4Addr::from(u32::from(hub_addr(i / PODS_PER_BRIDGE)) - 1 + host)
}

/// The hub's address on bridge `b`: host 1 of 10.<201 + b>.0.0/16.
fn hub_addr(b: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        201 + u8::try_from(b).expect("at most MAX_BRIDGES"),
        0,
        1,
    )
}

/// Makes `n` namespaces on a few threads; on failure the ones made are deleted.
fn make_namespaces(n: usize) -> Result<Vec<Netns>> {
    let made: Vec<Result<Vec<(usize, Netns)>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..SETUP_THREADS)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(SETUP_THREADS)
                        .map(|i| Ok((i, Netns::new("fp")?)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a setup thread panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    for part in made {
        all.extend(part?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, ns)| ns).collect())
}

/// Joins each pod to the hub's bridge (`p<i>` in the hub, `eth0` in the pod) in one `ip
/// -batch` in the hub, then gives each pod its address, on a few threads.
fn join_to_hub(hub: &Netns, pods: &[Netns]) -> Result<()> {
    let mut script = String::new();
    for (i, ns) in pods.iter().enumerate() {
        script.push_str(&format!(
            "link add p{i} type veth peer name eth0 netns {}\nlink set p{i} master br{} up\n",
            ns.name(),
            i / PODS_PER_BRIDGE
        ));
    }
    ip_batch(hub, &script)?;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..SETUP_THREADS)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    for i in (t..pods.len()).step_by(SETUP_THREADS) {
                        ip_batch(
                            &pods[i],
                            &format!(
                                "addr add {}/{PREFIX_LEN} dev eth0\nlink set eth0 up\n",
                                pod_addr(i)
                            ),
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a setup thread panicked"))
    })
}

/// Runs `ip -n <ns> -batch -` over `script`.
fn ip_batch(ns: &Netns, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn ip -batch")?;
    let mut stdin = child.stdin.take().expect("piped");
    // ip stops at the first failing line: its error, not our broken pipe, says what failed.
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {} -batch exited {}: {}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    written.context("write to ip -batch")?;
    Ok(())
}

/// Why an attempt to hand a spec over did not finish it.
enum Attempt {
    /// No answer, no responder, the server away: send it again.
    Again,
    /// The agent answered, and not `Applied`.
    Refused(String),
}

/// One request on the pod's spec subject.
async fn request(cp: &Client, id: &str, generation: u64, body: Bytes) -> Result<(), Attempt> {
    let subject = format!("weft.pod.{id}.spec");
    let reply = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        cp.request_with_headers(subject, headers(Encoding::Json), body),
    )
    .await;
    let msg = match reply {
        Ok(Ok(msg)) => msg,
        Ok(Err(_)) | Err(_) => return Err(Attempt::Again),
    };
    let reply: ApplyReply = decode(&msg).map_err(|e| Attempt::Refused(format!("reply: {e}")))?;
    match (reply.result, reply.generation) {
        (ApplyResult::Applied, g) if g == generation => Ok(()),
        (result, g) => Err(Attempt::Refused(format!(
            "generation {g} {result:?}: {}",
            reply.error
        ))),
    }
}

/// One put of the pod's key in the spec bucket, acknowledged by the stream.
async fn put(js: &jetstream::Context, id: &str, body: Bytes) -> Result<(), Attempt> {
    let subject = format!("$KV.weft-specs.{id}");
    let ack = async {
        js.publish_with_headers(subject, headers(Encoding::Json), body)
            .await?
            .await
            .map_err(async_nats::Error::from)
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, ack).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Attempt::Again),
    }
}

/// The value at percentile `p` of sorted `values` (nearest rank); the default when empty.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One fan-out's figures.
#[derive(Debug, Clone)]
pub struct FanOut {
    pub source: SpecSource,
    pub generation: u64,
    pub pods: usize,
    /// Per pod, from its spec's first publish to its `Applied`.
    pub p50: Duration,
    pub p99: Duration,
    /// From the last first publish to the last `Applied`.
    pub after_last_publish: Duration,
    /// From the first publish to the last `Applied`.
    pub total: Duration,
    /// Specs sent again (no answer in time, no responder, a server away).
    pub resends: u64,
    pub killed: Option<Killed>,
}

/// The node killed during a fan-out.
#[derive(Debug, Clone)]
pub struct Killed {
    pub node: usize,
    /// Its client connections when it was killed.
    pub connections: usize,
    /// From the kill to the last pod's `Applied`.
    pub converged_after: Duration,
    /// From the kill to the last spec taken by the bus: the last put acknowledged by the
    /// stream (the bucket), the last `Applied` reply (the subject).
    pub accepted_after: Duration,
}

/// What the fleet costs when nothing changes but the statuses tick.
#[derive(Debug, Clone)]
pub struct Idle {
    pub agents: usize,
    pub window: Duration,
    pub statuses_per_second: f64,
    /// The mean status body, in bytes.
    pub status_bytes: u64,
    /// From `PublishedAtUnixMs` to the dashboard's receipt.
    pub lag_p50_ms: u64,
    pub lag_p99_ms: u64,
    pub lag_max_ms: u64,
    /// All agents together, in cores (1.0 is one core busy).
    pub agent_cpu_cores: f64,
    pub agent_rss_kib: u64,
    /// Proportional set size: shared pages (the binary, libraries) split between the agents.
    pub agent_pss_kib: u64,
    pub server_cpu_cores: Vec<f64>,
    pub server_rss_kib: Vec<u64>,
    /// This process: the dashboard decoding every status, and the control plane.
    pub harness_cpu_cores: f64,
}

/// A dashboard following `weft.pod.*.status`: per pod the first time it reported each
/// generation, and the ingest lag of every status.
#[derive(Debug, Clone)]
pub struct Dashboard {
    state: Arc<Mutex<DashState>>,
}

#[derive(Debug, Default)]
struct DashState {
    index: HashMap<String, usize>,
    /// Per pod: whether it published any status.
    heard: Vec<bool>,
    /// Per pod: the newest `ObservedGeneration` seen.
    generation: Vec<u64>,
    /// Per pod: when it first reported `target` or later.
    reached: Vec<Option<Instant>>,
    target: u64,
    /// Lags in ms since the last [`Dashboard::take_lags`].
    lags: Vec<u64>,
    /// Status bodies' bytes since then.
    bytes: u64,
    errors: Vec<String>,
}

/// The most lags kept between two reads (32 MiB): over a quarter of an hour of 4,000 statuses a
/// second.
const MAX_LAGS: usize = 1 << 22;
/// The most undecodable statuses kept (the first ones say what is wrong).
const MAX_ERRORS: usize = 64;

impl DashState {
    fn error(&mut self, text: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(text);
        }
    }
}

impl Dashboard {
    async fn follow(client: Client, pods: &[FleetPod]) -> Result<Dashboard> {
        let n = pods.len();
        let state = Arc::new(Mutex::new(DashState {
            index: pods
                .iter()
                .enumerate()
                .map(|(i, p)| (p.id.clone(), i))
                .collect(),
            heard: vec![false; n],
            generation: vec![0; n],
            reached: vec![None; n],
            ..Default::default()
        }));
        let mut sub = client.subscribe("weft.pod.*.status").await?;
        client.flush().await?;
        let shared = state.clone();
        tokio::spawn(async move {
            // The client lives as long as the subscription's task.
            let _client = client;
            while let Some(msg) = sub.next().await {
                let now = Instant::now();
                let now_ms = unix_ms();
                let id = msg.subject.split('.').nth(2).unwrap_or_default().to_owned();
                let decoded = decode::<PodStatus>(&msg);
                let mut s = shared.lock().unwrap();
                s.bytes += msg.payload.len() as u64;
                let Some(&i) = s.index.get(&id) else {
                    s.error(format!("status of unknown pod {id:?}"));
                    continue;
                };
                match decoded {
                    Ok(status) => {
                        s.heard[i] = true;
                        if s.lags.len() < MAX_LAGS {
                            s.lags
                                .push(now_ms.saturating_sub(status.published_at_unix_ms));
                        }
                        let g = status.observed_generation;
                        s.generation[i] = s.generation[i].max(g);
                        if g >= s.target && s.target > 0 && s.reached[i].is_none() {
                            s.reached[i] = Some(now);
                        }
                    }
                    Err(e) => s.error(format!("{id}: {e:#}")),
                }
            }
        });
        Ok(Dashboard { state })
    }

    /// From now on, notes when each pod first reports `generation` or later.
    fn expect(&self, generation: u64) {
        let mut s = self.state.lock().unwrap();
        s.target = generation;
        let n = s.reached.len();
        s.reached = vec![None; n];
    }

    /// Waits until every pod reported the target generation; when each first did.
    async fn wait_applied(
        &self,
        generation: u64,
        limit: tokio::time::Instant,
    ) -> Result<Vec<Instant>> {
        loop {
            {
                let s = self.state.lock().unwrap();
                anyhow::ensure!(
                    s.target == generation,
                    "the dashboard waits for another generation"
                );
                if s.reached.iter().all(Option::is_some) {
                    return Ok(s.reached.iter().map(|r| r.expect("all some")).collect());
                }
                if tokio::time::Instant::now() >= limit {
                    let missing: Vec<String> = s
                        .index
                        .iter()
                        .filter(|(_, i)| s.reached[**i].is_none())
                        .map(|(id, i)| format!("{id} at {}", s.generation[*i]))
                        .take(10)
                        .collect();
                    bail!(
                        "{} pods never reported generation {generation} (first: {})",
                        s.reached.iter().filter(|r| r.is_none()).count(),
                        missing.join(", ")
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every pod has published a status at all (its agent is connected).
    pub async fn wait_all_seen(&self, timeout: Duration) -> Result<()> {
        let limit = Instant::now() + timeout;
        loop {
            let (silent, first) = {
                let s = self.state.lock().unwrap();
                let silent: Vec<&String> = s
                    .index
                    .iter()
                    .filter(|(_, i)| !s.heard[**i])
                    .map(|(id, _)| id)
                    .collect();
                (silent.len(), silent.first().map(|id| id.to_string()))
            };
            if silent == 0 {
                return Ok(());
            }
            if Instant::now() >= limit {
                bail!(
                    "{silent} pods published no status within {} (one: {})",
                    humantime::format_duration(timeout),
                    first.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes the lags collected since the last call, and the status bytes.
    fn take_lags(&self) -> (Vec<u64>, u64) {
        let mut s = self.state.lock().unwrap();
        (std::mem::take(&mut s.lags), std::mem::take(&mut s.bytes))
    }

    /// Statuses that did not decode, or of no pod of the fleet.
    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    /// Each pod's newest reported generation.
    pub fn generations(&self) -> Vec<u64> {
        self.state.lock().unwrap().generation.clone()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process's user and system CPU time, in clock ticks (`/proc/<pid>/stat`).
fn proc_cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces; fields count from after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .context("stat without a command name")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15.
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short stat")?
            .parse::<u64>()
            .context("stat field")
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// A process's resident and proportional set sizes.
struct Memory {
    rss_kib: u64,
    pss_kib: u64,
}

fn proc_memory(pid: u32) -> Result<Memory> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
    })
}

/// The host's neighbour table limits (`net.ipv4.neigh.default.gc_thresh2/3`), raised for a
/// fleet's life and put back when it drops.
#[derive(Debug)]
pub struct NeighbourLimits {
    restore: Vec<(&'static str, String)>,
}

const GC_THRESH: [(&str, usize); 2] = [
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 2),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 1),
];

impl NeighbourLimits {
    /// Makes the hard limit at least `entries` (and the soft one half of it); changes nothing
    /// when they already are.
    pub fn at_least(entries: usize) -> Result<NeighbourLimits> {
        let mut restore = Vec::new();
        for (path, divisor) in GC_THRESH {
            let old = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
            let want = entries / divisor;
            if old.trim().parse::<usize>().unwrap_or(0) < want {
                std::fs::write(path, want.to_string()).with_context(|| format!("write {path}"))?;
                restore.push((path, old.trim().to_owned()));
            }
        }
        Ok(NeighbourLimits { restore })
    }
}

impl Drop for NeighbourLimits {
    fn drop(&mut self) {
        for (path, old) in self.restore.drain(..).rev() {
            let _ = std::fs::write(path, old);
        }
    }
}

/// A directory removed with everything in it on drop.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Fleet {
    /// The fleet's files (keys, states, logs, the servers' stores).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}
