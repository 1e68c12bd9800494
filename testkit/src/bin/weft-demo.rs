//! `weft-demo`: the whole weft system in namespaces, live.
//!
//! `nats-server` in a hub namespace (configured as weft ships it: TLS, one nkey user per agent
//! with its own subjects only, a control-plane and a dashboard user; certificates and keys made
//! for the run). A "host" namespace with an uplink `up0` to an "internet" namespace runs
//! `weft-agent host`, which makes two sandboxes (`Guest: veth`), each with a TCP or UDP port
//! forward from the host's uplink address. In each guest namespace it made, a pod agent
//! (`web-1`, `web-2`) configures the guest's `eth0`, its firewall and a userspace WireGuard
//! device; once both have reported their public keys, each pod's next spec names the other as
//! its peer. The host keeps sandboxes apart, so the overlay goes the way it would between two
//! hosts: out through the sandbox's SNAT and the uplink's masquerade to the internet, whose
//! router reflects it (hairpin NAT: web-1 sends to 198.51.100.1:51822, which comes back to
//! the host's 198.51.100.2:51822 from 198.51.100.1:51821, and the other way round) to the
//! host's address, where the other sandbox's UDP port forward takes it in. Statuses of the host and both pods are printed as they arrive.
//! The proof: a ping across the overlay each way, and a TCP connection from the internet to
//! the host's port 8080 answered by a server in web-1's guest. Runs until ctrl-c (or
//! `--for DURATION`), then removes everything it made. Each agent reaches NATS over a control
//! link of its own (`ctl0` to the hub), not over the network it manages.
//!
//! Exit status: 0 when the host and both pods became Healthy, the overlay pings got through
//! and the port forward answered, else 1; 64 on bad usage.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::json;
use weft_schema::{ApplyResult, Encoding, HostSpec, HostStatus, Overall, PodSpec, PodStatus};
use weft_testkit::agent::AgentProcess;
use weft_testkit::control::{decode, ControlPlane};
use weft_testkit::hub::PodNs;
use weft_testkit::identity::Identity;
use weft_testkit::netns::{enter_named, veth, Netns};
use weft_testkit::stack::Stack;

const USAGE: &str = "usage: weft-demo [--for DURATION] [--agent-bin PATH]

Brings up nats-server, a host agent in a host namespace with an uplink to an internet
namespace, two sandboxes it makes, a pod agent in each with a WireGuard overlay between them
and a port forward from the internet to one of them, all in network namespaces; shows the
statuses live, pings across the overlay and connects through the port forward. Ctrl-c (or
the end of --for, e.g. 30s) removes everything. Needs root.

  --for DURATION    exit by itself after DURATION; exit 1 unless the host and both pods
                    became Healthy, the overlay pings got through and the port forward answered
  --agent-bin PATH  the weft-agent binary (default: weft-agent next to this executable)";

/// Set by the SIGINT/SIGTERM handler; everything that waits polls it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const HOST_ID: &str = "host-a";
/// The host's address on its uplink, and the internet's (the host's gateway).
const HOST_ADDR: &str = "198.51.100.2";
const INTERNET_ADDR: &str = "198.51.100.1";
/// The guest's address and gateway, the same in every sandbox (the contract's).
const GUEST_ADDR: &str = "169.254.0.21/30";
const GUEST_GATEWAY: &str = "169.254.0.22";
/// The port of the demo's server in web-1's guest, forwarded from the same port on the host.
const APP_PORT: u16 = 8080;
const WG_PORT: u16 = 51820;

struct Options {
    run_for: Option<Duration>,
    agent_bin: PathBuf,
}

