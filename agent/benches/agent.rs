//! The whole agent, as a control plane sees it: the real `weft-agent` binary in a pod
//! namespace of a [`Stack`], `nats-server` in the hub, the bench's clients in the hub.
//!
//! `cargo bench -p weft-agent --bench agent` runs the full pass against the release agent
//! (cargo builds `target/release/weft-agent` for the bench: `CARGO_BIN_EXE_weft-agent`):
//!
//! - request latency: 1,000 small specs (firewall only, each a new generation) sent as
//!   requests one at a time, time to the `Applied` reply; interleaved with a bare NATS
//!   request/reply round trip to a trivial responder in the hub, so the difference is what
//!   the agent adds (decode, validate, one nftables batch, read-back, reply) plus the hop
//!   over the pod's control link.
//! - burst convergence: 1,000 specs published back to back; time until a status shows the
//!   last generation, and how many applies the agent did (one `"message":"applied"` line
//!   per apply in its `--log-format json` log).
//! - idle cost: with a spec holding a firewall, a network section and a userspace WireGuard
//!   peer applied, RSS (`VmRSS`) and CPU (`utime+stime` from `/proc/<pid>/stat`) over a
//!   minute of idling at the default status interval (5 s).
//!
//! Without `--bench` (as `cargo test --all-targets` runs it, against the debug agent) it is
//! a smoke pass of a few seconds: tiny sizes, a one-second idle, same assertions.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec};
use weft_testkit::control::{headers, ControlPlane, Dashboard};
use weft_testkit::natsconf::Permissions;
use weft_testkit::require_root;
use weft_testkit::stack::{Pod, Stack};

