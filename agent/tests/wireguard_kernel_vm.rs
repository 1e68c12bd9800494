//! Kernel WireGuard, proved in a QEMU guest running Debian's stock kernel: the host kernel
//! has no WireGuard module, so these tests boot one that has (see `weft_testkit::vm`).
//!
//! Every check runs in the guest, and the guest's verdict is QEMU's exit status. What the
//! guest's `wg show` must print is rendered here on the host from the same values the
//! configuration came from, and compared in the guest with `diff` after a normalisation that
//! only sorts (peer order and allowed-IP order are the kernel's business, not ours).

use std::process::{Command, Stdio};
use std::time::Duration;

use weft_testkit::require_root;
use weft_testkit::vm::{Guest, Kernel, Outcome, Verdict};

/// Modules the guest scripts load: WireGuard, and nftables for the agent's baseline
/// firewall (`ct state` needs `nft_ct`).
const MODULES: &[&str] = &["wireguard", "nf_tables", "nft_ct"];

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

/// A WireGuard peer as `wg show dump` reports it.
#[derive(Debug, Clone)]
struct PeerView {
    public_key: String,
    preshared_key: Option<String>,
    endpoint: Option<String>,
    allowed_ips: Vec<String>,
    keepalive: Option<u16>,
}

/// What [`WG_NORMAL`] must print for an interface with this key, port and peers.
fn wg_normal(private_key: &str, listen_port: u16, peers: &[PeerView]) -> String {
    let mut lines = vec![format!(
        "interface\t{private_key}\t{}\t{listen_port}",
        public_key(private_key)
    )];
    for p in peers {
        let none = || "(none)".to_owned();
        let ips = if p.allowed_ips.is_empty() {
            vec![none()]
        } else {
            p.allowed_ips.clone()
        };
        for ip in ips {
            lines.push(format!(
                "peer\t{}\t{}\t{}\t{ip}\t{}",
                p.public_key,
                p.preshared_key.clone().unwrap_or_else(none),
                p.endpoint.clone().unwrap_or_else(none),
                p.keepalive.map_or("off".to_owned(), |k| k.to_string()),
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

fn new_peer(allowed_ips: &[&str], endpoint: Option<&str>, keepalive: Option<u16>) -> PeerView {
    PeerView {
        public_key: public_key(&private_key()),
        preshared_key: None,
        endpoint: endpoint.map(str::to_owned),
        allowed_ips: allowed_ips.iter().map(|s| s.to_string()).collect(),
        keepalive,
    }
}

fn kernel() -> Kernel {
    Kernel::debian(MODULES).unwrap_or_else(|e| panic!("prepare the guest kernel: {e:#}"))
}

fn report(test: &str, outcome: &Outcome) {
    eprintln!(
        "{test}: verdict {:?}, boot {:?}, total {:?} (console: {})",
        outcome.verdict,
        outcome.boot_time,
        outcome.total,
        outcome.console_path.display()
    );
}

/// The harness itself, with nothing of ours in the guest: the stock kernel creates a
/// WireGuard link and `wg` configures it exactly as asked.
#[test]
fn guest_kernel_runs_wireguard() {
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
    b_psk.preshared_key = Some(private_key());
    guest
        .share_file("wg0.key", format!("{key}\n"))
        .unwrap()
        .share_file(
            "b.psk",
            format!("{}\n", b_psk.preshared_key.as_ref().unwrap()),
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
    report("guest_kernel_runs_wireguard", &outcome);
    assert!(outcome.passed(), "guest failed:\n{}", outcome.console);
    assert!(outcome.console.contains("WEFT-CHECK wg-show-matches"));
}

/// The verdict channel can say no: a failing script is a failure, not a pass.
#[test]
fn guest_failure_is_reported() {
    require_root();
    let kernel = kernel();
    let guest = Guest::new(&kernel, "wireguard-kernel-negative").unwrap();
    let outcome = guest
        .boot(
            "echo WEFT-BEFORE-FALSE\nfalse\necho WEFT-AFTER-FALSE\n",
            TIMEOUT,
        )
        .unwrap();
    report("guest_failure_is_reported", &outcome);
    assert_eq!(outcome.verdict, Verdict::Fail, "{}", outcome.console);
    assert!(outcome.console.contains("WEFT-BEFORE-FALSE"));
    assert!(
        !outcome.console.contains("WEFT-AFTER-FALSE"),
        "{}",
        outcome.console
    );
}
