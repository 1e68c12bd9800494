//! WireGuard against the real kernel and a real boringtun device: pods are namespaces, each
//! with a manager on its own thread in that namespace; `wg`, `ip -j` and `ping` observe.
//!
//! Interface names are unique per test process and test (`/var/run/wireguard` is per host).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_agent::dataplane::error_line;
use weft_agent::dataplane::netlink::genl::Genl;
use weft_agent::dataplane::rtnl::Rtnl;
use weft_agent::dataplane::subsystem::Subsystem;
use weft_agent::dataplane::wireguard::keys::{self, KEY_FILE};
use weft_agent::dataplane::wireguard::userspace;
use weft_agent::dataplane::wireguard::{Mode, WireGuardManager};
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::validate::{IfName, Peer, WireGuard};
use weft_schema::{Backend, Overall, WireGuardStatus};
use weft_testkit::observe::{ip_json, wg_dump};
use weft_testkit::wireguard::NsThread;
use weft_testkit::{require_root, veth, wait_until, Netns};

static IFNAMES: AtomicU32 = AtomicU32::new(0);

/// `wgt<pid%1000><n>`: unique across parallel tests and concurrent test processes.
fn ifname() -> String {
    let n = IFNAMES.fetch_add(1, Ordering::Relaxed);
    format!("wgt{}x{n}", std::process::id() % 100_000)
}

fn temp_state_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "weft-wg-{tag}-{}-{}",
        std::process::id(),
        IFNAMES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A manager and its rtnetlink socket, living on a thread in a pod's namespace.
struct Agent {
    rtnl: Rtnl,
    wg: WireGuardManager,
}

type Pod = NsThread<Agent>;

fn agent(ns: &Netns, mode: Mode, state_dir: &std::path::Path) -> Pod {
    let dir = state_dir.to_owned();
    NsThread::spawn(ns, move || Agent {
        rtnl: Rtnl::open().expect("open rtnetlink"),
        wg: WireGuardManager::new(mode, &dir, Genl::open().expect("open generic netlink")),
    })
}

fn apply(pod: &Pod, spec: Option<&WireGuard>) -> Result<(), String> {
    let spec = spec.cloned();
    pod.run(move |a| {
        a.wg.prepare(spec.as_ref())
            .and_then(|()| a.wg.apply(&mut a.rtnl, &spec))
            .map_err(|e| error_line(&e))
    })
}

fn observe(pod: &Pod, spec: Option<&WireGuard>) -> Option<WireGuardStatus> {
    let spec = spec.cloned();
    pod.run(move |a| a.wg.observe(&mut a.rtnl, &spec))
}

fn peer(key: PublicKey, endpoint: Option<&str>, allowed: &[&str]) -> Peer {
    Peer {
        public_key: key,
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
        persistent_keepalive: None,
        preshared_key: None,
    }
}

fn device(ifname: &str, address: &str, port: u16, key: &SecretKey, peers: Vec<Peer>) -> WireGuard {
    WireGuard {
        interface: IfName::parse(ifname).unwrap(),
        address: address.parse().unwrap(),
        listen_port: port,
        private_key: Some(key.clone()),
        peers,
        mtu: 1420,
        default_route: None,
    }
}

/// The `WireGuard` section of a `PodSpec` in its wire form, decoded and validated as the
/// agent does it (defaults included: the MTU is left to default to 1420).
fn from_wire(section: serde_json::Value) -> WireGuard {
    let spec: weft_schema::spec::PodSpec = serde_json::from_value(serde_json::json!({
        "PodId": "wg-pod",
        "Generation": 1,
        "WireGuard": section,
    }))
    .expect("decode PodSpec");
    let pod = weft_schema::subject::PodId::parse("wg-pod").unwrap();
    weft_schema::validate::ValidSpec::validate(&spec, &pod)
        .expect("valid spec")
        .wireguard
        .expect("a WireGuard section")
}

/// Two pods joined through a router namespace:
/// `a` 192.0.2.2/24 -- router -- 198.51.100.2/24 `b`.
struct Topology {
    a: Netns,
    b: Netns,
    _router: Netns,
}

fn topology(tag: &str) -> Topology {
    require_root();
    let a = Netns::new(&format!("{tag}a")).unwrap();
    let b = Netns::new(&format!("{tag}b")).unwrap();
    let router = Netns::new(&format!("{tag}r")).unwrap();
    veth(&a, "eth0", &router, "toa").unwrap();
    veth(&b, "eth0", &router, "tob").unwrap();
    router
        .ip(&["addr", "add", "192.0.2.1/24", "dev", "toa"])
        .unwrap();
    router
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "tob"])
        .unwrap();
    router
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    a.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .unwrap();
    a.ip(&["route", "add", "default", "via", "192.0.2.1"])
        .unwrap();
    b.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])
        .unwrap();
    b.ip(&["route", "add", "default", "via", "198.51.100.1"])
        .unwrap();
    Topology {
        a,
        b,
        _router: router,
    }
}