struct Sizes {
    requests: u64,
    burst: u64,
    idle: Duration,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            requests: 1000,
            burst: 1000,
            idle: Duration::from_secs(60),
        }
    } else {
        Sizes {
            requests: 20,
            burst: 20,
            idle: Duration::from_secs(1),
        }
    };
    require_root();

    let agent_bin = Path::new(env!("CARGO_BIN_EXE_weft-agent"));
    let mut stack = Stack::new(agent_bin).expect("stack");
    stack.add_pod("bench").expect("pod");
    stack
        .start_agent(
            "bench",
            &["--log-format", "json", "--wireguard", "userspace"],
        )
        .expect("start agent");
    let pid = stack.pods[0].agent.as_ref().unwrap().pid().unwrap();
    // The bare round trip's two ends, as users of the same server (TLS and auth included).
    let echo_permissions = |publish: &str, subscribe: &str, responds| Permissions {
        publish: vec![publish.into()],
        subscribe: vec![subscribe.into()],
        allow_responses: responds,
    };
    stack
        .add_user("echo", echo_permissions("_nothing", "bench.echo", true))
        .expect("echo user");
    stack
        .add_user(
            "echo-client",
            echo_permissions("bench.echo", "_INBOX.>", false),
        )
        .expect("echo client user");

    let report = stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "bench").await.unwrap();
        let _echo = Echo::start(stack.client("echo").await.unwrap().client).await;
        let echo_client = stack.client("echo-client").await.unwrap().client;
        wait_for_agent(&cp).await;

        // Request latency, agent and bare NATS interleaved.
        let mut agent = Vec::new();
        let mut apply = Vec::new();
        let mut nats = Vec::new();
        let mut generation = 1;
        for _ in 0..sizes.requests {
            generation += 1;
            let start = Instant::now();
            let r = echo_client
                .request("bench.echo", Bytes::new())
                .await
                .unwrap();
            nats.push(start.elapsed());
            assert!(r.payload.is_empty());

            let spec = small_spec(generation);
            let start = Instant::now();
            let r = cp.request("bench", &spec, Encoding::Json).await.unwrap();
            agent.push(start.elapsed());
            assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
            assert_eq!(r.generation, generation);
            apply.push(Duration::from_micros(r.apply_micros));
        }

        // Burst: publish without waiting, then watch the status.
        let before_burst = generation;
        let since = Instant::now();
        for _ in 0..sizes.burst {
            generation += 1;
            cp.client
                .publish_with_headers(
                    "weft.pod.bench.spec",
                    headers(Encoding::Json),
                    Encoding::Json.encode(&small_spec(generation)).into(),
                )
                .await
                .unwrap();
        }
        cp.client.flush().await.unwrap();
        let last = generation;
        dash.wait_for(
            Duration::from_secs(60),
            "the burst's last generation",
            since,
            |s| s.observed_generation == last && s.overall == Overall::Healthy,
        )
        .await;
        let converged = since.elapsed();

        // Idle with every subsystem in use.
        generation += 1;
        let spec = full_spec(&stack.pods[0], generation);
        let r = cp.request("bench", &spec, Encoding::Json).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let since = Instant::now();
        let s = dash
            .wait_for(
                Duration::from_secs(10),
                "a healthy status with all three subsystems",
                since,
                |s| s.observed_generation == generation && s.overall == Overall::Healthy,
            )
            .await;
        assert!(s.network.is_some() && s.firewall.is_some());
        assert_eq!(s.wireguard.as_ref().unwrap().peers.len(), 1, "{s:?}");
        // Let the apply's own work settle before the window opens.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss_before, ticks_before) = proc_sample(pid);
        let start = Instant::now();
        tokio::time::sleep(sizes.idle).await;
        let (rss_after, ticks_after) = proc_sample(pid);
        let window = start.elapsed();
        assert!(dash.errors().is_empty(), "{:?}", dash.errors());

        Report {
            agent,
            apply,
            nats,
            before_burst,
            last,
            converged,
            rss_before,
            rss_after,
            cpu_ticks: ticks_after - ticks_before,
            window,
        }
    });

    let log = stack.pods[0].agent.as_ref().unwrap().log();
    let applies = applies_after(&log, report.before_burst, report.last);
    assert!(applies >= 1, "no apply of the burst in the log");
    assert!(stack.pods[0].agent.as_mut().unwrap().running());

    if full {
        report.print(sizes.burst, applies);
    } else {
        println!(
            "agent bench smoke pass ok ({} requests, burst of {} in {applies} applies, {:?} idle); \
             run with --bench for figures",
            sizes.requests, sizes.burst, sizes.idle
        );
    }
}

struct Report {
    agent: Vec<Duration>,
    /// `ApplyMicros` of each reply: the apply alone, from its start to the kernel's
    /// acknowledgement of its last write.
    apply: Vec<Duration>,
    nats: Vec<Duration>,
    before_burst: u64,
    last: u64,
    converged: Duration,
    rss_before: u64,
    rss_after: u64,
    cpu_ticks: u64,
    window: Duration,
}

