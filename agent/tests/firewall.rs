//! Table `inet weft-fw` against the real kernel, each test in its own network namespace,
//! checked with `nft` (and real packets), never with the agent's own read-back alone.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use weft_agent::dataplane::firewall::{render, Firewall, Ruleset};
use weft_schema::validate::Firewall as FirewallSpec;
use weft_schema::{Overall, PodId, PodSpec, ValidSpec};
use weft_testkit::observe::{nft_table, nft_table_text};
use weft_testkit::{require_root, veth, wait_until, Netns};

/// A validated firewall from the wire form of `"Firewall"`.
fn spec(firewall: Value) -> FirewallSpec {
    let spec: PodSpec = serde_json::from_value(json!({
        "PodId": "p", "Generation": 1, "Firewall": firewall
    }))
    .expect("spec decodes");
    ValidSpec::validate(&spec, &PodId::parse("p").unwrap())
        .expect("spec validates")
        .firewall
}

fn typical() -> FirewallSpec {
    spec(json!({
        "Ingress": [
            { "Protocol": "tcp", "Ports": ["22", "8000-8080"], "Sources": ["10.0.0.0/8"], "Comment": "ssh and app" },
            { "Protocol": "udp", "Ports": ["53"], "Sources": ["192.0.2.0/24", "198.51.100.7", "2001:db8::/32"] },
            { "Protocol": "icmp" }
        ],
        "Egress": [
            { "Destinations": ["169.254.169.254/32"], "Comment": "no metadata" }
        ]
    }))
}

/// `nft list table inet weft-fw` (counters without their values) without the `flags` line and the `# progname` note on an
/// owned table (nft 1.0.6 prints `owner` but cannot print `persist`; ownership is checked
/// separately, by what nft is allowed to do).
fn listed(ns: &Netns) -> String {
    let text = nft_table_text(ns, "inet", "weft-fw").expect("nft list table");
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("flags ") {
            // and the blank line nft puts after the flags
            lines.next_if(|l| l.is_empty());
            continue;
        }
        out.push_str(l.split(" # progname").next().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// Waits until the table has no owner. A closed socket is released only when every copy of
/// its descriptor is gone, and a process another test thread is forking holds one until it
/// execs (the descriptor is close-on-exec), so release can lag the close by a moment.
fn wait_unowned(ns: &Netns) {
    wait_until(
        Duration::from_secs(5),
        "the table to lose its owner",
        || {
            let text = nft_table_text(ns, "inet", "weft-fw").map_err(|e| e.to_string())?;
            if text.contains("flags owner") {
                Err(text)
            } else {
                Ok(())
            }
        },
    );
}

/// Applies in the namespace with a fresh handle that lives only for the call.
fn apply_once(ns: &Netns, ruleset: &Ruleset) -> bool {
    ns.enter(|| Firewall::open().unwrap().apply(ruleset).unwrap())
}

#[test]
fn typical_spec_lists_as_rendered() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let ruleset = render(&typical(), Some(51820));
    assert!(apply_once(&ns, &ruleset));
    let text = listed(&ns);
    assert_eq!(text, ruleset.nft_text(), "nft list:\n{text}");
}

/// Rule handles as `nft -a` shows them: a rewrite gives every rule a new handle.
fn handles(ns: &Netns) -> Vec<u64> {
    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("table exists");
    table
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["handle"].as_u64())
        .collect()
}

fn chain_json(ns: &Netns, name: &str) -> Value {
    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("table exists");
    table
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["chain"]["name"] == name)
        .map(|o| o["chain"].clone())
        .unwrap_or_else(|| panic!("no chain {name}"))
}

/// The rules of one chain in `nft -j` form.
fn rules_json(ns: &Netns, chain: &str) -> Vec<Value> {
    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("table exists");
    table
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["rule"]["chain"] == chain)
        .map(|o| {
            let mut expr = o["rule"]["expr"].clone();
            for e in expr.as_array_mut().unwrap() {
                if e.get("counter").is_some() {
                    *e = counter();
                }
            }
            expr
        })
        .collect()
}

