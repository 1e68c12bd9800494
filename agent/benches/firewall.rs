//! Table `inet weft-fw`, measured side by side in one run:
//!
//! - whole process: `weft-agent apply SPEC` against `nft -f` of the renderer's identical
//!   text, each in its own namespace whose table holds the other of two rulesets before each
//!   run (wall time, process start to exit, both started the same way);
//! - in process, per size: a full apply (the other ruleset in the table) against `nft -f`
//!   run from the same thread, our netlink read-back against `nft -j list table`;
//! - in process at the largest size: a one-rule change, a no-op on a handle that knows the
//!   table (warm) and on a new handle after the last one went away (cold: what a restarted
//!   agent pays to decide there is nothing to write).
//!
//! `cargo bench -p weft-agent --bench firewall` prints medians and ratios; without `--bench`
//! (as `cargo test --all-targets` runs it) it is a quick smoke pass over tiny sizes.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::json;
use weft_agent::dataplane::firewall::{render, Firewall, Ruleset};
use weft_schema::validate::{Firewall as FirewallSpec, PortRange, Protocol, Rule};
use weft_testkit::{require_root, Netns};

/// `rules` rules of one source and one port each; `variant` changes every address, so
/// applying the other variant is a real replacement. `changed` moves one rule to another
/// port: the same ruleset but for that rule.
fn many_rules(rules: u32, variant: u8, changed: Option<u32>) -> FirewallSpec {
    let ingress = (0..rules)
        .map(|i| {
            let port = 1000 + (i % 60_000) as u16 + u16::from(changed == Some(i));
            Rule {
                protocol: Protocol::Tcp,
                ports: vec![PortRange {
                    first: port,
                    last: port,
                }],
                v4: vec![
                    Ipv4Net::new(Ipv4Addr::new(10, variant, (i >> 8) as u8, i as u8), 32).unwrap(),
                ],
                v6: vec![],
                comment: None,
            }
        })
        .collect();
    FirewallSpec {
        ingress,
        egress: vec![],
    }
}

/// One rule whose sources are `elements` separate addresses (an anonymous interval set).
fn many_sources(elements: u32, variant: u8) -> FirewallSpec {
    let v4 = (0..elements)
        .map(|i| {
            let n = 2 * i;
            Ipv4Net::new(Ipv4Addr::new(10, variant, (n >> 8) as u8, n as u8), 32).unwrap()
        })
        .collect();
    FirewallSpec {
        ingress: vec![Rule {
            protocol: Protocol::Tcp,
            ports: vec![PortRange {
                first: 443,
                last: 443,
            }],
            v4,
            v6: vec![],
            comment: None,
        }],
        egress: vec![],
    }
}

fn ruleset(spec: &FirewallSpec) -> Ruleset {
    render(spec, None)
}

