//! Signed specs end to end (CONTRACT.md v1.1 "Signed specs"): with `--trust-keys` the real
//! agent applies only specs signed by a trusted key; every other is refused with the
//! contract's words, the kernel byte-identical (`nft -j`, `ip -j`) and the status saying it;
//! the kept spec is verified again at start; `NotAfterUnix` bounds a spec's life.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::json;
use weft_schema::sign::{SigningKey, HEADER_KEY, HEADER_SIGNATURE};
use weft_schema::{ApplyResult, Encoding, Overall, PodSpec};
use weft_testkit::control::{headers, ControlPlane, Dashboard};
use weft_testkit::netns::Netns;
use weft_testkit::observe::{kernel_snapshot, nft_ruleset_text};
use weft_testkit::stack::{Options, Stack};
use weft_testkit::{require_root, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A firewall-only spec whose ingress port is 1000 + generation.
fn spec(generation: u64, not_after: Option<u64>) -> PodSpec {
    let mut s: PodSpec = serde_json::from_value(json!({
        "PodId": "web-1", "Generation": generation,
        "Firewall": { "Ingress": [ { "Protocol": "tcp",
            "Ports": [ (1000 + generation).to_string() ], "Comment": format!("generation {generation}") } ] }
    }))
    .unwrap();
    s.not_after_unix = not_after;
    s
}

/// The JSON body and the headers of `spec`, signed by `key` (or unsigned).
fn message(spec: &PodSpec, key: Option<&SigningKey>) -> (HeaderMap, Bytes) {
    let body = Encoding::Json.encode(spec);
    let mut h = headers(Encoding::Json);
    if let Some(key) = key {
        let s = key.sign(Some("application/json"), Some("1"), &body);
        h.insert(HEADER_KEY, s.key.as_str());
        h.insert(HEADER_SIGNATURE, s.signature.as_str());
    }
    (h, Bytes::from(body))
}

/// What an independent observer sees of the kernel: the ruleset as `nft -j` and as text,
/// addresses and routes as `ip -j`.
fn kernel(ns: &Netns) -> String {
    let json = ns.run("nft", &["-j", "list", "ruleset"]).unwrap();
    format!(
        "{}\n{}",
        weft_testkit::observe::uncounted(&String::from_utf8(json.stdout).unwrap()),
        kernel_snapshot(ns).unwrap()
    )
}

/// A trust-keys file holding `key`'s public key, in `dir`.
fn trust_file(dir: &Path, key: &SigningKey) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("trust-keys");
    std::fs::write(
        &path,
        format!("# the control plane\n{}\n", key.verifying_key()),
    )
    .unwrap();
    path.display().to_string()
}

fn scratch(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("weft-{tag}-{}", std::process::id()))
}