fn main() -> ExitCode {
    // Before anything exists to clean up: a signal from here on ends in Drop of the stack,
    // not in the default action that would leave namespaces behind.
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft-demo: {e:#}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("weft-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options> {
    let mut run_for = None;
    let mut agent_bin = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--for" => {
                let v = args.next().context("--for needs a duration, e.g. 30s")?;
                run_for =
                    Some(humantime::parse_duration(&v).with_context(|| format!("--for {v:?}"))?);
            }
            "--agent-bin" => {
                agent_bin = Some(PathBuf::from(
                    args.next().context("--agent-bin needs a path")?,
                ));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let agent_bin = match agent_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("where this executable is")?
            .with_file_name("weft-agent"),
    };
    if !agent_bin.is_file() {
        bail!(
            "no weft-agent at {} (build it: cargo build -p weft-agent, or pass --agent-bin)",
            agent_bin.display()
        );
    }
    Ok(Options { run_for, agent_bin })
}

/// A pod in a sandbox: its slot, the host port that reaches its WireGuard port, its overlay
/// address and WireGuard interface name.
struct PodPlan {
    id: &'static str,
    slot: u32,
    wg_host_port: u16,
    overlay: String,
    wg_if: String,
}

/// The host and everything made in or under it. Dropped before the stack (declared after it):
/// the agents stop (pods first), then every namespace of the host agent's prefix goes
/// (whatever made it, a half-built slot included), then the host and the internet.
struct Machine {
    pods: Vec<AgentProcess>,
    host_agent: Option<AgentProcess>,
    prefix: String,
    host: PodNs,
    internet: Netns,
}

impl Drop for Machine {
    fn drop(&mut self) {
        for a in &mut self.pods {
            let _ = a.terminate(Duration::from_secs(2));
        }
        if let Some(a) = self.host_agent.as_mut() {
            let _ = a.terminate(Duration::from_secs(2));
        }
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
    }
}

impl Machine {
    /// The host namespace joined to the hub, its uplink to the internet, the internet's
    /// reflection of the overlay's ports back to the host.
    fn new(stack: &mut Stack, plans: &[PodPlan]) -> Result<Machine> {
        let host = stack.hub.add_pod("host")?;
        let internet = Netns::new("internet")?;
        let prefix = format!("weft-sb-{}-", std::process::id());
        let machine = Machine {
            pods: Vec::new(),
            host_agent: None,
            prefix,
            host,
            internet,
        };
        let (host, internet) = (&machine.host.ns, &machine.internet);
        veth(host, "up0", internet, "wan0")?;
        host.ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", "up0"])?;
        internet.ip(&["addr", "add", &format!("{INTERNET_ADDR}/24"), "dev", "wan0"])?;
        host.ip(&["route", "add", "default", "via", INTERNET_ADDR])?;
        internet.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Each pod's WireGuard port on the host, reflected; the reflected packet comes from
        // the port that reflects to its sender, so the endpoint a peer learns from it (a
        // WireGuard peer roams to where packets come from) is the one its spec names.
        let rules = |f: &dyn Fn(&PodPlan, &PodPlan) -> String| {
            plans
                .iter()
                .zip(plans.iter().rev())
                .map(|(to, from)| f(to, from))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let pre = rules(&|to, _| {
            format!(
                "    iifname \"wan0\" udp dport {} dnat to {HOST_ADDR}",
                to.wg_host_port
            )
        });
        let post = rules(&|to, from| {
            format!(
                "    oifname \"wan0\" ip daddr {HOST_ADDR} udp dport {} snat to {INTERNET_ADDR}:{}",
                to.wg_host_port, from.wg_host_port
            )
        });
        let reflect = format!(
            "table ip weft-demo-reflect {{
  chain pre {{
    type nat hook prerouting priority dstnat;
{pre}
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
{post}
  }}
}}
"
        );
        let mut nft = internet
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("spawn nft")?;
        nft.stdin
            .take()
            .context("nft stdin")?
            .write_all(reflect.as_bytes())?;
        anyhow::ensure!(nft.wait()?.success(), "nft -f of the reflection failed");
        Ok(machine)
    }

    fn guest(&self, slot: u32) -> String {
        format!("{}{slot}-g", self.prefix)
    }
}

