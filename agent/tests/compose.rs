//! compose.yaml cannot run here (no Docker engine), but its sample specs can: each is
//! extracted and applied by the real agent (`weft-agent apply`) in a fresh namespace, and must
//! come out Healthy, with the two pods naming each other's public keys.

use std::path::Path;

use weft_schema::{Encoding, Overall, PodSpec, PodStatus};
use weft_testkit::{require_root, Netns};

/// The `content: |` blocks under `configs:`, by name.
fn sample_specs() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose.yaml"))
            .expect("compose.yaml at the workspace root");
    let configs = text
        .split("\nconfigs:\n")
        .nth(1)
        .expect("a top-level configs: section");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in configs.lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !name.starts_with(' ') {
                out.push((name.to_owned(), String::new()));
                continue;
            }
        }
        if let (Some(body), Some(last)) = (line.strip_prefix("      "), out.last_mut()) {
            last.1.push_str(body);
            last.1.push('\n');
        }
    }
    out
}

#[test]
fn the_compose_sample_specs_apply_healthy_and_name_each_other() {
    require_root();
    let specs = sample_specs();
    assert_eq!(specs.len(), 2, "{specs:?}");
    let mut public = Vec::new();
    for (n, (name, body)) in specs.iter().enumerate() {
        let spec: PodSpec = Encoding::Json
            .decode(body.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ns = Netns::new("compose").unwrap();
        let dir = std::env::temp_dir().join(format!("weft-compose-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A unique interface name: the userspace control socket path is per host.
        let mut spec = spec;
        let wg = spec.wireguard.as_mut().unwrap();
        wg.interface = format!("wgc{}x{n}", std::process::id() % 100_000);
        let file = dir.join("spec.json");
        std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
        let out = ns
            .command(env!("CARGO_BIN_EXE_weft-agent"))
            .args([
                "apply",
                file.to_str().unwrap(),
                "--wireguard",
                "userspace",
                "--state-dir",
            ])
            .arg(dir.join("state"))
            .args(["--resolv-conf"])
            .arg(dir.join("resolv.conf"))
            .output()
            .unwrap();
        let status: PodStatus = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success(), "{name}: {status:?}");
        assert_eq!(
            status.overall,
            Overall::Healthy,
            "{name}: {}",
            status.last_error
        );
        public.push((
            status.wireguard.unwrap().public_key,
            spec.wireguard.unwrap().peers[0].public_key.clone(),
        ));
        let _ = std::fs::remove_dir_all(&dir);
        drop(ns);
    }
    // pod-a names pod-b's key and the other way round.
    assert_eq!(public[0].1, public[1].0);
    assert_eq!(public[1].1, public[0].0);
}