#[test]
fn only_specs_signed_by_a_trusted_key_are_applied() {
    require_root();
    let key = SigningKey::generate();
    let stranger = SigningKey::generate();
    let dir = scratch("trust-specs");
    let trust = trust_file(&dir, &key);
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent(
            "web-1",
            &["--status-interval", "1s", "--trust-keys", &trust],
        )
        .unwrap();
    let ns = &stack.pods[0].ns.ns;

    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        // An older signed generation, kept to be replayed.
        let (h4, b4) = message(&spec(4, None), Some(&key));
        let first = request_when_ready(&cp, h4.clone(), b4.clone()).await;
        assert_eq!(first.result, ApplyResult::Applied, "{first:?}");
        let (h, b) = message(&spec(5, None), Some(&key));
        let r = cp.request_raw("web-1", Some(h), b).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let signer = key.verifying_key().to_string();
        dash.wait_for(Duration::from_secs(5), "SignedBy", Instant::now(), |s| {
            s.observed_generation == 5 && s.signed_by.as_deref() == Some(signer.as_str())
        })
        .await;
        let before = kernel(ns);
        assert!(before.contains("1005"), "{before}");

        let (tampered_h, tampered) = message(&spec(6, None), Some(&key));
        let mut bytes = tampered.to_vec();
        let at = bytes.windows(4).position(|w| w == b"1006").unwrap();
        bytes[at + 3] = b'7'; // one byte: port 1007 instead of 1006
        let (mut bad_sig_h, bad_sig) = message(&spec(6, None), Some(&key));
        // 64 zero bytes: well formed, not a signature of anything.
        bad_sig_h.insert(HEADER_SIGNATURE, format!("{}==", "A".repeat(86)).as_str());
        let (mut garbled_h, garbled) = message(&spec(6, None), Some(&key));
        garbled_h.insert(HEADER_SIGNATURE, "not base64!");
        let expired_at = now() - 60;
        let cases: Vec<(&str, (HeaderMap, Bytes), ApplyResult, String)> = vec![
            (
                "unsigned",
                message(&spec(6, None), None),
                ApplyResult::Rejected,
                "spec rejected: unsigned spec".into(),
            ),
            (
                "wrong key",
                message(&spec(6, None), Some(&stranger)),
                ApplyResult::Rejected,
                format!(
                    "spec rejected: key {} is not trusted",
                    stranger.verifying_key()
                ),
            ),
            (
                "bad signature",
                (bad_sig_h, bad_sig),
                ApplyResult::Rejected,
                "spec rejected: signature does not verify".into(),
            ),
            (
                "malformed signature",
                (garbled_h, garbled),
                ApplyResult::Rejected,
                "spec rejected: malformed signature".into(),
            ),
            (
                "one byte of the body changed",
                (tampered_h, Bytes::from(bytes)),
                ApplyResult::Rejected,
                "spec rejected: signature does not verify".into(),
            ),
            (
                "expired",
                message(&spec(6, Some(expired_at)), Some(&key)),
                ApplyResult::Rejected,
                format!(
                    "generation 6 rejected: expired at {} (NotAfterUnix {expired_at})",
                    weft_schema::text::rfc3339(expired_at)
                ),
            ),
            (
                "replay of an older signed generation",
                (h4, b4),
                ApplyResult::Stale,
                "generation 4 is older than the applied generation 5".into(),
            ),
        ];
        for (what, (h, body), result, says) in cases {
            let since = Instant::now();
            let r = cp.request_raw("web-1", Some(h), body).await.unwrap();
            assert_eq!(r.result, result, "{what}: {r:?}");
            assert!(
                r.error.starts_with(&says),
                "{what}: {:?} is not {says:?}",
                r.error
            );
            assert_eq!(kernel(ns), before, "{what}: the kernel changed");
            if result == ApplyResult::Rejected {
                let s = dash
                    .wait_for(Duration::from_secs(5), what, since, |s| {
                        s.last_error.starts_with(&says)
                    })
                    .await;
                assert_eq!(
                    (s.overall, s.observed_generation),
                    (Overall::Degraded, 5),
                    "{what}"
                );
            }
            println!("{what}: {:?} {}", r.result, r.error);
        }

        // Then a good signed spec applies, and the status is clean again.
        let since = Instant::now();
        let (h, b) = message(&spec(7, Some(now() + 3600)), Some(&key));
        let r = cp.request_raw("web-1", Some(h), b).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let s = dash
            .wait_for(Duration::from_secs(5), "generation 7", since, |s| {
                s.observed_generation == 7 && s.overall == Overall::Healthy
            })
            .await;
        assert_eq!(s.signed_by.as_deref(), Some(signer.as_str()));
        assert!(kernel(ns).contains("1007"));
    });

    // Without --trust-keys, nobody is named, whatever the headers.
    stack.stop_agent("web-1").unwrap();
    stack
        .start_agent("web-1", &["--status-interval", "1s"])
        .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let (h, b) = message(&spec(8, None), Some(&key));
        let r = request_when_ready(&cp, h, b).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let s = wait_for_status(&cp, |s| s.observed_generation == 8).await;
        assert_eq!(s.signed_by, None);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tampered_kept_spec_is_not_applied_at_restart() {
    require_root();
    let key = SigningKey::generate();
    let dir = scratch("trust-kept");
    let trust = trust_file(&dir, &key);
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    let args = ["--status-interval", "1s", "--trust-keys", trust.as_str()];
    stack.start_agent("web-1", &args).unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let (h, b) = message(&spec(5, None), Some(&key));
        let r = request_when_ready(&cp, h, b).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    stack.stop_agent("web-1").unwrap();
    // Someone with access to the state directory widens the firewall by one byte.
    let kept = stack.pods[0].state_dir.join("spec.msg");
    let mut bytes = std::fs::read(&kept).unwrap();
    assert!(bytes.starts_with(b"WEFT-SPEC/1\n"));
    let at = bytes.windows(4).rposition(|w| w == b"1005").unwrap();
    bytes[at + 3] = b'6';
    std::fs::write(&kept, &bytes).unwrap();
    let before = kernel(&stack.pods[0].ns.ns);

    stack.start_agent("web-1", &args).unwrap();
    let ns = &stack.pods[0].ns.ns;
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let s = wait_for_status(&cp, |s| s.last_error.contains("kept spec")).await;
        assert_eq!(s.overall, Overall::Degraded);
        assert_eq!(s.observed_generation, 0);
        assert!(
            s.last_error.contains("does not verify")
                && s.last_error.contains("signature does not verify"),
            "{}",
            s.last_error
        );
        println!("status: {}", s.last_error);
    });
    let ruleset = nft_ruleset_text(ns).unwrap();
    assert!(
        !ruleset.contains("1006"),
        "the tampered spec was applied:\n{ruleset}"
    );
    assert_eq!(kernel(ns), before, "the kernel changed at start");
    // A new signed spec is applied as usual.
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let (h, b) = message(&spec(6, None), Some(&key));
        let r = cp.request_raw("web-1", Some(h), b).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let s = wait_for_status(&cp, |s| s.observed_generation == 6).await;
        assert_eq!(s.overall, Overall::Healthy, "{s:?}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_applied_spec_that_expires_stays_in_the_kernel_and_the_status_says_so() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent("web-1", &["--status-interval", "1s"])
        .unwrap();
    let ns = &stack.pods[0].ns.ns;
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let not_after = now() + 2;
        let r = cp
            .request_when_ready("web-1", &spec(3, Some(not_after)), Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        let applied = kernel(ns);
        let s = dash
            .wait_for(Duration::from_secs(10), "the expiry", Instant::now(), |s| {
                s.last_error.starts_with("spec expired at")
            })
            .await;
        assert_eq!((s.overall, s.observed_generation), (Overall::Degraded, 3));
        assert!(
            s.last_error
                .contains(&format!("(NotAfterUnix {not_after})")),
            "{}",
            s.last_error
        );
        assert_eq!(kernel(ns), applied, "the kernel keeps the expired spec");
        let since = Instant::now();
        let r = cp
            .request("web-1", &spec(4, None), Encoding::Json)
            .await
            .unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        dash.wait_for(Duration::from_secs(5), "a fresh spec", since, |s| {
            s.observed_generation == 4 && s.overall == Overall::Healthy
        })
        .await;
    });
}

