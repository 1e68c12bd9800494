//! `weft-fleet`: the fleet benchmark. For each fleet size N it starts N real `weft-agent`
//! processes, each in a network namespace of its own with its pod interface on a bridge in a
//! hub namespace, against a three-node nats-server cluster with JetStream and one nkey user
//! per pod ([`weft_testkit::fleet`]); then, for each spec source (requests on the spec
//! subjects, puts into the spec bucket with three replicas):
//!
//! 1. a first fan-out (every pod's first spec), then a second one (one firewall rule changes
//!    in every pod): the time from each pod's publish to its `Applied` (p50, p99) and from
//!    the last publish to the last `Applied`;
//! 2. an idle window with statuses at 1 Hz: the dashboard's ingest lag
//!    (`PublishedAtUnixMs` to receipt), the agents' summed CPU, RSS and PSS, each server's;
//! 3. a third fan-out during which the node with the most clients is killed (SIGKILL) once
//!    half the specs are out: every pod must still apply it (the control plane sends again
//!    what got no answer), and the time from the kill to the last `Applied` is the failover.
//!
//! It prints one table of every figure at the end (progress goes to stderr). Everything it
//! made is removed at the end, on an error, and on ctrl-c. Needs root.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::FutureExt;
use weft_testkit::fleet::{FanOut, Fleet, Idle, Options, SpecSource};

const USAGE: &str = "usage: weft-fleet [--pods N[,N...]] [--sources subject,kv] [--servers 3]
                  [--idle DURATION] [--status-interval DURATION] [--no-kill]
                  [--agent-bin PATH]

Runs N weft-agent processes in network namespaces against a nats-server cluster, applies
specs to all of them and measures fan-out, status ingest lag, CPU and memory, and failover
when a server is killed; prints a table. Needs root.

  --pods N,...          fleet sizes, one after the other (default 100,300,1000)
  --sources S,...       subject, kv or both (default subject,kv)
  --servers N           nats-server nodes (default 3)
  --idle DURATION       the idle window (default 10s)
  --status-interval D   the agents' --status-interval (default 1s)
  --no-kill             no server kill during the third fan-out
  --agent-bin PATH      the weft-agent binary (default: weft-agent next to this executable)";

/// Set by the SIGINT/SIGTERM handler.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Args {
    pods: Vec<usize>,
    sources: Vec<SpecSource>,
    servers: usize,
    idle: Duration,
    status_interval: Duration,
    kill: bool,
    agent_bin: PathBuf,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft-fleet: {e:#}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    if !weft_testkit::is_root() {
        eprintln!("weft-fleet: needs root (network namespaces)");
        return ExitCode::from(77);
    }
    guard_against_signals();
    let mut rows = Vec::new();
    let mut failed = false;
    for &n in &args.pods {
        match measure(&args, n, &mut rows) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("weft-fleet: N={n}: {e:#}");
                failed = true;
                break;
            }
        }
    }
    print_table(&rows);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        pods: vec![100, 300, 1000],
        sources: vec![SpecSource::Subject, SpecSource::Kv],
        servers: 3,
        idle: Duration::from_secs(10),
        status_interval: Duration::from_secs(1),
        kill: true,
        agent_bin: std::env::current_exe()
            .context("where this executable is")?
            .with_file_name("weft-agent"),
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--pods" => {
                a.pods = value()?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .with_context(|| format!("--pods {n:?}"))
                    })
                    .collect::<Result<_>>()?
            }
            "--sources" => {
                a.sources = value()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "subject" => Ok(SpecSource::Subject),
                        "kv" => Ok(SpecSource::Kv),
                        other => bail!("--sources {other:?}: subject or kv"),
                    })
                    .collect::<Result<_>>()?
            }
            "--servers" => a.servers = value()?.parse().context("--servers")?,
            "--idle" => a.idle = humantime::parse_duration(&value()?).context("--idle")?,
            "--status-interval" => {
                a.status_interval =
                    humantime::parse_duration(&value()?).context("--status-interval")?
            }
            "--no-kill" => a.kill = false,
            "--agent-bin" => a.agent_bin = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.pods.is_empty() || a.pods.contains(&0) {
        bail!("--pods needs sizes of at least 1");
    }
    if !a.agent_bin.is_file() {
        bail!(
            "no weft-agent at {} (build it: cargo build --release -p weft-agent, or pass --agent-bin)",
            a.agent_bin.display()
        );
    }
    Ok(a)
}

/// Everything measured for one fleet size and spec source.
struct Row {
    pods: usize,
    source: SpecSource,
    setup: Duration,
    connected: Duration,
    first: FanOut,
    change: FanOut,
    idle: Idle,
    failover: Option<FanOut>,
}

fn progress(n: usize, what: &str) {
    eprintln!("weft-fleet: N={n}: {what}");
}

