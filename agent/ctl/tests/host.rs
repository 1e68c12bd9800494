//! `weftctl` for the host role against a real `weft-agent host` in a [`HostLab`]: `apply
//! --host` and its exit codes, `--dry-run` with the agent's own error text, `status --host`
//! and `watch --host` compared with the agent's own `status.get`, the kernel checked with
//! `ip netns` (an independent observer), and a stopped host agent turning stale.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use weft_schema::{ApplyResult, Encoding, HostSpec, HostStatus, Overall};
use weft_testkit::control::ControlPlane;
use weft_testkit::host::HostLab;
use weft_testkit::{require_root, wait_until};

mod support;
use support::{agent_bin, code, text, weftctl, Kill, TempDir};

/// `weftctl` in the lab's internet namespace, where NATS is.
fn command(lab: &HostLab, args: &[&str]) -> Command {
    let mut cmd = lab.internet.command(weftctl().to_str().unwrap());
    cmd.args(["--nats-url", &lab.nats.url()]).args(args);
    cmd
}

fn ctl(lab: &HostLab, args: &[&str]) -> Output {
    command(lab, args).output().unwrap()
}

fn host_spec(generation: u64) -> Value {
    json!({
        "HostId": "host-a", "Generation": generation,
        "Sandboxes": [
            {"Slot": 1, "Guest": "veth", "PortForwards": [
                {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80}]},
            {"Slot": 2, "Guest": "tap", "Egress": false}
        ]
    })
}

fn status_of(lab: &HostLab) -> HostStatus {
    lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        cp.host_status_get("host-a", Encoding::Json).await.unwrap()
    })
}

