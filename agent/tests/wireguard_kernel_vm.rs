//! Kernel WireGuard, proved in a QEMU guest running Debian's stock kernel: the host kernel
//! has no WireGuard module, so these tests boot one that has (see `weft_testkit::vm`).
//!
//! Every check runs in the guest, and the guest's verdict is QEMU's exit status. What the
//! guest's `wg show` must print is rendered here on the host from the same values the
//! configuration came from, and compared in the guest with `diff` after a normalisation that
//! only sorts (peer order and allowed-IP order are the kernel's business, not ours).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_schema::key::Secret;
use weft_schema::spec::{PeerSpec, PodSpec, WireGuardSpec};
use weft_schema::status::{Backend, Overall, PodStatus};
use weft_testkit::require_root;
use weft_testkit::vm::{Guest, Kernel, Outcome, Verdict};

/// Modules in the guest: WireGuard, nftables for the agent's baseline firewall (`ct state`
/// needs `nft_ct`), and veth for the namespaces of the routing test. [`agent_script`] loads
/// them.
const MODULES: &[&str] = &["wireguard", "nf_tables", "nft_ct", "veth"];

/// Generous: TCG on two shared cores, booting takes about 8 s when the machine is idle.
const TIMEOUT: Duration = Duration::from_secs(240);

/// Shell function for guest scripts: `wg show IF dump` as sorted lines, one per interface and
/// one per (peer, allowed IP):
/// `interface PRIVATE PUBLIC PORT` and `peer PUBLIC PSK ENDPOINT ALLOWED_IP KEEPALIVE`.
const WG_NORMAL: &str = r#"
wg_normal() {
    wg show "$1" dump | awk -F'\t' '
        NR == 1 { print "interface\t" $1 "\t" $2 "\t" $3; next }
        { n = split($4, ips, ","); for (i = 1; i <= n; i++) print "peer\t" $1 "\t" $2 "\t" $3 "\t" ips[i] "\t" $8 }
    ' | sort
}
"#;

/// What [`WG_NORMAL`] must print for an interface with this key, port and peers. The spec's
/// CIDRs are written in canonical form, which is how the kernel prints them back.
fn wg_normal(private_key: &str, listen_port: u32, peers: &[PeerSpec]) -> String {
    let mut lines = vec![format!(
        "interface\t{private_key}\t{}\t{listen_port}",
        public_key(private_key)
    )];
    let none = || "(none)".to_owned();
    for p in peers {
        let ips = if p.allowed_ips.is_empty() {
            vec![none()]
        } else {
            p.allowed_ips.clone()
        };
        for ip in ips {
            lines.push(format!(
                "peer\t{}\t{}\t{}\t{ip}\t{}",
                p.public_key,
                p.preshared_key
                    .as_ref()
                    .map_or_else(none, |k| k.expose().to_owned()),
                p.endpoint.clone().unwrap_or_else(none),
                match p.persistent_keepalive_seconds {
                    None | Some(0) => "off".to_owned(),
                    Some(k) => k.to_string(),
                },
            ));
        }
    }
    lines.sort();
    lines.join("\n") + "\n"
}

