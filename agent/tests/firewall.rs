//! Table `inet weft-fw` against the real kernel, each test in its own network namespace,
//! checked with `nft` (and real packets), never with the agent's own read-back alone.

use serde_json::{json, Value};
use weft_agent::dataplane::firewall::{render, Firewall, Ruleset};
use weft_schema::validate::Firewall as FirewallSpec;
use weft_schema::{PodId, PodSpec, ValidSpec};
use weft_testkit::observe::nft_table_text;
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

/// `nft list table inet weft-fw` without the `flags` line (nft 1.0.6 prints `owner` but
/// cannot print `persist`; the flags are checked separately).
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
        out.push_str(l);
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