/// Builds a fleet of `n` and measures it with each spec source in turn.
fn measure(args: &Args, n: usize, rows: &mut Vec<Row>) -> Result<()> {
    let t = Instant::now();
    progress(n, "making namespaces, links, the cluster");
    let mut fleet = Fleet::new(Options {
        pods: n,
        servers: args.servers,
        status_interval: args.status_interval,
        agent_bin: args.agent_bin.clone(),
    })?;
    let setup = t.elapsed();
    let mut generation = 0;
    for &source in &args.sources {
        check_stop()?;
        if source == SpecSource::Kv {
            fleet.block_on(|f| {
                async move {
                    let cp = f.control_plane().await?;
                    f.create_spec_bucket(&cp).await
                }
                .boxed()
            })?;
        }
        progress(n, &format!("starting {n} agents ({})", source.name()));
        let t = Instant::now();
        fleet.start_agents(source)?;
        let kill = args.kill;
        let idle_window = args.idle;
        let row = fleet.block_on(|f| {
            async move {
                let deadline = Duration::from_secs(60) + Duration::from_millis(60 * n as u64);
                let cp = f.control_plane().await?;
                let dash = f.dashboard().await?;
                dash.wait_all_seen(deadline)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:#}; exited: {:?}", f.exited_agents()))?;
                let connected = t.elapsed();
                progress(n, &format!("all connected after {connected:.1?}; fan-outs"));
                check_stop()?;
                let first = f
                    .fan_out(&cp, &dash, source, generation + 1, false, deadline)
                    .await?;
                check_stop()?;
                let change = f
                    .fan_out(&cp, &dash, source, generation + 2, false, deadline)
                    .await?;
                progress(n, "idle window");
                check_stop()?;
                // Let the statuses after the apply pass before measuring the quiet.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let idle = f.idle(&dash, idle_window).await?;
                check_stop()?;
                let failover = if kill {
                    progress(n, "fan-out with a server killed");
                    Some(
                        f.fan_out(&cp, &dash, source, generation + 3, true, deadline)
                            .await?,
                    )
                } else {
                    None
                };
                let errors = dash.errors();
                if !errors.is_empty() {
                    bail!(
                        "{} statuses did not decode: {:?}",
                        errors.len(),
                        &errors[..1]
                    );
                }
                Ok(Row {
                    pods: n,
                    source,
                    setup,
                    connected,
                    first,
                    change,
                    idle,
                    failover,
                })
            }
            .boxed()
        })?;
        generation += 3;
        rows.push(row);
        fleet.restart_stopped_servers()?;
        fleet.stop_agents()?;
    }
    progress(n, "removing the fleet");
    drop(fleet);
    Ok(())
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A second ctrl-c (or a first one while the fleet is being built or removed, when nothing
/// checks) must not leave a thousand namespaces behind: a watcher does the cleanup itself when
/// the flag stays set for long.
fn guard_against_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let neighbours: Vec<(String, String)> = ["gc_thresh2", "gc_thresh3"]
        .iter()
        .map(|f| format!("/proc/sys/net/ipv4/neigh/default/{f}"))
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|v| (p, v)))
        .collect();
    std::thread::spawn(move || {
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // The main thread unwinds at its next check; give it time to remove what it made.
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("weft-fleet: still not stopped; removing everything now");
        emergency_cleanup(&neighbours);
        std::process::exit(130);
    });
}

/// Kills this process's children and deletes the namespaces it named.
fn emergency_cleanup(neighbours: &[(String, String)]) {
    let me = std::process::id();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if ppid == Some(me) {
                // SAFETY: kill(2) on a child of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let prefixes = [format!("weft-fp-{me}-"), format!("weft-fh-{me}-")];
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| name.starts_with(p)) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
    }
    for (path, value) in neighbours {
        let _ = std::fs::write(path, value);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    println!("\n## Fan-out (ms; per pod: its publish to its Applied; all: last publish to last Applied)\n");
    println!("| N | source | setup s | connected s | first p50 | first p99 | first all | change p50 | change p99 | change all | resends |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.pods,
            r.source.name(),
            r.setup.as_secs_f64(),
            r.connected.as_secs_f64(),
            ms(r.first.p50),
            ms(r.first.p99),
            ms(r.first.after_last_publish),
            ms(r.change.p50),
            ms(r.change.p99),
            ms(r.change.after_last_publish),
            r.first.resends + r.change.resends,
        );
    }
    println!("\n## Idle, statuses every interval (lag: PublishedAtUnixMs to the dashboard, ms)\n");
    println!("| N | source | statuses/s | status B | lag p50 | lag p99 | lag max | agents CPU (cores) | per agent (ms/s) | agent RSS MiB | agent PSS MiB | servers CPU (cores) | servers RSS MiB | harness CPU |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let i = &r.idle;
        let per = |total: u64| total / i.agents.max(1) as u64;
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {:.2} |",
            r.pods,
            r.source.name(),
            i.statuses_per_second,
            i.status_bytes,
            i.lag_p50_ms,
            i.lag_p99_ms,
            i.lag_max_ms,
            i.agent_cpu_cores,
            i.agent_cpu_cores * 1000.0 / i.agents.max(1) as f64,
            mib(per(i.agent_rss_kib)),
            mib(per(i.agent_pss_kib)),
            i.server_cpu_cores
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
            i.server_rss_kib
                .iter()
                .map(|k| mib(*k))
                .collect::<Vec<_>>()
                .join(" / "),
            i.harness_cpu_cores,
        );
    }
    if rows.iter().any(|r| r.failover.is_some()) {
        println!(
            "\n## Failover: the node with the most clients killed once half the specs were out\n"
        );
        println!("| N | source | killed node (clients) | p50 | p99 | kill to all taken by the bus | kill to last Applied | last publish to last Applied | resends | specs lost |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            let Some(f) = &r.failover else { continue };
            let k = f.killed.as_ref().expect("a kill fan-out");
            println!(
                "| {} | {} | n{} ({}) | {} | {} | {} | {} | {} | {} | 0 |",
                r.pods,
                r.source.name(),
                k.node,
                k.connections,
                ms(f.p50),
                ms(f.p99),
                ms(k.accepted_after),
                ms(k.converged_after),
                ms(f.after_last_publish),
                f.resends,
            );
        }
    }
}