#[test]
fn weftctl_applies_host_specs_and_shows_host_rows_that_turn_stale() {
    require_root();
    let lab = HostLab::new("wc").unwrap();
    lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(cp.client.clone());
        weft_emitter::bus::open_bucket(&js, "weft-status", 1)
            .await
            .unwrap();
    });
    let mut agent = lab
        .start_agent(&agent_bin(), "host-a", &["--status-kv"])
        .unwrap();
    let dir = TempDir::new("host");

    // Generation 1 once the agent listens (a plain control plane waits for it).
    let first: HostSpec = serde_json::from_value(json!({
        "HostId": "host-a", "Generation": 1, "Sandboxes": [{"Slot": 1, "Guest": "veth"}]
    }))
    .unwrap();
    lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let r = cp
            .request_host_when_ready("host-a", &first, Encoding::Json)
            .await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}\n{}", agent.log());
    });

    // Applied, `--host ID SPEC`: exit 0, the reply printed, the slots made.
    let g2 = dir.file("g2.json", &host_spec(2)).display().to_string();
    let out = ctl(&lab, &["apply", "--host", "host-a", &g2, "--wait"]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["Result"], "Applied");
    assert_eq!(reply["Generation"], 2);
    assert_eq!(
        lab.namespaces().unwrap(),
        [lab.sandbox(1), lab.guest(1), lab.sandbox(2)]
    );

    // Stale: `--host` alone sends to the host the spec's HostId names; exit 3.
    let g1 = dir.file("g1.json", &host_spec(1)).display().to_string();
    let out = ctl(&lab, &["apply", "--host", "-f", &g1, "--wait"]);
    assert_eq!(code(&out), 3, "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["Result"],
        "Stale"
    );

    // Rejected: exit 2, and --dry-run says exactly what the agent said, without NATS.
    let mut bad = host_spec(3);
    bad["Sandboxes"][0]["PortForwards"][0]["HostPort"] = json!(70000);
    let bad = dir.file("bad.json", &bad).display().to_string();
    let out = ctl(&lab, &["apply", "--host", "host-a", &bad, "--wait"]);
    assert_eq!(code(&out), 2, "{}{}", text(&out.stdout), text(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["Result"], "Rejected");
    let agent_error = reply["Error"].as_str().unwrap().to_owned();
    assert!(agent_error.contains("HostPort"), "{agent_error}");
    let dry = Command::new(weftctl())
        .args(["apply", "--host", "host-a", &bad, "--dry-run"])
        .env_remove("WEFT_NATS_URL")
        .output()
        .unwrap();
    assert_eq!(code(&dry), 2, "{}", text(&dry.stderr));
    assert_eq!(text(&dry.stderr), format!("weftctl: {agent_error}\n"));
    let dry = Command::new(weftctl())
        .args(["apply", "--host", "-f", &g2, "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(code(&dry), 0, "{}", text(&dry.stderr));
    assert_eq!(
        text(&dry.stdout),
        "valid: generation 2 for host host-a (nothing sent)\n"
    );
    // Without --host the file is read as a pod's spec, which names no pod.
    let dry = Command::new(weftctl())
        .args(["apply", &g2, "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(code(&dry), 64, "{}", text(&dry.stderr));
    assert!(
        text(&dry.stderr).contains("no PodId"),
        "{}",
        text(&dry.stderr)
    );

    // status --host: the row says what the agent's own status.get says.
    // The refused generation 3 leaves the host Degraded, saying why, until a newer spec.
    let status = status_of(&lab);
    assert_eq!(status.overall, Overall::Degraded, "{status:#?}");
    assert!(status.last_error.contains("70000"), "{status:#?}");
    let out = ctl(
        &lab,
        &["status", "--host", "-o", "json", "--status-interval", "1s"],
    );
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["Kind"], "host");
    assert_eq!(r["Id"], "host-a");
    assert_eq!(r["ObservedGeneration"], status.observed_generation);
    assert_eq!(r["Overall"], "Degraded");
    assert_eq!(r["LastError"], status.last_error);
    assert_eq!(r["Uplink"], json!(status.uplink));
    assert_eq!(r["Forwarding"], status.forwarding);
    assert_eq!(r["SandboxesReady"], 2);
    assert_eq!(r["Sandboxes"], status.sandboxes.len());
    assert_eq!(r["Forwards"], 1);
    assert_eq!(r["DriftRepairs"], status.drift_repairs);
    assert_eq!(r["Stale"], false);
    let shown: HostStatus = serde_json::from_value(r["Status"].clone()).unwrap();
    assert_eq!(shown.sandboxes, status.sandboxes);
    assert_eq!(shown.host_id, "host-a");

    let out = ctl(&lab, &["status", "--host", "--status-interval", "1s"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "HOST",
            "GEN",
            "OVERALL",
            "UPLINK",
            "SANDBOXES",
            "FORWARDS",
            "DRIFT",
            "AGE",
            "LAST",
            "DRIFT"
        ]
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        ["host-a", "2/-", "Degraded", "up0", "2/2", "1", "0"],
        "{table}"
    );

    // A host nobody runs: exit 5, named.
    let out = ctl(&lab, &["status", "--host", "host-z", "--timeout", "300ms"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("host host-z"),
        "{}",
        text(&out.stderr)
    );

    // watch --host: frames of host rows, live.
    let mut cmd = command(
        &lab,
        &["watch", "--host", "-o", "json", "--status-interval", "1s"],
    );
    let mut child = Kill(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, frames) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let frame = frames.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(frame["Rows"][0]["Id"], "host-a", "{frame}");
    assert_eq!(frame["Rows"][0]["ObservedGeneration"], 2, "{frame}");

    // Generation 4 drops slot 2: the watch shows it without being asked.
    let mut g4 = host_spec(4);
    g4["Sandboxes"].as_array_mut().unwrap().pop();
    let g4 = dir.file("g4.json", &g4).display().to_string();
    let out = ctl(&lab, &["apply", "--host", "host-a", &g4, "--wait"]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    wait_until(Duration::from_secs(10), "generation 4 in the watch", || {
        let f = frames
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let r = &f["Rows"][0];
        (r["ObservedGeneration"] == 4 && r["Sandboxes"] == 1 && r["Overall"] == "Healthy")
            .then_some(())
            .ok_or(f.to_string())
    });

    // The agent stopped: after three intervals the bucket's copy is shown, stale.
    agent.terminate(Duration::from_secs(5)).unwrap();
    wait_until(Duration::from_secs(10), "host-a stale", || {
        let out = ctl(
            &lab,
            &[
                "status",
                "--host",
                "-o",
                "json",
                "--status-interval",
                "1s",
                "--timeout",
                "300ms",
            ],
        );
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (code(&out) == 0 && rows[0]["Stale"] == true && rows[0]["ObservedGeneration"] == 4)
            .then_some(())
            .ok_or(format!("{rows}{}", text(&out.stderr)))
    });
    let out = ctl(
        &lab,
        &[
            "status",
            "--host",
            "--status-interval",
            "1s",
            "--timeout",
            "300ms",
        ],
    );
    assert!(
        text(&out.stdout).contains(" STALE"),
        "{}",
        text(&out.stdout)
    );
    drop(child);
    drop(agent);
}
