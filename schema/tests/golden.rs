//! Golden wire fixtures: the bytes of every message type, in both encodings, checked in.
//!
//! `<name>.json` holds the compact JSON the agent puts on the wire (`Encoding::Json.encode`,
//! no trailing newline) and `<name>.bincode` the bincode 2 `config::standard()` bytes. Each test
//! decodes the stored bytes into the value built here and encodes the value back into exactly
//! the stored bytes, so renaming, reordering or retyping a field breaks a test, not a fleet.
//! `WEFT_BLESS=1 cargo test -p weft-schema` rewrites the fixtures from the values.
//!
//! The `contract_*.json` fixtures are the examples of CONTRACT.md, copied as written (the
//! `...` of the `LastDrift` example replaced by a number, and v1.1's `SignedBy`,
//! `Network.Addresses6`, `Network.Gateway6`, `Firewall.InputDropped` and
//! `Firewall.EgressDropped` added to the status); they must decode. `go_pod_spec_nulls.json` is
//! a spec as Go's `encoding/json` writes
//! it when every slice is nil and every pointer unset: each such field `null`.

mod support;

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use support::*;
use weft_schema::validate::Protocol;
use weft_schema::{
    ApplyReply, ApplyResult, DriftEvent, EgressRule, Encoding, FirewallSpec, FirewallStatus,
    IngressRule, NetworkSpec, NetworkStatus, Overall, PacketCount, PeerSpec, PeerStatus, PodSpec,
    PodStatus, Subsystem, ValidSpec, WireGuardSpec, WireGuardStatus,
};

/// Checks one value against `<name>.json` and `<name>.bincode`.
fn golden<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for (encoding, ext) in [(Encoding::Json, "json"), (Encoding::Bincode, "bincode")] {
        let file = format!("{name}.{ext}");
        let encoded = encoding.encode(value);
        check_or_bless(&fixture_path(&file), &encoded);
        let stored = read_fixture(&file);
        let decoded: T = encoding
            .decode(&stored)
            .unwrap_or_else(|e| panic!("{file} does not decode: {}", e.to_line()));
        assert_eq!(&decoded, value, "{file} decodes to another value");
    }
}

#[test]
fn full_spec_is_golden() {
    let spec = full_spec();
    golden("pod_spec_full", &spec);
    // The golden spec is also a valid one, so the fixture is a usable example.
    ValidSpec::validate(&spec, &pod()).expect("the full spec validates");
}

#[test]
fn minimal_spec_is_golden() {
    golden("pod_spec_minimal", &minimal_spec());
    // Pinned by hand as well: varint lengths and integers, one 0 byte per absent Option,
    // fields in declaration order. If this changes, every bincode peer breaks.
    assert_eq!(
        read_fixture("pod_spec_minimal.bincode"),
        b"\x05web-1\x01\x00\x00\x00\x00",
    );
    assert_eq!(
        read_fixture("pod_spec_minimal.json"),
        br#"{"PodId":"web-1","Generation":1,"NotAfterUnix":null,"Network":null,"Firewall":null,"WireGuard":null}"#,
    );
}

#[test]
fn pending_status_is_golden() {
    golden("pod_status_pending", &pending_status());
}

#[test]
fn healthy_status_is_golden() {
    golden("pod_status_healthy", &healthy_status());
}

#[test]
fn apply_replies_are_golden() {
    golden("apply_reply_applied", &applied_reply());
    golden("apply_reply_rejected", &rejected_reply());
}

#[test]
fn secrets_stay_out_of_debug_prints() {
    // Specs end up in log lines; the contract says a private or preshared key never does.
    let spec = full_spec();
    let wg = spec.wireguard.as_ref().unwrap();
    let secrets = [
        wg.private_key.as_ref().unwrap().expose().to_owned(),
        wg.peers[0]
            .preshared_key
            .as_ref()
            .unwrap()
            .expose()
            .to_owned(),
    ];
    let valid = ValidSpec::validate(&spec, &pod()).unwrap();
    for debug in [format!("{spec:?}"), format!("{valid:?}")] {
        for secret in &secrets {
            assert!(!debug.contains(secret.as_str()), "a key in {debug}");
        }
        assert!(debug.contains("redacted"), "{debug}");
    }
}

