//! A control plane written in Go talks to the real agent (contract v1.1, "Go control planes:
//! null means absent", and "Signed specs"). `weftcp` (testkit/go/weftcp) is built with Debian's
//! Go from the contract alone: it marshals with `encoding/json` (nil slices and unset pointers
//! become `null`), sends the contract's headers, signs with `crypto/ed25519`, and decodes
//! replies and statuses refusing unknown and missing fields. The kernel is checked with `nft -j`,
//! `ip -j` and `wg show`.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use weft_schema::{ApplyResult, Encoding, PodStatus, Subsystem};
use weft_testkit::control::{headers, ControlPlane};
use weft_testkit::go::GoControlPlane;
use weft_testkit::hub::Hub;
use weft_testkit::nats::NatsServer;
use weft_testkit::observe::{ip_json, ipv4_addrs, kernel_snapshot, nft_table, wg_dump};
use weft_testkit::stack::Stack;
use weft_testkit::{require_root, unique_ifname, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

const PEER: &str = "6aA5WnBB2fA1ZoY4R8M/rZ1xh8+0D+/Q/+cGhbNnl2U=";

/// Writes `contents` as a file in the Go client's directory; returns its path.
fn file(go: &GoControlPlane, name: &str, contents: &[u8]) -> String {
    let path = go.dir().join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

/// The rules of one chain of `inet weft-fw`, each as its `nft -j` expression list.
fn rules(table: &Value, chain: &str) -> Vec<Value> {
    table
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["rule"]["chain"] == chain)
        .map(|o| o["rule"]["expr"].clone())
        .collect()
}

#[test]
fn a_go_spec_with_nil_slices_and_unset_pointers_means_what_leaving_them_out_means() {
    require_root();
    let go = GoControlPlane::build().unwrap();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("go-1").unwrap();
    stack
        .start_agent("go-1", &["--wireguard", "userspace"])
        .unwrap();
    let wg = unique_ifname("wg", 1);
    let hub = &stack.hub.ns;
    let ns = &stack.pods[0].ns.ns;
    let mtu_before = ip_json(ns, &["link", "show", "eth0"]).unwrap()[0]["mtu"].clone();

    // Only what a Go program sets; the Go structs leave every other slice nil and pointer unset.
    let spec = json!({
        "PodId": "go-1", "Generation": 1,
        "Network": { "Interface": "eth0", "Address": "10.0.1.5/24" },
        "Firewall": { "Ingress": [ { "Protocol": "tcp" }, { "Sources": ["10.0.0.0/8"] } ] },
        "WireGuard": { "Interface": wg, "Address": "10.9.1.1/24",
                       "Peers": [ { "PublicKey": PEER } ] }
    });
    let spec_file = file(&go, "spec.json", spec.to_string().as_bytes());
    let sent = go.dir().join("sent.json");
    let url = stack.nats_url();
    let reply = go
        .run_ok(
            hub,
            &[
                "apply",
                "-nats",
                &url,
                "-pod",
                "go-1",
                "-spec",
                &spec_file,
                "-sent",
                sent.to_str().unwrap(),
            ],
        )
        .unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["Result"], "Applied", "{reply}");

    // What went on the wire really is Go's nulls.
    let body = std::fs::read_to_string(&sent).unwrap();
    for null in [
        r#""Gateway":null"#,
        r#""Mtu":null"#,
        r#""Nameservers":null"#,
        r#""SearchDomains":null"#,
        r#""Ports":null"#,
        r#""Sources":null"#,
        r#""Comment":null"#,
        r#""Protocol":null"#,
        r#""Egress":null"#,
        r#""ListenPort":null"#,
        r#""PrivateKey":null"#,
        r#""Endpoint":null"#,
        r#""AllowedIps":null"#,
        r#""PersistentKeepaliveSeconds":null"#,
        r#""PresharedKey":null"#,
    ] {
        assert!(body.contains(null), "{null} not in {body}");
    }

    // The kernel holds what the spec means with those fields left out.
    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("inet weft-fw");
    let accept = json!({ "accept": null });
    assert_eq!(
        rules(&table, "input")[2..],
        [
            // ListenPort null: 51820.
            json!([{ "match": { "op": "==",
                "left": { "payload": { "protocol": "udp", "field": "dport" } },
                "right": 51820 } }, accept]),
            // Ports and Sources null: every port from any address.
            json!([{ "match": { "op": "==", "left": { "meta": { "key": "l4proto" } },
                "right": "tcp" } }, accept]),
            // Protocol null: any.
            json!([{ "match": { "op": "==",
                "left": { "payload": { "protocol": "ip", "field": "saddr" } },
                "right": { "prefix": { "addr": "10.0.0.0", "len": 8 } } } }, accept]),
        ],
        "{table}"
    );
    // Egress null: no drops.
    assert_eq!(rules(&table, "output"), Vec::<Value>::new(), "{table}");
    assert_eq!(ipv4_addrs(ns, "eth0").unwrap(), vec!["10.0.1.5/24"]);
    // Gateway null: no default route; Mtu null: the link's MTU untouched.
    assert_eq!(
        ip_json(ns, &["route", "show", "default"]).unwrap(),
        json!([])
    );
    assert_eq!(
        ip_json(ns, &["link", "show", "eth0"]).unwrap()[0]["mtu"],
        mtu_before
    );
    // Nameservers null: the resolver file is left alone.
    assert!(!stack.pods[0].resolv_conf.exists());
    // The peer: no endpoint, no allowed IPs, no keepalive, no preshared key; port 51820.
    let dump = wg_dump(ns, &wg).unwrap();
    assert_eq!(dump[0][2], "51820", "{dump:?}");
    assert_eq!(
        dump[1],
        [PEER, "(none)", "(none)", "(none)", "0", "0", "0", "off"],
        "{dump:?}"
    );

    // The same spec with those fields left out, as a new generation, writes nothing.
    let before = kernel_snapshot(ns).unwrap();
    let mut left_out = spec.clone();
    left_out["Generation"] = json!(2);
    let r = stack.block_on(|| async {
        let cp = ControlPlane::connect(&url).await.unwrap();
        cp.request_raw(
            "go-1",
            Some(headers(Encoding::Json)),
            Bytes::from(left_out.to_string()),
        )
        .await
        .unwrap()
    });
    assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    assert_eq!(kernel_snapshot(ns).unwrap(), before);
}

