//! `--metrics-listen` end to end: the real agent in a pod namespace, scraped with `curl`
//! inside that namespace. `/metrics` is parsed by independent parsers (the `prometheus-parse`
//! crate for values, Debian's `promtool check metrics` for the Prometheus text format, the
//! Prometheus project's Python parser for OpenMetrics) and its values follow applies,
//! rejections, a drift repair and a NATS outage; `/readyz` is 503 before the first spec and
//! while the pod is Degraded; `/healthz` fails when the reconciler's loop hangs, not only
//! when the process is gone.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value as Json};
use weft_schema::{ApplyResult, Encoding, PodSpec};
use weft_testkit::stack::{Pod, Stack};
use weft_testkit::{require_root, wait_until};

const LISTEN: &str = "127.0.0.1:9477";

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn spec(pod: &Pod, generation: u64, rules: u16) -> PodSpec {
    let ingress: Vec<Json> = (0..rules)
        .map(|i| json!({ "Protocol": "tcp", "Ports": [(2000 + i).to_string()] }))
        .collect();
    serde_json::from_value(json!({
        "PodId": pod.id, "Generation": generation,
        "Network": { "Interface": "eth0", "Address": pod.address(), "Gateway": pod.gateway() },
        "Firewall": { "Ingress": ingress }
    }))
    .unwrap()
}

/// A pod namespace by name (the stack keeps the namespace; the test needs the stack mutable).
struct Ns(String);

impl Ns {
    fn of(pod: &Pod) -> Ns {
        Ns(pod.ns.ns.name().to_owned())
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An HTTP GET inside `ns`: (status code, body).
fn get(ns: &Ns, path: &str, accept: Option<&str>) -> (u16, String) {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd.arg(format!("http://{LISTEN}{path}")).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_owned())
}

/// The agent's metrics, parsed by `prometheus-parse`.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn of(ns: &Ns) -> (Scrape, String) {
        let (code, text) = get(ns, "/metrics", None);
        assert_eq!(code, 200, "{text}");
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        (
            Scrape(prometheus_parse::Scrape::parse(lines).unwrap()),
            text,
        )
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a plain value: {other:?}"),
            })
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}

/// `promtool check metrics` (Prometheus text format, with its lint rules) must accept `text`.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, in .ci/deps)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused it:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Prometheus project's Python OpenMetrics parser (Debian's python3-prometheus-client)
/// must accept `text`; returns the family names it found.
fn openmetrics_families(text: &str) -> Vec<String> {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name, f.type)\n";
    // Debian's interpreter, where the Debian package is (a pyenv one may come first in PATH).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused it:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn health(ns: &Ns, path: &str) -> (u16, Json) {
    let (code, body) = get(ns, path, None);
    (code, serde_json::from_str(&body).unwrap_or(Json::Null))
}