/// `{"counter": null}`, a rule's counter as [`rules_json`] shows it.
fn counter() -> Value {
    json!({ "counter": null })
}

const BASELINE: &str = "table inet weft-fw {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related counter accept
\t\ticmpv6 type 134-136 counter accept
\t\tiifname \"lo\" counter accept
\t\tcounter
\t}

\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t}
}
";

#[test]
fn baseline_is_the_contracts_table() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let ruleset = render(&FirewallSpec::default(), None);
    assert_eq!(ruleset.nft_text(), BASELINE);
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        assert!(fw.apply(&ruleset).unwrap(), "first apply writes");
        let input = chain_json(&ns, "input");
        assert_eq!(
            (&input["family"], &input["table"], &input["type"], &input["hook"], &input["prio"], &input["policy"]),
            (&json!("inet"), &json!("weft-fw"), &json!("filter"), &json!("input"), &json!(0), &json!("drop"))
        );
        let output = chain_json(&ns, "output");
        assert_eq!(
            (&output["type"], &output["hook"], &output["prio"], &output["policy"]),
            (&json!("filter"), &json!("output"), &json!(0), &json!("accept"))
        );
        assert_eq!(
            rules_json(&ns, "input"),
            vec![
                json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, counter(), {"accept": null}]),
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"range": ["nd-router-advert", "nd-neighbor-advert"]}}}, counter(), {"accept": null}]),
                json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, counter(), {"accept": null}]),
                json!([counter()]),
            ]
        );
        assert!(rules_json(&ns, "output").is_empty());
        assert_eq!(listed(&ns), BASELINE);

        let before = handles(&ns);
        assert!(!fw.apply(&ruleset).unwrap(), "the same ruleset again writes nothing");
        assert_eq!(handles(&ns), before);
        let status = fw.observe(Some(&ruleset));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
        assert!(status.table_present);
        assert_eq!((status.ingress_rules, status.egress_rules), (0, 0));
        assert_eq!(status.ruleset_hash, ruleset.hash());
    });
}

#[test]
fn typical_spec_ipv6_and_port_ranges() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let fw_spec = spec(json!({
        "Ingress": [
            { "Protocol": "tcp", "Ports": ["22", "8000-8080"], "Sources": ["10.0.0.0/8"], "Comment": "ssh and app" },
            { "Protocol": "tcp", "Ports": ["443", "444", "1000-2000", "1500-2500"], "Sources": ["192.0.2.0/24", "2001:db8:1::/48", "2001:db8:2::1"] },
            { "Protocol": "udp", "Ports": ["5000-5100"] },
            { "Protocol": "icmpv6", "Sources": ["2001:db8::/32"] },
            { "Protocol": "any", "Sources": ["198.51.100.0/25", "198.51.100.128/25", "203.0.113.0/23"] }
        ],
        "Egress": [
            { "Protocol": "any", "Destinations": ["169.254.169.254/32"], "Comment": "no metadata" },
            { "Protocol": "tcp", "Ports": ["25"], "Destinations": ["2001:db8::/33"] }
        ]
    }));
    let ruleset = render(&fw_spec, Some(51820));
    let expected = "table inet weft-fw {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related counter accept
\t\ticmpv6 type 134-136 counter accept
\t\tiifname \"lo\" counter accept
\t\tudp dport 51820 counter accept
\t\tip saddr 10.0.0.0/8 tcp dport { 22, 8000-8080 } counter accept comment \"ssh and app\"
\t\tip saddr 192.0.2.0/24 tcp dport { 443-444, 1000-2500 } counter accept
\t\tip6 saddr { 2001:db8:1::/48, 2001:db8:2::1 } tcp dport { 443-444, 1000-2500 } counter accept
\t\tudp dport 5000-5100 counter accept
\t\tip6 saddr 2001:db8::/32 meta l4proto ipv6-icmp counter accept
\t\tip saddr { 198.51.100.0/24, 203.0.112.0/23 } counter accept
\t\tcounter
\t}

