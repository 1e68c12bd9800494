//! The host role: making and removing sandbox slots through the agent vs the same objects
//! made by running the commands seed 001 (wrenn) runs, with `nft` in place of `iptables`.
//!
//! `cargo bench -p weft-agent --bench host` (release, root) prints, for 1, 100 and 1,000
//! slots (`Guest: veth`, one port forward each): the time to make them and to remove them,
//! per slot, through the agent (a spec request to `weft-agent host` in a host namespace,
//! from the request to the agent's `Applied`: what a control plane waits for; the agent's
//! own `ApplyMicros` beside it) and by commands (`ip`, `sysctl`, `nft`, one process each, as a
//! shell script of wrenn's would run them); and the ratio. Then the cost of adding one more
//! slot (and removing it again) to a host that holds 0, 100 and 1,000: the median of several
//! rounds, on each N by a fresh agent. Each spec is sent once and its own reply awaited (up to
//! ten minutes): the figures are that apply's, never a resent spec's.
//!
//! `WEFT_BENCH_SLOTS=1,100` picks other sizes (empty: none), `WEFT_BENCH_HELD=0,1000` the
//! hosts of the one-more-slot rounds, `WEFT_BENCH_ROUNDS=15` their number, and
//! `WEFT_BENCH_BEFORE=<path of a weft-agent built from another commit>` runs those rounds with
//! it too, turn about with this build's, on the same host: before and after side by side in
//! one run. Without `--bench` (as the test suite runs it) it is a smoke pass of 1 and 2 slots
//! that checks both ways make the same objects.
//!
//! Figures of one run (1 Dec 2026, release, the project's machine: 2 shared cores, `uptime`
//! load average 6.7 at the start and 9.9 at the end, other engineers' builds and, from the
//! 100 rows on, the test suite running beside it; ms per slot, reply / the agent's
//! `ApplyMicros`; commit 308b5f7):
//!
//! ```text
//!    slots     agent (reply / apply)        commands    ratio
//!        1  make      4.95 /   3.08 ms       103.83 ms   0.048x
//!           remove   24.47 /  20.48 ms        56.70 ms   0.432x
//!      100  make      7.83 /   7.39 ms       129.95 ms   0.060x
//!           remove    1.24 /   1.07 ms       171.56 ms   0.007x
//!     1000  make     27.65 /   0.01 ms       479.11 ms   0.058x
//!           remove    2.81 /   2.78 ms        84.67 ms   0.033x
//! one more slot on a host that holds N (median of 7; reply / apply, ms):
//!   N =     0  add   14.18 /   6.16   remove   38.75 /  28.12
//!   N =   100  add   19.26 /   4.33   remove   35.67 /  24.43
//!   N =  1000  add   59.99 /  34.58   remove   72.83 /  35.63
//! ```
//!
//! (That 1,000-slot make outlasted the 20 s the bench then waited for one reply: the spec was
//! sent again and its `ApplyMicros` was the repeat's, already applied. The bench no longer
//! resends.)
//!
//! The one-more-slot rounds again, before (308b5f7) and after the host plane stopped reading
//! the host's forwarding by path and dumping the routes via a slot's link (one run, 1 Dec
//! 2026, load average 1.5 at the start, 2.2 at the end; `WEFT_BENCH_SLOTS=1000
//! WEFT_BENCH_HELD=0,100,1000 WEFT_BENCH_ROUNDS=15`):
//!
//! ```text
//!     1000  make      4.69 /   4.51 ms       122.02 ms   0.038x
//!           remove    1.00 /   0.99 ms        71.96 ms   0.014x
//! one more slot on a host that holds N (median of 15; reply / apply):
//!   N =     0 before  add    4.82 /   3.10 ms   remove   39.62 /  38.09 ms
//!   N =     0  after  add    4.83 /   3.11 ms   remove   30.31 /  28.39 ms
//!   N =   100 before  add    7.05 /   4.13 ms   remove   25.20 /  22.77 ms
//!   N =   100  after  add    5.88 /   3.62 ms   remove   26.01 /  23.73 ms
//!   N =  1000 before  add   16.49 /   8.48 ms   remove   40.49 /  26.71 ms
//!   N =  1000  after  add   11.78 /   7.00 ms   remove   39.08 /  34.45 ms
//! ```
//!
//! Read with care: the ratio meets the 0.1x goal except removing a single slot (the namespace
//! deletions dominate both ways). One more slot still costs more at N = 1,000 than at N = 0
//! (add about 12 vs 5 ms), so that goal (independent of N) is not met. Where the rest goes,
//! timed inside the agent by a temporary instrumentation (median per spec, add at N = 0 vs
//! 1,000, ms): making the two namespaces 1.4 vs 4.1 (the kernel: `unshare` and the bind
//! mount, mostly waiting, not CPU), the sandbox's `eth0` address 0.07 vs 1.0 (the kernel), the `ip weft-host` commit
//! 0.1 vs 1.0 (the kernel rebuilds each changed base chain's rule blob and validates the
//! table: every slot's rules are in the five base chains), decoding and validating the
//! whole spec 0.04 vs 0.9, keeping it 0.6 vs 0.9, the status of every slot composed 0.01 vs
//! 0.4. Removing: deleting the link group costs 30 ms at any N (the kernel's waits). Rules
//! behind maps (a DNAT map keyed by protocol and port, a set of no-egress links) would make
//! a slot's rules set elements, not base-chain rules; not done here.
//!
//! The commands, per slot N (namespace NS, guest namespace NS-g, host link weft-vN):
//! `ip netns add` (x2), `ip link add weft-vN type veth peer name eth0 netns NS`,
//! `ip -n NS link set lo up`, `ip -n NS addr add`, `ip -n NS link set eth0 up`,
//! `ip -n NS link add tap0 type veth peer name eth0 netns NS-g`, `ip -n NS addr add` and
//! `link set up` on tap0, `ip -n NS route add default`, `ip netns exec NS sysctl -w
//! net.ipv4.ip_forward=1`, `ip netns exec NS nft -f` (table `ip weft-sb` and its chains),
//! `nft add rule` (x2: wrenn's SNAT and DNAT), `ip addr add` and `ip link set up` on
//! weft-vN, `ip route add HostIp/32`, and on the host `nft add rule` for the slot's rules of
//! `ip weft-host` (the no-egress drop when there is one, a DNAT in prerouting and one in
//! output per forward: wrenn's three `iptables -A` do its FORWARD and MASQUERADE, which
//! here are shared rules, made once). Removal: `nft delete rule ... handle` for each rule
//! (the handles `nft -e -a` printed when they were added), `ip link del weft-vN`,
//! `ip netns del` (x2).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_schema::{ApplyResult, Encoding, HostSpec};
use weft_testkit::control::ControlPlane;
use weft_testkit::host::HostLab;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    weft_testkit::require_root();
    let sizes = numbers("WEFT_BENCH_SLOTS").unwrap_or(if full {
        vec![1, 100, 1_000]
    } else {
        vec![1, 2]
    });
    let helds = numbers("WEFT_BENCH_HELD").unwrap_or(if full {
        vec![0, 100, 1_000]
    } else {
        vec![0, 2]
    });
    let rounds = numbers("WEFT_BENCH_ROUNDS")
        .and_then(|r| r.first().copied())
        .unwrap_or(if full { 7 } else { 2 }) as usize;
    let lab = HostLab::new("bh").expect("host lab");
    // The commands work in a host of their own, beside the agent's (the agent would take the
    // commands' rules in its table for drift, and its reads would share the cores).
    let cmd_host = weft_testkit::Netns::new("bhc").expect("commands' host");
    run(
        &["ip", "netns", "exec", cmd_host.name(), "nft", "-f", "-"],
        Some(&host_table()),
    );
    // The agents of the one-more-slot rounds: this build's, and with `WEFT_BENCH_BEFORE=<a
    // weft-agent built from another commit>` that one too, turn about on the same host.
    let agents: Vec<(&str, PathBuf)> = match std::env::var("WEFT_BENCH_BEFORE") {
        Ok(before) => vec![("before", before.into()), ("after", bin().into())],
        Err(_) => vec![("", bin().into())],
    };
    let mut agent = Some(lab.start_agent(bin(), "host-a", &[]).expect("agent"));
    let mut generation = 0;
    let mut rows = Vec::new();
    lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url())
            .await
            .expect("control plane");
        ready(&cp, "host-a", &mut generation).await;
        for &n in &sizes {
            let (made, made_agent) = apply(&cp, "host-a", &mut generation, n, None).await;
            check(&lab, lab.host.name(), &lab.prefix, "weft-v", n);
            let (gone, gone_agent) = apply(&cp, "host-a", &mut generation, 0, None).await;
            check(&lab, lab.host.name(), &lab.prefix, "weft-v", 0);
            let prefix = format!("{}c", lab.prefix);
            let start = Instant::now();
            let handles = commands_make(cmd_host.name(), &prefix, n);
            let made_cmd = start.elapsed();
            check(&lab, cmd_host.name(), &prefix, "weft-v", n);
            let start = Instant::now();
            commands_remove(cmd_host.name(), &prefix, n, &handles);
            let gone_cmd = start.elapsed();
            check(&lab, cmd_host.name(), &prefix, "weft-v", 0);
            rows.push((n, made, made_agent, made_cmd, gone, gone_agent, gone_cmd));
        }
        // Nothing held: the next agents have the host to themselves.
        drop(agent.take());
        // One more slot on a host that holds `held`, by each agent in turn (a fresh one each
        // time, with a host id of its own: no kept spec).
        let mut incremental = Vec::new();
        for &held in &helds {
            for (k, (label, path)) in agents.iter().enumerate() {
                let host = format!("host-{held}-{k}");
                let running = lab.start_agent(path, &host, &[]).expect("agent");
                ready(&cp, &host, &mut generation).await;
                apply(&cp, &host, &mut generation, held, None).await;
                let (mut adds, mut removes) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    adds.push(apply(&cp, &host, &mut generation, held, Some(held + 1)).await);
                    removes.push(apply(&cp, &host, &mut generation, held, None).await);
                }
                apply(&cp, &host, &mut generation, 0, None).await;
                check(&lab, lab.host.name(), &lab.prefix, "weft-v", 0);
                drop(running);
                incremental.push((*label, held, median(&mut adds), median(&mut removes)));
            }
        }
        if !full {
            println!(
                "host bench smoke pass ok ({sizes:?} slots through the agent and by commands, \
                 the same objects); run with --bench for figures"
            );
            return;
        }
        println!("host slots (Guest: veth, one port forward each), per slot:");
        println!(
            "  {:>6}  {:>24}  {:>14}  {:>7}",
            "slots", "agent (reply / apply)", "commands", "ratio"
        );
        for (n, made, made_a, made_c, gone, gone_a, gone_c) in &rows {
            let per = |d: &Duration| d.as_secs_f64() * 1e3 / f64::from(*n);
            println!(
                "  {n:>6}  make   {:>7.2} / {:>6.2} ms  {:>11.2} ms  {:>6.3}x",
                per(made),
                per(made_a),
                per(made_c),
                made.as_secs_f64() / made_c.as_secs_f64()
            );
            println!(
                "  {:>6}  remove {:>7.2} / {:>6.2} ms  {:>11.2} ms  {:>6.3}x",
                "",
                per(gone),
                per(gone_a),
                per(gone_c),
                gone.as_secs_f64() / gone_c.as_secs_f64()
            );
        }
        println!("one more slot on a host that holds N (median of {rounds}; reply / apply):");
        for (label, held, (add, add_a), (rm, rm_a)) in &incremental {
            println!(
                "  N = {held:>5} {label:>6}  add {:>7.2} / {:>6.2} ms   remove {:>7.2} / {:>6.2} ms",
                ms(add),
                ms(add_a),
                ms(rm),
                ms(rm_a)
            );
        }
    });
}

