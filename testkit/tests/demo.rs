//! The demo as CI runs it: `weft-demo --for 30s` brings the whole system up (a host agent,
//! two sandboxes it makes, a pod agent in each), proves the overlay and the port forward and
//! cleans up by itself; exit 0 means the host and both pods became Healthy, the pings got
//! through and the port forward answered.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `weft-agent` in the same build directory as `weft-demo` (cargo builds it for the
/// workspace; `cargo test -p weft-testkit` alone does not).
fn agent_bin(demo: &Path) -> PathBuf {
    let agent = demo.with_file_name("weft-agent");
    assert!(
        agent.is_file(),
        "no {}: build it first (cargo build -p weft-agent)",
        agent.display()
    );
    agent
}

#[test]
fn the_demo_proves_the_whole_system_and_cleans_up() {
    weft_testkit::require_root();
    let demo = Path::new(env!("CARGO_BIN_EXE_weft-demo"));
    let child = Command::new(demo)
        .args(["--for", "30s", "--agent-bin"])
        .arg(agent_bin(demo))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weft-demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for weft-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weft-demo exited {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(
            "host and both pods Healthy, overlay carries packets both ways, port forward answers"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("answered \"hello from web-1 in weft-sb-"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" host-a gen 1  Healthy  uplink up0 forwarding on [slot 1 "),
        "{stdout}"
    );
    assert!(stdout.contains(" web-1  gen 2  Healthy"), "{stdout}");
    assert!(stdout.contains(" web-2  gen 2  Healthy"), "{stdout}");
    // Every namespace it or its host agent made (weft-<tag>-<its pid>-<n>,
    // weft-sb-<its pid>-<slot>[-g]) is gone.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let marker = format!("-{pid}-");
    assert!(
        !list.lines().any(|l| l.contains(&marker)),
        "namespaces left behind:\n{list}"
    );
}