\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tip daddr 169.254.169.254 counter drop comment \"no metadata\"
\t\tip6 daddr 2001:db8::/33 tcp dport 25 counter drop
\t}
}
";
    assert_eq!(ruleset.nft_text(), expected);
    assert_eq!((ruleset.ingress_rules(), ruleset.egress_rules()), (6, 2));
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        assert!(fw.apply(&ruleset).unwrap());
        assert_eq!(listed(&ns), expected);
        // The port range as nft -j sees it: a range, not a set.
        assert_eq!(
            rules_json(&ns, "input")[7],
            json!([{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"range": [5000, 5100]}}}, counter(), {"accept": null}])
        );
        let before = handles(&ns);
        assert!(!fw.apply(&ruleset).unwrap());
        assert_eq!(handles(&ns), before, "re-apply wrote nothing");
        let status = fw.observe(Some(&ruleset));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
        assert_eq!((status.ingress_rules, status.egress_rules), (6, 2));
        assert_eq!(status.ruleset_hash, ruleset.hash());

        // A restarted agent (a new socket, the old one closed) finds the table equal,
        // adopts it and writes no rule.
        drop(fw);
        wait_unowned(&ns);
        let mut again = Firewall::open().unwrap();
        assert!(!again.apply(&ruleset).unwrap());
        assert_eq!(handles(&ns), before);
        let status = again.observe(Some(&ruleset));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
    });
}

/// A TCP connection attempt from inside `ns`; dropped SYNs time out.
fn connects(ns: &Netns, to: &str) -> bool {
    let addr: SocketAddr = to.parse().unwrap();
    ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok())
}

/// A listener inside `ns` (the socket stays in the namespace it was opened in).
fn listen(ns: &Netns, at: &str) -> TcpListener {
    ns.enter(|| TcpListener::bind(at).unwrap())
}

#[test]
fn packets_follow_the_rules() {
    require_root();
    let pod = Netns::new("fwpod").unwrap();
    let friend = Netns::new("fwok").unwrap();
    let stranger = Netns::new("fwno").unwrap();
    veth(&pod, "eth0", &friend, "eth0").unwrap();
    veth(&pod, "eth1", &stranger, "eth0").unwrap();
    pod.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])
        .unwrap();
    friend
        .ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .unwrap();
    pod.ip(&["addr", "add", "198.51.100.1/24", "dev", "eth1"])
        .unwrap();
    stranger
        .ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])
        .unwrap();

    let _app = listen(&pod, "0.0.0.0:8080");
    let _other = listen(&pod, "0.0.0.0:8081");
    let _friend_svc = listen(&friend, "0.0.0.0:9000");
    let _stranger_svc = listen(&stranger, "0.0.0.0:9000");
    // Before any firewall everything connects: the failures below are the firewall's.
    assert!(connects(&stranger, "198.51.100.1:8080"));
    assert!(connects(&pod, "198.51.100.2:9000"));

    let ruleset = render(
        &spec(json!({
            "Ingress": [{ "Protocol": "tcp", "Ports": ["8080"], "Sources": ["192.0.2.2/32"] }],
            "Egress": [{ "Protocol": "tcp", "Destinations": ["198.51.100.2"] }]
        })),
        None,
    );
    pod.enter(|| {
        let mut fw = Firewall::open().unwrap();
        fw.apply(&ruleset).unwrap();
        // The handle closes here: the persistent table stays in force without its owner.
    });

    assert!(
        connects(&friend, "192.0.2.1:8080"),
        "allowed source, allowed port"
    );
    assert!(
        !connects(&friend, "192.0.2.1:8081"),
        "allowed source, port not allowed"
    );
    assert!(
        !connects(&stranger, "198.51.100.1:8080"),
        "source not allowed"
    );
    assert!(!connects(&pod, "198.51.100.2:9000"), "egress drop");
    // The answer (SYN-ACK) to the pod's own connection is let in by ct state established,
    // although no ingress rule allows port 9000's replies.
    assert!(
        connects(&pod, "192.0.2.2:9000"),
        "replies to the pod's connection"
    );
}

#[test]
fn foreign_tables_are_left_byte_identical() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let foreign = "table inet other {
\tset blocked {
\t\ttype ipv4_addr
\t\telements = { 192.0.2.9 }
\t}