fn ping_ok(ns: &Netns, dst: &str) -> bool {
    ns.run("ping", &["-c", "1", "-W", "1", "-q", dst]).is_ok()
}

/// A ping running in the background, killed (by pid) if the test ends early.
struct PingRun(Option<Child>);

impl PingRun {
    fn start(ns: &Netns, dst: &str, count: u32, interval: &str) -> PingRun {
        let child = ns
            .command("ping")
            .args([
                "-q",
                "-n",
                "-i",
                interval,
                "-W",
                "1",
                "-c",
                &count.to_string(),
                dst,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        PingRun(Some(child))
    }

    /// (transmitted, received)
    fn finish(mut self) -> (u32, u32) {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
        let nums: Vec<u32> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .take(2)
            .map(|s| s.parse().unwrap())
            .collect();
        (nums[0], nums[1])
    }
}

impl Drop for PingRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn link_exists(ns: &Netns, ifname: &str) -> bool {
    ns.ip(&["link", "show", "dev", ifname]).is_ok()
}

/// Waits for a stopped userspace device's TUN interface to go.
///
/// The kernel removes a TUN interface when the last descriptor of it closes. boringtun
/// opens `/dev/net/tun` without `O_CLOEXEC`; the agent marks it close-on-exec right after,
/// but a process forked in between (here: another test's `ip`, running in parallel) keeps a
/// copy until it exits. The agent itself starts no processes, so in the test binary alone the
/// interface may outlive the stop by the life of such a child: milliseconds.
fn wait_link_gone(ns: &Netns, ifname: &str, what: &str) {
    wait_until(Duration::from_secs(5), what, || {
        if link_exists(ns, ifname) {
            Err(format!("{ifname} still exists"))
        } else {
            Ok(())
        }
    });
}

#[test]
fn userspace_overlay_carries_traffic_and_follows_peer_changes_without_loss() {
    let t = topology("wgov");
    let state = temp_state_dir("ov");
    let (if_a, if_b) = (ifname(), ifname());
    let (key_a, key_b) = (keys::generate(), keys::generate());
    let (pub_a, pub_b) = (keys::public_key(&key_a), keys::public_key(&key_b));
    let spec_a = from_wire(serde_json::json!({
        "Interface": if_a, "Address": "10.77.0.1/24", "ListenPort": 51820,
        "PrivateKey": key_a.expose_base64(),
        "Peers": [{ "PublicKey": pub_b.to_base64(), "Endpoint": "198.51.100.2:51821",
                    "AllowedIps": ["10.77.0.2/32"] }]
    }));
    let spec_b = from_wire(serde_json::json!({
        "Interface": if_b, "Address": "10.77.0.2/24", "ListenPort": 51821,
        "PrivateKey": key_b.expose_base64(),
        "Peers": [{ "PublicKey": pub_a.to_base64(), "Endpoint": "192.0.2.2:51820",
                    "AllowedIps": ["10.77.0.1/32"] }]
    }));
    assert_eq!(spec_a.mtu, 1420, "the validated default");
    let pod_a = agent(&t.a, Mode::Userspace, &state.0);
    let pod_b = agent(&t.b, Mode::Userspace, &state.0);
    apply(&pod_a, Some(&spec_a)).unwrap();
    apply(&pod_b, Some(&spec_b)).unwrap();

    // The link as the spec wants it, seen by `ip -j`.
    let link = ip_json(&t.a, &["link", "show", "dev", &if_a]).unwrap();
    assert_eq!(link[0]["mtu"], 1420);
    assert!(link[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "UP"));
    let addrs = ip_json(&t.a, &["addr", "show", "dev", &if_a]).unwrap();
    let local: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(
        local,
        ["10.77.0.1/24"],
        "the overlay address is the only global one"
    );
    let routes = ip_json(&t.a, &["route", "show", "dev", &if_a]).unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.77.0.0/24"),
        "connected route: {routes}"
    );

    // Traffic crosses the overlay.
    wait_until(Duration::from_secs(10), "ping over the overlay", || {
        ping_ok(&t.a, "10.77.0.2")
            .then_some(())
            .ok_or("no reply".to_owned())
    });

    // `wg` (wireguard-tools) reads our socket and sees exactly the spec's peers.
    let dump = wg_dump(&t.a, &if_a).unwrap();
    assert_eq!(dump[0][2], "51820", "listen port in {dump:?}");
    assert_eq!(dump.len(), 2, "one peer in {dump:?}");
    assert_eq!(dump[1][0], pub_b.to_base64());
    assert_eq!(dump[1][2], "198.51.100.2:51821");
    assert_eq!(dump[1][3], "10.77.0.2/32");
    // The latest handshake is a time (boringtun's elapsed seconds are translated for `wg`).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let handshake: u64 = dump[1][4].parse().unwrap();
    assert!(handshake > now - 60 && handshake <= now + 1, "{dump:?}");
    assert!(
        dump[1][5].parse::<u64>().unwrap() > 0,
        "rx bytes in {dump:?}"
    );

    // The status: read from the device, healthy, with the handshake and byte counts.
    let st = observe(&pod_a, Some(&spec_a)).unwrap();
    assert_eq!(st.overall, Overall::Healthy, "{}", st.last_error);
    assert_eq!(st.backend, Backend::Userspace);
    assert_eq!(st.public_key, pub_a.to_base64());
    assert_eq!(st.listen_port, 51820);
    assert_eq!(st.peers.len(), 1);
    let p = &st.peers[0];
    assert!(
        p.last_handshake_unix > now - 60 && p.last_handshake_unix <= now + 1,
        "{p:?}"
    );
    assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
    assert_eq!(p.endpoint.as_deref(), Some("198.51.100.2:51821"));
    assert!(!format!("{st:?}").contains(&key_a.expose_base64()));

    // A third peer arrives, then its allowed IPs change, while A pings B: nothing is lost,
    // because peer B is never touched.
    let third = keys::public_key(&keys::generate());
    let ping = PingRun::start(&t.a, "10.77.0.2", 60, "0.05");
    std::thread::sleep(Duration::from_millis(300));
    let mut spec_a2 = spec_a.clone();
    spec_a2
        .peers
        .push(peer(third, Some("203.0.113.9:51820"), &["10.77.0.3/32"]));
    apply(&pod_a, Some(&spec_a2)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut spec_a3 = spec_a2.clone();
    spec_a3.peers[1].allowed_ips = vec![
        "10.77.0.3/32".parse().unwrap(),
        "10.77.3.0/24".parse().unwrap(),
    ];
    apply(&pod_a, Some(&spec_a3)).unwrap();
    // The changed peer was removed and re-added in one request: the device neither panicked
    // nor hangs, and it reports the new allowed IPs.
    let (sent, received) = ping.finish();
    assert_eq!((sent, received), (60, 60), "pings lost during peer updates");
    let dump = wg_dump(&t.a, &if_a).unwrap();
    assert_eq!(dump.len(), 3, "{dump:?}");
    let third_line = dump.iter().find(|l| l[0] == third.to_base64()).unwrap();
    assert_eq!(third_line[3], "10.77.0.3/32,10.77.3.0/24");
    let st = observe(&pod_a, Some(&spec_a3)).unwrap();
    assert_eq!(st.overall, Overall::Healthy, "{}", st.last_error);
    assert_eq!(st.peers.len(), 2);

    // Changing the live peer B (keepalive, allowed IPs) does not wedge the device either.
    let mut spec_a4 = spec_a3.clone();
    spec_a4.peers[0].persistent_keepalive = Some(5);
    spec_a4.peers[0]
        .allowed_ips
        .push("10.77.9.0/24".parse().unwrap());
    apply(&pod_a, Some(&spec_a4)).unwrap();
    assert_eq!(
        observe(&pod_a, Some(&spec_a4)).unwrap().overall,
        Overall::Healthy
    );
    wait_until(
        Duration::from_secs(10),
        "ping after changing the peer",
        || {
            ping_ok(&t.a, "10.77.0.2")
                .then_some(())
                .ok_or("no reply".to_owned())
        },
    );
    // A re-apply of the same spec sends nothing and keeps it healthy.
    apply(&pod_a, Some(&spec_a4)).unwrap();

    // `wg set` through our socket is refused: the agent owns the device.
    let refused =
        t.a.run("wg", &["set", &if_a, "peer", &third.to_base64(), "remove"]);
    assert!(refused.is_err());
    assert_eq!(wg_dump(&t.a, &if_a).unwrap().len(), 3);

    // Removing peer B stops its traffic, both ways.
    let mut spec_a5 = spec_a4.clone();
    spec_a5.peers.remove(0);
    apply(&pod_a, Some(&spec_a5)).unwrap();
    assert!(!ping_ok(&t.a, "10.77.0.2"));
    assert!(!ping_ok(&t.b, "10.77.0.1"));
    let dump = wg_dump(&t.a, &if_a).unwrap();
    assert_eq!(dump.len(), 2);
    assert_eq!(dump[1][0], third.to_base64());

    // Dropping the section removes the interface and its socket.
    apply(&pod_a, None).unwrap();
    wait_link_gone(&t.a, &if_a, "dropping the section to remove the interface");
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{if_a}.sock")).exists());
    assert_eq!(observe(&pod_a, None), None);
    // B still runs until its pod goes; then its interface goes with it.
    assert!(link_exists(&t.b, &if_b));
    drop(pod_b);
    wait_link_gone(&t.b, &if_b, "B's interface to go with its pod");
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{if_b}.sock")).exists());
}

#[test]
fn a_generated_key_is_kept_and_survives_a_restart() {
    require_root();
    let ns = Netns::new("wgkey").unwrap();
    let state = temp_state_dir("key");
    let ifn = ifname();
    let mut spec = device(&ifn, "10.78.0.1/24", 51830, &keys::generate(), vec![]);
    spec.private_key = None;

    let first = agent(&ns, Mode::Userspace, &state.0);
    // A read never writes the key: before an apply there is none, and the status says so.
    let before = observe(&first, Some(&spec)).unwrap();
    assert_eq!(before.overall, Overall::Degraded);
    assert!(
        before.last_error.contains("no private key"),
        "{}",
        before.last_error
    );
    assert!(!state.0.join(KEY_FILE).exists(), "observe wrote a key file");
    apply(&first, Some(&spec)).unwrap();
    let st = observe(&first, Some(&spec)).unwrap();
    assert_eq!(st.overall, Overall::Healthy, "{}", st.last_error);
    drop(first);
    wait_link_gone(&ns, &ifn, "shutdown to remove the userspace interface");

    use std::os::unix::fs::PermissionsExt;
    let path = state.0.join(KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = SecretKey::parse(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
    assert_eq!(st.public_key, keys::public_key(&stored).to_base64());
    assert!(!format!("{st:?}").contains(&stored.expose_base64()));

    let second = agent(&ns, Mode::Userspace, &state.0);
    apply(&second, Some(&spec)).unwrap();
    let again = observe(&second, Some(&spec)).unwrap();
    assert_eq!(again.public_key, st.public_key, "same key after a restart");
}

/// Collects the log lines the manager emits on its thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn auto_mode_falls_back_to_userspace_and_says_why() {
    require_root();
    let ns = Netns::new("wgauto").unwrap();
    let state = temp_state_dir("auto");
    let ifn = ifname();
    let key = keys::generate();
    let spec = device(&ifn, "10.79.0.1/24", 51840, &key, vec![]);
    let logs = Captured::default();
    let sink = logs.clone();
    let dir = state.0.clone();
    // The subscriber is installed on the pod's thread for its whole life.
    let pod: NsThread<(Agent, tracing::subscriber::DefaultGuard)> =
        NsThread::spawn(&ns, move || {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || sink.clone())
                .finish();
            let guard = tracing::subscriber::set_default(subscriber);
            (
                Agent {
                    rtnl: Rtnl::open().unwrap(),
                    wg: WireGuardManager::new(
                        Mode::Auto,
                        &dir,
                        Genl::open().expect("open generic netlink"),
                    ),
                },
                guard,
            )
        });
    let s = spec.clone();
    let (backend, reason, status) = pod.run(move |(a, _)| {
        let s = Some(s);
        a.wg.prepare(s.as_ref())
            .and_then(|()| a.wg.apply(&mut a.rtnl, &s))
            .map_err(|e| error_line(&e))
            .unwrap();
        let st = a.wg.observe(&mut a.rtnl, &s).unwrap();
        (
            a.wg.backend(),
            a.wg.fallback_reason().map(str::to_owned),
            st,
        )
    });
    assert_eq!(backend, Some(Backend::Userspace));
    assert_eq!(status.backend, Backend::Userspace);
    assert_eq!(status.overall, Overall::Healthy, "{}", status.last_error);
    let reason = reason.expect("a fallback reason");
    assert!(reason.contains("Operation not supported"), "{reason}");
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("falling back to userspace"))
        .unwrap_or_else(|| panic!("no fallback warning in:\n{log}"));
    assert!(warning.contains("Operation not supported"), "{warning}");
    assert_eq!(log.matches("falling back").count(), 1, "warned once");
    // Secrets stay out of the log, in both encodings.
    assert!(!log.contains(&key.expose_base64()));
    assert!(!log.contains(&hex::encode(key.expose())));
    drop(pod);
    wait_link_gone(&ns, &ifn, "the stopped device's interface to go");
}

#[test]
fn kernel_mode_without_kernel_wireguard_names_what_failed() {
    require_root();
    let ns = Netns::new("wgkern").unwrap();
    let state = temp_state_dir("kern");
    let ifn = ifname();
    let spec = device(&ifn, "10.80.0.1/24", 51850, &keys::generate(), vec![]);
    let pod = agent(&ns, Mode::Kernel, &state.0);
    let err = apply(&pod, Some(&spec)).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "create wireguard interface {ifn}: Operation not supported"
        )),
        "{err}"
    );
    let st = observe(&pod, Some(&spec)).unwrap();
    assert_eq!(st.overall, Overall::Degraded);
    assert_eq!(st.backend, Backend::Kernel);
    assert!(!link_exists(&ns, &ifn));
}

