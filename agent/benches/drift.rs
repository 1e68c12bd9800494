//! Drift repair latency, measured by an independent observer: `ip -ts monitor` in the pod
//! namespace timestamps the kernel's notification of the outside change and of the agent's
//! repair; the difference is the repair latency (event delivery, read-back, re-apply).
//! Also restart-to-converged: the agent started with a kept spec and a drifted kernel.
//!
//! `cargo bench -p weft-agent --bench drift` for the figures; without `--bench` (as
//! `cargo test --all-targets` runs it) a two-round smoke pass that still asserts repairs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use weft_schema::{ApplyResult, Encoding, PodSpec};
use weft_testkit::stack::Stack;
use weft_testkit::Netns;

/// `[2026-11-22T04:51:10.192813] Deleted 3: eth0 inet ...` -> (seconds of day, text).
fn parse(line: &str) -> Option<(f64, String)> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
    let time = stamp.split('T').nth(1)?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((h * 3600.0 + m * 60.0 + s, rest.to_owned()))
}

/// `ip -ts -o monitor address route link` in the namespace, its lines on a channel.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<(f64, String)>,
}

impl Monitor {
    fn start(ns: &Netns) -> Monitor {
        let mut child = ns
            .command("ip")
            .args(["-ts", "-o", "monitor", "address", "route", "link"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("ip monitor");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(p) = parse(&line) {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(200)); // subscribed before we start
        Monitor { child, lines }
    }

    fn clear(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// The timestamp of the next line satisfying `pred`, within 10 s.
    fn next(&self, pred: impl Fn(&str) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, line) = self
                .lines
                .recv_timeout(left)
                .expect("monitor line within 10 s");
            if pred(&line) {
                return t;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<28} n={:<3} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 20 } else { 2 };
    let bin = Path::new(env!("CARGO_BIN_EXE_weft-agent"));
    let mut stack = Stack::new(bin).expect("stack (run as root)");
    stack.add_pod("bench").unwrap();
    stack
        .start_agent("bench", &["--status-interval", "5s"])
        .unwrap();
    let (addr, gw) = (stack.pods[0].address(), stack.pods[0].gateway());
    let spec: PodSpec = serde_json::from_value(json!({
        "PodId": "bench", "Generation": 1,
        "Network": { "Interface": "eth0", "Address": addr, "Gateway": gw },
        "Firewall": { "Ingress": [ { "Protocol": "tcp", "Ports": ["22"] } ] }
    }))
    .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match cp.request("bench", &spec, Encoding::Json).await {
                Ok(r) => {
                    assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("agent did not answer: {e}"),
            }
        }
    });
    let ns = &stack.pods[0].ns.ns;
    let mon = Monitor::start(ns);
    let inet = format!("inet {addr}");
    let default = format!("default via {gw}");

    // Rounds are spaced past the repair rate limit (a burst of 5, then one per 500 ms), so
    // each measures an unthrottled repair.
    let spacing = Duration::from_millis(if full { 550 } else { 100 });
    type Kind<'a> = (
        &'a str,
        Vec<&'a str>,
        Box<dyn Fn(&str) -> bool + 'a>,
        Box<dyn Fn(&str) -> bool + 'a>,
    );
    let kinds: Vec<Kind> = vec![
        (
            "ip addr del",
            vec!["addr", "del", &addr, "dev", "eth0"],
            Box::new(|l: &str| l.starts_with("Deleted") && l.contains(&inet)),
            Box::new(|l: &str| !l.starts_with("Deleted") && l.contains(&inet)),
        ),
        (
            "ip route del default",
            vec!["route", "del", "default"],
            Box::new(|l: &str| l.starts_with(&format!("Deleted {default}"))),
            Box::new(|l: &str| l.starts_with(&default)),
        ),
        (
            "ip link set eth0 down",
            vec!["link", "set", "eth0", "down"],
            // The link notification without UP, then the default route back (repaired last).
            Box::new(|l: &str| l.contains(": eth0@") && !l.contains(",UP")),
            Box::new(|l: &str| l.starts_with(&default)),
        ),
    ];
    println!("drift repair latency (ip monitor timestamps: outside change -> repaired):");
    for (name, args, broke, fixed) in kinds {
        let mut ms = Vec::new();
        for _ in 0..rounds {
            std::thread::sleep(spacing);
            mon.clear();
            ns.ip(&args).unwrap();
            let t0 = mon.next(&broke);
            let t1 = mon.next(&fixed);
            ms.push((t1 - t0) * 1e3);
        }
        report(name, ms);
    }
    drop(mon);

    // Restart: the kept spec against a drifted kernel, no NATS needed.
    let mut ms = Vec::new();
    for _ in 0..rounds.min(10) {
        stack.stop_agent("bench").unwrap();
        let ns = &stack.pods[0].ns.ns;
        ns.ip(&["addr", "del", &addr, "dev", "eth0"]).unwrap();
        let mon = Monitor::start(ns);
        let started = Instant::now();
        stack
            .start_agent("bench", &["--status-interval", "5s"])
            .unwrap();
        mon.next(|l| l.starts_with(&default));
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    report("restart to converged", ms);
}
