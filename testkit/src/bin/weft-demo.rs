//! `weft-demo`: a whole local weft stack in namespaces, live.
//!
//! `nats-server` in a hub namespace (configured as weft ships it: TLS, one nkey user per pod
//! with its own subjects only, a control-plane and a dashboard user; certificates and keys
//! made for the run), two pods (`web-1`, `web-2`) each running the real `weft-agent`, a LAN
//! router between them. Each pod gets a spec with a network section, a
//! firewall and a userspace WireGuard device with a key the agent generates; once both have
//! reported their public keys, each pod's next spec names the other as its peer (endpoint
//! through the router). Statuses are printed as they arrive, one line per pod per status.
//! Once both pods are Healthy, a ping crosses the overlay each way to prove it carries
//! packets. Runs until ctrl-c (or `--for DURATION`), then removes everything it made.
//!
//! Exit status: 0 when both pods became Healthy and the overlay pings got through, else 1;
//! 64 on bad usage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::json;
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec, PodStatus};
use weft_testkit::control::{decode, ControlPlane};
use weft_testkit::stack::{Pod, Stack};

const USAGE: &str = "usage: weft-demo [--for DURATION] [--agent-bin PATH]

Brings up nats-server, two pods with weft-agent and a WireGuard overlay between them in
network namespaces, shows their statuses live and pings across the overlay. Ctrl-c (or the
end of --for, e.g. 30s) removes everything. Needs root.

  --for DURATION    exit by itself after DURATION; exit 1 unless both pods became Healthy
                    and the overlay pings got through
  --agent-bin PATH  the weft-agent binary (default: weft-agent next to this executable)";

/// Set by the SIGINT/SIGTERM handler; everything that waits polls it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

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

/// The pods, their overlay addresses and WireGuard interface names.
struct PodPlan {
    id: &'static str,
    overlay: String,
    wg_if: String,
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
            overlay: format!("10.9.0.{}", i + 1),
            // The userspace UAPI socket path is per host: names unique to this process.
            wg_if: format!("wgd{}x{}", std::process::id() % 1_000_000, i + 1),
        })
        .collect();

    let mut stack = Stack::new(&opts.agent_bin).context("start the hub and nats-server")?;
    println!(
        "weft-demo: nats-server in {} ({}, TLS with a CA made for this run, one nkey user per \
         pod allowed its own subjects only); router {}",
        stack.hub.ns.name(),
        stack.nats_url(),
        stack.router.name()
    );
    for p in &plans {
        stack.add_pod(p.id)?;
        stack.start_agent(
            p.id,
            &["--status-interval", "2s", "--wireguard", "userspace"],
        )?;
        let pod = stack.pod(p.id);
        println!(
            "weft-demo: pod {} in {}: eth0 {} via {}, overlay {} on {} (agent pid {})",
            pod.id,
            pod.ns.ns.name(),
            pod.address(),
            pod.gateway(),
            p.overlay,
            p.wg_if,
            pod.agent.as_ref().and_then(|a| a.pid()).unwrap_or(0)
        );
    }
    if STOP.load(Ordering::SeqCst) {
        println!("weft-demo: interrupted; cleaning up");
        return Ok(false);
    }

    let stack = &stack;
    let proven = stack.block_on(|| async {
        let latest = Arc::new(Mutex::new(BTreeMap::<String, PodStatus>::new()));
        let shown = show_statuses(stack, latest.clone()).await?;
        let scenario = prove(stack, &plans, &latest);
        let proven = tokio::select! {
            r = scenario => match r {
                Ok(()) => {
                    println!("weft-demo: both pods Healthy, overlay carries packets both ways");
                    true
                }
                Err(e) => {
                    println!("weft-demo: FAILED: {e:#}");
                    for pod in &stack.pods {
                        print_log_tail(pod);
                    }
                    false
                }
            },
            () = stopped(deadline) => {
                println!("weft-demo: stopped before both pods were Healthy and the pings got through");
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
    })?;
    if STOP.load(Ordering::SeqCst) {
        println!("weft-demo: signal received; stopping agents, deleting namespaces");
    } else {
        println!("weft-demo: time is up; stopping agents, deleting namespaces");
    }
    Ok(proven)
}

/// Completes on SIGINT/SIGTERM or at `deadline`.
async fn stopped(deadline: Option<Instant>) {
    while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints every status of every pod as it arrives and keeps the latest per pod.
async fn show_statuses(
    stack: &Stack,
    latest: Arc<Mutex<BTreeMap<String, PodStatus>>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let client = stack
        .client("dashboard")
        .await
        .context("dashboard connect")?
        .client;
    let mut sub = client.subscribe("weft.pod.*.status").await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        // The client lives as long as the subscription.
        let _client = client;
        while let Some(msg) = sub.next().await {
            match decode::<PodStatus>(&msg) {
                Ok(s) => {
                    println!("{}", status_line(&s));
                    latest.lock().unwrap().insert(s.pod_id.clone(), s);
                }
                Err(e) => println!("{}: undecodable status: {e:#}", msg.subject),
            }
        }
    }))
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