#[test]
fn observe_reports_outside_changes_to_the_link() {
    require_root();
    let ns = Netns::new("wgdrift").unwrap();
    let state = temp_state_dir("drift");
    let ifn = ifname();
    let spec = device(&ifn, "10.81.0.1/24", 51860, &keys::generate(), vec![]);
    let pod = agent(&ns, Mode::Userspace, &state.0);
    apply(&pod, Some(&spec)).unwrap();
    ns.ip(&["addr", "del", "10.81.0.1/24", "dev", &ifn])
        .unwrap();
    ns.ip(&["link", "set", &ifn, "mtu", "1380"]).unwrap();
    let st = observe(&pod, Some(&spec)).unwrap();
    assert_eq!(st.overall, Overall::Degraded);
    assert!(
        st.last_error.contains("has mtu 1380, want 1420"),
        "{}",
        st.last_error
    );
    assert!(
        st.last_error.contains("address 10.81.0.1/24 is missing on"),
        "{}",
        st.last_error
    );
    apply(&pod, Some(&spec)).unwrap();
    let st = observe(&pod, Some(&spec)).unwrap();
    assert_eq!(st.overall, Overall::Healthy, "{}", st.last_error);

    // Deleting the interface outright: the orphaned device is replaced on the next apply.
    ns.ip(&["link", "del", &ifn]).unwrap();
    let st = observe(&pod, Some(&spec)).unwrap();
    assert_eq!(st.overall, Overall::Degraded);
    apply(&pod, Some(&spec)).unwrap();
    let st = observe(&pod, Some(&spec)).unwrap();
    assert_eq!(st.overall, Overall::Healthy, "{}", st.last_error);
    assert!(wg_dump(&ns, &ifn).is_ok(), "wg reaches the new device");
}

