//! WireGuard: iperf3 through a userspace (boringtun) tunnel vs over the bare veth underneath
//! it, and the time `WireGuardManager::apply` takes for 100- and 1,000-peer specs (a fresh
//! device, a re-apply that changes nothing, and a change of one peer), in one run. Also the
//! pure rendering of the kernel's generic netlink messages for 1,000 and 10,000 peers.
//!
//! `cargo bench -p weft-agent --bench wireguard` runs it fully (needs root and iperf3);
//! without `--bench` (as `cargo test --all-targets` runs it) it makes a quick pass with tiny
//! sizes that still checks every path works.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use weft_agent::dataplane::error_line;
use weft_agent::dataplane::netlink::genl::Genl;
use weft_agent::dataplane::rtnl::Rtnl;
use weft_agent::dataplane::subsystem::Subsystem;
use weft_agent::dataplane::wireguard::kernel;
use weft_agent::dataplane::wireguard::keys;
use weft_agent::dataplane::wireguard::plan::{self, ObservedDevice};
use weft_agent::dataplane::wireguard::{Mode, WireGuardManager};
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::validate::{IfName, Peer, WireGuard};
use weft_testkit::wireguard::NsThread;
use weft_testkit::{require_root, veth, wait_until, Netns};

struct Agent {
    rtnl: Rtnl,
    wg: WireGuardManager,
}

fn agent(ns: &Netns, state_dir: &Path) -> NsThread<Agent> {
    let dir = state_dir.to_owned();
    NsThread::spawn(ns, move || Agent {
        rtnl: Rtnl::open().expect("open rtnetlink"),
        wg: WireGuardManager::new(
            Mode::Userspace,
            &dir,
            Genl::open().expect("open generic netlink"),
        ),
    })
}

/// Applies `spec` and returns how long `apply` took.
fn timed_apply(pod: &NsThread<Agent>, spec: Option<&WireGuard>) -> Duration {
    let spec = spec.cloned();
    pod.run(move |a| {
        let start = Instant::now();
        a.wg.prepare(spec.as_ref())
            .and_then(|()| a.wg.apply(&mut a.rtnl, &spec))
            .map_err(|e| error_line(&e))
            .expect("apply");
        start.elapsed()
    })
}

fn device(ifname: &str, address: &str, port: u16, key: &SecretKey, peers: Vec<Peer>) -> WireGuard {
    WireGuard {
        interface: IfName::parse(ifname).unwrap(),
        address: address.parse().unwrap(),
        listen_port: port,
        private_key: Some(key.clone()),
        peers,
        mtu: 1420,
        default_route: None,
    }
}