/// Sends specs of no slots to `host` until it answers one (it has subscribed).
async fn ready(cp: &ControlPlane, host: &str, generation: &mut u64) {
    *generation += 1;
    let reply = cp
        .request_host_when_ready(host, &spec(host, *generation, 0, None), Encoding::Json)
        .await;
    assert_eq!(reply.result, ApplyResult::Applied, "{reply:?}");
}

/// Sends one spec (slots 1..=n and `extra`) once and awaits its own reply, however long the
/// apply takes: the figures are that apply's, never a repeat's. The time to the reply and
/// the agent's `ApplyMicros`.
async fn apply(
    cp: &ControlPlane,
    host: &str,
    generation: &mut u64,
    n: u32,
    extra: Option<u32>,
) -> (Duration, Duration) {
    *generation += 1;
    let spec = spec(host, *generation, n, extra);
    let start = Instant::now();
    let reply = cp
        .request_host_within(host, &spec, Encoding::Json, REPLY_WITHIN)
        .await
        .expect("the agent's reply");
    let took = start.elapsed();
    assert_eq!(reply.result, ApplyResult::Applied, "{reply:?}");
    assert_eq!(reply.generation, spec.generation, "{reply:?}");
    (took, Duration::from_micros(reply.apply_micros))
}

/// How long one spec's reply is awaited: a thousand slots made on a loaded machine took
/// 28 s, past the client's own 30 s request timeout on a worse day.
const REPLY_WITHIN: Duration = Duration::from_secs(600);