/// The generic netlink path of the kernel backend, exercised as far as this host allows:
/// the `wireguard` family exists exactly when the kernel can create a wireguard link.
#[test]
fn kernel_genl_family_lookup_matches_the_link_probe() {
    require_root();
    let ns = Netns::new("wggenl").unwrap();
    let ifn = ifname();
    let (probe, lookup) = ns.enter(|| {
        let mut rtnl = Rtnl::open().unwrap();
        let probe = rtnl.create_link(&ifn, "wireguard").map_err(|e| e.errno());
        let lookup = weft_agent::dataplane::wireguard::kernel::family(&mut Genl::open().unwrap());
        (probe, lookup.map(drop).map_err(|e| error_line(&e)))
    });
    match probe {
        Ok(()) => assert!(lookup.is_ok(), "{lookup:?}"),
        Err(errno) => {
            assert_eq!(errno, Some(libc::EOPNOTSUPP));
            let err = lookup.unwrap_err();
            assert!(
                err.starts_with("look up the wireguard genl family: No such file or directory"),
                "{err}"
            );
        }
    }
}

/// Runs `wg show <if>` in `ns`, killed if it takes longer than `limit`; its stdout.
fn wg_show_within(ns: &Netns, ifn: &str, limit: Duration) -> Result<String, String> {
    let mut child = ns
        .command("wg")
        .args(["show", ifn])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return if status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            };
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("wg show did not answer within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One slow or hostile client of the control socket delays no one and grows no memory: a
/// client that connects and never sends, and one that sends a megabyte without a newline,
/// are both there while `wg show` answers within a second; the megabyte is cut off at the
/// request bound (the server closes the connection); the silent one is closed at its
/// deadline.
#[test]
fn the_control_socket_serves_wg_beside_silent_and_flooding_clients() {
    use std::os::unix::net::UnixStream;
    require_root();
    let ns = Netns::new("wguapi").unwrap();
    let state = temp_state_dir("uapi");
    let ifn = ifname();
    let key = keys::generate();
    let spec = device(&ifn, "10.82.0.1/24", 51870, &key, vec![]);
    let pod = agent(&ns, Mode::Userspace, &state.0);
    apply(&pod, Some(&spec)).unwrap();
    let path = format!("/var/run/wireguard/{ifn}.sock");

    let silent = UnixStream::connect(&path).unwrap();
    let flooder = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&vec![b'x'; 1 << 20])
        })
    };
    // Both are connected (the flooder is writing) while wg asks, twice.
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..2 {
        let shown = wg_show_within(&ns, &ifn, Duration::from_secs(1)).unwrap();
        assert!(shown.contains("listening port: 51870"), "{shown}");
    }
    let flooded = flooder.join().unwrap();
    assert!(
        flooded.is_err(),
        "the server read a megabyte without a newline instead of closing at its bound"
    );
    // The silent client is closed at its deadline, not kept forever.
    silent
        .set_read_timeout(Some(userspace::CLIENT_DEADLINE * 3))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = (&silent)
        .read(&mut buf)
        .expect("closed at the deadline, not timed out");
    assert_eq!(n, 0);
    // And a set from outside is refused, with the device untouched.
    let mut setter = UnixStream::connect(&path).unwrap();
    setter.write_all(b"set=1\nlisten_port=1\n\n").unwrap();
    let mut reply = String::new();
    setter.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("errno={}\n\n", libc::EPERM));
    assert!(wg_show_within(&ns, &ifn, Duration::from_secs(1))
        .unwrap()
        .contains("listening port: 51870"));
}

