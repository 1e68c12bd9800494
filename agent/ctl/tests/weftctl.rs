//! `weftctl` against real agents: a stack (nats-server with TLS and one nkey user per role,
//! pod namespaces with `weft-agent`), `weftctl` run as the control-plane or dashboard user
//! in the hub namespace, its exit codes and output compared with what the agents say.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_schema::{Encoding, Overall, PodSpec, PodStatus};
use weft_testkit::stack::{Options, Stack};
use weft_testkit::{require_root, wait_until};

mod support;
use support::{agent_bin, code, text, weftctl, Kill, TempDir};

/// `weftctl` as `role` (its NATS flags included), run in the hub namespace.
fn ctl(stack: &Stack, role: &str, args: &[&str]) -> Output {
    let mut cmd = stack.hub.ns.command(weftctl().to_str().unwrap());
    cmd.args(["--nats-url", &stack.nats_url()]);
    cmd.args(stack.identity(role).unwrap().flags());
    cmd.args(args);
    cmd.output().unwrap()
}

fn pod_spec(id: &str, index: u8, generation: u64, rules: u16) -> Value {
    let ingress: Vec<Value> = (0..rules)
        .map(|i| json!({ "Protocol": "tcp", "Ports": [(3000 + i).to_string()] }))
        .collect();
    json!({
        "PodId": id, "Generation": generation,
        "Network": { "Interface": "eth0", "Address": format!("10.0.{index}.5/24"),
                     "Gateway": format!("10.0.{index}.1") },
        "Firewall": { "Ingress": ingress }
    })
}

fn status_of(stack: &Stack, pod: &str) -> PodStatus {
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        cp.status_get(pod, Encoding::Json).await.unwrap()
    })
}