\tchain input {
\t\ttype filter hook input priority 10; policy accept;
\t\tip saddr @blocked counter packets 0 bytes 0 drop
\t}
}
table ip weft-fw {
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\tip daddr 203.0.113.5 counter packets 0 bytes 0 accept
\t}
}
";
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(foreign.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let other = nft_table_text(&ns, "inet", "other").unwrap();
    let ip_same_name = nft_table_text(&ns, "ip", "weft-fw").unwrap();

    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        fw.apply(&render(&typical(), Some(51820))).unwrap();
        fw.apply(&render(&FirewallSpec::default(), None)).unwrap();
        fw.apply(&render(&typical(), None)).unwrap();
    });
    assert_eq!(nft_table_text(&ns, "inet", "other").unwrap(), other);
    assert_eq!(nft_table_text(&ns, "ip", "weft-fw").unwrap(), ip_same_name);
    assert_eq!(listed(&ns), render(&typical(), None).nft_text());
}

#[test]
fn a_refused_batch_leaves_the_ruleset_in_force() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let first = render(&typical(), Some(51820));
    ns.enter(|| {
        let mut owner = Firewall::open().unwrap();
        owner.apply(&first).unwrap();
        let before = nft_table_text(&ns, "inet", "weft-fw").unwrap();
        // A second socket is not the owner: the kernel refuses its batch at the delete of
        // the old table, and nothing of the batch takes effect.
        let mut intruder = Firewall::open().unwrap();
        let err = intruder
            .apply(&render(&FirewallSpec::default(), None))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("deleting the old table inet weft-fw"),
            "{text}"
        );
        assert!(
            matches!(&err, weft_agent::dataplane::firewall::Error::Refused { source, .. }
                if source.raw_os_error() == Some(libc::EPERM)),
            "{err:?}"
        );
        assert_eq!(nft_table_text(&ns, "inet", "weft-fw").unwrap(), before);
        // The owner still can.
        assert!(owner
            .apply(&render(&FirewallSpec::default(), None))
            .unwrap());
        assert_eq!(listed(&ns), BASELINE);
    });
}

#[test]
fn owned_table_resists_others_and_outlives_its_owner() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let ruleset = render(&typical(), Some(51820));
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        fw.apply(&ruleset).unwrap();
        assert!(fw.owned(), "this kernel has owned persistent tables");
        let before = handles(&ns);
        for args in [
            &["delete", "table", "inet", "weft-fw"][..],
            &["add", "rule", "inet", "weft-fw", "input", "accept"],
            &["flush", "chain", "inet", "weft-fw", "input"],
            &["delete", "chain", "inet", "weft-fw", "output"],
        ] {
            let out = ns.command("nft").args(args).output().unwrap();
            assert!(!out.status.success(), "nft {args:?} must be refused");
        }
        ns.run("nft", &["flush", "ruleset"]).unwrap();
        assert_eq!(
            handles(&ns),
            before,
            "untouched by others and by flush ruleset"
        );
        assert_eq!(fw.observe(Some(&ruleset)).overall, Overall::Healthy);
        // The owner goes away (its socket closes, as when the process exits).
        drop(fw);
    });
    wait_unowned(&ns);
    // Checked as text: nft 1.0.6's JSON output stops at a table whose only flag is one it
    // does not know (persist, once the owner is gone).
    let text = nft_table_text(&ns, "inet", "weft-fw").unwrap();
    assert!(
        text.contains("type filter hook input priority filter; policy drop;"),
        "fail closed while down:\n{text}"
    );
    assert_eq!(listed(&ns), ruleset.nft_text());
    ns.enter(|| {
        let mut next = Firewall::open().unwrap();
        assert!(!next.apply(&ruleset).unwrap(), "adopted, no rule rewritten");
        let out = ns
            .command("nft")
            .args(["delete", "table", "inet", "weft-fw"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "owned again by the new agent");
        let status = next.observe(Some(&ruleset));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
        // And the new owner can change it.
        assert!(next.apply(&render(&FirewallSpec::default(), None)).unwrap());
        assert_eq!(listed(&ns), BASELINE);
    });
}