#[test]
fn a_status_decodes_in_go_with_every_field() {
    require_root();
    let go = GoControlPlane::build().unwrap();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("go-2").unwrap();
    stack
        .start_agent("go-2", &["--wireguard", "userspace"])
        .unwrap();
    let wg = unique_ifname("wg", 2);
    let (hub, ns, url) = (&stack.hub.ns, &stack.pods[0].ns.ns, stack.nats_url());
    // Every subsystem present, so every status struct is decoded.
    let spec = json!({
        "PodId": "go-2", "Generation": 3,
        "Network": { "Interface": "eth0", "Address": "10.0.1.5/24", "Gateway": "10.0.1.1",
                     "Mtu": 1400 },
        "Firewall": { "Ingress": [ { "Protocol": "tcp", "Ports": ["22"] } ],
                      "Egress": [ { "Destinations": ["203.0.113.0/24"] } ] },
        "WireGuard": { "Interface": wg, "Address": "10.9.2.1/24",
                       "Peers": [ { "PublicKey": PEER, "Endpoint": "10.0.200.5:51820",
                                    "AllowedIps": ["10.9.200.0/24"] } ] }
    });
    let spec_file = file(&go, "spec.json", spec.to_string().as_bytes());
    go.run_ok(
        hub,
        &["apply", "-nats", &url, "-pod", "go-2", "-spec", &spec_file],
    )
    .unwrap();
    // Someone else changes the MTU: the agent repairs it, so LastDrift is filled in too.
    ns.ip(&["link", "set", "dev", "eth0", "mtu", "1300"])
        .unwrap();
    let go_view = wait_until(Duration::from_secs(10), "a repaired drift", || {
        let out = go.run_ok(
            hub,
            &[
                "status",
                "-nats",
                &url,
                "-pod",
                "go-2",
                "-want-generation",
                "3",
                "-want-overall",
                "Healthy",
            ],
        );
        let out = out.map_err(|e| e.to_string())?;
        let status: PodStatus = Encoding::Json
            .decode(out.trim().as_bytes())
            .map_err(|e| e.to_line())?;
        match status.drift_repairs {
            0 => Err(out),
            _ => Ok(status),
        }
    });
    // What Go decoded and marshalled back is a whole status (the Rust decoder refuses missing
    // and unknown fields too) and says what the kernel holds.
    let drift = go_view.last_drift.as_ref().expect("LastDrift");
    assert_eq!(drift.subsystem, Subsystem::Network, "{drift:?}");
    let network = go_view.network.as_ref().unwrap();
    assert_eq!(network.addresses, ipv4_addrs(ns, "eth0").unwrap());
    assert_eq!(network.gateway.as_deref(), Some("10.0.1.1"));
    assert_eq!(network.mtu, 1400);
    let firewall = go_view.firewall.as_ref().unwrap();
    assert_eq!((firewall.ingress_rules, firewall.egress_rules), (1, 1));
    let wireguard = go_view.wireguard.as_ref().unwrap();
    assert_eq!(wireguard.listen_port, 51820);
    assert_eq!(wireguard.peers[0].public_key, PEER);
    assert_eq!(
        wireguard.peers[0].endpoint.as_deref(),
        Some("10.0.200.5:51820")
    );
    // And it is the status the Rust client gets, apart from when it was stamped.
    let rust_view = stack.block_on(|| async {
        let cp = ControlPlane::connect(&url).await.unwrap();
        cp.status_get("go-2", Encoding::Json).await.unwrap()
    });
    // (Peer counters too: a userspace device may send a handshake attempt in between.)
    let unstamped = |s: &PodStatus| {
        let mut s = s.clone();
        (s.published_at_unix, s.published_at_unix_ms) = (0, 0);
        for peer in s.wireguard.iter_mut().flat_map(|w| w.peers.iter_mut()) {
            (peer.last_handshake_unix, peer.rx_bytes, peer.tx_bytes) = (0, 0, 0);
        }
        s
    };
    assert_eq!(unstamped(&go_view), unstamped(&rust_view));
}