#[test]
fn apply_exit_codes_follow_the_reply_and_dry_run_says_what_the_agent_says() {
    require_root();
    let mut stack = Stack::new(&agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack.add_pod("web-2").unwrap();
    let dir = TempDir::new("apply");
    stack.start_agent("web-1", &[]).unwrap();

    // Generation 1, sent once the agent listens (a plain control plane waits for it).
    let first: PodSpec = serde_json::from_value(pod_spec("web-1", 1, 1, 1)).unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        cp.request_when_ready("web-1", &first, Encoding::Json).await;
    });

    // Applied: exit 0, the reply printed.
    let spec = dir.file("g2.json", &pod_spec("web-1", 1, 2, 2));
    let out = ctl(
        &stack,
        "control",
        &["apply", "-f", spec.to_str().unwrap(), "--wait"],
    );
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["Result"], "Applied");
    assert_eq!(reply["Generation"], 2);
    assert_eq!(status_of(&stack, "web-1").observed_generation, 2);

    // Rejected: exit 2, and the reply's error is exactly what --dry-run says without NATS.
    let mut bad = pod_spec("web-1", 1, 3, 1);
    bad["Firewall"]["Ingress"][0]["Ports"] = json!(["70000"]);
    let bad = dir.file("bad.json", &bad);
    let out = ctl(
        &stack,
        "control",
        &["apply", "-f", bad.to_str().unwrap(), "--wait"],
    );
    assert_eq!(code(&out), 2, "{}{}", text(&out.stdout), text(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["Result"], "Rejected");
    let agent_error = reply["Error"].as_str().unwrap().to_owned();
    assert!(agent_error.contains("70000"), "{agent_error}");
    let dry = Command::new(weftctl())
        .args(["apply", "-f", bad.to_str().unwrap(), "--dry-run"])
        .env_remove("WEFT_NATS_URL")
        .output()
        .unwrap();
    assert_eq!(code(&dry), 2, "{}", text(&dry.stderr));
    assert_eq!(text(&dry.stderr), format!("weftctl: {agent_error}\n"));
    assert_eq!(text(&dry.stdout), "");
    // A body that is not even a spec: the agent's decode error, the same way.
    let junk = dir.0.join("junk.json");
    std::fs::write(
        &junk,
        br#"{"PodId":"web-1","Generation":4,"Firewall":{"Ingres":[]}}"#,
    )
    .unwrap();
    let out = ctl(
        &stack,
        "control",
        &["apply", "-f", junk.to_str().unwrap(), "--wait"],
    );
    assert_eq!(code(&out), 2);
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dry = Command::new(weftctl())
        .args(["apply", "-f", junk.to_str().unwrap(), "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(
        text(&dry.stderr),
        format!("weftctl: {}\n", reply["Error"].as_str().unwrap())
    );
    // A valid spec passes the dry run, and nothing is sent.
    let dry = Command::new(weftctl())
        .args(["apply", "-f", spec.to_str().unwrap(), "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(code(&dry), 0, "{}", text(&dry.stderr));
    assert_eq!(
        text(&dry.stdout),
        "valid: generation 2 for pod web-1 (nothing sent)\n"
    );

    // Stale: an older generation, exit 3.
    let old = dir.file("g1.json", &pod_spec("web-1", 1, 1, 1));
    let out = ctl(
        &stack,
        "control",
        &["apply", "-f", old.to_str().unwrap(), "--wait"],
    );
    assert_eq!(code(&out), 3, "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["Result"],
        "Stale"
    );

    // Failed: the kernel refuses part of it (no such interface), exit 4.
    let mut failing = pod_spec("web-1", 1, 5, 1);
    failing["Network"]["Interface"] = json!("eth9");
    let failing = dir.file("g5.json", &failing);
    let out = ctl(
        &stack,
        "control",
        &["apply", "-f", failing.to_str().unwrap(), "--wait"],
    );
    assert_eq!(code(&out), 4, "{}{}", text(&out.stdout), text(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["Result"], "Failed");
    assert!(reply["Error"].as_str().unwrap().contains("eth9"), "{reply}");

    // Nobody listening: exit 5, quickly.
    let out = ctl(
        &stack,
        "control",
        &[
            "apply",
            "-f",
            spec.to_str().unwrap(),
            "--to",
            "nobody",
            "--wait",
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("weft.pod.nobody.spec"),
        "{}",
        text(&out.stderr)
    );

    // Without --wait: published, exit 0; the status shows it.
    let g6 = dir.file("g6.json", &pod_spec("web-1", 1, 6, 3));
    let out = ctl(&stack, "control", &["apply", "-f", g6.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    wait_until(Duration::from_secs(10), "generation 6 applied", || {
        let s = status_of(&stack, "web-1");
        (s.observed_generation == 6 && s.overall == Overall::Healthy)
            .then_some(())
            .ok_or(format!("{s:?}"))
    });

    // keygen: a private key 0600 and its public half; a world-writable directory is refused.
    let key = dir.0.join("signer");
    let out = Command::new(weftctl())
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let public = text(&out.stdout).trim().to_owned();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pub_file = dir.0.join("signer.pub");
    assert_eq!(std::fs::read_to_string(&pub_file).unwrap().trim(), public);
    assert!(!text(&out.stdout).contains(std::fs::read_to_string(&key).unwrap().trim()));
    let open = dir.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(weftctl())
        .args(["keygen", "--out", open.join("k").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 64);
    assert!(
        text(&out.stderr).contains("writable by others"),
        "{}",
        text(&out.stderr)
    );
    assert!(!open.join("k").exists());

    // --sign-key against an agent that trusts the key: unsigned is refused, signed applied.
    stack
        .start_agent("web-2", &["--trust-keys", pub_file.to_str().unwrap()])
        .unwrap();
    let w2 = dir.file("w2.json", &pod_spec("web-2", 2, 1, 1));
    let out = wait_until(Duration::from_secs(20), "web-2 answers", || {
        let out = ctl(
            &stack,
            "control",
            &["apply", "-f", w2.to_str().unwrap(), "--wait"],
        );
        (code(&out) != 5)
            .then_some(out)
            .ok_or("no answer yet".to_owned())
    });
    assert_eq!(code(&out), 2, "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("unsigned spec"),
        "{}",
        text(&out.stdout)
    );
    let out = ctl(
        &stack,
        "control",
        &[
            "apply",
            "-f",
            w2.to_str().unwrap(),
            "--wait",
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(
        status_of(&stack, "web-2").signed_by.as_deref(),
        Some(public.as_str())
    );
    // A key file others may read is refused before anything is sent.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ctl(
        &stack,
        "control",
        &[
            "apply",
            "-f",
            w2.to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 64, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("weftctl: --sign-key"),
        "{}",
        text(&out.stderr)
    );
}

/// The table's lines as cells (columns are two or more spaces apart).
fn table_cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn overall(o: Option<Overall>) -> String {
    o.map_or("-".into(), |o| format!("{o:?}"))
}

#[test]
fn status_and_watch_show_several_agents_and_a_stopped_one_turns_stale() {
    require_root();
    let mut stack = Stack::with(&agent_bin(), Options::default()).unwrap();
    let pods = ["web-1", "web-2", "web-3"];
    for p in pods {
        stack.add_pod(p).unwrap();
    }
    // The control plane makes the status bucket (the shipped permissions keep that from pods).
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let js = async_nats::jetstream::new(cp.client.clone());
        weft_emitter::bus::open_bucket(&js, "weft-status", 1)
            .await
            .unwrap();
    });
    for p in pods {
        stack
            .start_agent(p, &["--status-interval", "1s", "--status-kv"])
            .unwrap();
    }
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        for (i, p) in pods.iter().enumerate() {
            let mut spec = pod_spec(p, i as u8 + 1, 10 + i as u64, 1 + i as u16);
            if *p == "web-3" {
                spec["Network"]["Interface"] = json!("eth9"); // Failed: Degraded
            }
            let spec: PodSpec = serde_json::from_value(spec).unwrap();
            cp.request_when_ready(p, &spec, Encoding::Json).await;
        }
    });
    // Every agent has mirrored its status by now or shortly.
    let statuses: Vec<PodStatus> = pods.iter().map(|p| status_of(&stack, p)).collect();

    // `status` as the dashboard user, table and JSON, against the agents' own statuses.
    let out = wait_until(Duration::from_secs(10), "three rows", || {
        let out = ctl(&stack, "dashboard", &["status", "--status-interval", "1s"]);
        (code(&out) == 0 && text(&out.stdout).lines().count() == 4)
            .then_some(out.clone())
            .ok_or(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    });
    let cells = table_cells(&text(&out.stdout));
    assert_eq!(
        cells[0],
        [
            "POD",
            "GEN",
            "OVERALL",
            "NETWORK",
            "FIREWALL",
            "WIREGUARD",
            "PEERS",
            "DRIFT",
            "AGE",
            "LAST DRIFT"
        ]
    );
    for (row, s) in cells[1..].iter().zip(&statuses) {
        assert_eq!(row[0], s.pod_id);
        assert_eq!(row[1], format!("{}/-", s.observed_generation));
        assert_eq!(row[2], format!("{:?}", s.overall));
        assert_eq!(row[3], overall(s.network.as_ref().map(|n| n.overall)));
        assert_eq!(row[4], overall(s.firewall.as_ref().map(|n| n.overall)));
        assert_eq!(row[5], overall(s.wireguard.as_ref().map(|n| n.overall)));
        assert_eq!(row[6], "0/0");
        assert_eq!(row[7], s.drift_repairs.to_string());
        assert!(!row[8].contains("STALE"), "{row:?}");
    }
    assert_eq!(cells[3][2], "Degraded");
    let out = ctl(
        &stack,
        "dashboard",
        &["status", "-o", "json", "--status-interval", "1s", "web-2"],
    );
    assert_eq!(code(&out), 0);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["Id"], "web-2");
    assert_eq!(rows[0]["Status"]["Firewall"]["IngressRules"], 2);
    assert_eq!(rows[0]["Stale"], false);
    let out = ctl(
        &stack,
        "dashboard",
        &["status", "nobody", "--timeout", "1s"],
    );
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));

    // `watch`, live: all three, then web-3 stopped turns stale after three intervals.
    let mut cmd = stack.hub.ns.command(weftctl().to_str().unwrap());
    cmd.args(["--nats-url", &stack.nats_url()])
        .args(stack.identity("dashboard").unwrap().flags())
        .args(["watch", "-o", "json", "--status-interval", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut watch = Kill(cmd.spawn().unwrap());
    let (tx, frames) = mpsc::channel::<(Instant, Value)>();
    let stdout = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send((Instant::now(), v)).is_err() {
                    return;
                }
            }
        }
    });
    let row = |frame: &Value, pod: &str| -> Value {
        frame["Rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Id"] == pod)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let next =
        |until: Instant| frames.recv_timeout(until.saturating_duration_since(Instant::now()));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, frame) = next(deadline).expect("a frame with three fresh rows");
        if pods.iter().all(|p| row(&frame, p)["Stale"] == false) {
            for (p, s) in pods.iter().zip(&statuses) {
                let r = row(&frame, p);
                assert_eq!(r["ObservedGeneration"], s.observed_generation);
                assert_eq!(r["Overall"], format!("{:?}", s.overall));
            }
            break;
        }
    }
    let (_, took) = stack.stop_agent("web-3").unwrap();
    let stopped = Instant::now() - took;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (at, frame) = loop {
        let (at, frame) = next(deadline).expect("web-3 turns stale");
        if row(&frame, "web-3")["Stale"] == true {
            break (at, frame);
        }
        assert_eq!(row(&frame, "web-1")["Stale"], false);
    };
    let after = at - stopped;
    println!("web-3 stale {after:?} after its agent stopped");
    assert!(after >= Duration::from_millis(2_000), "{after:?}");
    assert!(after <= Duration::from_secs(6), "{after:?}");
    assert!(row(&frame, "web-3")["AgeMs"].as_u64().unwrap() > 3_000);
    assert_eq!(row(&frame, "web-1")["Stale"], false);
    assert_eq!(row(&frame, "web-2")["Stale"], false);
    drop(watch);

    // `status` of the stopped pod: no answer, so the bucket's copy, marked stale.
    let out = ctl(
        &stack,
        "dashboard",
        &[
            "status",
            "web-3",
            "--timeout",
            "1s",
            "--status-interval",
            "1s",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let cells = table_cells(&text(&out.stdout));
    assert_eq!(cells[1][0], "web-3");
    assert!(cells[1][8].ends_with("STALE"), "{:?}", cells[1]);
}