#[test]
fn ten_thousand_rules_and_ten_thousand_sources() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let many_rules: Vec<Value> = (0..10_000u32)
        .map(|i| {
            json!({ "Protocol": "tcp", "Ports": [format!("{}", 1000 + i % 50_000)],
                    "Sources": [format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255)] })
        })
        .collect();
    let rules = render(&spec(json!({ "Ingress": many_rules })), None);
    let sources: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.{}", 1 + (i >> 8) % 200, i & 255, (i * 2) & 255))
        .collect();
    let one = render(
        &spec(json!({ "Ingress": [{ "Protocol": "tcp", "Ports": ["443"], "Sources": sources }] })),
        None,
    );
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        assert!(fw.apply(&rules).unwrap());
        let status = fw.observe(Some(&rules));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
        assert_eq!(status.ingress_rules, 10_000);
        assert_eq!(status.ruleset_hash, rules.hash());
        assert_eq!(rules_json(&ns, "input").len(), 10_004, "nft sees them all");
        assert!(!fw.apply(&rules).unwrap());

        assert!(fw.apply(&one).unwrap());
        let status = fw.observe(Some(&one));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
        assert_eq!(status.ingress_rules, 1);
        assert!(!fw.apply(&one).unwrap());
        assert_eq!(listed(&ns), one.nft_text());
        let rule = &rules_json(&ns, "input")[3];
        let set = rule[0]["match"]["right"]["set"].as_array().expect("a set");
        assert!(set.len() > 1000, "{} elements", set.len());
    });
}

#[test]
fn nft_loaded_text_reads_back_equal() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let ruleset = render(
        &spec(json!({
            "Ingress": [
                { "Protocol": "tcp", "Ports": ["22", "8000-8080", "65000-65535"], "Sources": ["10.0.0.0/9", "0.0.0.0/0"] },
                { "Protocol": "udp", "Ports": ["1-10"], "Sources": ["10.0.0.0/24", "10.0.1.0/25"] },
                { "Protocol": "icmpv6", "Sources": ["2001:db8::/33", "2001:db8:ffff::/48"] },
                { "Protocol": "any", "Sources": ["::/0"], "Comment": "all of v6" },
                { "Protocol": "tcp", "Sources": ["10.0.0.0/9"] }
            ],
            "Egress": [{ "Destinations": ["203.0.113.0/24", "2001:db8::1"] }]
        })),
        Some(51821),
    );
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.nft_text().as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft -f takes the rendered text"
    );
    assert_eq!(listed(&ns), ruleset.nft_text());
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        let status = fw.observe(Some(&ruleset));
        assert_eq!(status.ruleset_hash, ruleset.hash(), "{status:?}");
        assert_eq!(status.ingress_rules, ruleset.ingress_rules());
        // Equal rules, but a plain table nobody owns: the agent replaces it with its own.
        assert_eq!(status.overall, Overall::Degraded);
        assert!(status.last_error.contains("not owned"), "{status:?}");
        assert!(fw.apply(&ruleset).unwrap());
        assert_eq!(fw.observe(Some(&ruleset)).overall, Overall::Healthy);
    });
}

#[test]
fn observe_reports_missing_and_different_tables() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        let desired = render(&typical(), None);
        let status = fw.observe(Some(&desired));
        assert_eq!(status.overall, Overall::Degraded);
        assert!(!status.table_present);
        assert!(status.last_error.contains("missing"), "{status:?}");

        fw.apply(&render(&FirewallSpec::default(), None)).unwrap();
        let status = fw.observe(Some(&desired));
        assert_eq!(status.overall, Overall::Degraded);
        assert!(status.table_present);
        assert!(status.last_error.contains("differs"), "{status:?}");
        assert_eq!(
            status.ruleset_hash,
            render(&FirewallSpec::default(), None).hash()
        );
    });
}