#[test]
fn metrics_follow_applies_rejections_drift_and_an_outage_and_readyz_follows_the_status() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent(
            "web-1",
            &["--status-interval", "1s", "--metrics-listen", LISTEN],
        )
        .unwrap();
    let ns = Ns::of(&stack.pods[0]);

    // Before any spec: alive, not ready, generation 0.
    let (code, body) = wait_until(Duration::from_secs(10), "/healthz answers", || {
        let (code, body) = health(&ns, "/healthz");
        (code != 0)
            .then_some((code, body.clone()))
            .ok_or(body.to_string())
    });
    assert_eq!(code, 200, "{body}");
    let (code, body) = health(&ns, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body,
        json!({"Overall": "Pending", "ObservedGeneration": 0, "LastError": ""})
    );
    let (m, text) = Scrape::of(&ns);
    promtool_accepts(&text);
    assert_eq!(m.must("weft_agent_observed_generation", &[]), 0.0);
    assert_eq!(
        m.must("weft_agent_applies_total", &[("result", "Applied")]),
        0.0
    );
    assert_eq!(
        m.must(
            "weft_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(m.must("weft_agent_overall", &[("state", "Pending")]), 1.0);

    // An apply.
    let first = spec(&stack.pods[0], 1, 3);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp.request_when_ready("web-1", &first, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    let (code, body) = health(&ns, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({"Overall": "Healthy", "ObservedGeneration": 1, "LastError": ""})
    );
    let (m, text) = Scrape::of(&ns);
    promtool_accepts(&text);
    assert_eq!(
        m.must("weft_agent_applies_total", &[("result", "Applied")]),
        1.0
    );
    assert_eq!(m.must("weft_agent_observed_generation", &[]), 1.0);
    assert_eq!(m.must("weft_agent_desired_generation", &[]), 1.0);
    assert_eq!(
        m.must("weft_agent_firewall_rules", &[("direction", "ingress")]),
        3.0
    );
    assert_eq!(m.must("weft_agent_nats_connected", &[]), 1.0);
    assert_eq!(m.must("weft_agent_nats_reconnects_total", &[]), 0.0);
    for subsystem in ["Network", "Firewall"] {
        let applies = m.must(
            "weft_agent_apply_duration_seconds_count",
            &[("subsystem", subsystem)],
        );
        assert_eq!(applies, 1.0, "{subsystem}");
        assert!(
            m.must(
                "weft_agent_apply_duration_seconds_sum",
                &[("subsystem", subsystem)]
            ) > 0.0
        );
    }

    // A spec that does not validate: counted by reason, and the pod is not ready.
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let mut bad = spec(&stack.pods[0], 2, 1);
        bad.pod_id = "web-2".into();
        let r = cp.request("web-1", &bad, Encoding::Json).await.unwrap();
        assert_eq!(r.result, ApplyResult::Rejected, "{r:?}");
    });
    let (code, body) = wait_until(Duration::from_secs(5), "/readyz turns 503", || {
        let (code, body) = health(&ns, "/readyz");
        (code == 503)
            .then_some((code, body.clone()))
            .ok_or(body.to_string())
    });
    assert_eq!(body["Overall"], "Degraded", "{body}");
    assert_eq!(body["ObservedGeneration"], 1, "{body}");
    assert!(
        body["LastError"]
            .as_str()
            .unwrap()
            .starts_with("generation 2 rejected: PodId"),
        "{body}"
    );
    assert_eq!(code, 503);
    let (m, _) = Scrape::of(&ns);
    assert_eq!(
        m.must("weft_agent_rejected_specs_total", &[("reason", "invalid")]),
        1.0
    );
    assert_eq!(
        m.must("weft_agent_applies_total", &[("result", "Rejected")]),
        1.0
    );
    assert_eq!(m.must("weft_agent_desired_generation", &[]), 2.0);
    assert_eq!(m.must("weft_agent_overall", &[("state", "Degraded")]), 1.0);

    // A good spec makes it ready again.
    let third = spec(&stack.pods[0], 3, 5);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp.request("web-1", &third, Encoding::Json).await.unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    assert_eq!(health(&ns, "/readyz").0, 200);

    // Drift: the managed interface taken down by someone else is brought up and counted.
    ns.ip(&["link", "set", "eth0", "down"]);
    let m = wait_until(
        Duration::from_secs(10),
        "a Network repair is counted",
        || {
            let (m, text) = Scrape::of(&ns);
            match m.value(
                "weft_agent_drift_repairs_total",
                &[("subsystem", "Network")],
            ) {
                Some(v) if v >= 1.0 => Ok(m),
                _ => Err(text),
            }
        },
    );
    assert_eq!(
        m.must(
            "weft_agent_drift_repairs_total",
            &[("subsystem", "Firewall")]
        ),
        0.0
    );
    assert_eq!(
        m.must("weft_agent_firewall_rules", &[("direction", "ingress")]),
        5.0
    );
    assert_eq!(m.must("weft_agent_observed_generation", &[]), 3.0);

    // A NATS outage: the link is down while the server is, and one reconnect is counted.
    stack.kill_nats();
    wait_until(Duration::from_secs(20), "nats_connected 0", || {
        let (m, text) = Scrape::of(&ns);
        (m.value("weft_agent_nats_connected", &[]) == Some(0.0))
            .then_some(())
            .ok_or(text)
    });
    // The agent is still alive and the kernel still holds generation 3: ready stays.
    assert_eq!(health(&ns, "/healthz").0, 200);
    stack.restart_nats().unwrap();
    let (m, text) = wait_until(Duration::from_secs(20), "nats_connected 1", || {
        let (m, text) = Scrape::of(&ns);
        (m.value("weft_agent_nats_connected", &[]) == Some(1.0))
            .then_some((m, text.clone()))
            .ok_or(text)
    });
    assert_eq!(
        m.must("weft_agent_nats_reconnects_total", &[]),
        1.0,
        "{text}"
    );
    promtool_accepts(&text);

    // OpenMetrics when asked: the same families, in a format its own parser accepts.
    let (code, om) = get(
        &ns,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert_eq!(code, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    let families = openmetrics_families(&om);
    for expected in [
        "weft_agent_apply_duration_seconds histogram",
        "weft_agent_applies counter",
        "weft_agent_rejected_specs counter",
        "weft_agent_drift_repairs counter",
        "weft_agent_observed_generation gauge",
        "weft_agent_desired_generation gauge",
        "weft_agent_firewall_rules gauge",
        "weft_agent_nats_connected gauge",
        "weft_agent_nats_reconnects counter",
        "weft_agent_status_publish_failures counter",
        "weft_agent_build info",
    ] {
        assert!(
            families.iter().any(|f| f == expected),
            "{expected} not in {families:?}"
        );
    }

    // Anything but GET and HEAD is refused; an unknown path is 404.
    let out = ns
        .command("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("http://{LISTEN}/metrics"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405");
    assert_eq!(get(&ns, "/nothing", None).0, 404);
}

#[test]
fn healthz_fails_when_the_reconciler_loop_hangs_while_http_still_answers() {
    require_root();
    let mut stack = Stack::new(agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack
        .start_agent_with_env(
            "web-1",
            &["--metrics-listen", LISTEN],
            &[("WEFT_FAULT_HANG_AT_GENERATION", "2")],
        )
        .unwrap();
    let ns = Ns::of(&stack.pods[0]);
    let first = spec(&stack.pods[0], 1, 1);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp.request_when_ready("web-1", &first, Encoding::Json).await;
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    assert_eq!(health(&ns, "/healthz").0, 200);
    assert_eq!(health(&ns, "/readyz").0, 200);

    let second = spec(&stack.pods[0], 2, 1);
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        cp.publish("web-1", &second, Encoding::Json).await.unwrap();
    });
    let agent = stack.pods[0].agent.as_ref().unwrap();
    wait_until(Duration::from_secs(10), "the apply hangs", || {
        let log = agent.log();
        log.contains("injected fault: this apply hangs")
            .then_some(())
            .ok_or(log)
    });
    let (code, body) = health(&ns, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body["LastError"],
        "the reconciler's loop did not go round within 5 s"
    );
    // The HTTP task and the rest of the process are fine: that is what /healthz must see
    // through.
    let (code, _) = get(&ns, "/metrics", None);
    assert_eq!(code, 200);
}