/// Applies the specs in two steps (keys first, then peers), waits for Healthy, pings.
async fn prove(
    stack: &Stack,
    plans: &[PodPlan],
    latest: &Mutex<BTreeMap<String, PodStatus>>,
) -> Result<()> {
    let cp = stack.control_plane().await?;
    let pods: Vec<&Pod> = plans
        .iter()
        .map(|p| stack.pods.iter().find(|q| q.id == p.id).expect("added"))
        .collect();

    // Generation 1: no peers yet; each agent generates its key and reports the public half.
    for (plan, pod) in plans.iter().zip(&pods) {
        let spec = pod_spec(plan, pod, 1, None)?;
        request_when_ready(&cp, plan.id, &spec).await?;
    }
    let mut keys = Vec::new();
    for plan in plans {
        let key = wait_for(Duration::from_secs(20), "a public key", || {
            let latest = latest.lock().unwrap();
            latest.get(plan.id).and_then(|s| {
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

    // Generation 2: each names the other as its peer, reached through the router.
    for (i, (plan, pod)) in plans.iter().zip(&pods).enumerate() {
        let j = 1 - i;
        let peer = json!({
            "PublicKey": keys[j],
            "Endpoint": format!("{}:51820", pods[j].address().split('/').next().unwrap()),
            "AllowedIps": [format!("{}/32", plans[j].overlay)],
            "PersistentKeepaliveSeconds": 5
        });
        let spec = pod_spec(plan, pod, 2, Some(peer))?;
        request_when_ready(&cp, plan.id, &spec).await?;
    }
    for plan in plans {
        wait_for(Duration::from_secs(30), "Healthy at generation 2", || {
            let latest = latest.lock().unwrap();
            latest
                .get(plan.id)
                .filter(|s| s.observed_generation == 2 && s.overall == Overall::Healthy)
                .map(|_| ())
        })
        .await
        .with_context(|| format!("pod {}", plan.id))?;
    }

    // The proof: a packet across the overlay, each way (the first may wait for a handshake).
    for (i, pod) in pods.iter().enumerate() {
        let to = &plans[1 - i].overlay;
        let started = Instant::now();
        loop {
            let out = tokio::process::Command::from(pod.ns.ns.command("ping"))
                .args(["-c1", "-W1", to])
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
                println!(
                    "weft-demo: ip netns exec {} ping -c1 {to}: {summary}",
                    pod.ns.ns.name()
                );
                break;
            }
            if started.elapsed() > Duration::from_secs(15) || STOP.load(Ordering::SeqCst) {
                bail!("{} cannot ping {to} over the overlay: {summary}", pod.id);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The demo spec of one pod: network, firewall, WireGuard with at most one peer.
fn pod_spec(
    plan: &PodPlan,
    pod: &Pod,
    generation: u64,
    peer: Option<serde_json::Value>,
) -> Result<PodSpec> {
    Ok(serde_json::from_value(json!({
        "PodId": plan.id,
        "Generation": generation,
        "Network": {
            "Interface": "eth0",
            "Address": pod.address(),
            "Gateway": pod.gateway(),
            "Mtu": 1500,
            "Nameservers": ["192.0.2.53"],
            "SearchDomains": ["pods.example"]
        },
        "Firewall": {
            "Ingress": [
                { "Protocol": "icmp", "Sources": ["10.9.0.0/24"], "Comment": "ping over the overlay" },
                { "Protocol": "tcp", "Ports": ["8080"], "Sources": ["10.0.0.0/16", "10.9.0.0/24"],
                  "Comment": "app" }
            ],
            "Egress": [ { "Destinations": ["203.0.113.0/24"], "Comment": "no test-net-3" } ]
        },
        "WireGuard": {
            "Interface": plan.wg_if,
            "Address": format!("{}/24", plan.overlay),
            "ListenPort": 51820,
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

fn print_log_tail(pod: &Pod) {
    let Some(agent) = &pod.agent else { return };
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    println!("--- last lines of {}'s agent log ---", pod.id);
    for l in &lines[lines.len().saturating_sub(15)..] {
        println!("{l}");
    }
}
