//! The shipped systemd unit (`agent/deploy/weft-agent.service`) gives the agent enough: the
//! agent runs as the unit says (read from the file, not copied here): the unit's user,
//! exactly the unit's capability bounding and ambient sets, no_new_privs, a file system read-only but for the state
//! directory and the unit's runtime directories (a private /run, as the service gets), the
//! resolver file where the unit puts it. It applies a full spec, userspace WireGuard
//! included, checked with nft, ip and wg. Without CAP_NET_ADMIN the same agent cannot:
//! the capability is needed, and (the first test) it is the only one.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use weft_schema::{ApplyResult, Backend, Encoding, Overall, PodSpec};
use weft_testkit::agent::AgentProcess;
use weft_testkit::control::ControlPlane;
use weft_testkit::observe::{ipv4_addrs, nft_table};
use weft_testkit::stack::{Options, Stack};
use weft_testkit::{require_root, unique_ifname, wait_until};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

/// The `[Service]` settings of the unit; a key given twice keeps every value.
fn unit() -> BTreeMap<String, Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/weft-agent.service");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        out.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    let v = &unit[key];
    assert_eq!(v.len(), 1, "{key} given {} times", v.len());
    &v[0]
}

/// `CAP_NET_ADMIN CAP_X` as setpriv's `-all,+net_admin,+x`.
fn setpriv_caps(list: &str) -> String {
    let mut s = String::from("-all");
    for cap in list.split_whitespace() {
        s.push_str(",+");
        s.push_str(&cap.trim_start_matches("CAP_").to_ascii_lowercase());
    }
    s
}

