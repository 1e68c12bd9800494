//! `weft.schema.json` is generated from the types (schemars) and checked in. This test fails
//! when it is stale (`WEFT_BLESS=1 cargo test -p weft-schema` rewrites it), checks that it
//! says what the contract says (closed objects, required fields, defaults, limits, secrets
//! write-only), and validates real documents against it: every fixture, the contract's
//! examples, and a table of bad ones.

mod support;

use serde_json::{json, Value};
use support::json_schema::{check, generate, load, path, render};
use support::*;
use weft_schema::key::KEY_PATTERN;
use weft_schema::validate::limits;
use weft_schema::{Encoding, PublicKey};

#[test]
fn the_checked_in_schema_is_current() {
    check_or_bless(&path(), &render(&generate()));
}

fn defs() -> serde_json::Map<String, Value> {
    generate()["$defs"].as_object().unwrap().clone()
}

fn object_defs() -> Vec<(String, Value)> {
    defs()
        .into_iter()
        .filter(|(_, d)| d["type"] == "object")
        .collect()
}

#[test]
fn every_object_is_closed() {
    let objects = object_defs();
    // Spec: PodSpec, NetworkSpec, FirewallSpec, IngressRule, EgressRule, WireGuardSpec,
    // PeerSpec; HostSpec, SandboxSpec, PortForwardSpec. Status: PodStatus, DriftEvent,
    // NetworkStatus, FirewallStatus, PacketCount, WireGuardStatus, PeerStatus, ApplyReply;
    // HostStatus, SandboxStatus, PortForward.
    assert_eq!(
        objects.len(),
        21,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (name, def) in objects {
        assert_eq!(
            def["additionalProperties"], false,
            "{name} accepts unknown fields"
        );
    }
}

fn required(def: &Value) -> Vec<String> {
    def.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().map(|n| n.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn properties(def: &Value) -> Vec<String> {
    def["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn required_fields_are_the_contract_s() {
    let defs = defs();
    // The contract's "Fields: required, optional, defaults" section.
    let spec_required: [(&str, &[&str]); 10] = [
        ("PodSpec", &["PodId", "Generation"]),
        ("HostSpec", &["HostId", "Generation"]),
        ("SandboxSpec", &["Slot", "Guest"]),
        ("PortForwardSpec", &["Protocol", "HostPort", "SandboxPort"]),
        ("NetworkSpec", &["Interface", "Address"]),
        ("FirewallSpec", &[]),
        ("IngressRule", &[]),
        ("EgressRule", &[]),
        ("WireGuardSpec", &["Interface", "Address"]),
        ("PeerSpec", &["PublicKey"]),
    ];
    for (name, want) in spec_required {
        let mut got = required(&defs[name]);
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
    // What the agent sends always has every field, `null` where nothing is.
    for name in [
        "PodStatus",
        "DriftEvent",
        "NetworkStatus",
        "FirewallStatus",
        "PacketCount",
        "WireGuardStatus",
        "PeerStatus",
        "ApplyReply",
        "HostStatus",
        "SandboxStatus",
        "PortForward",
    ] {
        let mut got = required(&defs[name]);
        got.sort();
        let mut all = properties(&defs[name]);
        all.sort();
        assert_eq!(got, all, "{name}: every field is always sent");
    }
}

#[test]
fn defaults_are_the_contract_s() {
    let defs = defs();
    let prop = |def: &str, field: &str| defs[def]["properties"][field].clone();
    assert_eq!(prop("WireGuardSpec", "ListenPort")["default"], 51820);
    assert_eq!(prop("WireGuardSpec", "Mtu")["default"], 1420);
    assert_eq!(prop("IngressRule", "Protocol")["default"], "any");
    assert_eq!(prop("EgressRule", "Protocol")["default"], "any");
    for (def, field) in [
        ("IngressRule", "Ports"),
        ("IngressRule", "Sources"),
        ("EgressRule", "Ports"),
        ("EgressRule", "Destinations"),
        ("FirewallSpec", "Ingress"),
        ("FirewallSpec", "Egress"),
        ("NetworkSpec", "Nameservers"),
        ("NetworkSpec", "SearchDomains"),
        ("WireGuardSpec", "Peers"),
        ("PeerSpec", "AllowedIps"),
        ("HostSpec", "Sandboxes"),
        ("SandboxSpec", "PortForwards"),
    ] {
        assert_eq!(prop(def, field)["default"], json!([]), "{def}.{field}");
    }
    assert_eq!(prop("SandboxSpec", "Egress")["default"], true);
    assert_eq!(prop("SandboxSpec", "Guest")["enum"], json!(["tap", "veth"]));
    assert_eq!(
        prop("PortForwardSpec", "Protocol")["enum"],
        json!(["tcp", "udp"])
    );
    for (def, field) in [
        ("PodSpec", "Network"),
        ("PodSpec", "Firewall"),
        ("PodSpec", "WireGuard"),
        ("NetworkSpec", "Gateway"),
        ("NetworkSpec", "Mtu"),
        ("WireGuardSpec", "PrivateKey"),
        ("PeerSpec", "Endpoint"),
        ("PeerSpec", "PersistentKeepaliveSeconds"),
        ("PeerSpec", "PresharedKey"),
        ("HostSpec", "NotAfterUnix"),
        ("HostSpec", "Uplink"),
    ] {
        assert_eq!(prop(def, field)["default"], Value::Null, "{def}.{field}");
    }
    // `null` is in the list because it means "left out" (contract v1.1): `any`.
    let protocols = json!(["tcp", "udp", "icmp", "icmpv6", "any", null]);
    assert_eq!(prop("IngressRule", "Protocol")["enum"], protocols);
    assert_eq!(prop("EgressRule", "Protocol")["enum"], protocols);
}

#[test]
fn limits_are_the_contract_s() {
    let defs = defs();
    let max_items = |def: &str, field: &str| defs[def]["properties"][field]["maxItems"].clone();
    // The contract's Limits table.
    for (def, field, bound) in [
        ("FirewallSpec", "Ingress", 10_000),
        ("FirewallSpec", "Egress", 10_000),
        ("IngressRule", "Sources", 65_536),
        ("EgressRule", "Destinations", 65_536),
        ("IngressRule", "Ports", 1_024),
        ("EgressRule", "Ports", 1_024),
        ("WireGuardSpec", "Peers", 10_000),
        ("PeerSpec", "AllowedIps", 1_024),
        ("NetworkSpec", "Nameservers", 3),
        ("NetworkSpec", "SearchDomains", 6),
        ("HostSpec", "Sandboxes", 4_096),
        ("SandboxSpec", "PortForwards", 64),
    ] {
        assert_eq!(max_items(def, field), bound, "{def}.{field}");
    }
    let prop = |def: &str, field: &str| defs[def]["properties"][field].clone();
    for def in ["NetworkSpec", "WireGuardSpec"] {
        assert_eq!(prop(def, "Mtu")["minimum"], limits::MTU_MIN);
        assert_eq!(prop(def, "Mtu")["maximum"], limits::MTU_MAX);
    }
    assert_eq!(prop("WireGuardSpec", "ListenPort")["minimum"], 1);
    assert_eq!(prop("WireGuardSpec", "ListenPort")["maximum"], 65535);
    assert_eq!(
        prop("PeerSpec", "PersistentKeepaliveSeconds")["maximum"],
        65535
    );
    assert_eq!(prop("PodSpec", "Generation")["minimum"], 1);
    assert_eq!(prop("HostSpec", "Generation")["minimum"], 1);
    assert_eq!(prop("SandboxSpec", "Slot")["minimum"], 1);
    assert_eq!(prop("SandboxSpec", "Slot")["maximum"], 16_383);
    for field in ["HostPort", "SandboxPort"] {
        assert_eq!(prop("PortForwardSpec", field)["minimum"], 1);
        assert_eq!(prop("PortForwardSpec", field)["maximum"], 65_535);
    }
}

/// Contract v1.1 "Go control planes": wherever a field may be left out, `null` is taken and
/// means leaving it out; `null` for a required field is refused naming it. Every property of
/// every spec object, as the schema lists them, is tried in the agent and in the schema.
#[test]
fn null_is_left_out_wherever_a_field_may_be_left_out() {
    let schema = load();
    let defs = defs();
    let pod: Value = serde_json::from_slice(&Encoding::Json.encode(&full_spec())).unwrap();
    let host: Value = serde_json::from_slice(&Encoding::Json.encode(&full_host_spec())).unwrap();
    // Where each spec object sits in the full spec of its root (JSON pointer, and as errors
    // name it).
    let places = [
        ("PodSpec", "PodSpec", "", ""),
        ("PodSpec", "NetworkSpec", "/Network", "Network."),
        ("PodSpec", "FirewallSpec", "/Firewall", "Firewall."),
        (
            "PodSpec",
            "IngressRule",
            "/Firewall/Ingress/0",
            "Firewall.Ingress[0].",
        ),
        (
            "PodSpec",
            "EgressRule",
            "/Firewall/Egress/0",
            "Firewall.Egress[0].",
        ),
        ("PodSpec", "WireGuardSpec", "/WireGuard", "WireGuard."),
        (
            "PodSpec",
            "PeerSpec",
            "/WireGuard/Peers/0",
            "WireGuard.Peers[0].",
        ),
        ("HostSpec", "HostSpec", "", ""),
        ("HostSpec", "SandboxSpec", "/Sandboxes/0", "Sandboxes[0]."),
        (
            "HostSpec",
            "PortForwardSpec",
            "/Sandboxes/0/PortForwards/0",
            "Sandboxes[0].PortForwards[0].",
        ),
    ];
    let spec_objects = object_defs()
        .into_iter()
        .filter(|(name, _)| name.ends_with("Spec") || name.ends_with("Rule"))
        .count();
    assert_eq!(places.len(), spec_objects, "a spec object is not tried");
    // Decoded, and (with null) through the agent's whole pipeline.
    let decode = |root: &str, doc: &Value| -> Result<String, String> {
        let body = doc.to_string();
        if root == "PodSpec" {
            let v = Encoding::Json
                .decode::<weft_schema::PodSpec>(body.as_bytes())
                .map_err(|e| e.to_line())?;
            Ok(format!("{v:?}"))
        } else {
            let v = Encoding::Json
                .decode::<weft_schema::HostSpec>(body.as_bytes())
                .map_err(|e| e.to_line())?;
            Ok(format!("{v:?}"))
        }
    };
    let accept = |root: &str, doc: &Value| -> Result<(), String> {
        if root == "PodSpec" {
            accept_json(&doc.to_string()).map(drop)
        } else {
            accept_host(None, None, doc.to_string().as_bytes()).map(drop)
        }
    };
    for (root, def, at, prefix) in places {
        let full = if root == "PodSpec" { &pod } else { &host };
        let required = required(&defs[def]);
        for field in properties(&defs[def]) {
            let name = format!("{prefix}{field}");
            let mut with_null = full.clone();
            with_null.pointer_mut(at).unwrap()[&field] = Value::Null;
            if required.contains(&field) {
                let err = accept(root, &with_null).expect_err(&name);
                assert!(
                    err.starts_with(&format!("invalid JSON at {name}: invalid type: null")),
                    "{name}: {err}"
                );
                assert!(check(&schema, root, &with_null).is_err(), "{name}");
                continue;
            }
            let mut left_out = full.clone();
            let object = left_out.pointer_mut(at).unwrap().as_object_mut().unwrap();
            object
                .remove(&field)
                .expect("the full spec sets every field");
            let decoded = decode(root, &with_null).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                decoded,
                decode(root, &left_out).unwrap(),
                "{name}: null is not left out"
            );
            check(&schema, root, &with_null).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }
}

#[test]
fn secrets_are_write_only_and_never_in_a_status() {
    let defs = defs();
    assert_eq!(defs["Secret"]["writeOnly"], true);
    assert_eq!(defs["Secret"]["pattern"], KEY_PATTERN);
    // Only the two key fields of the spec refer to Secret; nothing the agent writes does.
    let text = |name: &str| defs[name].to_string();
    assert!(text("WireGuardSpec").contains("#/$defs/Secret"));
    assert!(text("PeerSpec").contains("#/$defs/Secret"));
    for name in [
        "PodStatus",
        "NetworkStatus",
        "FirewallStatus",
        "WireGuardStatus",
        "PeerStatus",
        "DriftEvent",
        "ApplyReply",
        "HostSpec",
        "HostStatus",
        "SandboxStatus",
    ] {
        assert!(!text(name).contains("Secret"), "{name}");
    }
}

#[test]
fn the_key_pattern_is_exactly_what_the_decoder_takes() {
    let pattern = regex::Regex::new(KEY_PATTERN).unwrap();
    // Every key encodes to something the pattern takes...
    for seed in 0u8..=255 {
        let bytes: [u8; 32] =
            std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7));
        let text = PublicKey(bytes).to_base64();
        assert!(pattern.is_match(&text), "{text}");
    }
    // ...and the pattern refuses what the decoder refuses: a non-zero trailing bit, a
    // missing pad, 31 or 33 bytes, the URL-safe alphabet.
    let good = PublicKey([0; 32]).to_base64();
    let trailing_bit = format!("{}B=", &good[..42]);
    for bad in [
        trailing_bit.as_str(),
        &good[..43],
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "________________________________________AAA=",
    ] {
        assert!(PublicKey::parse(bad).is_err(), "{bad}");
        assert!(!pattern.is_match(bad), "{bad}");
    }
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&read_fixture(name)).unwrap()
}

#[test]
fn every_fixture_is_valid_against_the_schema() {
    let schema = load();
    for (def, name) in [
        ("PodSpec", "pod_spec_full.json"),
        ("PodSpec", "pod_spec_minimal.json"),
        ("PodStatus", "pod_status_pending.json"),
        ("PodStatus", "pod_status_healthy.json"),
        ("ApplyReply", "apply_reply_applied.json"),
        ("ApplyReply", "apply_reply_rejected.json"),
        ("PodStatus", "contract_pod_status.json"),
        ("ApplyReply", "contract_apply_reply.json"),
        ("DriftEvent", "contract_last_drift.json"),
        ("PodSpec", "go_pod_spec_nulls.json"),
        ("HostSpec", "host_spec_full.json"),
        ("HostSpec", "host_spec_minimal.json"),
        ("HostSpec", "contract_host_spec.json"),
        ("HostSpec", "go_host_spec_nulls.json"),
        ("HostStatus", "host_status_pending.json"),
        ("HostStatus", "host_status_degraded.json"),
        ("HostStatus", "contract_host_status.json"),
    ] {
        if let Err(e) = check(&schema, def, &fixture_json(name)) {
            panic!("{name}: {e:?}");
        }
    }
    // The contract's spec example holds a placeholder key: the schema says so, and nothing
    // else; with a real key it is valid.
    let mut example = fixture_json("contract_pod_spec.json");
    assert_eq!(
        check(&schema, "PodSpec", &example).unwrap_err(),
        [format!(
            r#"WireGuard.Peers[0].PublicKey: "<base64, 32 bytes>" does not match "{KEY_PATTERN}""#
        )]
    );
    example["WireGuard"]["Peers"][0]["PublicKey"] = json!(public_key(3));
    check(&schema, "PodSpec", &example).unwrap();
    // A status is never a spec and the other way round.
    assert!(check(&schema, "PodSpec", &fixture_json("pod_status_healthy.json")).is_err());
    assert!(check(&schema, "PodStatus", &fixture_json("pod_spec_full.json")).is_err());
    assert!(check(&schema, "HostSpec", &fixture_json("pod_spec_full.json")).is_err());
    assert!(check(&schema, "PodSpec", &fixture_json("host_spec_full.json")).is_err());
    assert!(check(
        &schema,
        "HostStatus",
        &fixture_json("pod_status_healthy.json")
    )
    .is_err());
}

#[test]
fn the_schema_refuses_what_the_contract_refuses_of_a_host() {
    let schema = load();
    let spec =
        |sandbox: Value| json!({"HostId": "host-a", "Generation": 1, "Sandboxes": [sandbox]});
    let cases = [
        (
            spec(json!({"Slot": 0, "Guest": "tap"})),
            "Sandboxes[0].Slot: 0 is past minimum 1",
        ),
        (
            spec(json!({"Slot": 16384, "Guest": "tap"})),
            "Sandboxes[0].Slot: 16384 is past maximum 16383",
        ),
        (
            spec(json!({"Slot": 1, "Guest": "vm"})),
            r#"Sandboxes[0].Guest: "vm" is not one of ["tap","veth"]"#,
        ),
        (
            spec(
                json!({"Slot": 1, "Guest": "tap", "PortForwards": [{"Protocol": "any", "HostPort": 1, "SandboxPort": 1}]}),
            ),
            r#"Sandboxes[0].PortForwards[0].Protocol: "any" is not one of ["tcp","udp"]"#,
        ),
        (
            spec(
                json!({"Slot": 1, "Guest": "tap", "PortForwards": [{"Protocol": "tcp", "HostPort": 70000, "SandboxPort": 1}]}),
            ),
            "Sandboxes[0].PortForwards[0].HostPort: 70000 is past maximum 65535",
        ),
        (
            json!({"HostId": "host-a", "Generation": 1, "Uplink": "eth0:1"}),
            r#"Uplink: "eth0:1" does not match "^[^/:\\s]{1,15}$""#,
        ),
        (
            json!({"HostId": "host-a", "Generation": 1, "Slots": []}),
            r#"(root): unknown field "Slots""#,
        ),
    ];
    for (doc, want) in cases {
        let errs = check(&schema, "HostSpec", &doc).expect_err(want);
        assert!(errs.iter().any(|e| e == want), "want {want}\n got {errs:?}");
        assert!(
            accept_host(None, None, doc.to_string().as_bytes()).is_err(),
            "{doc}"
        );
    }
}

#[test]
fn the_schema_refuses_what_the_contract_refuses() {
    let schema = load();
    let spec = |extra: Value| {
        let mut v = json!({"PodId": "web-1", "Generation": 1});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let cases = [
        (
            spec(json!({"Firewall": {"Ingress": [{"Source": []}]}})),
            r#"Firewall.Ingress[0]: unknown field "Source""#,
        ),
        (json!({"Generation": 1}), "(root): missing \"PodId\""),
        (
            spec(json!({"Generation": 0})),
            "Generation: 0 is past minimum 1",
        ),
        (
            spec(json!({"PodId": "web.1"})),
            r#"PodId: "web.1" does not match "^[A-Za-z0-9_-]{1,63}$""#,
        ),
        (
            spec(json!({"Firewall": {"Egress": [{"Protocol": "TCP"}]}})),
            r#"Firewall.Egress[0].Protocol: "TCP" is not one of ["tcp","udp","icmp","icmpv6","any",null]"#,
        ),
        (
            spec(json!({"Firewall": {"Ingress": [{"Protocol": "tcp", "Ports": ["+22"]}]}})),
            r#"Firewall.Ingress[0].Ports[0]: "+22" does not match "^[0-9]+(-[0-9]+)?$""#,
        ),
        (
            spec(json!({"Network": {"Interface": "eth0:1", "Address": "192.0.2.5/24"}})),
            r#"Network.Interface: "eth0:1" does not match "^[^/:\\s]{1,15}$""#,
        ),
        (
            spec(json!({"Network": {"Interface": "eth0", "Address": "192.0.2.5/24", "Mtu": 575}})),
            "Network.Mtu: 575 is past minimum 576",
        ),
        (
            spec(
                json!({"Network": {"Interface": "eth0", "Address": "192.0.2.5/24", "Nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]}}),
            ),
            "Network.Nameservers: 4 items, maxItems 3",
        ),
        (
            spec(
                json!({"WireGuard": {"Interface": "wg0", "Address": "10.9.0.1/24", "ListenPort": 0}}),
            ),
            "WireGuard.ListenPort: 0 is past minimum 1",
        ),
        (
            spec(
                json!({"WireGuard": {"Interface": "wg0", "Address": "10.9.0.1/24", "PrivateKey": "AAAA"}}),
            ),
            r#"WireGuard.PrivateKey: "AAAA" does not match "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$""#,
        ),
        (
            spec(
                json!({"WireGuard": {"Interface": "wg0", "Address": "10.9.0.1/24", "Peers": [{"PublicKey": public_key(1), "PersistentKeepaliveSeconds": 65536}]}}),
            ),
            "WireGuard.Peers[0].PersistentKeepaliveSeconds: 65536 is past maximum 65535",
        ),
        (
            spec(json!({"Generation": 9_007_199_254_740_992u64})),
            "Generation: 9007199254740992 is past maximum 9007199254740991",
        ),
        (
            spec(json!({"Firewall": {"Ingress": [{"Comment": "x".repeat(129)}]}})),
            "Firewall.Ingress[0].Comment: length 129 is past maxLength 128",
        ),
    ];
    for (doc, want) in cases {
        let errs = check(&schema, "PodSpec", &doc).expect_err(want);
        assert!(errs.iter().any(|e| e == want), "want {want}\n got {errs:?}");
        // And the agent refuses each of them too.
        assert!(accept_json(&doc.to_string()).is_err(), "{doc}");
    }
}

#[test]
fn the_schema_takes_what_the_agent_takes() {
    // The schema may be looser than validation, never stricter: a control plane that checks
    // its specs against it must not be stopped from sending one the agent would apply.
    let schema = load();
    let bodies = [
        Encoding::Json.encode(&full_spec()),
        Encoding::Json.encode(&minimal_spec()),
        br#"{"PodId":"web-1","Generation":1,"Firewall":{}}"#.to_vec(),
        br#"{"PodId":"web-1","Generation":1,"Firewall":null,"Network":null}"#.to_vec(),
        br#"{"PodId":"web-1","Generation":9007199254740991,"WireGuard":{"Interface":"wg0","Address":"2001:db8::1/64","ListenPort":65535,"Mtu":576,"PrivateKey":null,"Peers":[{"PublicKey":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","PersistentKeepaliveSeconds":0}]}}"#.to_vec(),
    ];
    for body in bodies {
        accept(None, None, &body).expect("the agent takes it");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        check(&schema, "PodSpec", &doc).unwrap_or_else(|e| panic!("{doc}: {e:?}"));
    }
    let hosts = [
        Encoding::Json.encode(&full_host_spec()),
        Encoding::Json.encode(&minimal_host_spec()),
        br#"{"HostId":"host-a","Generation":1,"Sandboxes":[{"Slot":16383,"Guest":"veth","Egress":null,"PortForwards":[{"Protocol":"udp","HostPort":65535,"SandboxPort":1}]}]}"#.to_vec(),
    ];
    for body in hosts {
        accept_host(None, None, &body).expect("the host agent takes it");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        check(&schema, "HostSpec", &doc).unwrap_or_else(|e| panic!("{doc}: {e:?}"));
    }
}