/// The control socket is never reachable with a mode other than 0600: its name appears by a
/// rename of a socket that already has that mode (never by a bind in the public directory,
/// which would create it with the umask's mode until a chmod), as an inotify watch on the
/// directory sees; and no staging directory is left behind.
#[test]
fn the_control_socket_has_mode_0600_from_the_moment_it_exists() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let ns = Netns::new("wgmode").unwrap();
    let state = temp_state_dir("mode");
    let ifn = ifname();
    let spec = device(&ifn, "10.83.0.1/24", 51871, &keys::generate(), vec![]);
    std::fs::create_dir_all("/var/run/wireguard").unwrap();
    // SAFETY: inotify_init1 has no memory preconditions; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor this test owns (closed by File's drop).
    let mut events = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let dir = std::ffi::CString::new("/var/run/wireguard").unwrap();
    // SAFETY: `dir` is NUL-terminated and outlives the call.
    let wd =
        unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO) };
    assert!(wd >= 0);
    let name = format!("{ifn}.sock");
    let watcher = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = events.read(&mut buf).unwrap();
            let mut at = 0;
            while at + 16 <= n {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let raw = &buf[at + 16..at + 16 + len];
                let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                if &raw[..end] == name.as_bytes() {
                    // Stat at once: the first moment anyone could connect.
                    let path = format!("/var/run/wireguard/{name}");
                    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
                    return (mask, mode);
                }
                at += 16 + len;
            }
        }
    });
    let pod = agent(&ns, Mode::Userspace, &state.0);
    apply(&pod, Some(&spec)).unwrap();
    let (how, mode) = watcher.join().unwrap();
    assert_eq!(
        how & (libc::IN_CREATE | libc::IN_MOVED_TO),
        libc::IN_MOVED_TO,
        "the name must appear by rename"
    );
    assert_eq!(mode, 0o600);
    let staging: Vec<_> = std::fs::read_dir("/var/run/wireguard")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_bytes()
                .starts_with(format!(".weft-{}-", std::process::id()).as_bytes())
        })
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
}