fn synthetic_peers(n: u32) -> Vec<Peer> {
    (0..n)
        .map(|i| {
            let mut key = [7u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            Peer {
                public_key: PublicKey(key),
                endpoint: Some(
                    format!("203.0.113.{}:{}", i % 250 + 1, 40_000 + i % 20_000)
                        .parse()
                        .unwrap(),
                ),
                allowed_ips: vec![format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
                    .parse()
                    .unwrap()],
                persistent_keepalive: Some(25),
                preshared_key: None,
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ifname(tag: char, n: u32) -> String {
    format!("wgb{}{tag}{n}", std::process::id() % 100_000)
}

/// Bits per second from one iperf3 run from `client` to `server_ip` (server in `server`).
fn iperf(client: &Netns, server: &Netns, server_ip: &str, seconds: u32) -> f64 {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-1", "-B", server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 server");
    let out = wait_until(Duration::from_secs(5), "iperf3 server to listen", || {
        let out = client
            .command("iperf3")
            .args(["-c", server_ip, "-t", &seconds.to_string(), "-J"])
            .output()
            .map_err(|e| e.to_string())?;
        // iperf3 3.12 with -J exits 0 even when it could not connect: read its JSON.
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        match json.get("error") {
            None if out.status.success() => Ok(json),
            _ => Err(json.to_string()),
        }
    });
    let _ = srv.kill();
    let _ = srv.wait();
    let json = out;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no bits_per_second in {json}"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    require_root();
    render_bench(full);

    let a = Netns::new("wgbench-a").unwrap();
    let b = Netns::new("wgbench-b").unwrap();
    veth(&a, "eth0", &b, "eth0").unwrap();
    a.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])
        .unwrap();
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .unwrap();
    let state = std::env::temp_dir().join(format!("weft-wg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();

    throughput_bench(full, &a, &b, &state);
    apply_bench(full, &a, &state);
    let _ = std::fs::remove_dir_all(&state);
}

fn throughput_bench(full: bool, a: &Netns, b: &Netns, state: &Path) {
    let (key_a, key_b) = (keys::generate(), keys::generate());
    let (if_a, if_b) = (ifname('t', 0), ifname('t', 1));
    let peer = |key: &SecretKey, endpoint: &str, allowed: &str| Peer {
        public_key: keys::public_key(key),
        endpoint: Some(endpoint.parse().unwrap()),
        allowed_ips: vec![allowed.parse().unwrap()],
        persistent_keepalive: None,
        preshared_key: None,
    };
    let pod_a = agent(a, state);
    let pod_b = agent(b, state);
    let spec_a = device(
        &if_a,
        "10.90.0.1/24",
        51900,
        &key_a,
        vec![peer(&key_b, "192.0.2.2:51901", "10.90.0.2/32")],
    );
    let spec_b = device(
        &if_b,
        "10.90.0.2/24",
        51901,
        &key_b,
        vec![peer(&key_a, "192.0.2.1:51900", "10.90.0.1/32")],
    );
    timed_apply(&pod_a, Some(&spec_a));
    timed_apply(&pod_b, Some(&spec_b));
    wait_until(Duration::from_secs(10), "ping over the tunnel", || {
        a.run("ping", &["-c", "1", "-W", "1", "-q", "10.90.0.2"])
            .map(|_| ())
            .map_err(|e| e.to_string())
    });

    let (runs, seconds) = if full { (3, 5) } else { (1, 1) };
    let mut veth_bps = Vec::new();
    let mut tunnel_bps = Vec::new();
    // Interleaved, so both see the same machine load.
    for _ in 0..runs {
        veth_bps.push(iperf(a, b, "192.0.2.2", seconds));
        tunnel_bps.push(iperf(a, b, "10.90.0.2", seconds));
    }
    let (v, t) = (median(veth_bps), median(tunnel_bps));
    assert!(v > 0.0 && t > 0.0, "no throughput: veth {v}, tunnel {t}");
    println!(
        "iperf3 TCP {seconds} s x{runs} (median): bare veth {:.0} Mbit/s, userspace WireGuard {:.0} Mbit/s, tunnel/veth {:.3}",
        v / 1e6,
        t / 1e6,
        t / v
    );
    timed_apply(&pod_a, None);
    timed_apply(&pod_b, None);
}

fn apply_bench(full: bool, ns: &Netns, state: &Path) {
    let sizes: &[u32] = if full { &[100, 1_000] } else { &[10, 100] };
    let runs = if full { 5 } else { 1 };
    let key = keys::generate();
    let pod = agent(ns, state);
    for (k, &n) in sizes.iter().enumerate() {
        let peers = synthetic_peers(n);
        let (mut fresh, mut again, mut one) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..runs {
            let ifn = ifname('a', k as u32 * 100 + r);
            let spec = device(&ifn, "10.91.0.1/24", 52000, &key, peers.clone());
            fresh.push(timed_apply(&pod, Some(&spec)).as_secs_f64() * 1e3);
            again.push(timed_apply(&pod, Some(&spec)).as_secs_f64() * 1e3);
            let mut changed = spec.clone();
            changed.peers[n as usize / 2]
                .allowed_ips
                .push("10.99.0.0/24".parse().unwrap());
            one.push(timed_apply(&pod, Some(&changed)).as_secs_f64() * 1e3);
            // Checked by reading the device back, not trusting apply.
            let changed = Some(changed);
            let st = pod.run(move |a| a.wg.observe(&mut a.rtnl, &changed).unwrap());
            assert_eq!(st.peers.len(), n as usize);
            assert_eq!(
                st.overall,
                weft_schema::Overall::Healthy,
                "{}",
                st.last_error
            );
            timed_apply(&pod, None);
        }
        println!(
            "apply {n:>5} peers, userspace (median of {runs}): fresh device {:.2} ms, unchanged re-apply {:.2} ms, one peer changed {:.2} ms",
            median(fresh),
            median(again),
            median(one)
        );
    }
}

/// The kernel backend cannot run here, but its message rendering is pure: time it.
fn render_bench(full: bool) {
    let sizes: &[u32] = if full { &[1_000, 10_000] } else { &[100] };
    let key = keys::generate();
    for &n in sizes {
        let spec = device("wg0", "10.91.0.1/24", 52000, &key, synthetic_peers(n));
        let runs = if full { 21 } else { 1 };
        let mut times = Vec::new();
        let mut messages = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let p = plan::plan(&spec, &key, &ObservedDevice::default());
            let msgs = kernel::render_set(0x1c, "wg0", &p, 1, kernel::MAX_MESSAGE);
            times.push(start.elapsed().as_secs_f64() * 1e3);
            messages = msgs.len();
            assert!(msgs.iter().all(|m| m.len() <= kernel::MAX_MESSAGE));
        }
        println!(
            "plan + render kernel genl set for {n:>5} peers (median of {runs}): {:.2} ms, {messages} messages",
            median(times)
        );
    }
}