impl Report {
    fn print(mut self, burst: u64, applies: usize) {
        self.agent.sort();
        self.apply.sort();
        self.nats.sort();
        let n = self.agent.len();
        let (a50, a99) = (pct(&self.agent, 50), pct(&self.agent, 99));
        let (n50, n99) = (pct(&self.nats, 50), pct(&self.nats, 99));
        let (k50, k99) = (pct(&self.apply, 50), pct(&self.apply, 99));
        println!("weft-agent (release) in a pod namespace, nats-server and clients in the hub");
        println!();
        println!("request latency, {n} requests each, interleaved     p50 (us)    p99 (us)");
        println!(
            "  spec request -> Applied reply (1 generation each) {:>9.0}   {:>9.0}",
            us(a50),
            us(a99)
        );
        println!(
            "  bare NATS request/reply (responder in the hub)    {:>9.0}   {:>9.0}",
            us(n50),
            us(n99)
        );
        println!(
            "  difference (what the agent adds)                  {:>9.0}   {:>9.0}",
            us(a50) - us(n50),
            us(a99) - us(n99)
        );
        println!(
            "  of which the apply itself (reply's ApplyMicros)   {:>9.0}   {:>9.0}",
            us(k50),
            us(k99)
        );
        println!();
        println!("burst convergence");
        println!(
            "  {burst} specs published back to back: last generation in a status after {:.1} ms, \
             {applies} applies",
            self.converged.as_secs_f64() * 1e3
        );
        println!();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = self.cpu_ticks as f64 / hz;
        println!(
            "idle, {:.1} s, spec with network, firewall and a userspace WireGuard peer, status every 5 s",
            self.window.as_secs_f64()
        );
        println!(
            "  RSS {:.1} MiB before, {:.1} MiB after; CPU {:.2} s = {:.3} %",
            self.rss_before as f64 / 1024.0,
            self.rss_after as f64 / 1024.0,
            cpu,
            cpu / self.window.as_secs_f64() * 100.0
        );
    }
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() * p).div_ceil(100)).saturating_sub(1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A trivial responder in the hub: the round trip a request costs without any agent.
struct Echo(tokio::task::JoinHandle<()>);

impl Echo {
    async fn start(client: async_nats::Client) -> Echo {
        let mut sub = client.subscribe("bench.echo").await.unwrap();
        client.flush().await.unwrap();
        Echo(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    let _ = client.publish(reply, Bytes::new()).await;
                }
            }
        }))
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Requests generation 1 until the agent has subscribed (no responders until then).
async fn wait_for_agent(cp: &ControlPlane) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cp.request("bench", &small_spec(1), Encoding::Json).await {
            Ok(r) => {
                assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
                return;
            }
            Err(e) if Instant::now() > deadline => panic!("agent did not answer in 20 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A firewall-only spec whose port and comment encode the generation.
fn small_spec(generation: u64) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": "bench", "Generation": generation,
        "Firewall": { "Ingress": [ { "Protocol": "tcp",
            "Ports": [ (1000 + generation % 60000).to_string() ],
            "Comment": format!("generation {generation}") } ] }
    }))
    .unwrap()
}

/// Every subsystem: network, firewall, a userspace WireGuard device with one peer.
fn full_spec(pod: &Pod, generation: u64) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": "bench", "Generation": generation,
        "Network": {
            "Interface": "eth0", "Address": pod.address(), "Gateway": pod.gateway(),
            "Mtu": 1400, "Nameservers": ["192.0.2.53"]
        },
        "Firewall": {
            "Ingress": [ { "Protocol": "tcp", "Ports": ["22", "8000-8080"],
                           "Sources": ["10.0.0.0/8"] } ],
            "Egress": [ { "Destinations": ["203.0.113.0/24"] } ]
        },
        "WireGuard": {
            // Unique on the host: the userspace UAPI socket path is per host.
            "Interface": format!("wgb{}", std::process::id() % 1_000_000),
            "Address": "10.9.0.1/24",
            "Peers": [ { "PublicKey": "6aA5WnBB2fA1ZoY4R8M/rZ1xh8+0D+/Q/+cGhbNnl2U=",
                         "Endpoint": "10.0.200.5:51820", "AllowedIps": ["10.9.0.2/32"],
                         "PersistentKeepaliveSeconds": 25 } ]
        }
    }))
    .unwrap()
}

/// `VmRSS` in KiB and `utime + stime` in clock ticks.
fn proc_sample(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields are counted after its closing parenthesis,
    // where field 3 (state) comes first, so utime (14) and stime (15) are 11 and 12.
    let rest = &stat[stat.rfind(')').expect("comm in /proc/<pid>/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

/// Applies logged for generations in `(after, upto]`.
fn applies_after(log: &str, after: u64, upto: u64) -> usize {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "applied")
        .filter(|v| {
            v["fields"]["generation"]
                .as_u64()
                .is_some_and(|g| g > after && g <= upto)
        })
        .count()
}