// ---- routes for allowed IPs, DefaultRoute (issue 12) ----

/// `ip -j route show <args>` in `ns`.
fn routes(ns: &Netns, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["route", "show"];
    a.extend_from_slice(args);
    ip_json(ns, &a)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The (dev, gateway) of the route the kernel takes to `dst`.
fn route_to(ns: &Netns, dst: &str) -> (String, String) {
    let r = &ip_json(ns, &["route", "get", dst]).unwrap()[0];
    let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
    (s("dev"), s("gateway"))
}

/// The (dev, gateway, protocol) of each route to `dst` in the main table.
fn routes_of(ns: &Netns, dst: &str) -> Vec<(String, String, String)> {
    routes(ns, &[dst])
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            (s("dev"), s("gateway"), s("protocol"))
        })
        .collect()
}

/// Pod A runs the whole dataplane (Network, firewall, WireGuard) like the agent; peer B is a
/// WireGuard gateway with a subnet behind it (10.78.0.0/24, in its own namespace) that only
/// the tunnel reaches. A's peer entry for B decides what goes through the tunnel.
#[test]
fn allowed_ips_get_routes_and_default_route_takes_the_pods_traffic_through_the_tunnel() {
    use weft_agent::dataplane::{Dataplane, Settings};
    use weft_schema::Subsystem;
    let t = topology("wgrt");
    // The subnet behind B.
    let behind = Netns::new("wgrtl").unwrap();
    veth(&t.b, "lan0", &behind, "eth0").unwrap();
    t.b.ip(&["addr", "add", "10.78.0.1/24", "dev", "lan0"])
        .unwrap();
    t.b.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    behind
        .ip(&["addr", "add", "10.78.0.2/24", "dev", "eth0"])
        .unwrap();
    behind
        .ip(&["route", "add", "default", "via", "10.78.0.1"])
        .unwrap();
    assert!(
        !ping_ok(&t.a, "10.78.0.2"),
        "not reachable outside the tunnel"
    );
    // A's default route is its Network's, set by the agent.
    t.a.ip(&["route", "del", "default"]).unwrap();

    let state = temp_state_dir("rt");
    let (if_a, if_b) = (ifname(), ifname());
    let (key_a, key_b) = (keys::generate(), keys::generate());
    let (pub_a, pub_b) = (keys::public_key(&key_a), keys::public_key(&key_b));
    let spec_b = from_wire(serde_json::json!({
        "Interface": if_b, "Address": "10.79.0.2/24", "ListenPort": 51831,
        "PrivateKey": key_b.expose_base64(),
        "Peers": [{ "PublicKey": pub_a.to_base64(), "Endpoint": "192.0.2.2:51830",
                    "AllowedIps": ["10.79.0.1/32"] }]
    }));
    let pod_b = agent(&t.b, Mode::Userspace, &state.0);
    apply(&pod_b, Some(&spec_b)).unwrap();

    let spec_a = |generation: u64, allowed: &[&str], default_route: bool, peers: bool| {
        let peers = if peers {
            serde_json::json!([{ "PublicKey": pub_b.to_base64(),
                "Endpoint": "198.51.100.2:51831", "AllowedIps": allowed }])
        } else {
            serde_json::json!([])
        };
        let wire: weft_schema::PodSpec = serde_json::from_value(serde_json::json!({
            "PodId": "wgrt", "Generation": generation,
            "Network": { "Interface": "eth0", "Address": "192.0.2.2/24", "Gateway": "192.0.2.1" },
            "WireGuard": { "Interface": if_a, "Address": "10.79.0.1/24", "ListenPort": 51830,
                "PrivateKey": key_a.expose_base64(), "DefaultRoute": default_route,
                "Peers": peers }
        }))
        .unwrap();
        let pod = weft_schema::subject::PodId::parse("wgrt").unwrap();
        weft_schema::validate::ValidSpec::validate(&wire, &pod).unwrap()
    };
    let dir = state.0.join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let settings = Settings {
        state_dir: dir.clone(),
        resolv_conf: dir.join("resolv.conf"),
        wireguard: Mode::Userspace,
        firewall_at_start: weft_agent::config::FirewallAtStart::Kept,
    };
    let pod_a = NsThread::spawn(&t.a, move || Dataplane::open(&settings).unwrap());
    let apply_a = |spec: &weft_schema::validate::ValidSpec| {
        let s = spec.clone();
        let failures = pod_a.run(move |d| {
            d.apply(&s)
                .iter()
                .map(|f| format!("{:?}: {}", f.subsystem, error_line(&f.error)))
                .collect::<Vec<_>>()
        });
        assert!(failures.is_empty(), "{failures:?}");
        let s = spec.clone();
        let observed = pod_a.run(move |d| d.observe(&s));
        assert!(observed.degraded().is_empty(), "{:?}", observed.degraded());
        observed
    };
    let through_tunnel = |what: &str| {
        wait_until(Duration::from_secs(10), what, || {
            ping_ok(&t.a, "10.78.0.2")
                .then_some(())
                .ok_or("no reply".to_owned())
        })
    };

    // 1. A subnet behind the peer: routed via the tunnel (agent-owned), answers a ping.
    let g1 = spec_a(1, &["10.79.0.2/32", "10.78.0.0/24"], false, true);
    apply_a(&g1);
    let r = routes(&t.a, &["10.78.0.0/24"]);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (&r[0]["dev"], &r[0]["protocol"]),
        (&serde_json::json!(if_a), &serde_json::json!("87"))
    );
    assert!(
        routes(&t.a, &["10.79.0.2/32"]).is_empty(),
        "inside the overlay prefix: the connected route serves"
    );
    through_tunnel("ping the subnet behind the peer");

    // Drift of that route: reported under WireGuard, repaired by re-applying it alone.
    t.a.ip(&["route", "del", "10.78.0.0/24"]).unwrap();
    let g = g1.clone();
    let observed = pod_a.run(move |d| d.observe(&g));
    let degraded = observed.degraded();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert_eq!(degraded[0].0, Subsystem::WireGuard);
    assert!(
        degraded[0].1.contains("no route to 10.78.0.0/24"),
        "{}",
        degraded[0].1
    );
    let g = g1.clone();
    assert!(pod_a
        .run(move |d| d.apply_one(Subsystem::WireGuard, &g))
        .is_empty());
    assert_eq!(routes(&t.a, &["10.78.0.0/24"]).len(), 1);

    // 2. A peer allowing 0.0.0.0/0 takes no default route without DefaultRoute.
    let g2 = spec_a(
        2,
        &["10.79.0.2/32", "10.78.0.0/24", "0.0.0.0/0"],
        false,
        true,
    );
    apply_a(&g2);
    assert_eq!(
        routes_of(&t.a, "default"),
        [("eth0".into(), "192.0.2.1".into(), "87".into())]
    );

    // 3. DefaultRoute: the pod's traffic goes through the tunnel (the subnet is reached by the
    // default route alone now), the endpoint via the old gateway.
    let g3 = spec_a(3, &["10.79.0.2/32", "0.0.0.0/0"], true, true);
    apply_a(&g3);
    assert_eq!(route_to(&t.a, "203.0.113.9"), (if_a.clone(), String::new()));
    assert_eq!(route_to(&t.a, "10.78.0.2").0, if_a);
    assert_eq!(
        route_to(&t.a, "198.51.100.2"),
        ("eth0".into(), "192.0.2.1".into())
    );
    assert_eq!(
        routes_of(&t.a, "default"),
        [(if_a.clone(), String::new(), "87".into())],
        "the tunnel's replaced the pod's"
    );
    assert_eq!(
        routes_of(&t.a, "198.51.100.2"),
        [("eth0".into(), "192.0.2.1".into(), "87".into())]
    );
    let rx_before = wg_dump(&t.a, &if_a).unwrap()[1][5].parse::<u64>().unwrap();
    through_tunnel("ping through the tunnel's default route");
    let rx_after = wg_dump(&t.a, &if_a).unwrap()[1][5].parse::<u64>().unwrap();
    assert!(rx_after > rx_before, "the reply came through the tunnel");

    // 4. Dropping DefaultRoute: the Network default route is back, the endpoint route gone.
    apply_a(&g2);
    assert_eq!(
        routes_of(&t.a, "default"),
        [("eth0".into(), "192.0.2.1".into(), "87".into())]
    );
    assert!(
        routes(&t.a, &["198.51.100.2/32"]).is_empty(),
        "endpoint route removed"
    );
    assert!(routes(&t.a, &["proto", "87", "dev", &if_a])
        .iter()
        .all(|r| r["dst"] != "default"));

    // 5. Removing the peer removes its routes.
    let g5 = spec_a(5, &[], false, false);
    apply_a(&g5);
    let left: Vec<_> = routes(&t.a, &["dev", &if_a]);
    assert_eq!(left.len(), 1, "only the connected route: {left:?}");
    assert_eq!(left[0]["dst"], "10.79.0.0/24");
    assert!(!ping_ok(&t.a, "10.78.0.2"));
    drop(pod_a);
    drop(pod_b);
}