/// `nsenter --net=/run/netns/<ns> <agent> <args>`: the agent keeps this machine's mount
/// namespace, so the namespaces the host agent makes in `/run/netns` are the ones `ip netns`
/// sees (and the pods' WireGuard sockets are where `wg` looks).
fn spawn_in(
    ns: &str,
    bin: &Path,
    args: &[String],
    identity: Option<&Identity>,
    log: PathBuf,
) -> Result<AgentProcess> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(bin)
        .args(args)
        .args(identity.map(Identity::flags).unwrap_or_default());
    AgentProcess::spawn_command(cmd, &[], log)
}

fn run(opts: &Options) -> Result<bool> {
    anyhow::ensure!(
        weft_testkit::is_root(),
        "needs root (network namespaces, netlink)"
    );
    let started = Instant::now();
    let deadline = opts.run_for.map(|d| started + d);
    let plans: Vec<PodPlan> = ["web-1", "web-2"]
        .iter()
        .enumerate()
        .map(|(i, id)| PodPlan {
            id,
            slot: i as u32 + 1,
            wg_host_port: WG_PORT + 1 + i as u16,
            overlay: format!("10.9.0.{}", i + 1),
            // The userspace UAPI socket path is per machine: names unique to this process.
            wg_if: format!("wgd{}x{}", std::process::id() % 1_000_000, i + 1),
        })
        .collect();

    let mut stack = Stack::new(&opts.agent_bin).context("start the hub and nats-server")?;
    let mut machine = Machine::new(&mut stack, &plans).context("the host and the internet")?;
    println!(
        "weft-demo: nats-server in {} ({}, TLS with a CA made for this run, one nkey user per \
         agent allowed its own subjects only)",
        stack.hub.ns.name(),
        stack.nats_url(),
    );
    println!(
        "weft-demo: host {} (uplink up0 {HOST_ADDR}/24, default via {INTERNET_ADDR}), internet {} \
         (wan0 {INTERNET_ADDR}/24; reflects UDP to {INTERNET_ADDR}:{}-{} back to the host)",
        machine.host.ns.name(),
        machine.internet.name(),
        plans[0].wg_host_port,
        plans[plans.len() - 1].wg_host_port
    );
    let host_identity = stack.add_host_user(HOST_ID)?;
    let host_args: Vec<String> = [
        "host",
        "--nats-url",
        &stack.nats.url_at(&machine.host.hub_addr),
        "--host-id",
        HOST_ID,
        "--netns-prefix",
        &machine.prefix,
        "--status-interval",
        "2s",
        "--state-dir",
        &stack.dir().join("host-state").display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    machine.host_agent = Some(spawn_in(
        machine.host.ns.name(),
        &opts.agent_bin,
        &host_args,
        host_identity.as_ref(),
        stack.dir().join("host-agent.log"),
    )?);
    println!(
        "weft-demo: weft-agent host --host-id {HOST_ID} in {} (pid {}), sandboxes {}<slot>",
        machine.host.ns.name(),
        machine
            .host_agent
            .as_ref()
            .and_then(|a| a.pid())
            .unwrap_or(0),
        machine.prefix
    );

    let latest = Arc::new(Mutex::new(Latest::default()));
    let outcome = (|| -> Result<bool> {
        // The sandboxes first: the guests' namespaces are the host agent's to make.
        let made = stack.block_on(|| async {
            let cp = stack.control_plane().await?;
            let shown = show_statuses(&stack, latest.clone()).await?;
            let r = tokio::select! {
                r = apply_host(&cp, &plans) => r,
                () = stopped(deadline) => Err(anyhow::anyhow!("stopped before the host applied")),
            };
            shown.abort();
            r
        });
        if let Err(e) = made {
            println!("weft-demo: FAILED: {e:#}");
            print_log_tail("host-a", machine.host_agent.as_ref());
            return Ok(false);
        }
        for p in &plans {
            let guest = machine.guest(p.slot);
            let hub_addr = stack.hub.join(&guest)?;
            let identity = stack.add_pod_user(p.id)?;
            let args: Vec<String> = [
                "--nats-url",
                &stack.nats.url_at(&hub_addr),
                "--pod-id",
                p.id,
                "--state-dir",
                &stack
                    .dir()
                    .join(format!("{}-state", p.id))
                    .display()
                    .to_string(),
                "--resolv-conf",
                &stack
                    .dir()
                    .join(format!("{}-resolv.conf", p.id))
                    .display()
                    .to_string(),
                "--status-interval",
                "2s",
                "--wireguard",
                "userspace",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let agent = spawn_in(
                &guest,
                &opts.agent_bin,
                &args,
                identity.as_ref(),
                stack.dir().join(format!("{}-agent.log", p.id)),
            )?;
            println!(
                "weft-demo: pod {} in sandbox {} (guest {guest}): eth0 {GUEST_ADDR} via \
                 {GUEST_GATEWAY}, overlay {} on {}, WireGuard in at {HOST_ADDR}:{} (agent pid {})",
                p.id,
                p.slot,
                p.overlay,
                p.wg_if,
                p.wg_host_port,
                agent.pid().unwrap_or(0)
            );
            machine.pods.push(agent);
        }
        if STOP.load(Ordering::SeqCst) {
            println!("weft-demo: interrupted; cleaning up");
            return Ok(false);
        }

        let (stack, machine) = (&stack, &machine);
        stack.block_on(|| async {
            let shown = show_statuses(stack, latest.clone()).await?;
            let scenario = prove(stack, machine, &plans, &latest);
            let proven = tokio::select! {
                r = scenario => match r {
                    Ok(()) => {
                        println!(
                            "weft-demo: host and both pods Healthy, overlay carries packets both \
                             ways, port forward answers"
                        );
                        true
                    }
                    Err(e) => {
                        println!("weft-demo: FAILED: {e:#}");
                        print_log_tail(HOST_ID, machine.host_agent.as_ref());
                        for (p, a) in plans.iter().zip(&machine.pods) {
                            print_log_tail(p.id, Some(a));
                        }
                        false
                    }
                },
                () = stopped(deadline) => {
                    println!("weft-demo: stopped before everything was proven");
                    false
                }
            };
            match deadline {
                Some(_) => println!("weft-demo: showing statuses until the end of --for"),
                None => println!("weft-demo: showing statuses until ctrl-c"),
            }
            stopped(deadline).await;
            shown.abort();
            Ok::<_, anyhow::Error>(proven)
        })
    })();
    if STOP.load(Ordering::SeqCst) {
        println!("weft-demo: signal received; stopping agents, deleting namespaces");
    } else {
        println!("weft-demo: time is up; stopping agents, deleting namespaces");
    }
    drop(machine);
    outcome
}

/// The host spec: one sandbox per pod, its WireGuard port forwarded (UDP), and web-1's
/// server port (TCP).
fn host_spec(plans: &[PodPlan]) -> Result<HostSpec> {
    let sandboxes: Vec<serde_json::Value> = plans
        .iter()
        .map(|p| {
            let mut forwards = vec![json!({
                "Protocol": "udp", "HostPort": p.wg_host_port, "SandboxPort": WG_PORT
            })];
            if p.slot == 1 {
                forwards.push(json!({
                    "Protocol": "tcp", "HostPort": APP_PORT, "SandboxPort": APP_PORT
                }));
            }
            json!({ "Slot": p.slot, "Guest": "veth", "Egress": true, "PortForwards": forwards })
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "HostId": HOST_ID,
        "Generation": 1,
        "Sandboxes": sandboxes
    }))?)
}

