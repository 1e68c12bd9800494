//! `weftctl dashboard` in headless Chromium (Debian's `chromium`), driven over the Chrome
//! DevTools protocol: the page shows one row per agent (two pods and a host agent), its rows
//! change when a spec changes (over server-sent events, without a reload), a row's detail is
//! the whole status (a `PodStatus` or a `HostStatus`), and a stopped agent's row turns stale. The DOM is read, not only the picture; the screenshot
//! is kept in `target/tmp/dashboard.png` (and copied to `$WEFT_DASHBOARD_PNG` when set: that
//! is how `agent/ctl/dashboard.png`, the README's picture, is made).

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use weft_schema::{ApplyResult, Encoding, HostSpec, PodSpec};
use weft_testkit::agent::AgentProcess;
use weft_testkit::natsconf::host_permissions;
use weft_testkit::stack::Stack;
use weft_testkit::{require_root, wait_until};

mod support;
use support::{agent_bin, weftctl, TempDir};

/// A process group we started, ended by its id on drop (Chromium forks helpers).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the negated pid of a process group this test created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A DevTools session with one page.
struct Cdp {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(Message::text(
                json!({ "id": id, "method": method, "params": params }).to_string(),
            ))
            .unwrap();
        loop {
            let msg = self.ws.read().unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value, by value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// The tables (pods, then hosts) as the page shows them: for each row, its key,
    /// whether it is stale, and each cell's text by column.
    fn rows(&mut self) -> Vec<Value> {
        let v = self.eval(
            "JSON.stringify([...document.querySelectorAll('#rows tr, #hosts tr')].map(tr => ({\
               key: tr.dataset.key, stale: tr.dataset.stale, \
               cells: Object.fromEntries([...tr.cells].map(td => [td.dataset.col, td.textContent]))\
             })))",
        );
        serde_json::from_str(v.as_str().unwrap()).unwrap()
    }
}

fn row<'a>(rows: &'a [Value], key: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["key"] == key)
}

/// The namespaces a host agent made under `prefix`, deleted on drop whatever made them.
struct Sandboxes(String);

impl Drop for Sandboxes {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.0) {
                    let _ = std::process::Command::new("ip")
                        .args(["netns", "del", &name])
                        .output();
                }
            }
        }
    }
}

fn spec(id: &str, index: u8, generation: u64, rules: u16) -> PodSpec {
    let ingress: Vec<Value> = (0..rules)
        .map(|i| json!({ "Protocol": "tcp", "Ports": [(4000 + i).to_string()] }))
        .collect();
    serde_json::from_value(json!({
        "PodId": id, "Generation": generation,
        "Network": { "Interface": "eth0", "Address": format!("10.0.{index}.5/24"),
                     "Gateway": format!("10.0.{index}.1"), "Nameservers": ["192.0.2.53"] },
        "Firewall": { "Ingress": ingress,
                      "Egress": [ { "Destinations": ["169.254.169.254/32"], "Comment": "no metadata" } ] }
    }))
    .unwrap()
}

