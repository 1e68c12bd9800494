//! Table `inet weft-fw`: our one-batch apply against `nft -f` of the renderer's identical
//! text, our netlink read-back against `nft -j list table`, and a no-op re-apply, all in one
//! network namespace in one run.
//!
//! `cargo bench -p weft-agent --bench firewall` prints medians and ratios; without `--bench`
//! (as `cargo test --all-targets` runs it) it is a quick smoke pass over tiny sizes.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft_agent::dataplane::firewall::{render, Firewall, Ruleset};
use weft_schema::validate::{Firewall as FirewallSpec, PortRange, Protocol, Rule};
use weft_testkit::{require_root, Netns};

/// `rules` rules of one source and one port each; `variant` changes every address, so
/// applying the other variant is a real replacement.
fn many_rules(rules: u32, variant: u8) -> Ruleset {
    let ingress = (0..rules)
        .map(|i| Rule {
            protocol: Protocol::Tcp,
            ports: vec![PortRange {
                first: 1000 + (i % 60_000) as u16,
                last: 1000 + (i % 60_000) as u16,
            }],
            v4: vec![
                Ipv4Net::new(Ipv4Addr::new(10, variant, (i >> 8) as u8, i as u8), 32).unwrap(),
            ],
            v6: vec![],
            comment: None,
        })
        .collect();
    render(
        &FirewallSpec {
            ingress,
            egress: vec![],
        },
        Some(51820),
    )
}

/// One rule whose sources are `elements` separate addresses (an anonymous interval set).
fn many_sources(elements: u32, variant: u8) -> Ruleset {
    let v4 = (0..elements)
        .map(|i| {
            let n = 2 * i;
            Ipv4Net::new(Ipv4Addr::new(10, variant, (n >> 8) as u8, n as u8), 32).unwrap()
        })
        .collect();
    render(
        &FirewallSpec {
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
        },
        None,
    )
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
fn nft_file(dir: &std::path::Path, name: &str, ruleset: &Ruleset) -> std::path::PathBuf {
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

struct Row {
    case: String,
    ours: Duration,
    nft_f: Duration,
    read: Duration,
    nft_list: Duration,
    noop: Duration,
    noop_cold: Duration,
}

/// Runs one case: `runs` replacements alternating between `a` and `b`, ours then nft's.
fn case(name: &str, a: &Ruleset, b: &Ruleset, runs: usize, dir: &std::path::Path) -> Row {
    let mut fw = Firewall::open().unwrap();
    // Start from a table of the same size, so every timed apply replaces one.
    assert!(fw.apply(b).unwrap());
    let mut ours = Vec::new();
    for i in 0..runs {
        let r = if i % 2 == 0 { a } else { b };
        let t = Instant::now();
        assert!(fw.apply(r).unwrap(), "a different ruleset is written");
        ours.push(t.elapsed());
    }
    let last = if runs % 2 == 1 { a } else { b };
    let mut noop = Vec::new();
    let mut noop_cold = Vec::new();
    let mut read = Vec::new();
    let mut nft_list = Vec::new();
    for _ in 0..runs {
        // Warm: this handle saw the table at the current generation.
        let t = Instant::now();
        assert!(!fw.apply(last).unwrap(), "the same ruleset writes nothing");
        noop.push(t.elapsed());
        // Cold, as a restarted agent: a new handle dumps and decodes the whole table.
        let t = Instant::now();
        let mut fresh = Firewall::open().unwrap();
        assert!(
            !fresh.apply(last).unwrap(),
            "the same ruleset writes nothing"
        );
        noop_cold.push(t.elapsed());
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
    }
    nft(&["delete", "table", "inet", "weft-fw"]);
    settle();
    Row {
        case: name.to_owned(),
        ours: median(ours),
        nft_f: median(nft_f),
        read: median(read),
        nft_list: median(nft_list),
        noop: median(noop),
        noop_cold: median(noop_cold),
    }
}

fn main() {
    require_root();
    let full = std::env::args().any(|a| a == "--bench");
    let ns = Netns::new("fwbench").unwrap();
    let dir = std::env::temp_dir().join(format!("weft-fw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(String, u32, bool, usize)> = if full {
        vec![
            ("100 rules".into(), 100, false, 21),
            ("1,000 rules".into(), 1_000, false, 15),
            ("10,000 rules".into(), 10_000, false, 9),
            ("10,000 set elements".into(), 10_000, true, 9),
        ]
    } else {
        vec![
            ("10 rules".into(), 10, false, 3),
            ("10 set elements".into(), 10, true, 3),
        ]
    };
    let rows: Vec<Row> = ns.enter(|| {
        cases
            .iter()
            .map(|(name, n, set, runs)| {
                let (a, b) = if *set {
                    (many_sources(*n, 1), many_sources(*n, 2))
                } else {
                    (many_rules(*n, 1), many_rules(*n, 2))
                };
                case(name, &a, &b, *runs, &dir)
            })
            .collect()
    });
    let _ = std::fs::remove_dir_all(&dir);

    let header = [
        "case",
        "ours apply",
        "nft -f",
        "ratio",
        "ours read",
        "nft -j list",
        "ratio",
        "no-op",
        "/apply",
        "cold no-op",
        "/apply",
    ];
    println!(
        "{:<20} {:>10} {:>10} {:>6} | {:>10} {:>11} {:>6} | {:>9} {:>7} | {:>10} {:>7}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        header[8],
        header[9],
        header[10]
    );
    for r in &rows {
        println!(
            "{:<20} {:>10} {:>10} {:>6.2} | {:>10} {:>11} {:>6.2} | {:>9} {:>7.4} | {:>10} {:>7.3}",
            r.case,
            ms(r.ours),
            ms(r.nft_f),
            r.ours.as_secs_f64() / r.nft_f.as_secs_f64(),
            ms(r.read),
            ms(r.nft_list),
            r.read.as_secs_f64() / r.nft_list.as_secs_f64(),
            ms(r.noop),
            r.noop.as_secs_f64() / r.ours.as_secs_f64(),
            ms(r.noop_cold),
            r.noop_cold.as_secs_f64() / r.ours.as_secs_f64(),
        );
    }
}