/// The value the unit gives `WEFT_<name>` with `Environment=`.
fn env(unit: &BTreeMap<String, Vec<String>>, name: &str) -> String {
    unit["Environment"]
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Environment={name}"))
        .to_owned()
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent as the unit runs it, in `pod`'s namespace. `caps` overrides the unit's
/// capability sets (`None`: the unit's).
fn start_as_the_unit(
    stack: &Stack,
    pod: usize,
    uid: u32,
    state: &Path,
    caps: Option<&str>,
    log: PathBuf,
) -> AgentProcess {
    let unit = unit();
    assert!(!unit.contains_key("DynamicUser"));
    assert_eq!(one(&unit, "NoNewPrivileges"), "yes");
    assert_eq!(one(&unit, "ProtectSystem"), "strict");
    let bounding = caps
        .map(str::to_owned)
        .unwrap_or_else(|| setpriv_caps(one(&unit, "CapabilityBoundingSet")));
    let ambient = caps
        .map(str::to_owned)
        .unwrap_or_else(|| setpriv_caps(one(&unit, "AmbientCapabilities")));
    assert_eq!(
        one(&unit, "CapabilityBoundingSet"),
        one(&unit, "AmbientCapabilities")
    );
    let runtime: Vec<&str> = one(&unit, "RuntimeDirectory").split_whitespace().collect();
    let resolv = env(&unit, "WEFT_RESOLV_CONF");
    assert!(
        runtime
            .iter()
            .any(|d| Path::new(&resolv).parent() == Some(&Path::new("/run").join(d))),
        "the resolver file {resolv} is not in a runtime directory of the unit"
    );
    // What systemd does for the service, in a mount namespace of the agent's own: a /run of
    // its own with the runtime directories owned by the user, the state directory writable,
    // everything else read-only; then the user, the capabilities and no_new_privs.
    let script = r#"
        set -e
        uid=$1; state=$2; bounding=$3; ambient=$4; shift 4
        mount -t tmpfs -o mode=0755 weft-run /run
        for d in $RUNTIME; do mkdir -p "/run/$d"; chown "$uid:$uid" "/run/$d"; chmod 0755 "/run/$d"; done
        mount --bind "$state" "$state"
        mount -o remount,bind,ro /
        exec setpriv --reuid "$uid" --regid "$uid" --clear-groups \
            --bounding-set "$bounding" --inh-caps "$ambient" --ambient-caps "$ambient" \
            --no-new-privs "$@"
    "#;
    let mut args: Vec<String> = vec![
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "env".into(),
        format!("RUNTIME={}", runtime.join(" ")),
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        uid.to_string(),
        state.display().to_string(),
        bounding,
        ambient,
        agent_bin().display().to_string(),
    ];
    let p = &stack.pods[pod];
    args.extend(stack.agent_args(p, &[]).into_iter().map(|a| {
        if a == p.resolv_conf.display().to_string() {
            resolv.clone()
        } else if a == p.state_dir.display().to_string() {
            state.display().to_string()
        } else {
            a
        }
    }));
    args.extend(["--wireguard".into(), "userspace".into()]);
    AgentProcess::spawn(&p.ns.ns, Path::new("unshare"), &args, log).unwrap()
}

fn wg_pubkey() -> String {
    let key = Command::new("wg").arg("genkey").output().unwrap().stdout;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&key).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

fn full_spec(pod: &str, index: u8, wg: &str, peer: &str) -> PodSpec {
    serde_json::from_value(json!({
        "PodId": pod, "Generation": 1,
        "Network": { "Interface": "eth0", "Address": format!("10.0.{index}.5/24"),
                     "Gateway": format!("10.0.{index}.1"), "Nameservers": ["192.0.2.53"],
                     "SearchDomains": ["pods.test"] },
        "Firewall": {
            "Ingress": [ { "Protocol": "tcp", "Ports": ["22", "8000-8080"], "Sources": ["10.0.0.0/8"] } ],
            "Egress": [ { "Destinations": ["169.254.169.254/32"], "Comment": "no metadata" } ] },
        "WireGuard": { "Interface": wg, "Address": format!("10.9.{index}.1/24"), "ListenPort": 51820,
                       "Peers": [ { "PublicKey": peer, "Endpoint": "192.0.2.7:51820",
                                    "AllowedIps": ["10.9.0.0/24"], "PersistentKeepaliveSeconds": 25 } ] }
    }))
    .unwrap()
}

/// A line of `/proc/<pid>/status`.
fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `cmd` in the agent's mount and network namespaces.
fn in_agent(pid: u32, cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-n", "--"])
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_agent_applies_a_full_spec_with_only_the_units_capabilities_and_not_without_them() {
    require_root();
    let mut stack = Stack::with(
        agent_bin(),
        Options {
            plain: true,
            ..Options::default()
        },
    )
    .unwrap();
    stack.add_pod("web-1").unwrap();
    stack.add_pod("web-2").unwrap();
    let uid = match unit().get("User").map(|u| u[0].as_str()) {
        None | Some("root") => 0,
        Some(other) => panic!("the test knows root only, not User={other}"),
    };
    let dir = TempDir(std::env::temp_dir().join(format!("weft-unit-{}", std::process::id())));
    let state: Vec<PathBuf> = (1..=2).map(|i| dir.0.join(format!("state-{i}"))).collect();
    for s in &state {
        std::fs::create_dir_all(s).unwrap();
        std::os::unix::fs::chown(s, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut agent = start_as_the_unit(&stack, 0, uid, &state[0], None, dir.0.join("web-1.log"));
    let pid = agent.pid().unwrap();
    let wg = unique_ifname("wgu", 1);
    let peer = wg_pubkey();
    let spec = full_spec("web-1", 1, &wg, &peer);
    let url = stack.nats_url();
    let reply = stack.block_on(|| async {
        let cp = ControlPlane::connect(&url).await.unwrap();
        cp.request_when_ready("web-1", &spec, Encoding::Json).await
    });
    assert_eq!(
        reply.result,
        ApplyResult::Applied,
        "{reply:?}\n{}",
        agent.log()
    );
    let status = stack.block_on(|| async {
        let cp = ControlPlane::connect(&url).await.unwrap();
        cp.status_get("web-1", Encoding::Json).await.unwrap()
    });
    assert_eq!(status.overall, Overall::Healthy, "{status:?}");
    assert_eq!(
        status.wireguard.as_ref().unwrap().backend,
        Backend::Userspace
    );

    // It really ran as the unit says.
    assert_eq!(
        proc_status(pid, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![uid.to_string(); 4]
    );
    assert_eq!(proc_status(pid, "CapEff"), "0000000000001000"); // CAP_NET_ADMIN (12) alone
    assert_eq!(proc_status(pid, "CapBnd"), "0000000000001000");
    assert_eq!(proc_status(pid, "CapAmb"), "0000000000001000");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    let probe = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "--",
            "touch",
            "/etc/weft-unit-probe",
        ])
        .output()
        .unwrap();
    assert!(
        !probe.status.success(),
        "/etc is writable in the agent's view"
    );

    // The kernel, seen by others.
    let ns = &stack.pods[0].ns.ns;
    let table = nft_table(ns, "inet", "weft-fw").unwrap();
    assert!(table.is_some(), "no table inet weft-fw");
    assert_eq!(ipv4_addrs(ns, "eth0").unwrap(), ["10.0.1.5/24"]);
    assert_eq!(ipv4_addrs(ns, &wg).unwrap(), ["10.9.1.1/24"]);
    let dump = in_agent(pid, &["wg", "show", &wg, "dump"]);
    let peers: Vec<&str> = dump.lines().skip(1).collect();
    assert_eq!(peers.len(), 1, "{dump}");
    assert!(peers[0].starts_with(&format!("{peer}\t")), "{dump}");
    assert!(peers[0].contains("192.0.2.7:51820"), "{dump}");
    let resolv = in_agent(pid, &["cat", &env(&unit(), "WEFT_RESOLV_CONF")]);
    assert!(resolv.contains("nameserver 192.0.2.53"), "{resolv}");
    // The state directory holds the kept spec and the key, the user's and private.
    let key = std::fs::read_dir(&state[0])
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("wireguard"))
        .expect("a WireGuard key in the state directory");
    let meta = key.metadata().unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o600));
    let (exit, _) = agent.terminate(Duration::from_secs(5)).unwrap();
    assert!(exit.success(), "{exit}\n{}", agent.log());

    // Without CAP_NET_ADMIN (the same everything else) it cannot do its job.
    let mut bare = start_as_the_unit(
        &stack,
        1,
        uid,
        &state[1],
        Some("-all"),
        dir.0.join("web-2.log"),
    );
    let spec = full_spec("web-2", 2, &unique_ifname("wgu", 2), &peer);
    let outcome = wait_until(
        Duration::from_secs(20),
        "the bare agent answers or exits",
        || {
            if let Some(exit) = bare.exited() {
                return Ok(format!("exited {exit}"));
            }
            let reply = stack.block_on(|| async {
                let cp = ControlPlane::connect(&url).await.unwrap();
                tokio::time::timeout(
                    Duration::from_secs(2),
                    cp.request("web-2", &spec, Encoding::Json),
                )
                .await
            });
            match reply {
                Ok(Ok(r)) => Ok(format!("{:?}: {}", r.result, r.error)),
                _ => Err(bare.log()),
            }
        },
    );
    println!("without CAP_NET_ADMIN: {outcome}");
    assert!(!outcome.starts_with("Applied"), "{outcome}");
    assert!(
        outcome.starts_with("exited") || outcome.starts_with("Failed"),
        "{outcome}"
    );
    assert!(nft_table(&stack.pods[1].ns.ns, "inet", "weft-fw")
        .unwrap()
        .is_none());
}
