//! A local weft stack: `nats-server` in a hub namespace, a LAN router namespace, and pods,
//! each a namespace with a control link to the hub (`ctl0`, how its agent reaches NATS) and
//! the interface its agent manages (`eth0`, cabled to the router). The router holds each
//! pod's gateway (`10.0.<i>.1/24`) and forwards between pods, so pod `i` is meant to take
//! `10.0.<i>.5/24` via `10.0.<i>.1`. Used by the end-to-end tests and the demo.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent::AgentProcess;
use crate::hub::{Hub, PodNs};
use crate::nats::NatsServer;
use crate::netns::{veth, Netns};

/// One pod of the stack.
#[derive(Debug)]
pub struct Pod {
    pub id: String,
    /// 1-based: the pod's LAN is 10.0.<index>.0/24.
    pub index: u8,
    pub ns: PodNs,
    pub state_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub agent: Option<AgentProcess>,
}

impl Pod {
    /// The address the pod is meant to take on eth0.
    pub fn address(&self) -> String {
        format!("10.0.{}.5/24", self.index)
    }

    /// The router's address on the pod's LAN.
    pub fn gateway(&self) -> String {
        format!("10.0.{}.1", self.index)
    }
}

/// The whole stack; dropping it stops the agents and the server and deletes every
/// namespace (and with them every link).
#[derive(Debug)]
pub struct Stack {
    pub pods: Vec<Pod>,
    pub router: Netns,
    pub nats: NatsServer,
    pub hub: Hub,
    dir: PathBuf,
    agent_bin: PathBuf,
}

impl Stack {
    /// Starts the hub with `nats-server` and the router. `agent_bin` is the `weft-agent`
    /// binary to run in pods.
    pub fn new(agent_bin: &Path) -> Result<Stack> {
        let hub = Hub::new()?;
        let nats = hub.ns.enter(NatsServer::start)?;
        let router = Netns::new("lan")?;
        router.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let dir = std::env::temp_dir().join(format!("weft-stack-{}", hub.ns.name()));
        std::fs::create_dir_all(&dir)?;
        Ok(Stack {
            pods: Vec::new(),
            router,
            nats,
            hub,
            dir,
            agent_bin: agent_bin.to_owned(),
        })
    }

    /// Adds pod `id` (not started): its namespace, `ctl0` to the hub, `eth0` to the router.
    pub fn add_pod(&mut self, id: &str) -> Result<&mut Pod> {
        let index = u8::try_from(self.pods.len() + 1).context("too many pods")?;
        let ns = self.hub.add_pod(id)?;
        let router_if = format!("p{index}");
        veth(&ns.ns, "eth0", &self.router, &router_if)?;
        self.router.ip(&[
            "addr",
            "add",
            &format!("10.0.{index}.1/24"),
            "dev",
            &router_if,
        ])?;
        let state_dir = self.dir.join(format!("{id}-state"));
        let resolv_conf = self.dir.join(format!("{id}-resolv.conf"));
        self.pods.push(Pod {
            id: id.to_owned(),
            index,
            ns,
            state_dir,
            resolv_conf,
            agent: None,
        });
        Ok(self.pods.last_mut().expect("just pushed"))
    }

    /// The pod's index in `pods` by id.
    pub fn pod(&mut self, id: &str) -> &mut Pod {
        self.pods
            .iter_mut()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    /// The arguments an agent of `pod` runs with, before `extra`.
    pub fn agent_args(&self, pod: &Pod, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--nats-url".into(),
            self.nats.url_at(&pod.ns.hub_addr),
            "--pod-id".into(),
            pod.id.clone(),
            "--state-dir".into(),
            pod.state_dir.display().to_string(),
            "--resolv-conf".into(),
            pod.resolv_conf.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts (or restarts) the agent of pod `id`.
    pub fn start_agent(&mut self, id: &str, extra: &[&str]) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.id == id)
            .with_context(|| format!("no pod {id}"))?;
        let args = self.agent_args(&self.pods[i], extra);
        let log = self.dir.join(format!("{id}-agent.log"));
        let pod = &mut self.pods[i];
        pod.agent = Some(AgentProcess::spawn(
            &pod.ns.ns,
            &self.agent_bin,
            &args,
            log,
        )?);
        Ok(())
    }

    /// Stops the agent of pod `id` with SIGTERM; returns how long it took.
    pub fn stop_agent(&mut self, id: &str) -> Result<(std::process::ExitStatus, Duration)> {
        let pod = self.pod(id);
        pod.agent
            .as_mut()
            .context("agent not running")?
            .terminate(Duration::from_secs(5))
    }

    /// Kills `nats-server` (an outage).
    pub fn kill_nats(&mut self) {
        self.nats.kill();
    }

    /// Starts `nats-server` again, in the hub, on the same port.
    pub fn restart_nats(&mut self) -> Result<()> {
        let (hub, nats) = (&self.hub, &mut self.nats);
        hub.ns.enter(|| nats.restart())
    }

    /// Runs an async body with the hub's network (where NATS is).
    pub fn block_on<F, Fut, R>(&self, body: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.hub.block_on(body)
    }

    /// The URL the test's own clients (in the hub) use.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for p in &mut self.pods {
            if let Some(a) = p.agent.as_mut() {
                let _ = a.terminate(Duration::from_secs(2));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