/// A comma-separated list of numbers from environment variable `var` (empty: none).
fn numbers(var: &str) -> Option<Vec<u32>> {
    let v = std::env::var(var).ok()?;
    Some(
        v.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().expect("a number"))
            .collect(),
    )
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [(Duration, Duration)]) -> (Duration, Duration) {
    v.sort();
    v[v.len() / 2]
}

/// Slots 1..=n (and `extra`), veth guests with one forward each.
fn spec(host: &str, generation: u64, n: u32, extra: Option<u32>) -> HostSpec {
    let sandboxes: Vec<serde_json::Value> = (1..=n)
        .chain(extra)
        .map(|i| {
            serde_json::json!({"Slot": i, "Guest": "veth",
                "PortForwards": [{"Protocol": "tcp", "HostPort": 10_000 + i, "SandboxPort": 80}]})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "HostId": host, "Generation": generation, "Sandboxes": sandboxes
    }))
    .expect("a host spec")
}

/// Runs one command; panics with its stderr when it fails.
fn run(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft -e -a add rule ...` in namespace `ns`: the new rule's handle.
fn nft_add(ns: &str, rule: &str) -> u64 {
    let out = run(
        &[
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!("nft -e -a add rule {rule}"),
        ],
        None,
    );
    out.split("# handle ")
        .nth(1)
        .and_then(|h| h.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no handle in {out:?}"))
}

/// The host table's slot rules (chain, rule text) of slot `i`, as the agent writes them.
fn slot_rules(i: u32) -> Vec<(&'static str, String)> {
    let host_ip = format!("10.11.{}.{}", i >> 8, i & 255);
    let rule = format!(
        "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport {} counter dnat to {host_ip}:80",
        10_000 + i
    );
    vec![("prerouting", rule.clone()), ("output", rule)]
}

/// The host table as the agent makes it, with its shared rules: made once per host.
fn host_table() -> String {
    "add table ip weft-host\n\
     add chain ip weft-host prerouting { type nat hook prerouting priority -100; policy accept; }\n\
     add chain ip weft-host output { type nat hook output priority -100; policy accept; }\n\
     add chain ip weft-host postrouting { type nat hook postrouting priority 100; policy accept; }\n\
     add chain ip weft-host forward { type filter hook forward priority 0; policy accept; }\n\
     add chain ip weft-host input { type filter hook input priority 0; policy accept; }\n\
     add rule ip weft-host postrouting oifname \"up0\" ip saddr 10.12.0.0/16 counter masquerade\n\
     add rule ip weft-host forward ct state established,related counter accept\n\
     add rule ip weft-host forward iifname \"weft-v*\" oifname \"weft-v*\" counter drop\n\
     add rule ip weft-host forward oifname \"weft-v*\" ct state new ct status ! dnat counter drop\n\
     add rule ip weft-host input iifname \"weft-v*\" ct state new counter drop\n"
        .to_owned()
}

/// The seed's commands for `n` slots, under namespace prefix `prefix`, on host namespace
/// `host`. Returns each slot's host table rule handles.
fn commands_make(host: &str, prefix: &str, n: u32) -> Vec<Vec<(&'static str, u64)>> {
    // Once per host: forwarding.
    run(
        &[
            "ip",
            "netns",
            "exec",
            host,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
        None,
    );
    let mut handles = Vec::new();
    for i in 1..=n {
        let ns = format!("{prefix}{i}");
        let guest = format!("{ns}-g");
        let link = format!("weft-v{i}");
        let (veth, vpeer) = (2 * i, 2 * i + 1);
        let veth_ip = format!("10.12.{}.{}", veth >> 8, veth & 255);
        let vpeer_ip = format!("10.12.{}.{}", vpeer >> 8, vpeer & 255);
        let host_ip = format!("10.11.{}.{}", i >> 8, i & 255);
        run(&["ip", "netns", "add", &ns], None);
        run(&["ip", "netns", "add", &guest], None);
        run(
            &[
                "ip", "-n", host, "link", "add", &link, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
            None,
        );
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"], None);
        run(
            &[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{vpeer_ip}/31"),
                "dev",
                "eth0",
            ],
            None,
        );
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"], None);
        run(
            &[
                "ip", "-n", &ns, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0",
                "netns", &guest,
            ],
            None,
        );
        run(
            &[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                "169.254.0.22/30",
                "dev",
                "tap0",
            ],
            None,
        );
        run(&["ip", "-n", &ns, "link", "set", "tap0", "up"], None);
        run(
            &["ip", "-n", &ns, "route", "add", "default", "via", &veth_ip],
            None,
        );
        run(
            &[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            None,
        );
        run(
            &["ip", "netns", "exec", &ns, "nft", "-f", "-"],
            Some(
                "add table ip weft-sb\n\
                 add chain ip weft-sb prerouting { type nat hook prerouting priority -100; policy accept; }\n\
                 add chain ip weft-sb postrouting { type nat hook postrouting priority 100; policy accept; }\n",
            ),
        );
        nft_add(
            &ns,
            &format!("ip weft-sb postrouting oifname \"eth0\" ip saddr 169.254.0.21 counter snat to {vpeer_ip}"),
        );
        nft_add(
            &ns,
            &format!("ip weft-sb prerouting iifname \"eth0\" ip daddr {host_ip} counter dnat to 169.254.0.21"),
        );
        run(
            &[
                "ip",
                "-n",
                host,
                "addr",
                "add",
                &format!("{veth_ip}/31"),
                "dev",
                &link,
            ],
            None,
        );
        run(&["ip", "-n", host, "link", "set", &link, "up"], None);
        run(
            &[
                "ip",
                "-n",
                host,
                "route",
                "add",
                &format!("{host_ip}/32"),
                "via",
                &vpeer_ip,
            ],
            None,
        );
        handles.push(
            slot_rules(i)
                .into_iter()
                .map(|(chain, rule)| {
                    (
                        chain,
                        nft_add(host, &format!("ip weft-host {chain} {rule}")),
                    )
                })
                .collect(),
        );
    }
    handles
}

/// The seed's teardown for `n` slots.
fn commands_remove(host: &str, prefix: &str, n: u32, handles: &[Vec<(&'static str, u64)>]) {
    for i in 1..=n {
        for (chain, handle) in &handles[(i - 1) as usize] {
            run(
                &[
                    "ip",
                    "netns",
                    "exec",
                    host,
                    "nft",
                    "delete",
                    "rule",
                    "ip",
                    "weft-host",
                    chain,
                    "handle",
                    &handle.to_string(),
                ],
                None,
            );
        }
        run(
            &["ip", "-n", host, "link", "del", &format!("weft-v{i}")],
            None,
        );
        let ns = format!("{prefix}{i}");
        run(&["ip", "netns", "del", &ns], None);
        run(&["ip", "netns", "del", &format!("{ns}-g")], None);
    }
}

/// What each way made: `n` slots' namespaces, host links, routes, slot rules.
fn check(lab: &HostLab, host: &str, prefix: &str, links: &str, n: u32) {
    let names = lab.namespaces().expect("ip netns list");
    let ours = names
        .iter()
        .filter(|ns| {
            ns.strip_prefix(prefix)
                .is_some_and(|rest| rest.bytes().next().is_some_and(|b| b.is_ascii_digit()))
        })
        .count();
    assert_eq!(ours, 2 * n as usize, "{prefix}: {names:?}");
    let all = run(&["ip", "-n", host, "-j", "link", "show"], None);
    let all: serde_json::Value = serde_json::from_str(&all).expect("ip -j");
    let slot_links = all
        .as_array()
        .expect("links")
        .iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|i| i.starts_with(links)))
        .count();
    assert_eq!(slot_links, n as usize);
    let routes = run(
        &["ip", "-n", host, "-j", "route", "show", "table", "main"],
        None,
    );
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("ip -j");
    let to_slots = routes
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["dst"].as_str().is_some_and(|d| d.starts_with("10.11.")))
        .count();
    assert_eq!(to_slots, n as usize, "{routes}");
    let table = run(
        &[
            "ip",
            "netns",
            "exec",
            host,
            "nft",
            "list",
            "table",
            "ip",
            "weft-host",
        ],
        None,
    );
    let dnats = table.matches("dnat to 10.11.").count();
    assert_eq!(dnats, 2 * n as usize, "{table}");
}
