//! A control plane written in Go talks to the real agent (contract v1.1, "Go control planes:
//! null means absent", "Signed specs" and "NATS authentication and TLS"). `weftcp`
//! (testkit/go/weftcp) is built with Debian's Go from the contract alone: it connects as the
//! shipped server configuration's control-plane user (TLS, its own nkey), marshals with
//! `encoding/json` (nil slices and unset pointers become `null`), sends the contract's headers,
//! signs with `crypto/ed25519`, and decodes replies and statuses refusing unknown and missing
//! fields. The kernel is checked with `nft -j`, `ip -j` and `wg show`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use weft_schema::sign::SigningKey;
use weft_schema::{ApplyResult, Encoding, Overall, PodStatus, Subsystem};
use weft_testkit::control::headers;
use weft_testkit::go::GoControlPlane;
use weft_testkit::hub::Hub;
use weft_testkit::nats::NatsServer;
use weft_testkit::natsconf::Permissions;
use weft_testkit::observe::{ip_json, ipv4_addrs, kernel_snapshot, nft_table, wg_dump};
use weft_testkit::stack::{Options, Stack};
use weft_testkit::{require_root, unique_ifname, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

const PEER: &str = "6aA5WnBB2fA1ZoY4R8M/rZ1xh8+0D+/Q/+cGhbNnl2U=";

/// `weftcp <command>` as the stack's control-plane user, then `args`.
fn as_control(stack: &Stack, command: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec![command.to_owned()];
    all.extend(GoControlPlane::nats_flags(stack, "control"));
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

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
        .map(|o| {
            // What a counter counted is traffic's, not the spec's.
            let mut expr = o["rule"]["expr"].clone();
            for e in expr.as_array_mut().unwrap() {
                if e.get("counter").is_some() {
                    *e = json!({ "counter": null });
                }
            }
            expr
        })
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
    let apply = as_control(
        &stack,
        "apply",
        &[
            "-pod",
            "go-1",
            "-spec",
            &spec_file,
            "-sent",
            sent.to_str().unwrap(),
        ],
    );
    let reply = go.run_ok(hub, &apply).unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["Result"], "Applied", "{reply}");

    // What went on the wire really is Go's nulls.
    let body = std::fs::read_to_string(&sent).unwrap();
    for null in [
        r#""NotAfterUnix":null"#,
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
    let counter = json!({ "counter": null });
    // After the baseline's three rules: established, neighbour discovery, lo.
    assert_eq!(
        rules(&table, "input")[3..],
        [
            // ListenPort null: 51820.
            json!([{ "match": { "op": "==",
                "left": { "payload": { "protocol": "udp", "field": "dport" } },
                "right": 51820 } }, counter, accept]),
            // Ports and Sources null: every port from any address.
            json!([{ "match": { "op": "==", "left": { "meta": { "key": "l4proto" } },
                "right": "tcp" } }, counter, accept]),
            // Protocol null: any.
            json!([{ "match": { "op": "==",
                "left": { "payload": { "protocol": "ip", "field": "saddr" } },
                "right": { "prefix": { "addr": "10.0.0.0", "len": 8 } } } }, counter, accept]),
            // What falls through to the policy drop, counted.
            json!([counter]),
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
        let cp = stack.control_plane().await.unwrap();
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
    let (hub, ns) = (&stack.hub.ns, &stack.pods[0].ns.ns);
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
        &as_control(&stack, "apply", &["-pod", "go-2", "-spec", &spec_file]),
    )
    .unwrap();
    // Someone else changes the MTU: the agent repairs it, so LastDrift is filled in too.
    ns.ip(&["link", "set", "dev", "eth0", "mtu", "1300"])
        .unwrap();
    let go_view = wait_until(Duration::from_secs(10), "a repaired drift", || {
        let out = go.run_ok(
            hub,
            &as_control(
                &stack,
                "status",
                &[
                    "-pod",
                    "go-2",
                    "-want-generation",
                    "3",
                    "-want-overall",
                    "Healthy",
                ],
            ),
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
        let cp = stack.control_plane().await.unwrap();
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
                go.run(&hub.ns, &["status", "-nats-url", &url, "-pod", "web-1"])
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

/// The signing test vector as a document states it: the value after each label of its
/// vector block (the first lines after `marker` starting with the label).
fn documented_vector(doc: &str, marker: &str) -> [String; 6] {
    let block = &doc[doc.find(marker).expect("the vector's heading")..];
    [
        "seed (hex)",
        "Weft-Key",
        "Content-Type",
        "Weft-Schema",
        "body",
        "Weft-Signature",
    ]
    .map(|label| {
        block
            .lines()
            .map(|l| l.trim_start_matches("//!").trim())
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{label} in the vector after {marker:?}"))
            .to_owned()
    })
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// `weftcp sign`: the (Weft-Key, Weft-Signature) Go computes for a body as sent.
fn go_signature(
    go: &GoControlPlane,
    seed_file: &str,
    ct: &str,
    schema: &str,
    body: &[u8],
) -> [String; 2] {
    let body_file = file(go, "body", body);
    let out = go
        .command()
        .args(["sign", "-sign-key", seed_file, "-body", &body_file])
        .args(["-content-type", ct, "-schema", schema])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8(out.stdout).unwrap();
    let value = |header: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(header))
            .unwrap_or_else(|| panic!("{header} in {out:?}"))
            .to_owned()
    };
    [value("Weft-Key: "), value("Weft-Signature: ")]
}

/// The signing test vector of the README ("Signing a spec") and of `weft_schema::sign`'s
/// rustdoc is one vector (testkit/go/README.md points to it), and the Go client and the Rust
/// helper both produce it. They also agree where a header value carries a parameter (signed as
/// sent, so the signature differs).
#[test]
fn go_and_rust_sign_the_documented_test_vector_alike() {
    let readme = documented_vector(include_str!("../../README.md"), "Test vector");
    let rustdoc = documented_vector(include_str!("../../schema/src/sign.rs"), "# Test vector");
    assert_eq!(
        readme, rustdoc,
        "README.md and schema/src/sign.rs state different vectors"
    );
    let [seed, key, content_type, schema, body, signature] = readme;
    let seed: [u8; 32] = hex(&seed).try_into().expect("a 32-byte seed");

    let go = GoControlPlane::build().unwrap();
    let seed_file = file(&go, "seed", B64.encode(seed).as_bytes());
    let rust = SigningKey::from_seed(&seed);
    let signed = rust.sign(Some(&content_type), Some(&schema), body.as_bytes());
    assert_eq!(
        [signed.key.as_str(), signed.signature.as_str()],
        [key.as_str(), signature.as_str()]
    );
    assert_eq!(
        go_signature(&go, &seed_file, &content_type, &schema, body.as_bytes()),
        [key.clone(), signature.clone()]
    );

    let charset = "application/json; charset=utf-8";
    let signed = rust.sign(Some(charset), Some(&schema), body.as_bytes());
    assert_ne!(signed.signature, signature);
    assert_eq!(
        go_signature(&go, &seed_file, charset, &schema, body.as_bytes()),
        [signed.key, signed.signature]
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The seed of the documented test vector (RFC 8032 test 1): the Go control plane's key.
fn go_seed() -> [u8; 32] {
    hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        .try_into()
        .unwrap()
}

/// `weftcp status` as the control plane, decoded (weftcp prints what it decoded).
fn go_status(go: &GoControlPlane, stack: &Stack, pod: &str) -> PodStatus {
    let out = go
        .run_ok(&stack.hub.ns, &as_control(stack, "status", &["-pod", pod]))
        .unwrap();
    Encoding::Json.decode(out.trim().as_bytes()).unwrap()
}

/// With `--trust-keys` holding the Go key: a spec signed in Go is applied, what went on the
/// wire verifies under the contract's rule (the Rust helper computes the same headers), and
/// `SignedBy` names the Go key; an unsigned spec from Go, and a signed one whose
/// `NotAfterUnix` has passed, are `Rejected` with the contract's words, the kernel unchanged.
#[test]
fn under_trust_keys_a_spec_signed_in_go_is_applied_and_others_are_rejected() {
    require_root();
    let go = GoControlPlane::build().unwrap();
    let key = SigningKey::from_seed(&go_seed());
    let seed_file = file(&go, "seed", B64.encode(go_seed()).as_bytes());
    let trust = file(
        &go,
        "trust-keys",
        format!("# the Go control plane\n{}\n", key.verifying_key()).as_bytes(),
    );
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("go-3").unwrap();
    stack
        .start_agent("go-3", &["--trust-keys", &trust])
        .unwrap();
    // Someone allowed to read the spec subject, to see the request as the agent got it.
    stack
        .add_user(
            "observer",
            Permissions {
                publish: Vec::new(),
                subscribe: vec!["weft.pod.go-3.spec".into()],
                allow_responses: false,
            },
        )
        .unwrap();
    let (hub, ns) = (&stack.hub.ns, &stack.pods[0].ns.ns);
    let spec = |generation: u64, not_after: Option<u64>| {
        let mut spec = json!({
            "PodId": "go-3", "Generation": generation,
            "Firewall": { "Ingress": [ { "Protocol": "tcp",
                                         "Ports": [ (2220 + generation).to_string() ] } ] }
        });
        if let Some(t) = not_after {
            spec["NotAfterUnix"] = json!(t);
        }
        file(
            &go,
            &format!("spec-{generation}.json"),
            spec.to_string().as_bytes(),
        )
    };

    let spec_1 = spec(1, None);
    let apply = as_control(
        &stack,
        "apply",
        &["-pod", "go-3", "-spec", &spec_1, "-sign-key", &seed_file],
    );
    let seen = stack.block_on(|| async {
        let observer = stack.client("observer").await.unwrap().client;
        let mut sub = observer.subscribe("weft.pod.go-3.spec").await.unwrap();
        observer.flush().await.unwrap();
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
    let signed = key.sign(Some(&content_type), Some(&schema), &seen.payload);
    assert_eq!(header("Weft-Key"), Some(signed.key.clone()));
    assert_eq!(header("Weft-Signature"), Some(signed.signature));

    let table = nft_table(ns, "inet", "weft-fw")
        .unwrap()
        .expect("inet weft-fw");
    assert!(table.to_string().contains(r#""right":2221"#), "{table}");
    let status = go_status(&go, &stack, "go-3");
    assert_eq!(
        (status.observed_generation, status.overall),
        (1, Overall::Healthy),
        "{status:?}"
    );
    assert_eq!(status.signed_by.as_deref(), Some(signed.key.as_str()));

    let before = kernel_snapshot(ns).unwrap();
    let expired_at = now() - 60;
    let (spec_2, spec_2_expired) = (spec(2, None), spec(3, Some(expired_at)));
    let cases = [
        (
            "unsigned",
            as_control(
                &stack,
                "apply",
                &["-pod", "go-3", "-spec", &spec_2, "-expect", "Rejected"],
            ),
            "spec rejected: unsigned spec".to_owned(),
        ),
        (
            "expired",
            as_control(
                &stack,
                "apply",
                &[
                    "-pod",
                    "go-3",
                    "-spec",
                    &spec_2_expired,
                    "-sign-key",
                    &seed_file,
                    "-expect",
                    "Rejected",
                ],
            ),
            format!(
                "generation 3 rejected: expired at {} (NotAfterUnix {expired_at})",
                weft_schema::text::rfc3339(expired_at)
            ),
        ),
    ];
    for (what, apply, says) in cases {
        let reply: Value = serde_json::from_str(&go.run_ok(hub, &apply).unwrap()).unwrap();
        let error = reply["Error"].as_str().unwrap();
        assert!(
            error.starts_with(&says),
            "{what}: {error:?} is not {says:?}"
        );
        assert_eq!(
            kernel_snapshot(ns).unwrap(),
            before,
            "{what}: the kernel changed"
        );
        // The status says it; the applied spec and its signer stay.
        let status = go_status(&go, &stack, "go-3");
        assert!(status.last_error.starts_with(&says), "{what}: {status:?}");
        assert_eq!(
            (
                status.observed_generation,
                status.overall,
                status.signed_by.as_deref()
            ),
            (1, Overall::Degraded, Some(signed.key.as_str())),
            "{what}"
        );
    }
}

/// Under mutual TLS (the shipped configuration with `verify: true`), `weftcp` connects with
/// the control plane's client certificate and nkey, and checks the server's certificate
/// against the stack's CA. Without the certificate or the nkey the server refuses it; without
/// the CA it refuses the server; each time `weftcp` says so (exit 1).
#[test]
fn weftcp_connects_with_the_control_planes_credentials_only() {
    require_root();
    let go = GoControlPlane::build().unwrap();
    let mut stack = Stack::with(
        agent_bin(),
        Options {
            mutual_tls: true,
            ..Options::default()
        },
    )
    .unwrap();
    stack.add_pod("go-4").unwrap();
    stack.start_agent("go-4", &[]).unwrap();
    let spec = json!({ "PodId": "go-4", "Generation": 1 });
    let spec_file = file(&go, "spec.json", spec.to_string().as_bytes());
    go.run_ok(
        &stack.hub.ns,
        &as_control(&stack, "apply", &["-pod", "go-4", "-spec", &spec_file]),
    )
    .unwrap();
    assert_eq!(go_status(&go, &stack, "go-4").observed_generation, 1);

    let full = as_control(&stack, "status", &["-pod", "go-4", "-timeout", "3s"]);
    let without = |flags: &[&str]| -> Vec<String> {
        let mut args = full.clone();
        for flag in flags {
            let at = args.iter().position(|a| a == flag).expect(flag);
            args.drain(at..at + 2);
        }
        args
    };
    for (what, args, says) in [
        (
            "no client certificate",
            without(&["--nats-tls-cert", "--nats-tls-key"]),
            "connect",
        ),
        (
            "no nkey",
            without(&["--nats-nkey"]),
            "Authorization Violation",
        ),
        (
            "no CA: the server's certificate is not trusted",
            without(&["--nats-tls-ca"]),
            "x509: certificate signed by unknown authority",
        ),
    ] {
        let out = go.run(&stack.hub.ns, &args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr:?} lacks {says:?}");
        println!("{what}: {}", stderr.trim());
    }
}
