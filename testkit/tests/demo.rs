//! The demo as CI runs it: `weft-demo --for 20s` brings the stack up, proves the overlay
//! and cleans up by itself; exit 0 means both pods became Healthy and the pings got through.

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
fn the_demo_proves_the_overlay_and_cleans_up() {
    weft_testkit::require_root();
    let demo = Path::new(env!("CARGO_BIN_EXE_weft-demo"));
    let child = Command::new(demo)
        .args(["--for", "20s", "--agent-bin"])
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
        stdout.contains("overlay carries packets both ways"),
        "{stdout}"
    );
    assert!(stdout.contains(" web-1  gen 2  Healthy"), "{stdout}");
    assert!(stdout.contains(" web-2  gen 2  Healthy"), "{stdout}");
    // Every namespace it made (weft-<tag>-<its pid>-<n>) is gone.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let marker = format!("-{pid}-");
    assert!(
        !list.lines().any(|l| l.contains(&marker)),
        "namespaces left behind:\n{list}"
    );
}
