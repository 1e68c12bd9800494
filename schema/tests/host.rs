//! The host role's wire types (CONTRACT.md v1.1 "Host role"): golden fixtures in both
//! encodings, the contract's examples, Go's nulls, and a table of bad inputs with the exact
//! error each must give, through what the host agent does with an inbound spec
//! (`support::accept_host`).

mod support;

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use support::*;
use weft_schema::host::{limits, L4};
use weft_schema::{
    Encoding, Guest, HostSpec, HostStatus, Overall, PortForward, SandboxStatus, ValidHostSpec,
};

fn golden<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for (encoding, ext) in [(Encoding::Json, "json"), (Encoding::Bincode, "bincode")] {
        let file = format!("{name}.{ext}");
        check_or_bless(&fixture_path(&file), &encoding.encode(value));
        let decoded: T = encoding
            .decode(&read_fixture(&file))
            .unwrap_or_else(|e| panic!("{file} does not decode: {}", e.to_line()));
        assert_eq!(&decoded, value, "{file} decodes to another value");
    }
}

#[test]
fn host_specs_are_golden() {
    golden("host_spec_full", &full_host_spec());
    ValidHostSpec::validate(&full_host_spec(), &host()).expect("the full host spec validates");
    golden("host_spec_minimal", &minimal_host_spec());
    // Pinned by hand: varint lengths and integers, one 0 byte per absent Option, an empty
    // list's length, fields in declaration order.
    assert_eq!(
        read_fixture("host_spec_minimal.bincode"),
        b"\x06host-a\x01\x00\x00\x00",
    );
    assert_eq!(
        read_fixture("host_spec_minimal.json"),
        br#"{"HostId":"host-a","Generation":1,"NotAfterUnix":null,"Uplink":null,"Sandboxes":[]}"#,
    );
}

#[test]
fn host_statuses_are_golden() {
    golden("host_status_pending", &pending_host_status());
    golden("host_status_degraded", &degraded_host_status());
}

#[test]
fn contract_host_examples_decode() {
    let spec: HostSpec = Encoding::Json
        .decode(&read_fixture("contract_host_spec.json"))
        .unwrap();
    let valid = ValidHostSpec::validate(&spec, &host()).unwrap();
    assert_eq!(valid.uplink.as_ref().unwrap().as_str(), "eth0");
    assert_eq!(valid.sandboxes.len(), 1);
    let s = &valid.sandboxes[0];
    assert_eq!((s.slot.get(), s.guest, s.egress), (7, Guest::Tap, true));
    assert_eq!(
        (
            s.port_forwards[0].protocol,
            s.port_forwards[0].host_port,
            s.port_forwards[0].sandbox_port
        ),
        (L4::Tcp, 8080, 80)
    );

    let status: HostStatus = Encoding::Json
        .decode(&read_fixture("contract_host_status.json"))
        .unwrap();
    assert_eq!(
        status,
        HostStatus {
            host_id: "host-a".into(),
            agent_version: "0.2.0".into(),
            observed_generation: 3,
            overall: Overall::Healthy,
            last_error: String::new(),
            published_at_unix: 1_763_779_200,
            published_at_unix_ms: 1_763_779_200_123,
            drift_repairs: 0,
            last_drift: None,
            signed_by: None,
            uplink: Some("eth0".into()),
            forwarding: true,
            sandboxes: vec![SandboxStatus {
                slot: 7,
                namespace: "weft-sb-7".into(),
                guest: Guest::Tap,
                guest_mac: Some("02:fc:00:00:00:05".into()),
                host_ip: "10.11.0.7".into(),
                veth_ip: "10.12.0.14/31".into(),
                vpeer_ip: "10.12.0.15/31".into(),
                guest_ip: "169.254.0.21".into(),
                up: true,
                egress: true,
                port_forwards: vec![PortForward {
                    protocol: "tcp".into(),
                    host_port: 8080,
                    sandbox_port: 80,
                }],
                overall: Overall::Healthy,
                last_error: String::new(),
            }],
        }
    );
}

#[test]
fn go_nulls_in_a_host_spec_mean_left_out() {
    let spec: HostSpec = Encoding::Json
        .decode(&read_fixture("go_host_spec_nulls.json"))
        .unwrap();
    let left_out: HostSpec = Encoding::Json
        .decode(
            br#"{"HostId":"host-a","Generation":2,"Sandboxes":[{"Slot":4,"Guest":"veth"},
                {"Slot":5,"Guest":"tap","Egress":false,
                 "PortForwards":[{"Protocol":"udp","HostPort":5353,"SandboxPort":53}]}]}"#,
        )
        .unwrap();
    assert_eq!(spec, left_out);
    assert!(spec.sandboxes[0].egress, "null Egress is the default, true");
    assert!(spec.sandboxes[0].port_forwards.is_empty());
    ValidHostSpec::validate(&spec, &host()).unwrap();
    let bytes = Encoding::Bincode.encode(&spec);
    assert_eq!(Encoding::Bincode.decode::<HostSpec>(&bytes).unwrap(), spec);
    // `"Sandboxes": null` is no sandbox.
    let none = accept_host(
        None,
        None,
        br#"{"HostId":"host-a","Generation":1,"Sandboxes":null}"#,
    )
    .unwrap();
    assert!(none.sandboxes.is_empty());
}