#[test]
fn kv_values_are_verified_by_the_headers_of_their_put() {
    require_root();
    let key = SigningKey::generate();
    let dir = scratch("trust-kv");
    let trust = trust_file(&dir, &key);
    let options = Options {
        pods_create_buckets: true,
        ..Options::default()
    };
    let mut stack = Stack::with(agent_bin(), options).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent(
            "web-1",
            &[
                "--spec-source",
                "kv",
                "--status-interval",
                "1s",
                "--trust-keys",
                &trust,
            ],
        )
        .unwrap();
    let ns = &stack.pods[0].ns.ns;
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let js = async_nats::jetstream::new(cp.client.clone());
        let store = weft_emitter::bus::open_bucket(&js, "weft-specs", 10)
            .await
            .unwrap();
        let dash = Dashboard::watch(&cp.client, "weft", "web-1").await.unwrap();
        let since = Instant::now();
        store
            .put("web-1", Encoding::Json.encode(&spec(2, None)).into())
            .await
            .unwrap();
        dash.wait_for(
            Duration::from_secs(10),
            "the unsigned put refused",
            since,
            |s| s.last_error.starts_with("spec rejected: unsigned spec"),
        )
        .await;
        assert!(!nft_ruleset_text(ns).unwrap().contains("1002"));
        let (h, b) = message(&spec(3, None), Some(&key));
        js.publish_with_headers("$KV.weft-specs.web-1", h, b)
            .await
            .unwrap()
            .await
            .unwrap();
        let signer = key.verifying_key().to_string();
        dash.wait_for(
            Duration::from_secs(10),
            "the signed put applied",
            since,
            |s| {
                s.observed_generation == 3
                    && s.overall == Overall::Healthy
                    && s.signed_by.as_deref() == Some(signer.as_str())
            },
        )
        .await;
    });
    wait_until(Duration::from_secs(5), "generation 3 in the kernel", || {
        let r = nft_ruleset_text(ns).unwrap();
        r.contains("1003").then_some(()).ok_or(r)
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request repeated until the agent is subscribed and answers.
async fn request_when_ready(
    cp: &ControlPlane,
    h: HeaderMap,
    body: Bytes,
) -> weft_schema::ApplyReply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            cp.request_raw("web-1", Some(h.clone()), body.clone()),
        )
        .await;
        match r {
            Ok(Ok(reply)) => return reply,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("no answer within 20 s: {other:?}"),
        }
    }
}

/// `status.get`, repeated until the status satisfies `pred`.
async fn wait_for_status(
    cp: &ControlPlane,
    pred: impl Fn(&weft_schema::PodStatus) -> bool,
) -> weft_schema::PodStatus {
    weft_testkit::wait_until_async(Duration::from_secs(20), "the status", || async {
        match cp.status_get("web-1", Encoding::Json).await {
            Ok(s) if pred(&s) => Ok(s),
            Ok(s) => Err(format!("{s:?}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}