#[test]
fn a_table_changed_while_the_agent_was_down_is_repaired_on_restart() {
    require_root();
    let ns = Netns::new("fw").unwrap();
    let ruleset = render(&typical(), Some(51820));
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        fw.apply(&ruleset).unwrap();
        // Same handle, warm: a change elsewhere in the namespace moves the generation and
        // is seen not to concern the table.
        ns.run("nft", &["add", "table", "inet", "elsewhere"])
            .unwrap();
        assert!(!fw.apply(&ruleset).unwrap());
    });
    // Unowned while the agent is down, so nft may change it.
    wait_unowned(&ns);
    ns.run(
        "nft",
        &[
            "add", "rule", "inet", "weft-fw", "input", "tcp", "dport", "9", "accept",
        ],
    )
    .unwrap();
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap();
        let status = fw.observe(Some(&ruleset));
        assert_eq!(status.overall, Overall::Degraded, "{status:?}");
        assert_eq!(status.ingress_rules, ruleset.ingress_rules() + 1);
        assert_ne!(status.ruleset_hash, ruleset.hash());
        assert!(fw.apply(&ruleset).unwrap(), "the change is undone");
        assert_eq!(fw.observe(Some(&ruleset)).overall, Overall::Healthy);
    });
    assert_eq!(listed(&ns), ruleset.nft_text());
}

/// Each rule of the table as `nft -a -j` shows it: (chain, handle, comment, packets).
fn counted_rules(ns: &Netns) -> Vec<(String, u64, Option<String>, u64)> {
    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("table exists");
    table
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| {
            let r = o.get("rule")?;
            let packets = r["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
                .unwrap_or_else(|| panic!("every rule counts: {r}"));
            Some((
                r["chain"].as_str()?.to_owned(),
                r["handle"].as_u64()?,
                r["comment"].as_str().map(str::to_owned),
                packets,
            ))
        })
        .collect()
}

fn packets_of(rules: &[(String, u64, Option<String>, u64)], comment: &str) -> u64 {
    rules
        .iter()
        .find(|r| r.2.as_deref() == Some(comment))
        .unwrap_or_else(|| panic!("no rule {comment:?} in {rules:?}"))
        .3
}