/// The spec file `weft-agent apply` reads for `fw`.
fn spec_file(dir: &Path, name: &str, fw: &FirewallSpec, generation: u64) -> PathBuf {
    let ingress: Vec<_> = fw
        .ingress
        .iter()
        .map(|r| {
            json!({
                "Protocol": "tcp",
                "Ports": r.ports.iter().map(|p| p.first.to_string()).collect::<Vec<_>>(),
                "Sources": r.v4.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let spec = json!({
        "PodId": "bench", "Generation": generation,
        "Firewall": { "Ingress": ingress },
    });
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    path
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn nft(args: &[&str]) {
    let out = Command::new("nft").args(args).output().expect("spawn nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `nft -f` of text that replaces the table in one transaction, as our batch does.
fn nft_file(dir: &Path, name: &str, ruleset: &Ruleset) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"add table inet weft-fw\ndelete table inet weft-fw\n")
        .unwrap();
    f.write_all(ruleset.nft_text().as_bytes()).unwrap();
    path
}

/// The kernel frees a deleted table's rules in a worker after an RCU grace period; on two
/// cores that work would otherwise be billed to whichever phase runs next.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Runs `program args` to its end (it inherits the calling thread's namespace) and returns
/// the wall time from spawn to exit.
fn timed(program: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new(program).args(args).output().expect("spawn");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

struct Whole {
    rules: u32,
    weft: Duration,
    nft_f: Duration,
}

/// `weft-agent apply` of the two specs alternately in one namespace, and `nft -f` of the
/// same two rulesets in another, the table holding the other one before each run.
fn whole_process(rules: u32, runs: usize, dir: &Path) -> Whole {
    let agent = Path::new(env!("CARGO_BIN_EXE_weft-agent"));
    let nft_bin = Path::new("nft");
    let specs = [many_rules(rules, 1, None), many_rules(rules, 2, None)];
    let state = dir.join(format!("state-{rules}"));
    let state_arg = state.to_str().unwrap().to_owned();
    let resolv = dir.join("resolv.conf");
    let resolv_arg = resolv.to_str().unwrap().to_owned();

    let weft_ns = Netns::new("fwwhole").unwrap();
    let weft = weft_ns.enter(|| {
        let mut times = Vec::new();
        for i in 0..=runs {
            let file = spec_file(dir, "spec.json", &specs[i % 2], i as u64 + 1);
            let args = [
                "apply",
                file.to_str().unwrap(),
                "--state-dir",
                &state_arg,
                "--resolv-conf",
                &resolv_arg,
            ];
            let took = timed(agent, &args);
            // The first run only fills the table.
            if i > 0 {
                times.push(took);
            }
            settle();
        }
        times
    });
    drop(weft_ns);

    let nft_ns = Netns::new("fwwhole").unwrap();
    let files = [
        nft_file(dir, "a.nft", &ruleset(&specs[0])),
        nft_file(dir, "b.nft", &ruleset(&specs[1])),
    ];
    let nft_f = nft_ns.enter(|| {
        let mut times = Vec::new();
        for i in 0..=runs {
            let took = timed(nft_bin, &["-f", files[i % 2].to_str().unwrap()]);
            if i > 0 {
                times.push(took);
            }
            settle();
        }
        times
    });
    let _ = std::fs::remove_dir_all(&state);
    Whole {
        rules,
        weft: median(weft),
        nft_f: median(nft_f),
    }
}

struct Row {
    case: String,
    ours: Duration,
    nft_f: Duration,
    read: Duration,
    nft_list: Duration,
}

/// Runs one case: `runs` replacements alternating between `a` and `b`, ours then nft's.
fn case(name: &str, a: &Ruleset, b: &Ruleset, runs: usize, dir: &Path) -> Row {
    let mut fw = Firewall::open().unwrap();
    // Start from a table of the same size, so every timed apply replaces one.
    assert!(fw.apply(b).unwrap());
    let mut ours = Vec::new();
    for i in 0..runs {
        let r = if i % 2 == 0 { a } else { b };
        let t = Instant::now();
        assert!(fw.apply(r).unwrap(), "a different ruleset is written");
        ours.push(t.elapsed());
        settle();
    }
    let last = if runs % 2 == 1 { a } else { b };
    let mut read = Vec::new();
    let mut nft_list = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let status = Firewall::open().unwrap().observe(Some(last));
        read.push(t.elapsed());
        assert_eq!(status.ruleset_hash, last.hash(), "{status:?}");
        let t = Instant::now();
        nft(&["-j", "list", "table", "inet", "weft-fw"]);
        nft_list.push(t.elapsed());
    }
    assert!(fw.remove().unwrap());
    settle();

    let files = [nft_file(dir, "a.nft", a), nft_file(dir, "b.nft", b)];
    nft(&["-f", files[1].to_str().unwrap()]);
    let mut nft_f = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        nft(&["-f", files[i % 2].to_str().unwrap()]);
        nft_f.push(t.elapsed());
        settle();
    }
    nft(&["delete", "table", "inet", "weft-fw"]);
    settle();
    Row {
        case: name.to_owned(),
        ours: median(ours),
        nft_f: median(nft_f),
        read: median(read),
        nft_list: median(nft_list),
    }
}

struct Steps {
    rules: u32,
    full: Duration,
    one_rule: Duration,
    warm_noop: Duration,
    cold_noop: Duration,
    cold_dump: Duration,
}

/// At `rules` rules: a full apply over the other ruleset, a change of one rule, a no-op on
/// the handle that wrote the table, and one on a new handle after the old one is gone (with
/// the record of the last commit, as the agent keeps it, and without: a full read).
fn steps(rules: u32, runs: usize, dir: &Path) -> Steps {
    let a = ruleset(&many_rules(rules, 1, None));
    let b = ruleset(&many_rules(rules, 2, None));
    let a1 = ruleset(&many_rules(rules, 1, Some(rules / 2)));
    let record = dir.join("firewall-record");
    let open = || Firewall::open().unwrap().remember_in(record.clone());
    let mut fw = open();
    fw.apply(&b).unwrap();
    let mut full = Vec::new();
    for i in 0..runs {
        let r = if i % 2 == 0 { &a } else { &b };
        let t = Instant::now();
        assert!(fw.apply(r).unwrap(), "a different ruleset is written");
        full.push(t.elapsed());
        settle();
    }
    fw.apply(&a).unwrap();
    settle();
    let mut one_rule = Vec::new();
    for i in 0..runs {
        let r = if i % 2 == 0 { &a1 } else { &a };
        let t = Instant::now();
        assert!(fw.apply(r).unwrap(), "the changed rule is written");
        one_rule.push(t.elapsed());
        settle();
    }
    let last = if runs % 2 == 1 { &a1 } else { &a };
    let mut warm_noop = Vec::new();
    let mut cold_noop = Vec::new();
    let mut cold_dump = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        assert!(!fw.apply(last).unwrap(), "the same ruleset writes nothing");
        warm_noop.push(t.elapsed());
        drop(fw);
        // As a restarted agent without its record: a new handle reads the table whole.
        std::fs::remove_file(&record).unwrap();
        let t = Instant::now();
        fw = open();
        assert!(!fw.apply(last).unwrap(), "the same ruleset writes nothing");
        cold_dump.push(t.elapsed());
        assert_eq!(fw.full_reads(), 1);
        drop(fw);
        // As a restarted agent: a new handle, the record its predecessor left.
        let t = Instant::now();
        fw = open();
        assert!(!fw.apply(last).unwrap(), "the same ruleset writes nothing");
        cold_noop.push(t.elapsed());
        assert_eq!(fw.full_reads(), 0, "known from the record");
    }
    assert!(fw.remove().unwrap());
    settle();
    Steps {
        rules,
        full: median(full),
        one_rule: median(one_rule),
        warm_noop: median(warm_noop),
        cold_noop: median(cold_noop),
        cold_dump: median(cold_dump),
    }
}

fn main() {
    require_root();
    let full = std::env::args().any(|a| a == "--bench");
    let dir = std::env::temp_dir().join(format!("weft-fw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let (whole_sizes, whole_runs): (&[u32], usize) = if full {
        (&[1_000, 10_000], 7)
    } else {
        (&[10], 1)
    };
    let whole: Vec<Whole> = whole_sizes
        .iter()
        .map(|&n| whole_process(n, whole_runs, &dir))
        .collect();

    let ns = Netns::new("fwbench").unwrap();
    let cases: Vec<(String, u32, bool, usize)> = if full {
        vec![
            ("100 rules".into(), 100, false, 11),
            ("1,000 rules".into(), 1_000, false, 9),
            ("10,000 rules".into(), 10_000, false, 7),
            ("10,000 set elements".into(), 10_000, true, 7),
        ]
    } else {
        vec![
            ("10 rules".into(), 10, false, 3),
            ("10 set elements".into(), 10, true, 3),
        ]
    };
    let (step_rules, step_runs) = if full { (10_000, 7) } else { (10, 3) };
    let (rows, steps) = ns.enter(|| {
        let rows: Vec<Row> = cases
            .iter()
            .map(|(name, n, set, runs)| {
                let (a, b) = if *set {
                    (many_sources(*n, 1), many_sources(*n, 2))
                } else {
                    (many_rules(*n, 1, None), many_rules(*n, 2, None))
                };
                case(name, &ruleset(&a), &ruleset(&b), *runs, &dir)
            })
            .collect();
        (rows, steps(step_rules, step_runs, &dir))
    });
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "whole process, wall time from spawn to exit (median), table holding the other ruleset"
    );
    println!(
        "{:<14} {:>18} {:>12} {:>6}",
        "rules", "weft-agent apply", "nft -f", "ratio"
    );
    for w in &whole {
        println!(
            "{:<14} {:>18} {:>12} {:>6.2}",
            w.rules,
            ms(w.weft),
            ms(w.nft_f),
            w.weft.as_secs_f64() / w.nft_f.as_secs_f64()
        );
    }
    println!();
    println!("in process (median)");
    println!(
        "{:<20} {:>10} {:>10} {:>6} | {:>10} {:>11} {:>6}",
        "case", "ours apply", "nft -f", "ratio", "ours read", "nft -j list", "ratio"
    );
    for r in &rows {
        println!(
            "{:<20} {:>10} {:>10} {:>6.2} | {:>10} {:>11} {:>6.2}",
            r.case,
            ms(r.ours),
            ms(r.nft_f),
            r.ours.as_secs_f64() / r.nft_f.as_secs_f64(),
            ms(r.read),
            ms(r.nft_list),
            r.read.as_secs_f64() / r.nft_list.as_secs_f64(),
        );
    }
    println!();
    let s = &steps;
    println!("in process at {} rules (median)", s.rules);
    for (what, d) in [
        ("full apply (the other ruleset in the table)", s.full),
        ("one-rule change", s.one_rule),
        ("warm no-op (the handle that wrote the table)", s.warm_noop),
        (
            "cold no-op (a restarted agent, with its record)",
            s.cold_noop,
        ),
        ("cold no-op without the record (a full read)", s.cold_dump),
    ] {
        println!(
            "  {what:<50} {:>11}  {:>6.3} of a full apply",
            ms(d),
            d.as_secs_f64() / s.full.as_secs_f64()
        );
    }
}