/// `wg genkey` on the host.
fn private_key() -> String {
    let out = Command::new("wg")
        .arg("genkey")
        .output()
        .expect("wg genkey");
    assert!(out.status.success(), "wg genkey: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `wg pubkey` on the host: independent of both the guest and the agent.
fn public_key(private_key: &str) -> String {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn wg pubkey");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        format!("{private_key}\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "wg pubkey: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn new_peer(allowed_ips: &[&str], endpoint: Option<&str>, keepalive: Option<u32>) -> PeerSpec {
    PeerSpec {
        public_key: public_key(&private_key()),
        endpoint: endpoint.map(str::to_owned),
        allowed_ips: allowed_ips.iter().map(|s| s.to_string()).collect(),
        persistent_keepalive_seconds: keepalive,
        preshared_key: None,
    }
}

fn kernel() -> Kernel {
    Kernel::debian(MODULES).unwrap_or_else(|e| panic!("prepare the guest kernel: {e:#}"))
}

/// Prints the verdict, the boot time (QEMU start to the share mounted), QEMU's run time and
/// the whole test's time, kernel preparation included.
fn report(test: &str, started: Instant, outcome: &Outcome) {
    eprintln!(
        "{test}: verdict {:?}, boot {}, vm {:.1?}, test total {:.1?} (console: {})",
        outcome.verdict,
        outcome
            .boot_time
            .map_or("none".to_owned(), |d| format!("{d:.1?}")),
        outcome.total,
        started.elapsed(),
        outcome.console_path.display()
    );
}

/// The harness itself, with nothing of ours in the guest: the stock kernel creates a
/// WireGuard link and `wg` configures it exactly as asked.
#[test]
fn guest_kernel_runs_wireguard() {
    let started = Instant::now();
    require_root();
    let kernel = kernel();
    let mut guest = Guest::new(&kernel, "wireguard-kernel-harness").unwrap();
    guest.tool("wg").unwrap().tool("ip").unwrap();

    let key = private_key();
    let a = new_peer(
        &["10.9.0.2/32", "10.9.1.0/24"],
        Some("192.0.2.7:51820"),
        Some(25),
    );
    let b = new_peer(&["2001:db8:9::/64"], None, None);
    let mut b_psk = b.clone();
    b_psk.preshared_key = Some(Secret::new(private_key()));
    guest
        .share_file("wg0.key", format!("{key}\n"))
        .unwrap()
        .share_file(
            "b.psk",
            format!("{}\n", b_psk.preshared_key.as_ref().unwrap().expose()),
        )
        .unwrap()
        .share_file("want", wg_normal(&key, 51821, &[a.clone(), b_psk.clone()]))
        .unwrap();

    let script = format!(
        "{WG_NORMAL}
modprobe wireguard
ip link add wg0 type wireguard
wg set wg0 private-key /mnt/host/wg0.key listen-port 51821 \\
    peer {a} allowed-ips 10.9.0.2/32,10.9.1.0/24 endpoint 192.0.2.7:51820 persistent-keepalive 25 \\
    peer {b} allowed-ips 2001:db8:9::/64 preshared-key /mnt/host/b.psk
ip link set wg0 up
wg_normal wg0 > /tmp/got
diff -u /mnt/host/want /tmp/got
echo WEFT-CHECK wg-show-matches
",
        a = a.public_key,
        b = b.public_key,
    );
    let outcome = guest.boot(&script, TIMEOUT).unwrap();
    report("guest_kernel_runs_wireguard", started, &outcome);
    assert!(outcome.passed(), "guest failed:\n{}", outcome.console);
    assert!(outcome.console.contains("WEFT-CHECK wg-show-matches"));
}

/// The verdict channel can say no: a failing script is a failure, not a pass.
#[test]
fn guest_failure_is_reported() {
    let started = Instant::now();
    require_root();
    let kernel = kernel();
    let guest = Guest::new(&kernel, "wireguard-kernel-negative").unwrap();
    let outcome = guest
        .boot(
            "echo WEFT-BEFORE-FALSE\nfalse\necho WEFT-AFTER-FALSE\n",
            TIMEOUT,
        )
        .unwrap();
    report("guest_failure_is_reported", started, &outcome);
    assert_eq!(outcome.verdict, Verdict::Fail, "{}", outcome.console);
    assert!(outcome.console.contains("WEFT-BEFORE-FALSE"));
    assert!(
        !outcome.console.contains("WEFT-AFTER-FALSE"),
        "{}",
        outcome.console
    );
}

/// A spec with only the overlay (the firewall stays at its baseline, the pod interface
/// unmanaged).
fn spec(generation: u64, wireguard: Option<WireGuardSpec>) -> PodSpec {
    PodSpec {
        pod_id: "vm-1".into(),
        generation,
        not_after_unix: None,
        network: None,
        firewall: None,
        wireguard,
    }
}

/// Shell functions for the agent tests:
/// - `apply N [MODE]`: `weft-agent apply /mnt/host/spec-N.json --wireguard MODE` (default
///   `kernel`) with one state directory for every call, its status printed between `WEFT-STATUS-N-BEGIN`/`-END`; fails
///   unless it exits 0 (Healthy).
/// - `overlay_matches N`: the status names the kernel backend, wg0 is a kernel wireguard
///   link, `wg show` is exactly `/mnt/host/want-N`, and wg0 has 10.9.0.1/24 and its route.
/// - `overlay_gone`: no wg0 at all.
const AGENT_PRELUDE: &str = r#"
mkdir -p /tmp/state
fail() { echo "WEFT-FAIL $*"; exit 1; }

apply() {
    set +e
    weft-agent apply /mnt/host/spec-$1.json --state-dir /tmp/state --wireguard "${2:-kernel}" > /tmp/status-$1.json
    rc=$?
    set -e
    echo "WEFT-STATUS-$1-BEGIN"; cat /tmp/status-$1.json; echo; echo "WEFT-STATUS-$1-END"
    [ "$rc" -eq 0 ] || fail "apply $1 exited $rc"
}

overlay_matches() {
    grep -Eq '"Backend" *: *"kernel"' /tmp/status-$1.json || fail "status $1 does not name the kernel backend"
    ip -d link show wg0 | grep -q wireguard || fail "wg0 is not a kernel wireguard link after spec $1"
    wg_normal wg0 > /tmp/got-$1
    diff -u /mnt/host/want-$1 /tmp/got-$1 || fail "wg show wg0 differs from spec $1"
    ip -o -4 addr show dev wg0 | grep -q 'inet 10.9.0.1/24 ' || fail "wg0 lacks 10.9.0.1/24 after spec $1"
    ip -4 route show 10.9.0.0/24 dev wg0 | grep -q . || fail "no route to 10.9.0.0/24 via wg0 after spec $1"
    echo "WEFT-CHECK spec $1 matches"
}

overlay_gone() {
    ! ip link show wg0 2>/dev/null || fail "wg0 outlived its spec"
    echo "WEFT-CHECK wg0 removed"
}
"#;

/// A guest script for the agent tests: the modules loaded, [`WG_NORMAL`] and
/// [`AGENT_PRELUDE`] defined, then `body`.
fn agent_script(body: &str) -> String {
    format!(
        "for m in {}; do modprobe \"$m\"; done\n{WG_NORMAL}{AGENT_PRELUDE}{body}",
        MODULES.join(" ")
    )
}

/// The status the agent printed for `apply` number `n`, parsed with the wire type (unknown
/// fields are an error there too).
fn status(outcome: &Outcome, n: u32) -> PodStatus {
    let text = outcome
        .section(
            &format!("WEFT-STATUS-{n}-BEGIN"),
            &format!("WEFT-STATUS-{n}-END"),
        )
        .unwrap_or_else(|| panic!("no status {n} on the console:\n{}", outcome.console));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {n}: {e}: {text:?}"))
}

/// The status of a Healthy apply of `wg` as generation `generation`.
fn assert_overlay_status(st: &PodStatus, generation: u64, wg: &WireGuardSpec, key: &str) {
    assert_eq!(st.overall, Overall::Healthy, "{st:?}");
    assert_eq!(st.observed_generation, generation);
    let overlay = st.wireguard.as_ref().expect("WireGuard status");
    assert_eq!(overlay.backend, Backend::Kernel);
    assert_eq!(overlay.interface, wg.interface);
    assert_eq!(overlay.public_key, public_key(key));
    assert_eq!(u32::from(overlay.listen_port), wg.listen_port);
    let mut reported: Vec<_> = overlay.peers.iter().map(|p| &p.public_key).collect();
    let mut wanted: Vec<_> = wg.peers.iter().map(|p| &p.public_key).collect();
    reported.sort();
    wanted.sort();
    assert_eq!(reported, wanted, "peers of generation {generation}");
}

/// A guest with `wg`, `ip` and the agent binary, and `specs` on the share as
/// `spec-1.json`, `spec-2.json`, ...
fn agent_guest(name: &str, specs: &[PodSpec]) -> Guest {
    let mut guest = Guest::new(&kernel(), name).unwrap();
    guest.tool("wg").unwrap().tool("ip").unwrap();
    guest
        .share_binary(std::path::Path::new(env!("CARGO_BIN_EXE_weft-agent")))
        .unwrap();
    for (i, s) in specs.iter().enumerate() {
        guest
            .share_file(
                &format!("spec-{}.json", i + 1),
                serde_json::to_vec(s).unwrap(),
            )
            .unwrap();
    }
    guest
}

/// The first overlay of both agent tests: three peers (one IPv6 with a preshared key).
fn first_overlay(key: &str) -> WireGuardSpec {
    let a = new_peer(&["10.9.0.2/32"], Some("192.0.2.7:51820"), Some(25));
    let b = new_peer(&["10.9.0.3/32", "10.9.3.0/24"], None, None);
    let mut c = new_peer(&["2001:db8:9::3/128"], Some("[2001:db8::3]:51820"), None);
    c.preshared_key = Some(Secret::new(private_key()));
    WireGuardSpec {
        interface: "wg0".into(),
        address: "10.9.0.1/24".into(),
        listen_port: 51820,
        private_key: Some(Secret::new(key.to_owned())),
        peers: vec![a, b, c],
        mtu: None,
        default_route: None,
    }
}

/// The real agent binary, in the guest, applies specs with `--wireguard kernel` through its
/// one-shot `apply` form: create wg0, then add, change and remove peers and move the port,
/// then the same again under `--wireguard auto`. After each, the guest's own `wg` and `ip` must show exactly the spec, and the status
/// must name the kernel backend.
#[test]
fn agent_apply_drives_kernel_wireguard() {
    let started = Instant::now();
    require_root();
    let key = private_key();
    let first = first_overlay(&key);
    // a changes (allowed IPs, endpoint, keepalive off), b goes, c stays, d arrives.
    let [a, _b, c] = <[PeerSpec; 3]>::try_from(first.peers.clone()).unwrap();
    let mut a2 = a.clone();
    a2.allowed_ips = vec!["10.9.0.2/32".into(), "10.9.2.0/24".into()];
    a2.endpoint = Some("198.51.100.7:51830".into());
    a2.persistent_keepalive_seconds = None;
    let d = new_peer(&["10.9.0.4/32"], Some("203.0.113.4:51820"), Some(10));
    let second = WireGuardSpec {
        listen_port: 51821,
        peers: vec![a2, c, d],
        ..first.clone()
    };

    // The third apply is the second overlay again under `--wireguard auto`: with a kernel
    // that has WireGuard (never the case on the host), auto must keep the kernel device.
    let mut guest = agent_guest(
        "wireguard-kernel-agent",
        &[
            spec(1, Some(first.clone())),
            spec(2, Some(second.clone())),
            spec(3, Some(second.clone())),
        ],
    );
    let want_second = wg_normal(&key, second.listen_port, &second.peers);
    guest
        .share_file("want-1", wg_normal(&key, first.listen_port, &first.peers))
        .unwrap()
        .share_file("want-2", &want_second)
        .unwrap()
        .share_file("want-3", &want_second)
        .unwrap();
    let script = agent_script(
        "apply 1\noverlay_matches 1\napply 2\noverlay_matches 2\napply 3 auto\noverlay_matches 3\n",
    );
    let outcome = guest.boot(&script, TIMEOUT).unwrap();
    report("agent_apply_drives_kernel_wireguard", started, &outcome);
    assert!(outcome.passed(), "guest failed:\n{}", outcome.console);

    // The guest checked the kernel; here the statuses are checked against the specs.
    assert_overlay_status(&status(&outcome, 1), 1, &first, &key);
    assert_overlay_status(&status(&outcome, 2), 2, &second, &key);
    assert_overlay_status(&status(&outcome, 3), 3, &second, &key);
}

/// A spec without the WireGuard section removes the kernel interface an earlier apply (an
/// earlier process, same state directory) created.
#[test]
fn agent_apply_without_overlay_removes_kernel_wireguard() {
    let started = Instant::now();
    require_root();
    let key = private_key();
    let first = first_overlay(&key);
    let mut guest = agent_guest(
        "wireguard-kernel-agent-remove",
        &[spec(1, Some(first.clone())), spec(2, None)],
    );
    guest
        .share_file("want-1", wg_normal(&key, first.listen_port, &first.peers))
        .unwrap();
    let script = agent_script("apply 1\noverlay_matches 1\napply 2\noverlay_gone\n");
    let outcome = guest.boot(&script, TIMEOUT).unwrap();
    report(
        "agent_apply_without_overlay_removes_kernel_wireguard",
        started,
        &outcome,
    );
    assert!(outcome.passed(), "guest failed:\n{}", outcome.console);

    assert_overlay_status(&status(&outcome, 1), 1, &first, &key);
    let last = status(&outcome, 2);
    assert_eq!(last.overall, Overall::Healthy, "{last:?}");
    assert_eq!(last.observed_generation, 2);
    assert!(last.wireguard.is_none(), "{last:?}");
}

/// The routes of issue 12 on the kernel backend, with packets: in the guest the agent runs
/// in the root namespace as pod A (eth0 192.0.2.2/24 via a router namespace at 192.0.2.1);
/// peer B lives in namespace `b` behind the router (198.51.100.2), runs kernel WireGuard set
/// up by `wg`, and holds 10.78.0.2, a subnet only the tunnel reaches.
/// 1. AllowedIps 10.78.0.0/24: a route via wg0 (proto 87), and 10.78.0.2 answers a ping.
/// 2. `DefaultRoute: true` with 0.0.0.0/0: the default route goes via wg0, B's endpoint via
///    the old gateway, and 10.78.0.2 still answers (through the default route alone).
/// 3. Without `DefaultRoute` and without the peer: the Network default route is back, the
///    endpoint route and the peer's routes are gone, and 10.78.0.2 does not answer.
#[test]
fn agent_routes_allowed_ips_and_default_route_through_kernel_wireguard() {
    let started = Instant::now();
    require_root();
    let (key_a, key_b) = (private_key(), private_key());
    let (pub_a, pub_b) = (public_key(&key_a), public_key(&key_b));
    let pod = |generation: u64, allowed: &[&str], default_route: bool| -> PodSpec {
        let peers = if allowed.is_empty() {
            serde_json::json!([])
        } else {
            serde_json::json!([{ "PublicKey": pub_b, "Endpoint": "198.51.100.2:51831",
                                 "AllowedIps": allowed }])
        };
        serde_json::from_value(serde_json::json!({
            "PodId": "vm-1", "Generation": generation,
            "Network": { "Interface": "eth0", "Address": "192.0.2.2/24", "Gateway": "192.0.2.1" },
            "WireGuard": { "Interface": "wg0", "Address": "10.79.0.1/24", "ListenPort": 51830,
                           "PrivateKey": key_a, "DefaultRoute": default_route, "Peers": peers }
        }))
        .unwrap()
    };
    let mut guest = agent_guest(
        "wireguard-kernel-routes",
        &[
            pod(1, &["10.79.0.2/32", "10.78.0.0/24"], false),
            pod(2, &["10.79.0.2/32", "0.0.0.0/0"], true),
            pod(3, &[], false),
        ],
    );
    guest.share_file("b.key", format!("{key_b}\n")).unwrap();
    let body = format!(
        r#"
ip netns add r
ip netns add b
ip link add eth0 type veth peer name toa netns r
ip -n r link add tob type veth peer name eth0 netns b
for l in toa tob lo; do ip -n r link set "$l" up; done
ip -n r addr add 192.0.2.1/24 dev toa
ip -n r addr add 198.51.100.1/24 dev tob
ip netns exec r sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
for l in eth0 lo; do ip -n b link set "$l" up; done
ip -n b addr add 198.51.100.2/24 dev eth0
ip -n b route add default via 198.51.100.1
ip -n b addr add 10.78.0.2/32 dev lo
ip -n b link add wgb type wireguard
ip netns exec b wg set wgb private-key /mnt/host/b.key listen-port 51831 peer {pub_a} allowed-ips 10.79.0.1/32
ip -n b addr add 10.79.0.2/24 dev wgb
ip -n b link set wgb up

answers() {{ for i in 1 2 3 4 5; do ping -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0; done; return 1; }}

apply 1
ip -4 route show 10.78.0.0/24 | grep -q 'dev wg0 proto 87' || fail "no route to 10.78.0.0/24 via wg0"
answers 10.78.0.2 || fail "the subnet behind the peer does not answer"
echo "WEFT-CHECK subnet behind the peer answers"

apply 2
ip -4 route show default | grep -q 'dev wg0 proto 87' || fail "the default route is not the tunnel's"
ip -4 route show 198.51.100.2 | grep -q 'via 192.0.2.1 dev eth0 proto 87' || fail "no endpoint route via the old gateway"
ip -4 route show 10.78.0.0/24 | grep -q . && fail "10.78.0.0/24 still routed alone"
ip route get 203.0.113.9 | grep -q 'dev wg0' || fail "the pod's traffic does not go through the tunnel"
answers 10.78.0.2 || fail "no answer through the tunnel's default route"
echo "WEFT-CHECK default route through the tunnel"

apply 3
ip -4 route show default | grep -q 'via 192.0.2.1 dev eth0 proto 87' || fail "the Network default route is not back"
ip -4 route show 198.51.100.2 | grep -q . && fail "the endpoint route outlived DefaultRoute"
ip -4 route show dev wg0 | grep -v '^10.79.0.0/24' | grep -q . && fail "routes of the removed peer remain"
answers 10.78.0.2 && fail "10.78.0.2 still answers without the peer"
echo "WEFT-CHECK routes gone with the peer"
"#
    );
    let outcome = guest.boot(&agent_script(&body), TIMEOUT).unwrap();
    report(
        "agent_routes_allowed_ips_and_default_route_through_kernel_wireguard",
        started,
        &outcome,
    );
    assert!(outcome.passed(), "guest failed:\n{}", outcome.console);
    for check in [
        "subnet behind the peer answers",
        "default route through the tunnel",
        "routes gone with the peer",
    ] {
        assert!(
            outcome.console.contains(&format!("WEFT-CHECK {check}")),
            "{check}: {}",
            outcome.console
        );
    }
    for n in 1..=3 {
        let st = status(&outcome, n);
        assert_eq!(st.overall, Overall::Healthy, "{st:?}");
        assert_eq!(
            st.wireguard.as_ref().map(|w| w.backend),
            Some(Backend::Kernel)
        );
        let net = st.network.as_ref().expect("Network status");
        assert_eq!(net.addresses, vec!["192.0.2.2/24"]);
        let gateway = if n == 2 { None } else { Some("192.0.2.1") };
        assert_eq!(net.gateway.as_deref(), gateway, "status {n}");
    }
}

/// A guest that overruns its time is killed and reported as such, promptly.
#[test]
fn guest_overrun_is_killed() {
    let started = Instant::now();
    require_root();
    let kernel = kernel();
    let guest = Guest::new(&kernel, "wireguard-kernel-overrun").unwrap();
    let timeout = Duration::from_secs(3);
    let outcome = guest.boot("sleep 3600\n", timeout).unwrap();
    report("guest_overrun_is_killed", started, &outcome);
    assert_eq!(outcome.verdict, Verdict::TimedOut, "{}", outcome.console);
    assert!(
        outcome.total < timeout + Duration::from_secs(5),
        "{:?}",
        outcome.total
    );
}
