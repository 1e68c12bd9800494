//! Table `inet weft-fw` against the real kernel, each test in its own network namespace,
//! checked with `nft` (and real packets), never with the agent's own read-back alone.

use serde_json::{json, Value};
use weft_agent::dataplane::firewall::{render, Firewall, Ruleset};
use weft_schema::validate::Firewall as FirewallSpec;
use weft_schema::{Overall, PodId, PodSpec, ValidSpec};
use weft_testkit::observe::{nft_table, nft_table_text};
use weft_testkit::{require_root, Netns};

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

/// `nft list table inet weft-fw` without the `flags` line and the `# progname` note on an
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
    let table = nft_table(ns, "inet", "weft-fw").unwrap().expect("table exists");
    table
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["handle"].as_u64())
        .collect()
}

fn chain_json(ns: &Netns, name: &str) -> Value {
    let table = nft_table(ns, "inet", "weft-fw").unwrap().expect("table exists");
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
    let table = nft_table(ns, "inet", "weft-fw").unwrap().expect("table exists");
    table
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["rule"]["chain"] == chain)
        .map(|o| o["rule"]["expr"].clone())
        .collect()
}

const BASELINE: &str = "table inet weft-fw {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname \"lo\" accept
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
                json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]),
                json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]),
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
\t\tct state established,related accept
\t\tiifname \"lo\" accept
\t\tudp dport 51820 accept
\t\tip saddr 10.0.0.0/8 tcp dport { 22, 8000-8080 } accept comment \"ssh and app\"
\t\tip saddr 192.0.2.0/24 tcp dport { 443-444, 1000-2500 } accept
\t\tip6 saddr { 2001:db8:1::/48, 2001:db8:2::1 } tcp dport { 443-444, 1000-2500 } accept
\t\tudp dport 5000-5100 accept
\t\tip6 saddr 2001:db8::/32 meta l4proto ipv6-icmp accept
\t\tip saddr { 198.51.100.0/24, 203.0.112.0/23 } accept
\t}

\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tip daddr 169.254.169.254 drop comment \"no metadata\"
\t\tip6 daddr 2001:db8::/33 tcp dport 25 drop
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
            rules_json(&ns, "input")[6],
            json!([{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"range": [5000, 5100]}}}, {"accept": null}])
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
        let mut again = Firewall::open().unwrap();
        assert!(!again.apply(&ruleset).unwrap());
        assert_eq!(handles(&ns), before);
        let status = again.observe(Some(&ruleset));
        assert_eq!(status.overall, Overall::Healthy, "{status:?}");
    });
}