/// A stand-in agent answering `status.get` with a body the test chose, to show the Go decoder
/// refuses what it does not fully know (else "decodes with every field" proves nothing).
#[test]
fn the_go_decoder_refuses_a_status_it_does_not_fully_know() {
    require_root();
    let go = GoControlPlane::build().unwrap();
    let hub = Hub::new().unwrap();
    let nats = hub.ns.enter(NatsServer::start).unwrap();
    let good: Value = serde_json::from_str(include_str!(
        "../../schema/tests/fixtures/pod_status_healthy.json"
    ))
    .unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        v.to_string()
    };
    let cases = [
        ("the fixture", good.to_string(), None),
        (
            "a field the Go structs lack",
            with(&|v| v["NotInTheContract"] = Value::Null),
            Some(r#"json: unknown field "NotInTheContract""#),
        ),
        (
            "a nested one",
            with(&|v| v["Firewall"]["Dropped"] = json!({ "Packets": 0 })),
            Some(r#"json: unknown field "Dropped""#),
        ),
        (
            "a missing field",
            with(&|v| {
                v.as_object_mut().unwrap().remove("DriftRepairs");
            }),
            Some("DriftRepairs: missing"),
        ),
        (
            "null for a number",
            with(&|v| v["Network"]["Mtu"] = Value::Null),
            Some("Network.Mtu: null, expected a uint32"),
        ),
        (
            "an Overall the contract does not name",
            with(&|v| v["WireGuard"]["Overall"] = json!("Fine")),
            Some(r#"WireGuard.Overall: "Fine" is not one of"#),
        ),
    ];
    let url = nats.url();
    for (what, body, refused) in cases {
        let answered = hub.block_on(|| async {
            let client = async_nats::connect(&url).await.unwrap();
            let mut sub = client.subscribe("weft.pod.web-1.status.get").await.unwrap();
            client.flush().await.unwrap();
            let answer = tokio::spawn(async move {
                use futures::StreamExt;
                let msg = sub.next().await.unwrap();
                client
                    .publish_with_headers(
                        msg.reply.unwrap(),
                        headers(Encoding::Json),
                        Bytes::from(body),
                    )
                    .await
                    .unwrap();
                client.flush().await.unwrap();
            });
            let out = tokio::task::block_in_place(|| {
                go.run(&hub.ns, &["status", "-nats", &url, "-pod", "web-1"])
            })
            .unwrap();
            tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("the stand-in answered")
                .unwrap();
            out
        });
        let stderr = String::from_utf8_lossy(&answered.stderr);
        match refused {
            None => assert!(answered.status.success(), "{what}: {stderr}"),
            Some(why) => {
                assert_eq!(answered.status.code(), Some(1), "{what}: {stderr}");
                assert!(stderr.contains(why), "{what}: {stderr:?} lacks {why:?}");
            }
        }
    }
}

/// The contract's signing rule computed in Rust with ed25519-dalek: (Weft-Key, Weft-Signature).
/// When weft-schema's signing helper lands (branch `trust`), this becomes a call to it.
fn rust_signature(seed: &[u8; 32], content_type: &str, schema: &str, body: &[u8]) -> [String; 2] {
    let key = SigningKey::from_bytes(seed);
    let mut signed = format!("weft-spec-v1\n{content_type}\n{schema}\n").into_bytes();
    signed.extend_from_slice(body);
    [
        B64.encode(key.verifying_key().as_bytes()),
        B64.encode(key.sign(&signed).to_bytes()),
    ]
}

/// The signing test vector (also in testkit/go/README.md): seed bytes 0, 1, ..., 31, the body
/// as Go marshals a minimal spec, `Weft-Schema: 1`, and a signature per `Content-Type` (header
/// values are signed exactly as sent, so a parameter changes the signature). `openssl pkeyutl
/// -sign -rawin` gives the same.
const VECTOR_BODY: &[u8] =
    br#"{"PodId":"web-1","Generation":1,"Network":null,"Firewall":null,"WireGuard":null}"#;
const VECTOR_KEY: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
const VECTOR_SIGNATURES: [(&str, &str); 2] = [
    (
        "application/json",
        "RqN4lW/Dfqi1lz4mIHBd+i/OQnkZz57pncofj3awmGKgqlXZg94z2kgn1Sxesh+i7dk2wi8X0gc6iY/Y+2IeCg==",
    ),
    (
        "application/json; charset=utf-8",
        "eW04wYAXhVBW2rLtBHPc5p0gmsXw3dOJk2MWvHSoorGuZNsDhbbDrKu39QmtE0K2tg/h7ExZ5ZhNy8wFIfztCg==",
    ),
];

fn vector_seed() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

#[test]
fn go_and_rust_sign_the_test_vector_alike() {
    let go = GoControlPlane::build().unwrap();
    let seed = vector_seed();
    let seed_file = file(&go, "seed", B64.encode(seed).as_bytes());
    let body_file = file(&go, "body.json", VECTOR_BODY);
    for (content_type, want) in VECTOR_SIGNATURES {
        let out = go
            .command()
            .args(["sign", "-sign-key", &seed_file, "-body", &body_file])
            .args(["-content-type", content_type, "-schema", "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let [key, signature] = rust_signature(&seed, content_type, "1", VECTOR_BODY);
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("Weft-Key: {key}\nWeft-Signature: {signature}\n"),
            "{content_type}"
        );
        assert_eq!((key.as_str(), signature.as_str()), (VECTOR_KEY, want));
    }
}

/// A spec signed by the Go client is applied, and what went on the wire verifies under the
/// contract's rule. Today's agent takes no `--trust-keys` (branch `trust` adds it) and ignores
/// the signature headers, as the contract says of an agent without trust keys. When it lands:
/// write `key` to a file, start the agent with `--trust-keys FILE`, and assert that `SignedBy`
/// names `key` (the Go `PodStatus` then needs `SignedBy *string`).
#[test]
fn a_spec_signed_in_go_is_applied() {
    require_root();
    let go = GoControlPlane::build().unwrap();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("go-3").unwrap();
    stack.start_agent("go-3", &[]).unwrap();
    let (hub, ns, url) = (&stack.hub.ns, &stack.pods[0].ns.ns, stack.nats_url());
    let seed_file = file(&go, "seed", B64.encode(vector_seed()).as_bytes());
    let spec = json!({
        "PodId": "go-3", "Generation": 1,
        "Firewall": { "Ingress": [ { "Protocol": "tcp", "Ports": ["2222"] } ] }
    });
    let spec_file = file(&go, "spec.json", spec.to_string().as_bytes());
    let apply = [
        "apply",
        "-nats",
        &url,
        "-pod",
        "go-3",
        "-spec",
        &spec_file,
        "-sign-key",
        &seed_file,
    ];
    // A second subscriber on the spec subject sees the request as the agent got it.
    let seen = stack.block_on(|| async {
        let client = async_nats::connect(&url).await.unwrap();
        let mut sub = client.subscribe("weft.pod.go-3.spec").await.unwrap();
        client.flush().await.unwrap();
        tokio::task::block_in_place(|| go.run_ok(hub, &apply)).unwrap();
        use futures::StreamExt;
        // The first requests may have found no responder yet; the last one was answered.
        let mut last = None;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            last = Some(msg);
        }
        last.expect("the spec request")
    });
    let h = seen.headers.as_ref().expect("headers");
    let header = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
    let (content_type, schema) = (
        header("Content-Type").unwrap(),
        header("Weft-Schema").unwrap(),
    );
    assert_eq!(
        (content_type.as_str(), schema.as_str()),
        ("application/json", "1")
    );
    let [key, signature] = rust_signature(&vector_seed(), &content_type, &schema, &seen.payload);
    assert_eq!(header("Weft-Key"), Some(key));
    assert_eq!(header("Weft-Signature"), Some(signature));

    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("inet weft-fw");
    assert!(table.to_string().contains(r#""right":2222"#), "{table}");
    go.run_ok(
        hub,
        &[
            "status",
            "-nats",
            &url,
            "-pod",
            "go-3",
            "-want-generation",
            "1",
            "-want-overall",
            "Healthy",
        ],
    )
    .unwrap();
}