/// boringtun 0.7.1 registers each UDP socket's clone with its event loop but, when the
/// listen port changes (the first `listen_port=` of every device: it starts on a random
/// port), removes the event by the original's descriptor number, indexing a table sized by
/// the highest registered descriptor. When another thread frees a lower descriptor between
/// the socket and its clone, the original's number is past the table's end and the device's
/// worker panics mid-change. Other threads of the agent open and close descriptors at any
/// time (NATS, the metrics server); here a thread does it as fast as it can while devices are
/// made and configured again and again.
#[test]
fn devices_configure_while_other_threads_open_and_close_descriptors() {
    require_root();
    let ns = Netns::new("wgfd").unwrap();
    let state = temp_state_dir("fd");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let held: Vec<std::fs::File> = (0..8)
                    .filter_map(|_| std::fs::File::open("/dev/null").ok())
                    .collect();
                drop(held);
            }
        })
    };
    let mut failures = Vec::new();
    for round in 0..40 {
        let ifn = ifname();
        let spec = device(&ifn, "10.82.0.1/24", 51870, &keys::generate(), vec![]);
        let pod = agent(&ns, Mode::Userspace, &state.0);
        if let Err(e) = apply(&pod, Some(&spec)) {
            failures.push(format!("round {round}: {e}"));
        }
        drop(pod);
        wait_link_gone(&ns, &ifn, "the device's interface to go");
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}