fn decode_contract_example<T: DeserializeOwned + serde::Serialize>(name: &str) -> T {
    Encoding::Json
        .decode(&read_fixture(name))
        .unwrap_or_else(|e| panic!("{name} does not decode: {}", e.to_line()))
}

#[test]
fn contract_pod_spec_example_decodes() {
    let spec: PodSpec = decode_contract_example("contract_pod_spec.json");
    let expected = PodSpec {
        pod_id: "web-1".into(),
        generation: 7,
        not_after_unix: None,
        network: Some(NetworkSpec {
            interface: "eth0".into(),
            address: "10.0.0.5/24".into(),
            gateway: Some("10.0.0.1".into()),
            address6: None,
            gateway6: None,
            mtu: Some(1500),
            nameservers: vec!["10.0.0.2".into()],
            search_domains: vec!["pods.local".into()],
        }),
        firewall: Some(FirewallSpec {
            ingress: vec![IngressRule {
                protocol: "tcp".into(),
                ports: vec!["22".into(), "8000-8080".into()],
                sources: vec!["10.0.0.0/8".into()],
                comment: Some("ssh and app".into()),
            }],
            egress: vec![EgressRule {
                protocol: "any".into(),
                ports: vec![],
                destinations: vec!["169.254.169.254/32".into()],
                comment: Some("no metadata".into()),
            }],
        }),
        wireguard: Some(WireGuardSpec {
            interface: "wg0".into(),
            address: "10.9.0.1/24".into(),
            listen_port: 51820,
            private_key: None,
            peers: vec![PeerSpec {
                public_key: "<base64, 32 bytes>".into(),
                endpoint: Some("192.168.1.10:51820".into()),
                allowed_ips: vec!["10.9.0.2/32".into()],
                persistent_keepalive_seconds: Some(25),
                preshared_key: None,
            }],
            mtu: None,
            default_route: None,
        }),
    };
    assert_eq!(spec, expected);

    // The example's key is a placeholder; that is the only thing wrong with it.
    let err = ValidSpec::validate(&spec, &pod()).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"WireGuard.Peers[0].PublicKey: "<base64, 32 bytes>" is not a key: not base64"#
    );
    let mut fixed = spec.clone();
    fixed.wireguard.as_mut().unwrap().peers[0].public_key = public_key(0x21);
    let valid = ValidSpec::validate(&fixed, &pod()).expect("the contract example validates");
    assert_eq!(valid.generation, 7);
    assert_eq!(valid.firewall.ingress[0].protocol, Protocol::Tcp);
    assert_eq!(valid.wireguard.as_ref().unwrap().mtu, 1420);

    // And the example survives bincode unchanged.
    let bytes = Encoding::Bincode.encode(&spec);
    assert_eq!(Encoding::Bincode.decode::<PodSpec>(&bytes).unwrap(), spec);
}

#[test]
fn contract_pod_status_example_decodes() {
    let status: PodStatus = decode_contract_example("contract_pod_status.json");
    let expected = PodStatus {
        pod_id: "web-1".into(),
        agent_version: "0.1.0".into(),
        observed_generation: 7,
        overall: Overall::Healthy,
        last_error: String::new(),
        published_at_unix: 1_763_779_200,
        published_at_unix_ms: 1_763_779_200_123,
        drift_repairs: 0,
        last_drift: None,
        signed_by: None,
        network: Some(NetworkStatus {
            overall: Overall::Healthy,
            last_error: String::new(),
            interface: "eth0".into(),
            up: true,
            addresses: vec!["10.0.0.5/24".into()],
            gateway: Some("10.0.0.1".into()),
            mtu: 1500,
            addresses6: vec![],
            gateway6: None,
        }),
        firewall: Some(FirewallStatus {
            overall: Overall::Healthy,
            last_error: String::new(),
            table_present: true,
            ingress_rules: 1,
            egress_rules: 1,
            ruleset_hash: "<hex>".into(),
            input_dropped: Some(PacketCount {
                packets: 3,
                bytes: 180,
            }),
            egress_dropped: Some(PacketCount::default()),
        }),
        wireguard: Some(WireGuardStatus {
            overall: Overall::Healthy,
            last_error: String::new(),
            backend: weft_schema::Backend::Userspace,
            interface: "wg0".into(),
            public_key: "<base64>".into(),
            listen_port: 51820,
            peers: vec![PeerStatus {
                public_key: "<base64>".into(),
                endpoint: Some("192.168.1.10:51820".into()),
                last_handshake_unix: 0,
                rx_bytes: 0,
                tx_bytes: 0,
            }],
        }),
    };
    assert_eq!(status, expected);
}