#[test]
fn the_dashboard_page_in_chromium_follows_the_agents_live() {
    require_root();
    let mut stack = Stack::new(&agent_bin()).unwrap();
    stack.add_pod("web-1").unwrap();
    stack.add_pod("web-2").unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let js = async_nats::jetstream::new(cp.client.clone());
        weft_emitter::bus::open_bucket(&js, "weft-status", 1)
            .await
            .unwrap();
    });
    for p in ["web-1", "web-2"] {
        stack
            .start_agent(p, &["--status-interval", "1s", "--status-kv"])
            .unwrap();
    }
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        for (i, p) in ["web-1", "web-2"].iter().enumerate() {
            let r = cp
                .request_when_ready(p, &spec(p, i as u8 + 1, 1, 2 + i as u16), Encoding::Json)
                .await;
            assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
        }
    });

    // A host agent, in a namespace of its own joined to the hub like a pod's, as a user
    // with the host's permissions; its uplink is that control link.
    let host_ns = stack.hub.add_pod("hosta").unwrap();
    let host_user = stack
        .add_user("host-a", host_permissions("weft", "host-a"))
        .unwrap();
    let host_dir =
        TempDir(std::env::temp_dir().join(format!("weft-dashboard-host-{}", std::process::id())));
    std::fs::create_dir_all(&host_dir.0).unwrap();
    let prefix = format!("wdh{}-", std::process::id());
    let _sandboxes = Sandboxes(prefix.clone());
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", host_ns.ns.name()))
        .arg("--")
        .arg(agent_bin())
        .args(["host", "--nats-url", &stack.nats.url_at(&host_ns.hub_addr)])
        .args(host_user.flags())
        .args(["--host-id", "host-a", "--netns-prefix", &prefix])
        .args(["--status-interval", "1s", "--status-kv", "--state-dir"])
        .arg(host_dir.0.join("state"));
    let host_agent = AgentProcess::spawn_command(cmd, &[], host_dir.0.join("agent.log")).unwrap();
    let host_spec: HostSpec = serde_json::from_value(json!({
        "HostId": "host-a", "Generation": 1, "Uplink": "ctl0",
        "Sandboxes": [
            {"Slot": 1, "Guest": "veth", "PortForwards": [
                {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80},
                {"Protocol": "udp", "HostPort": 5353, "SandboxPort": 53}]},
            {"Slot": 2, "Guest": "tap", "Egress": false}
        ]
    }))
    .unwrap();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp
            .request_host_when_ready("host-a", &host_spec, Encoding::Json)
            .await;
        assert_eq!(
            r.result,
            ApplyResult::Applied,
            "{r:?}\n{}",
            host_agent.log()
        );
    });

    // The dashboard, as the read-only dashboard user, in the hub namespace.
    let mut cmd = stack.hub.ns.command(weftctl().to_str().unwrap());
    cmd.args(["--nats-url", &stack.nats_url()])
        .args(stack.identity("dashboard").unwrap().flags())
        .args([
            "dashboard",
            "--listen",
            "127.0.0.1:8080",
            "--status-interval",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let _dashboard = Group(cmd.spawn().unwrap());
    wait_until(Duration::from_secs(15), "the dashboard serves", || {
        let out = stack
            .hub
            .ns
            .command("curl")
            .args(["-sf", "-o", "/dev/null", "http://127.0.0.1:8080/"])
            .output()
            .unwrap();
        out.status
            .success()
            .then_some(())
            .ok_or("not yet".to_owned())
    });

    // Chromium, headless, with a profile of its own, in the hub namespace too.
    let profile =
        TempDir(std::env::temp_dir().join(format!("weft-chromium-{}", std::process::id())));
    std::fs::create_dir_all(&profile.0).unwrap();
    let mut cmd = stack.hub.ns.command("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        "--window-size=1500,900",
    ])
    .arg(format!("--user-data-dir={}", profile.0.display()))
    .arg("http://127.0.0.1:8080/")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    let _chromium = Group(cmd.spawn().expect("chromium (Debian package, in .ci/deps)"));
    let port: u16 = wait_until(Duration::from_secs(30), "DevTools is up", || {
        std::fs::read_to_string(profile.0.join("DevToolsActivePort"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.parse().ok()))
            .ok_or("no DevToolsActivePort yet".to_owned())
    });
    let page_ws: String = wait_until(Duration::from_secs(15), "the page target", || {
        let out = stack
            .hub
            .ns
            .command("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/json/list")])
            .output()
            .unwrap();
        let targets: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        targets
            .as_array()
            .and_then(|t| {
                t.iter().find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.contains(":8080"))
                })
            })
            .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            .ok_or(format!("{targets}"))
    });
    // The socket is made in the hub namespace and used from here.
    let (ws, _) = stack
        .hub
        .ns
        .enter(|| tungstenite::connect(&page_ws).unwrap());
    let mut cdp = Cdp { ws, next: 0 };
    cdp.call("Runtime.enable", json!({}));

    // Both pods and the host, fresh, as their statuses say.
    let rows = wait_until(Duration::from_secs(15), "three fresh rows", || {
        let rows = cdp.rows();
        let ok = ["pod/web-1", "pod/web-2", "host/host-a"].iter().all(|k| {
            row(&rows, k)
                .is_some_and(|r| r["stale"] == "false" && r["cells"]["generation"] == "1/-")
        });
        ok.then_some(rows.clone()).ok_or(format!("{rows:?}"))
    });
    let host = row(&rows, "host/host-a").unwrap();
    assert_eq!(host["cells"]["overall"], "Healthy", "{host}");
    assert_eq!(host["cells"]["uplink"], "ctl0", "{host}");
    assert_eq!(host["cells"]["forwarding"], "on", "{host}");
    assert_eq!(host["cells"]["sandboxes"], "2/2", "{host}");
    assert_eq!(host["cells"]["forwards"], "2", "{host}");
    assert_eq!(host["cells"]["drift"], "0", "{host}");
    for r in rows.iter().filter(|r| r["key"] != "host/host-a") {
        assert_eq!(r["cells"]["overall"], "Healthy", "{r}");
        assert_eq!(r["cells"]["network"], "Healthy", "{r}");
        assert_eq!(r["cells"]["firewall"], "Healthy", "{r}");
        assert_eq!(r["cells"]["wireguard"], "-", "{r}");
    }

    // A new spec for web-2: its row changes in place (server-sent events, no reload).
    let marker = cdp.eval("window.weftMarker = 'same page'; window.weftMarker");
    assert_eq!(marker, "same page");
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp
            .request("web-2", &spec("web-2", 2, 2, 6), Encoding::Json)
            .await
            .unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    wait_until(
        Duration::from_secs(10),
        "web-2 at generation 2 on the page",
        || {
            let rows = cdp.rows();
            row(&rows, "pod/web-2")
                .is_some_and(|r| r["cells"]["generation"] == "2/-")
                .then_some(())
                .ok_or(format!("{rows:?}"))
        },
    );
    assert_eq!(
        cdp.eval("window.weftMarker"),
        "same page",
        "the page was reloaded"
    );

    // A row's detail is the whole status.
    cdp.eval("document.querySelector('tr[data-key=\"pod/web-2\"]').click(); true");
    let detail = cdp.eval("document.getElementById('detail-json').textContent");
    let status: weft_schema::PodStatus = serde_json::from_str(detail.as_str().unwrap()).unwrap();
    assert_eq!(status.pod_id, "web-2");
    assert_eq!(status.observed_generation, 2);
    assert_eq!(status.firewall.unwrap().ingress_rules, 6);

    // A new host spec (slot 2 gone): the host row changes in place too.
    let mut second = host_spec.clone();
    second.generation = 2;
    second.sandboxes.pop();
    stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        let r = cp
            .request_host("host-a", &second, Encoding::Json)
            .await
            .unwrap();
        assert_eq!(r.result, ApplyResult::Applied, "{r:?}");
    });
    wait_until(Duration::from_secs(10), "host-a at generation 2", || {
        let rows = cdp.rows();
        row(&rows, "host/host-a")
            .is_some_and(|r| r["cells"]["generation"] == "2/-" && r["cells"]["sandboxes"] == "1/1")
            .then_some(())
            .ok_or(format!("{rows:?}"))
    });

    // A host row's detail is the whole HostStatus, as the agent's status.get says.
    cdp.eval("document.querySelector('tr[data-key=\"host/host-a\"]').click(); true");
    let detail = cdp.eval("document.getElementById('detail-json').textContent");
    let shown: weft_schema::HostStatus = serde_json::from_str(detail.as_str().unwrap()).unwrap();
    let asked = stack.block_on(|| async {
        let cp = stack.control_plane().await.unwrap();
        cp.host_status_get("host-a", Encoding::Json).await.unwrap()
    });
    assert_eq!(shown.host_id, "host-a");
    assert_eq!(shown.sandboxes, asked.sandboxes);
    assert_eq!(shown.uplink.as_deref(), Some("ctl0"));
    assert_eq!(
        cdp.eval("document.getElementById('detail-title').textContent"),
        "host host-a"
    );

    // A stopped agent's row turns stale after three intervals.
    stack.stop_agent("web-1").unwrap();
    wait_until(Duration::from_secs(10), "web-1 stale on the page", || {
        let rows = cdp.rows();
        row(&rows, "pod/web-1")
            .is_some_and(|r| r["stale"] == "true")
            .then_some(())
            .ok_or(format!("{rows:?}"))
    });
    let rows = cdp.rows();
    assert_eq!(row(&rows, "pod/web-2").unwrap()["stale"], "false");
    assert_eq!(row(&rows, "host/host-a").unwrap()["stale"], "false");

    // The picture.
    let shot = cdp.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "captureBeyondViewport": false }),
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, &png).unwrap();
    println!("screenshot: {}", artifact.display());
    if let Some(copy) = std::env::var_os("WEFT_DASHBOARD_PNG") {
        std::fs::write(copy, &png).unwrap();
    }
    drop(host_agent);
}