/// Counters and a one-rule change, with real packets and `nft -a -j` as the observer: what
/// falls to chain input's policy shows in `InputDropped`, what an egress rule drops in
/// `EgressDropped`; adding one rule deletes and adds nothing else (every other rule keeps its
/// handle), the counter of an unrelated rule keeps counting across the change, and a packet
/// that hits the new rule counts there.
#[test]
fn counters_count_and_a_one_rule_change_keeps_the_other_rules() {
    require_root();
    let pod = Netns::new("fwcnt").unwrap();
    let peer = Netns::new("fwpeer").unwrap();
    veth(&pod, "eth0", &peer, "eth0").unwrap();
    pod.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])
        .unwrap();
    peer.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .unwrap();
    let _app = listen(&pod, "0.0.0.0:8080");
    let _new = listen(&pod, "0.0.0.0:9090");
    let _closed = listen(&pod, "0.0.0.0:7070");
    let _peer_svc = listen(&peer, "0.0.0.0:9000");

    let app =
        json!({ "Protocol": "tcp", "Ports": ["8080"], "Sources": ["192.0.2.2"], "Comment": "app" });
    let egress = json!([{ "Protocol": "tcp", "Ports": ["9000"], "Destinations": ["192.0.2.2"], "Comment": "no 9000" }]);
    let first = render(&spec(json!({ "Ingress": [app], "Egress": egress })), None);
    let second = render(
        &spec(json!({
            "Ingress": [app, { "Protocol": "tcp", "Ports": ["9090"], "Comment": "new" }],
            "Egress": egress
        })),
        None,
    );
    let mut fw = pod.enter(|| Firewall::open().unwrap());
    assert!(pod.enter(|| fw.apply(&first).unwrap()));
    let status = pod.enter(|| fw.observe(Some(&first)));
    assert_eq!(status.overall, Overall::Healthy, "{status:?}");
    let start = status.input_dropped.expect("InputDropped read");
    assert_eq!(
        status.egress_dropped.expect("EgressDropped read").packets,
        0
    );

    assert!(connects(&peer, "192.0.2.1:8080"), "the app rule admits");
    assert!(
        !connects(&peer, "192.0.2.1:7070"),
        "no rule: the policy drops"
    );
    assert!(!connects(&peer, "192.0.2.1:9090"), "not yet allowed");
    assert!(!connects(&pod, "192.0.2.2:9000"), "the egress rule drops");
    let status = pod.enter(|| fw.observe(Some(&first)));
    let dropped = status.input_dropped.unwrap();
    assert!(
        dropped.packets >= start.packets + 2 && dropped.bytes > start.bytes,
        "SYNs to 7070 and 9090 counted as policy drops: {start:?} -> {dropped:?}"
    );
    let egress_dropped = status.egress_dropped.unwrap();
    assert!(egress_dropped.packets >= 1, "{egress_dropped:?}");

    let before = counted_rules(&pod);
    let app_before = packets_of(&before, "app");
    assert!(app_before >= 1, "{before:?}");
    // `nft list -a` beside the JSON, for whoever reads the test's output.
    let listing = |ns: &Netns| {
        String::from_utf8(
            ns.run("nft", &["-a", "list", "table", "inet", "weft-fw"])
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    println!("before the change:\n{}", listing(&pod));

    assert!(pod.enter(|| fw.apply(&second).unwrap()), "one rule added");
    println!("after the change:\n{}", listing(&pod));
    let after = counted_rules(&pod);
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    for (chain, handle, comment, _) in &before {
        assert!(
            after
                .iter()
                .any(|a| (&a.0, a.1, &a.2) == (chain, *handle, comment)),
            "rule {handle} ({comment:?}) of chain {chain} kept its handle: {after:?}"
        );
    }
    let new_rule: Vec<_> = after
        .iter()
        .filter(|a| !before.iter().any(|b| b.1 == a.1))
        .collect();
    assert_eq!(new_rule.len(), 1, "{after:?}");
    assert_eq!(new_rule[0].2.as_deref(), Some("new"));
    assert_eq!(new_rule[0].3, 0, "a new rule counts from zero");
    assert!(
        packets_of(&after, "app") >= app_before,
        "not reset by the change"
    );
    assert_eq!(listed(&pod), second.nft_text());

    assert!(connects(&peer, "192.0.2.1:8080"));
    assert!(connects(&peer, "192.0.2.1:9090"), "the new rule admits");
    let counted = counted_rules(&pod);
    assert!(
        packets_of(&counted, "app") > app_before,
        "the app rule kept counting across the change: {counted:?}"
    );
    assert!(packets_of(&counted, "new") >= 1, "{counted:?}");
    let status = pod.enter(|| fw.observe(Some(&second)));
    assert_eq!(status.overall, Overall::Healthy, "{status:?}");
    assert!(
        status.input_dropped.unwrap().packets >= dropped.packets,
        "{status:?}"
    );
}

/// O(1) verification and its limit: after its own commit a handle knows the table from the
/// generation alone (no dump, however often it applies or observes); a concurrent `nft`
/// writer between two applies moves the generation, so the next read dumps the table, sees
/// the foreign rule, and the apply deletes exactly it. The table is plain (no owner flag),
/// as on a kernel before 6.9, so `nft` may write it.
#[test]
fn a_concurrent_writer_between_two_applies_is_detected_and_repaired() {
    require_root();
    let ns = Netns::new("fwgen").unwrap();
    let ruleset = render(&typical(), Some(51820));
    ns.enter(|| {
        let mut fw = Firewall::open().unwrap().without_owner();
        assert!(fw.apply(&ruleset).unwrap());
        assert!(!fw.owned());
        let reads = fw.full_reads();
        for _ in 0..3 {
            assert!(!fw.apply(&ruleset).unwrap());
            let status = fw.observe(Some(&ruleset));
            assert_eq!(status.overall, Overall::Healthy, "{status:?}");
            assert!(status.input_dropped.is_some(), "{status:?}");
        }
        assert_eq!(fw.full_reads(), reads, "known from the generation alone");
        let before = handles(&ns);

        // Someone else writes between two applies.
        ns.run(
            "nft",
            &[
                "insert", "rule", "inet", "weft-fw", "input", "tcp", "dport", "9", "accept",
            ],
        )
        .unwrap();
        let status = fw.observe(Some(&ruleset));
        assert_eq!(
            fw.full_reads(),
            reads + 1,
            "the generation moved: read whole"
        );
        assert_eq!(status.overall, Overall::Degraded, "{status:?}");
        assert!(status.last_error.contains("differs"), "{status:?}");
        assert!(fw.apply(&ruleset).unwrap(), "repaired");
        assert_eq!(handles(&ns), before, "only the foreign rule went");
        assert_eq!(listed(&ns), ruleset.nft_text());

        // The same writer between the read and the commit: the batch planned at the old
        // generation is refused whole and planned again.
        ns.run(
            "nft",
            &[
                "add",
                "rule",
                "inet",
                "weft-fw",
                "output",
                "ip",
                "daddr",
                "192.0.2.9",
                "drop",
            ],
        )
        .unwrap();
        assert!(fw.apply(&ruleset).unwrap());
        assert_eq!(handles(&ns), before);
        assert_eq!(fw.observe(Some(&ruleset)).overall, Overall::Healthy);

        // The resync tick distrusts what it knows: one whole read, nothing to write.
        let reads = fw.full_reads();
        fw.distrust();
        assert!(!fw.apply(&ruleset).unwrap());
        assert_eq!(fw.full_reads(), reads + 1);
    });
}

/// A freshly started agent decides "nothing to write" without dumping the table when its
/// record proves no one committed anything in the namespace since the last agent's own
/// commit (same boot, same table, same generation); a table changed while no agent ran is
/// read whole and repaired, and a record is never taken for a table it does not describe.
#[test]
fn a_fresh_agent_trusts_only_a_table_no_one_could_have_changed() {
    require_root();
    let ns = Netns::new("fwrec").unwrap();
    let dir = TempDir::new("fwrec");
    let record = dir.0.join("firewall");
    let ruleset = render(&typical(), Some(51820));
    let fresh = || Firewall::open().unwrap().remember_in(record.clone());
    ns.enter(|| {
        let mut fw = fresh();
        assert!(fw.apply(&ruleset).unwrap());
    });
    let before = handles(&ns);
    wait_unowned(&ns);
    ns.enter(|| {
        let mut fw = fresh();
        assert!(!fw.apply(&ruleset).unwrap(), "adopted, nothing written");
        let status = fw.observe(Some(&ruleset));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
        assert!(status.input_dropped.is_some(), "{status:?}");
        assert_eq!(status.ruleset_hash, ruleset.hash());
        assert_eq!(fw.full_reads(), 0, "known from the record, not from a dump");
    });
    assert_eq!(handles(&ns), before);

    // Changed by someone while no agent ran: the generation moved, so it is read.
    wait_unowned(&ns);
    ns.run(
        "nft",
        &[
            "add", "rule", "inet", "weft-fw", "input", "tcp", "dport", "9", "accept",
        ],
    )
    .unwrap();
    ns.enter(|| {
        let mut fw = fresh();
        assert!(fw.apply(&ruleset).unwrap(), "repaired");
        assert_eq!(fw.full_reads(), 1);
    });
    assert_eq!(handles(&ns), before, "only the foreign rule went");
    assert_eq!(listed(&ns), ruleset.nft_text());

    // A record of another ruleset proves nothing about this one: read, one rule changed.
    wait_unowned(&ns);
    let other = render(
        &spec(json!({ "Ingress": [{ "Protocol": "udp", "Ports": ["53"] }] })),
        Some(51820),
    );
    ns.enter(|| {
        let mut fw = fresh();
        assert!(fw.apply(&other).unwrap());
        assert_eq!(fw.full_reads(), 1);
        assert_eq!(fw.observe(Some(&other)).overall, Overall::Healthy);
    });
    assert_eq!(listed(&ns), other.nft_text());
}

/// A directory of this process, removed with everything in it when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("weft-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