/// A host spec with the given sandboxes (a JSON array).
fn sandboxes(list: &str) -> String {
    format!(r#"{{"HostId":"host-a","Generation":1,"Sandboxes":{list}}}"#)
}

/// A host spec with one veth sandbox of slot 1 and these forwards.
fn forwards(list: &str) -> String {
    sandboxes(&format!(
        r#"[{{"Slot":1,"Guest":"veth","PortForwards":{list}}}]"#
    ))
}

#[test]
fn bad_host_specs_give_their_errors() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "another host",
            r#"{"HostId":"host-b","Generation":1}"#.into(),
            "HostId: host-b is not this agent's host (host-a)",
        ),
        (
            "host id with a dot",
            r#"{"HostId":"host.a","Generation":1}"#.into(),
            r#"HostId: "host.a" has '.'; only A-Z a-z 0-9 _ - are allowed"#,
        ),
        (
            "generation 0",
            r#"{"HostId":"host-a","Generation":0}"#.into(),
            "Generation: must be at least 1 (0 means nothing applied)",
        ),
        (
            "a pod spec",
            r#"{"PodId":"host-a","Generation":1}"#.into(),
            "invalid JSON at PodId: unknown field `PodId`, expected one of `HostId`, \
             `Generation`, `NotAfterUnix`, `Uplink`, `Sandboxes` at line 1 column 8",
        ),
        (
            "null host id",
            r#"{"HostId":null,"Generation":1}"#.into(),
            "invalid JSON at HostId: invalid type: null, expected a string at line 1 column 14",
        ),
        (
            "bad uplink",
            r#"{"HostId":"host-a","Generation":1,"Uplink":"eth0:1"}"#.into(),
            r#"Uplink: "eth0:1" is not an interface name (has ':')"#,
        ),
        (
            "slot 0",
            sandboxes(r#"[{"Slot":0,"Guest":"tap"}]"#),
            "Sandboxes[0].Slot: 0 is not a slot (1-16383)",
        ),
        (
            "slot 16384",
            sandboxes(r#"[{"Slot":16384,"Guest":"tap"}]"#),
            "Sandboxes[0].Slot: 16384 is not a slot (1-16383)",
        ),
        (
            "negative slot",
            sandboxes(r#"[{"Slot":-1,"Guest":"tap"}]"#),
            "invalid JSON at Sandboxes[0].Slot: invalid value: integer `-1`, expected u32 at \
             line 1 column 57",
        ),
        (
            "overlapping slots",
            sandboxes(
                r#"[{"Slot":7,"Guest":"tap"},{"Slot":8,"Guest":"veth"},{"Slot":7,"Guest":"veth"}]"#,
            ),
            "Sandboxes[2].Slot: 7 is already the slot of Sandboxes[0]",
        ),
        (
            "missing slot",
            sandboxes(r#"[{"Guest":"tap"}]"#),
            "invalid JSON at Sandboxes[0]: missing field `Slot` at line 1 column 62",
        ),
        (
            "unknown guest",
            sandboxes(r#"[{"Slot":1,"Guest":"vm"}]"#),
            r#"Sandboxes[0].Guest: "vm" is not a guest (tap or veth)"#,
        ),
        (
            "null guest",
            sandboxes(r#"[{"Slot":1,"Guest":null}]"#),
            "invalid JSON at Sandboxes[0].Guest: invalid type: null, expected a string at \
             line 1 column 69",
        ),
        (
            "a typo",
            sandboxes(r#"[{"Slot":1,"Guest":"tap","PortForward":[]}]"#),
            "invalid JSON at Sandboxes[0].PortForward: unknown field `PortForward`, expected \
             one of `Slot`, `Guest`, `Egress`, `PortForwards` at line 1 column 84",
        ),
        (
            "protocol any",
            forwards(r#"[{"Protocol":"any","HostPort":80,"SandboxPort":80}]"#),
            r#"Sandboxes[0].PortForwards[0].Protocol: "any" is not a protocol (tcp or udp)"#,
        ),
        (
            "host port 0",
            forwards(r#"[{"Protocol":"tcp","HostPort":0,"SandboxPort":80}]"#),
            "Sandboxes[0].PortForwards[0].HostPort: 0 is not a port (1-65535)",
        ),
        (
            "sandbox port 65536",
            forwards(r#"[{"Protocol":"udp","HostPort":53,"SandboxPort":65536}]"#),
            "Sandboxes[0].PortForwards[0].SandboxPort: 65536 is not a port (1-65535)",
        ),
        (
            "a host port used twice in one sandbox",
            forwards(
                r#"[{"Protocol":"tcp","HostPort":80,"SandboxPort":80},{"Protocol":"tcp","HostPort":80,"SandboxPort":81}]"#,
            ),
            "Sandboxes[0].PortForwards[1].HostPort: tcp 80 is already forwarded by \
             Sandboxes[0].PortForwards[0]",
        ),
        (
            "a host port used by two sandboxes",
            sandboxes(
                r#"[{"Slot":1,"Guest":"tap","PortForwards":[{"Protocol":"udp","HostPort":53,"SandboxPort":53}]},
                    {"Slot":2,"Guest":"tap","PortForwards":[{"Protocol":"udp","HostPort":53,"SandboxPort":5353}]}]"#,
            ),
            "Sandboxes[1].PortForwards[0].HostPort: udp 53 is already forwarded by \
             Sandboxes[0].PortForwards[0]",
        ),
        (
            "several errors at once",
            sandboxes(r#"[{"Slot":0,"Guest":"vm"}]"#),
            r#"Sandboxes[0].Slot: 0 is not a slot (1-16383); Sandboxes[0].Guest: "vm" is not a guest (tap or veth)"#,
        ),
    ];
    let mut failures = Vec::new();
    for (name, body, want) in &cases {
        match accept_host(None, None, body.as_bytes()) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(got) if got != *want => {
                failures.push(format!("{name}:\n   want {want}\n   got  {got}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The same port on the other protocol is another forward.
    accept_host(
        None,
        None,
        forwards(
            r#"[{"Protocol":"tcp","HostPort":53,"SandboxPort":53},{"Protocol":"udp","HostPort":53,"SandboxPort":53}]"#,
        )
        .as_bytes(),
    )
    .unwrap();
}

#[test]
fn host_limits_hold_at_their_bound_and_refuse_one_more() {
    // The contract's numbers, not whatever the constants say.
    assert_eq!(limits::SANDBOXES, 4_096);
    assert_eq!(limits::PORT_FORWARDS, 64);
    assert_eq!(limits::SLOT_MAX, 16_383);
    let many = |n: usize| {
        let list: Vec<String> = (1..=n)
            .map(|i| format!(r#"{{"Slot":{i},"Guest":"veth"}}"#))
            .collect();
        sandboxes(&format!("[{}]", list.join(",")))
    };
    assert_eq!(
        accept_host(None, None, many(4_096).as_bytes())
            .unwrap()
            .sandboxes
            .len(),
        4_096
    );
    assert_eq!(
        accept_host(None, None, many(4_097).as_bytes()).unwrap_err(),
        "Sandboxes: 4097 entries, at most 4096"
    );
    let ports = |n: usize| {
        let list: Vec<String> = (1..=n)
            .map(|i| format!(r#"{{"Protocol":"tcp","HostPort":{i},"SandboxPort":80}}"#))
            .collect();
        forwards(&format!("[{}]", list.join(",")))
    };
    accept_host(None, None, ports(64).as_bytes()).unwrap();
    assert_eq!(
        accept_host(None, None, ports(65).as_bytes()).unwrap_err(),
        "Sandboxes[0].PortForwards: 65 entries, at most 64"
    );
    // The whole bincode body of a maximal spec is far below the body limit.
    let max = accept_host(None, None, many(4_096).as_bytes()).unwrap();
    assert_eq!(max.sandboxes.last().unwrap().slot.get(), 4_096);
}

#[test]
fn reordering_sandboxes_or_forwards_is_the_same_intent() {
    let a = accept_host(
        None,
        None,
        sandboxes(
            r#"[{"Slot":3,"Guest":"tap","PortForwards":[{"Protocol":"udp","HostPort":9,"SandboxPort":9},{"Protocol":"tcp","HostPort":9,"SandboxPort":9}]},{"Slot":1,"Guest":"veth"}]"#,
        )
        .as_bytes(),
    )
    .unwrap();
    let b = accept_host(
        None,
        None,
        sandboxes(
            r#"[{"Slot":1,"Guest":"veth","Egress":true},{"Slot":3,"Guest":"tap","PortForwards":[{"Protocol":"tcp","HostPort":9,"SandboxPort":9},{"Protocol":"udp","HostPort":9,"SandboxPort":9}]}]"#,
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn guests_are_spelled_as_the_contract_says() {
    assert_eq!(Encoding::Json.encode(&Guest::Tap), br#""tap""#);
    assert_eq!(Encoding::Json.encode(&Guest::Veth), br#""veth""#);
}