async fn apply_host(cp: &ControlPlane, plans: &[PodPlan]) -> Result<()> {
    let spec = host_spec(plans)?;
    let started = Instant::now();
    loop {
        match cp.request_host(HOST_ID, &spec, Encoding::Json).await {
            Ok(r) if r.result == ApplyResult::Applied => {
                println!(
                    "weft-demo: {HOST_ID} generation {} {:?} in {} us: {} sandboxes",
                    r.generation,
                    r.result,
                    r.apply_micros,
                    plans.len()
                );
                return Ok(());
            }
            Ok(r) => bail!(
                "{HOST_ID} generation {}: {:?}: {}",
                r.generation,
                r.result,
                r.error
            ),
            Err(e) if started.elapsed() > Duration::from_secs(20) => {
                return Err(e).context("the host agent did not answer in 20 s")
            }
            Err(_) if STOP.load(Ordering::SeqCst) => bail!("interrupted"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The latest status of the host and of each pod.
#[derive(Default)]
struct Latest {
    host: Option<HostStatus>,
    pods: BTreeMap<String, PodStatus>,
}

/// Completes on SIGINT/SIGTERM or at `deadline`.
async fn stopped(deadline: Option<Instant>) {
    while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints every status of the host and the pods as it arrives and keeps the latest of each.
async fn show_statuses(
    stack: &Stack,
    latest: Arc<Mutex<Latest>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let client = stack
        .client("dashboard")
        .await
        .context("dashboard connect")?
        .client;
    let mut pods = client.subscribe("weft.pod.*.status").await?;
    let mut hosts = client.subscribe("weft.host.*.status").await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        // The client lives as long as the subscriptions.
        let _client = client;
        loop {
            tokio::select! {
                Some(msg) = pods.next() => match decode::<PodStatus>(&msg) {
                    Ok(s) => {
                        println!("{}", status_line(&s));
                        latest.lock().unwrap().pods.insert(s.pod_id.clone(), s);
                    }
                    Err(e) => println!("{}: undecodable status: {e:#}", msg.subject),
                },
                Some(msg) = hosts.next() => match decode::<HostStatus>(&msg) {
                    Ok(s) => {
                        println!("{}", host_line(&s));
                        latest.lock().unwrap().host = Some(s);
                    }
                    Err(e) => println!("{}: undecodable status: {e:#}", msg.subject),
                },
                else => break,
            }
        }
    }))
}

/// One compact line: host, generation, health, uplink, forwarding, each sandbox.
fn host_line(s: &HostStatus) -> String {
    let mut line = format!(
        "{} {:<6} gen {:<2} {:<8} uplink {} forwarding {}",
        clock(s.published_at_unix),
        s.host_id,
        s.observed_generation,
        format!("{:?}", s.overall),
        s.uplink.as_deref().unwrap_or("-"),
        if s.forwarding { "on" } else { "off" }
    );
    for b in &s.sandboxes {
        let forwards = b
            .port_forwards
            .iter()
            .map(|f| format!("{} {}->{}", f.protocol, f.host_port, f.sandbox_port))
            .collect::<Vec<_>>()
            .join(",");
        line += &format!(
            " [slot {} {} host {} veth {} {} {:?} fwd {forwards}]",
            b.slot,
            b.namespace,
            b.host_ip,
            b.veth_ip,
            if b.up { "up" } else { "down" },
            b.overall
        );
    }
    if s.drift_repairs > 0 {
        line += &format!(" drift repairs {}", s.drift_repairs);
    }
    if !s.last_error.is_empty() {
        line += &format!(" error: {}", s.last_error);
    }
    line
}

/// One compact line: pod, generation, health, address, firewall rules, peers.
fn status_line(s: &PodStatus) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut line = format!(
        "{} {:<6} gen {:<2} {:<8}",
        clock(s.published_at_unix),
        s.pod_id,
        s.observed_generation,
        format!("{:?}", s.overall)
    );
    match &s.network {
        Some(n) => line += &format!(" addr {}", n.addresses.join(",")),
        None => line += " addr -",
    }
    match &s.firewall {
        Some(f) => line += &format!(" fw in {} out {}", f.ingress_rules, f.egress_rules),
        None => line += " fw -",
    }
    match &s.wireguard {
        Some(w) if w.peers.is_empty() => {
            line += &format!(" wg {} key {} no peers", w.interface, short(&w.public_key))
        }
        Some(w) => {
            line += &format!(" wg {}", w.interface);
            for p in &w.peers {
                let hs = match p.last_handshake_unix {
                    0 => "no handshake".to_owned(),
                    t => format!("handshake {}s ago", now.saturating_sub(t)),
                };
                line += &format!(
                    " [peer {} {hs} rx {} B tx {} B]",
                    short(&p.public_key),
                    p.rx_bytes,
                    p.tx_bytes
                );
            }
        }
        None => line += " wg -",
    }
    if !s.last_error.is_empty() {
        line += &format!(" error: {}", s.last_error);
    }
    line
}

/// `HH:MM:SS` UTC of a Unix time.
fn clock(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

fn short(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

/// The pods' specs in two steps (keys first, then peers), Healthy everywhere, pings across
/// the overlay, then a connection from the internet through the host's port forward.
async fn prove(
    stack: &Stack,
    machine: &Machine,
    plans: &[PodPlan],
    latest: &Mutex<Latest>,
) -> Result<()> {
    let cp = stack.control_plane().await?;

    // Generation 1: no peers yet; each agent generates its key and reports the public half.
    for plan in plans {
        let spec = pod_spec(plan, 1, None)?;
        request_when_ready(&cp, plan.id, &spec).await?;
    }
    let mut keys = Vec::new();
    for plan in plans {
        let key = wait_for(Duration::from_secs(20), "a public key", || {
            let latest = latest.lock().unwrap();
            latest.pods.get(plan.id).and_then(|s| {
                s.wireguard
                    .as_ref()
                    .filter(|w| !w.public_key.is_empty())
                    .map(|w| w.public_key.clone())
            })
        })
        .await
        .with_context(|| format!("pod {}", plan.id))?;
        println!("weft-demo: {} public key {key}", plan.id);
        keys.push(key);
    }

    // Generation 2: each names the other as its peer, at the internet address that reflects
    // to the other's port forward on the host.
    for (i, plan) in plans.iter().enumerate() {
        let j = 1 - i;
        let peer = json!({
            "PublicKey": keys[j],
            "Endpoint": format!("{INTERNET_ADDR}:{}", plans[j].wg_host_port),
            "AllowedIps": [format!("{}/32", plans[j].overlay)],
            "PersistentKeepaliveSeconds": 5
        });
        let spec = pod_spec(plan, 2, Some(peer))?;
        request_when_ready(&cp, plan.id, &spec).await?;
    }
    for plan in plans {
        wait_for(Duration::from_secs(30), "Healthy at generation 2", || {
            let latest = latest.lock().unwrap();
            latest
                .pods
                .get(plan.id)
                .filter(|s| s.observed_generation == 2 && s.overall == Overall::Healthy)
                .map(|_| ())
        })
        .await
        .with_context(|| format!("pod {}", plan.id))?;
    }
    wait_for(
        Duration::from_secs(20),
        "a Healthy host with both sandboxes up",
        || {
            let latest = latest.lock().unwrap();
            latest
                .host
                .as_ref()
                .filter(|h| {
                    h.overall == Overall::Healthy
                        && h.sandboxes.len() == plans.len()
                        && h.sandboxes.iter().all(|b| b.up)
                })
                .map(|_| ())
        },
    )
    .await
    .context("host")?;

    // A packet across the overlay, each way (the first may wait for a handshake).
    for (i, plan) in plans.iter().enumerate() {
        let to = &plans[1 - i].overlay;
        let guest = machine.guest(plan.slot);
        let started = Instant::now();
        loop {
            let out = tokio::process::Command::new("ip")
                .args(["netns", "exec", &guest, "ping", "-c1", "-W1", to])
                .output()
                .await
                .context("spawn ping")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let summary = text
                .lines()
                .filter(|l| l.contains("bytes from") || l.contains("packet loss"))
                .collect::<Vec<_>>()
                .join("; ");
            if out.status.success() {
                println!("weft-demo: ip netns exec {guest} ping -c1 {to}: {summary}");
                break;
            }
            if started.elapsed() > Duration::from_secs(15) || STOP.load(Ordering::SeqCst) {
                bail!("{} cannot ping {to} over the overlay: {summary}", plan.id);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // From the internet to the host's uplink address, to the server in web-1's guest.
    let guest = machine.guest(plans[0].slot);
    let greeting = format!("hello from {} in {guest}\n", plans[0].id);
    let internet = machine.internet.name().to_owned();
    let answer = tokio::task::spawn_blocking(move || port_forward(&guest, &internet, &greeting))
        .await
        .context("port forward task")??;
    println!(
        "weft-demo: from {}: connected to {HOST_ADDR}:{APP_PORT}, answered {:?}",
        machine.internet.name(),
        answer.trim_end()
    );
    Ok(())
}

/// Listens on `APP_PORT` in `guest`, connects from `internet` to the host's port forward and
/// returns what the server wrote.
fn port_forward(guest: &str, internet: &str, greeting: &str) -> Result<String> {
    let listener = enter_named(guest, || TcpListener::bind(("0.0.0.0", APP_PORT)))
        .with_context(|| format!("listen on {APP_PORT} in {guest}"))?;
    listener.set_nonblocking(true)?;
    let greeting = greeting.to_owned();
    let server = std::thread::spawn(move || -> Result<()> {
        let started = Instant::now();
        loop {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false)?;
                    conn.write_all(greeting.as_bytes())?;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if started.elapsed() > Duration::from_secs(10) {
                        bail!("no connection reached the server in 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    });
    let to: SocketAddr = format!("{HOST_ADDR}:{APP_PORT}").parse()?;
    let answer = enter_named(internet, || -> Result<String> {
        let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .with_context(|| format!("connect to {to} from the internet"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    });
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))?;
    let answer = answer?;
    served?;
    Ok(answer)
}

/// The demo spec of one pod: the guest's network, a firewall, WireGuard with at most one
/// peer.
fn pod_spec(plan: &PodPlan, generation: u64, peer: Option<serde_json::Value>) -> Result<PodSpec> {
    Ok(serde_json::from_value(json!({
        "PodId": plan.id,
        "Generation": generation,
        "Network": {
            "Interface": "eth0",
            "Address": GUEST_ADDR,
            "Gateway": GUEST_GATEWAY,
            "Mtu": 1500,
            "Nameservers": ["192.0.2.53"],
            "SearchDomains": ["pods.example"]
        },
        "Firewall": {
            "Ingress": [
                { "Protocol": "icmp", "Sources": ["10.9.0.0/24"], "Comment": "ping over the overlay" },
                { "Protocol": "tcp", "Ports": [APP_PORT.to_string()],
                  "Sources": ["198.51.100.0/24", "10.9.0.0/24"], "Comment": "app" }
            ],
            "Egress": [ { "Destinations": ["203.0.113.0/24"], "Comment": "no test-net-3" } ]
        },
        "WireGuard": {
            "Interface": plan.wg_if,
            "Address": format!("{}/24", plan.overlay),
            "ListenPort": WG_PORT,
            "Peers": peer.into_iter().collect::<Vec<_>>()
        }
    }))?)
}

/// Requests `spec` until the agent answers (it subscribes a moment after starting) and
/// insists on `Applied`.
async fn request_when_ready(cp: &ControlPlane, pod: &str, spec: &PodSpec) -> Result<()> {
    let started = Instant::now();
    loop {
        match cp.request(pod, spec, Encoding::Json).await {
            Ok(r) if r.result == ApplyResult::Applied => {
                println!(
                    "weft-demo: {pod} generation {} {:?} in {} us",
                    r.generation, r.result, r.apply_micros
                );
                return Ok(());
            }
            Ok(r) => bail!(
                "{pod} generation {}: {:?}: {}",
                r.generation,
                r.result,
                r.error
            ),
            Err(e) if started.elapsed() > Duration::from_secs(20) => {
                return Err(e).with_context(|| format!("{pod}'s agent did not answer in 20 s"))
            }
            Err(_) if STOP.load(Ordering::SeqCst) => bail!("interrupted"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls `check` until it gives a value, `timeout` passes or a signal arrives.
async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted waiting for {what}");
        }
        if started.elapsed() > timeout {
            bail!("no {what} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_log_tail(who: &str, agent: Option<&AgentProcess>) {
    let Some(agent) = agent else { return };
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    println!("--- last lines of {who}'s agent log ---");
    for l in &lines[lines.len().saturating_sub(15)..] {
        println!("{l}");
    }
}
