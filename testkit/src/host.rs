//! A machine that hosts sandboxes, played in network namespaces: a "host" namespace where
//! the host agent runs, with an uplink to an "internet" namespace where `nats-server`, the
//! test's clients and the servers out there run.
//!
//! ```text
//!  internet ns                         host ns                       (made by the agent)
//!  nats-server, clients   wan0 ---- up0  weft-agent host   weft-vN ---- eth0  <prefix>N  tap0
//!  198.51.100.1/24                198.51.100.2/24, default via .1
//! ```
//!
//! The host agent runs under `nsenter --net=/run/netns/<host>`: only its network namespace
//! is the test's, its mount namespace stays the machine's, so the namespaces it makes in
//! `/run/netns` are the ones `ip netns` sees here (`ip netns exec` would give it a mount
//! namespace of its own, and its namespaces would be visible to nobody). Each lab has its own
//! `--netns-prefix`, so parallel tests never meet; every namespace of that prefix is deleted
//! when the lab drops, whatever made it. Drop the agents before the lab (declare them after
//! it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::agent::AgentProcess;
use crate::nats::NatsServer;
use crate::netns::{run, veth, Netns};

/// The host's uplink, in the host namespace.
pub const UPLINK: &str = "up0";
/// The internet's end of the uplink.
pub const WAN: &str = "wan0";
/// The host's address on its uplink.
pub const HOST_ADDR: &str = "198.51.100.2";
/// The internet's address: the host's gateway, where NATS and servers listen.
pub const INTERNET_ADDR: &str = "198.51.100.1";

static LABS: AtomicU32 = AtomicU32::new(0);

/// The host and the internet, and NATS out there.
#[derive(Debug)]
pub struct HostLab {
    pub internet: Netns,
    pub host: Netns,
    /// The agent's `--netns-prefix`: unique to this lab.
    pub prefix: String,
    pub nats: NatsServer,
    /// A directory of the lab's own (state, logs), removed on drop.
    pub dir: PathBuf,
}

impl HostLab {
    /// A new lab: both namespaces, the uplink, the host's default route, the host's IPv4
    /// forwarding off (a new namespace may inherit it on: off shows whether the agent turns it
    /// on), NATS in the internet.
    pub fn new(tag: &str) -> Result<HostLab> {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let internet = Netns::new(&format!("{tag}i"))?;
        let host = Netns::new(&format!("{tag}h"))?;
        veth(&host, UPLINK, &internet, WAN)?;
        host.ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", UPLINK])?;
        internet.ip(&["addr", "add", &format!("{INTERNET_ADDR}/24"), "dev", WAN])?;
        host.ip(&["route", "add", "default", "via", INTERNET_ADDR])?;
        host.run("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
        let nats = internet.enter(NatsServer::start)?;
        let dir = std::env::temp_dir().join(format!("weft-hostlab-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(HostLab {
            internet,
            host,
            prefix: format!("wsb{}x{n}-", std::process::id()),
            nats,
            dir,
        })
    }

    /// Where the host agent reaches NATS.
    pub fn nats_url(&self) -> String {
        self.nats.url_at(INTERNET_ADDR)
    }

    /// Slot `n`'s namespace.
    pub fn sandbox(&self, n: u32) -> String {
        format!("{}{n}", self.prefix)
    }

    /// Slot `n`'s guest namespace (`Guest: veth`).
    pub fn guest(&self, n: u32) -> String {
        format!("{}{n}-g", self.prefix)
    }

    /// The flags of a host agent of this lab: its NATS, host id, prefix, state directory,
    /// a 1 s status interval; then `extra`.
    pub fn agent_args(&self, host_id: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "host",
            "--nats-url",
            &self.nats_url(),
            "--host-id",
            host_id,
            "--netns-prefix",
            &self.prefix,
            "--status-interval",
            "1s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push("--state-dir".into());
        args.push(
            self.dir
                .join(format!("state-{host_id}"))
                .display()
                .to_string(),
        );
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Starts `weft-agent host` in the host namespace (network only, see the module).
    pub fn start_agent(&self, bin: &Path, host_id: &str, extra: &[&str]) -> Result<AgentProcess> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host.name()))
            .arg("--")
            .arg(bin)
            .args(self.agent_args(host_id, extra));
        AgentProcess::spawn_command(
            cmd,
            &[],
            self.dir.join(format!("agent-{host_id}-{}.log", now_ms())),
        )
    }

    /// The namespaces of this lab's prefix that `ip netns` lists, sorted.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        let out = run(Command::new("ip").args(["netns", "list"]))?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&self.prefix))
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Runs `program args..` in namespace `ns` (one the agent made, by name).
    pub fn run_in(&self, ns: &str, program: &str, args: &[&str]) -> Result<std::process::Output> {
        run(Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args))
    }

    /// Runs an async test body on a tokio runtime whose threads live in the internet
    /// namespace (where NATS is, and the test's clients).
    pub fn block_on<F, Fut, R>(&self, body: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.internet.block_on(body)
    }

    /// `ip -n <ns> -j <args..>`, parsed.
    pub fn ip_json(&self, ns: &str, args: &[&str]) -> Result<serde_json::Value> {
        let out = run(Command::new("ip").args(["-n", ns, "-j"]).args(args))?;
        serde_json::from_slice(&out.stdout).with_context(|| format!("ip -n {ns} -j {args:?}"))
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Drop for HostLab {
    fn drop(&mut self) {
        // Whatever made them (the agent, a test, a crash half-way), the lab's namespaces go.
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