/// A v1 agent's firewall status has no counters: they read as `null`.
#[test]
fn a_firewall_status_without_counters_decodes() {
    let v1: FirewallStatus = Encoding::Json
        .decode(
            br#"{"Overall":"Healthy","LastError":"","TablePresent":true,"IngressRules":0,
                 "EgressRules":0,"RulesetHash":"ab"}"#,
        )
        .unwrap();
    assert_eq!((v1.input_dropped, v1.egress_dropped), (None, None));
}

#[test]
fn contract_last_drift_example_decodes() {
    let drift: DriftEvent = decode_contract_example("contract_last_drift.json");
    assert_eq!(
        drift,
        DriftEvent {
            at_unix_ms: 1_763_779_200_123,
            subsystem: Subsystem::Firewall,
            change: "rule added to chain input".into(),
            by: "nft (pid 4242)".into(),
        }
    );
}

#[test]
fn contract_apply_reply_example_decodes() {
    let reply: ApplyReply = decode_contract_example("contract_apply_reply.json");
    assert_eq!(reply, applied_reply());
    assert_eq!(reply.result, ApplyResult::Applied);
}

#[test]
fn go_nulls_mean_what_leaving_the_fields_out_means() {
    // Contract v1.1 "Go control planes: null means absent".
    let spec: PodSpec = decode_contract_example("go_pod_spec_nulls.json");
    let left_out = format!(
        r#"{{"PodId":"web-1","Generation":3,
            "Network":{{"Interface":"eth0","Address":"192.0.2.5/24"}},
            "Firewall":{{"Ingress":[{{}}]}},
            "WireGuard":{{"Interface":"wg0","Address":"10.9.0.1/24",
                          "Peers":[{{"PublicKey":"{}"}}]}}}}"#,
        public_key(0x21)
    );
    let expected: PodSpec = Encoding::Json.decode(left_out.as_bytes()).unwrap();
    assert_eq!(spec, expected);
    let wg = spec.wireguard.as_ref().unwrap();
    assert_eq!(spec.firewall.as_ref().unwrap().ingress[0].protocol, "any");
    assert_eq!(wg.listen_port, 51820);
    assert!(spec.firewall.as_ref().unwrap().egress.is_empty());
    assert!(wg.peers[0].allowed_ips.is_empty());
    ValidSpec::validate(&spec, &pod()).expect("the Go spec validates");
    // Bincode has no null: the same value is the same bytes, and they decode back.
    let bytes = Encoding::Bincode.encode(&spec);
    assert_eq!(bytes, Encoding::Bincode.encode(&expected));
    assert_eq!(Encoding::Bincode.decode::<PodSpec>(&bytes).unwrap(), spec);
}

#[test]
fn status_enums_are_spelled_as_the_contract_says() {
    // The contract names these values in prose; a serde rename would silently change them.
    let json = |v: &dyn erased::Json| v.json();
    assert_eq!(json(&Overall::Healthy), r#""Healthy""#);
    assert_eq!(json(&Overall::Degraded), r#""Degraded""#);
    assert_eq!(json(&Overall::Pending), r#""Pending""#);
    assert_eq!(json(&ApplyResult::Applied), r#""Applied""#);
    assert_eq!(json(&ApplyResult::Rejected), r#""Rejected""#);
    assert_eq!(json(&ApplyResult::Stale), r#""Stale""#);
    assert_eq!(json(&ApplyResult::Failed), r#""Failed""#);
    assert_eq!(json(&weft_schema::Backend::Kernel), r#""kernel""#);
    assert_eq!(json(&weft_schema::Backend::Userspace), r#""userspace""#);
    assert_eq!(json(&Subsystem::Network), r#""Network""#);
    assert_eq!(json(&Subsystem::Firewall), r#""Firewall""#);
    assert_eq!(json(&Subsystem::WireGuard), r#""WireGuard""#);
}

/// Lets one assertion list mix the enum types.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            String::from_utf8(weft_schema::Encoding::Json.encode(self)).unwrap()
        }
    }
}
