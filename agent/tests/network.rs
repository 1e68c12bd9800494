//! The pod network against the real kernel: each test in a fresh namespace with a veth end
//! named eth0, checked with `ip -j` as the independent observer.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weft_agent::dataplane::rtnl::{Family, Route, Rtnl, RTPROT_WEFT};
use weft_agent::dataplane::{link, resolv};
use weft_schema::status::{NetworkStatus, Overall};
use weft_schema::validate::{IfName, Network};
use weft_testkit::observe::{ip_json, ipv4_addrs};
use weft_testkit::{require_root, veth, wait_until, Netns};

/// A pod namespace with `eth0` joined by veth to `eth0` in a peer namespace.
fn pod(tag: &str) -> (Netns, Netns) {
    require_root();
    let pod = Netns::new(tag).expect("create pod namespace");
    let peer = Netns::new(&format!("{tag}-peer")).expect("create peer namespace");
    veth(&pod, "eth0", &peer, "eth0").expect("veth pair");
    (pod, peer)
}

#[test]
fn rtnl_reads_and_changes_links_addresses_and_routes() {
    let (ns, _peer) = pod("rtnl");
    ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        assert_eq!(rt.link("nosuch0").unwrap(), None);
        let eth0 = rt.link("eth0").unwrap().expect("eth0 exists");
        assert_eq!(eth0.kind.as_deref(), Some("veth"));
        assert!(!eth0.up);
        assert!(rt.links().unwrap().iter().any(|l| l.name == "lo"));
        assert_eq!(rt.changes_sent(), 0, "reads are not changes");

        rt.set_link_up(eth0.index).unwrap();
        rt.set_link_mtu(eth0.index, 1400).unwrap();
        let addr = "192.0.2.10/24".parse().unwrap();
        rt.add_address(eth0.index, addr).unwrap();
        let again = rt.add_address(eth0.index, addr).unwrap_err();
        assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");
        let v6 = "2001:db8::10/64".parse().unwrap();
        rt.add_address(eth0.index, v6).unwrap();

        let addrs = rt.addresses(eth0.index).unwrap();
        let ours = addrs.iter().find(|a| a.addr == addr).expect("v4 address");
        assert_eq!(ours.protocol, RTPROT_WEFT);
        assert!(addrs.iter().any(|a| a.addr == v6));

        let default = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            oif: eth0.index,
            metric: 0,
        };
        rt.replace_route(&default).unwrap();
        rt.replace_route(&default).unwrap();
        let routes = rt.routes(Family::V4).unwrap();
        let defaults: Vec<_> = routes.iter().filter(|r| r.dst.prefix_len() == 0).collect();
        assert_eq!(defaults.len(), 1, "{routes:?}");
        assert_eq!(defaults[0].gateway, default.gateway);
        assert_eq!(defaults[0].protocol, RTPROT_WEFT);
        assert_eq!(rt.changes_sent(), 7);

        let eth0 = rt.link("eth0").unwrap().unwrap();
        assert!(eth0.up);
        assert_eq!(eth0.mtu, 1400);
    });

    let link = ip_json(&ns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(link[0]["mtu"], 1400);
    let route = ip_json(&ns, &["route", "show", "default"]).unwrap();
    assert_eq!(route[0]["gateway"], "192.0.2.1");
    assert_eq!(route[0]["protocol"], "87");

    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let eth0 = rt.link("eth0").unwrap().unwrap();
        rt.delete_address(eth0.index, "192.0.2.10/24".parse().unwrap())
            .unwrap();
        let gone = rt
            .delete_address(eth0.index, "192.0.2.10/24".parse().unwrap())
            .unwrap_err();
        assert!(gone.errno().is_some(), "{gone:?}");
        // The connected prefix went with the address, and the default route with it.
        assert!(!rt
            .routes(Family::V4)
            .unwrap()
            .iter()
            .any(|r| r.dst.prefix_len() == 0));
    });
}

#[test]
fn rtnl_delete_route_spares_other_protocols_and_reports_missing_kind() {
    let (ns, _peer) = pod("rtnl-del");
    ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "198.51.100.1",
        "proto",
        "static",
    ])
    .unwrap();
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let eth0 = rt.link("eth0").unwrap().unwrap();
        let foreign = Route {
            dst: "203.0.113.0/24".parse().unwrap(),
            gateway: Some("198.51.100.1".parse().unwrap()),
            oif: eth0.index,
            metric: 0,
        };
        let e = rt.delete_route(&foreign).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ESRCH), "{e}");

        // No kernel here has a link kind by this name.
        let e = rt.create_link("weftx0", "no-such-kind").unwrap_err();
        assert!(e.errno().is_some(), "{e:?}");
        assert_eq!(rt.link("weftx0").unwrap(), None);
    });
    let routes = ip_json(&ns, &["route", "show", "203.0.113.0/24"]).unwrap();
    assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
}

// ---- the pod network (issue 4) ----

fn spec(address: &str, gateway: Option<&str>, mtu: Option<u32>) -> Network {
    Network {
        interface: IfName::parse("eth0").unwrap(),
        address: address.parse().unwrap(),
        gateway: gateway.map(|g| g.parse().unwrap()),
        address6: None,
        gateway6: None,
        mtu,
        nameservers: Vec::new(),
        search_domains: Vec::new(),
    }
}

/// Applies `desired` in `ns` on a fresh socket; returns the result and the change requests
/// the socket sent.
fn apply_in(ns: &Netns, desired: &Network) -> (Result<usize, link::Error>, u64) {
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let result = link::apply(&mut rt, desired);
        (result, rt.changes_sent())
    })
}

fn observe_in(ns: &Netns, desired: &Network) -> NetworkStatus {
    ns.enter(|| link::observe(&mut Rtnl::open().unwrap(), desired))
}

fn ipv4_of(ns: &Netns, dev: &str) -> Vec<String> {
    let mut v = ipv4_addrs(ns, dev).unwrap();
    v.sort();
    v
}

/// `ip -j route show default` as (gateway, dev, protocol, metric) tuples.
fn defaults(ns: &Netns) -> Vec<(String, String, String, u64)> {
    let routes = ip_json(ns, &["-4", "route", "show", "default"]).unwrap();
    routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or("").to_owned(),
                r["dev"].as_str().unwrap_or("").to_owned(),
                r["protocol"].as_str().unwrap_or("").to_owned(),
                r["metric"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn defaults_of(gw: &str, protocol: &str, metric: u64) -> (String, String, String, u64) {
    (gw.into(), "eth0".into(), protocol.into(), metric)
}

#[test]
fn apply_matches_the_spec_and_a_second_apply_sends_no_change() {
    let (ns, _peer) = pod("net-apply");
    ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let desired = spec("192.0.2.10/24", Some("192.0.2.1"), Some(1400));

    let (result, sent) = apply_in(&ns, &desired);
    assert_eq!(result.unwrap(), 4, "mtu, up, address, route");
    assert_eq!(sent, 4);

    let link = ip_json(&ns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(link[0]["mtu"], 1400);
    let flags = link[0]["flags"].as_array().unwrap();
    assert!(flags.iter().any(|f| f == "UP"), "{flags:?}");
    assert_eq!(ipv4_of(&ns, "eth0"), vec!["192.0.2.10/24"]);
    assert_eq!(defaults(&ns), vec![defaults_of("192.0.2.1", "87", 0)]);

    let (result, sent) = apply_in(&ns, &desired);
    assert_eq!(result.unwrap(), 0);
    assert_eq!(sent, 0, "a converged link must see no change request");

    let status = observe_in(&ns, &desired);
    assert_eq!(status.overall, Overall::Healthy, "{}", status.last_error);
    assert_eq!(status.interface, "eth0");
    assert!(status.up);
    assert_eq!(status.addresses, vec!["192.0.2.10/24"]);
    assert_eq!(status.gateway.as_deref(), Some("192.0.2.1"));
    assert_eq!(status.mtu, 1400);
}

#[test]
fn the_spec_address_is_the_only_ipv4_address_and_foreign_objects_elsewhere_stay() {
    let (ns, _peer) = pod("net-addr");
    let other = Netns::new("net-addr-other").unwrap();
    veth(&ns, "eth1", &other, "eth0").unwrap();
    // The pod's previous life (or the VMM's kernel command line): a stale address on eth0,
    // added before the agent by someone else. Elsewhere, someone else's address on eth1 and
    // a route that is not a default route.
    ns.ip(&["addr", "add", "192.0.2.200/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&["addr", "add", "198.51.100.9/24", "dev", "eth1"])
        .unwrap();
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "198.51.100.1",
        "proto",
        "static",
    ])
    .unwrap();
    let eth1_before = ip_json(&ns, &["addr", "show", "eth1"]).unwrap();
    let route_before = ip_json(&ns, &["route", "show", "203.0.113.0/24"]).unwrap();

    let first = spec("192.0.2.10/24", Some("192.0.2.1"), None);
    apply_in(&ns, &first).0.unwrap();
    assert_eq!(
        ipv4_of(&ns, "eth0"),
        vec!["192.0.2.10/24"],
        "the stale address is gone: one source address"
    );
    assert_eq!(
        ip_json(&ns, &["addr", "show", "eth1"]).unwrap(),
        eth1_before
    );
    assert_eq!(
        ip_json(&ns, &["route", "show", "203.0.113.0/24"]).unwrap(),
        route_before
    );
    assert_eq!(defaults(&ns), vec![defaults_of("192.0.2.1", "87", 0)]);
    let status = observe_in(&ns, &first);
    assert_eq!(status.overall, Overall::Healthy, "{}", status.last_error);

    // Someone else's address on eth0 later, and a route on eth0 that is not a default one:
    // the address goes (the status says so until then), the route stays.
    ns.ip(&["addr", "add", "192.0.2.201/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&[
        "route",
        "add",
        "233.252.0.0/24",
        "via",
        "192.0.2.1",
        "proto",
        "static",
    ])
    .unwrap();
    let status = observe_in(&ns, &first);
    assert_eq!(status.overall, Overall::Degraded);
    assert_eq!(status.last_error, "stale address 192.0.2.201/24 on eth0");
    let second = spec("192.0.2.11/24", Some("192.0.2.1"), None);
    apply_in(&ns, &second).0.unwrap();
    assert_eq!(ipv4_of(&ns, "eth0"), vec!["192.0.2.11/24"]);
    let foreign = ip_json(&ns, &["route", "show", "233.252.0.0/24"]).unwrap();
    assert_eq!(foreign[0]["protocol"], "static", "{foreign}");
    assert_eq!(defaults(&ns), vec![defaults_of("192.0.2.1", "87", 0)]);
    assert_eq!(
        ip_json(&ns, &["addr", "show", "eth1"]).unwrap(),
        eth1_before
    );

    // Into another subnet: the old subnet's routes go with its address; the agent puts its
    // default route back through the new one.
    let third = spec("198.51.100.7/24", Some("198.51.100.1"), None);
    apply_in(&ns, &third).0.unwrap();
    assert_eq!(ipv4_of(&ns, "eth0"), vec!["198.51.100.7/24"]);
    assert_eq!(defaults(&ns), vec![defaults_of("198.51.100.1", "87", 0)]);
    let status = observe_in(&ns, &third);
    assert_eq!(status.overall, Overall::Healthy, "{}", status.last_error);
    assert_eq!(apply_in(&ns, &third).1, 0);
}

#[test]
fn loopback_answers_after_the_first_apply() {
    let (ns, _peer) = pod("net-lo");
    // A fresh network namespace has lo down (the testkit brings it up for convenience).
    ns.ip(&["link", "set", "lo", "down"]).unwrap();
    let refused = ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .map(|_| ())
    });
    assert!(refused.is_err(), "127.0.0.1 with lo down: {refused:?}");
    let desired = spec("192.0.2.10/24", None, None);
    apply_in(&ns, &desired).0.unwrap();
    ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    });
    let status = observe_in(&ns, &desired);
    assert_eq!(status.overall, Overall::Healthy, "{}", status.last_error);
    ns.ip(&["link", "set", "lo", "down"]).unwrap();
    let status = observe_in(&ns, &desired);
    assert_eq!(status.last_error, "lo is down");
    assert_eq!(apply_in(&ns, &desired).1, 1, "only lo");
}

#[test]
fn a_new_gateway_replaces_the_route_and_no_gateway_removes_only_the_agents() {
    let (ns, _peer) = pod("net-gw");
    apply_in(&ns, &spec("192.0.2.10/24", Some("192.0.2.1"), None))
        .0
        .unwrap();
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.0.2.77",
        "metric",
        "100",
        "proto",
        "static",
    ])
    .unwrap();

    let (result, sent) = apply_in(&ns, &spec("192.0.2.10/24", Some("192.0.2.254"), None));
    assert_eq!(result.unwrap(), 1);
    assert_eq!(sent, 1, "one replace, nothing else");
    assert_eq!(
        defaults(&ns),
        vec![
            defaults_of("192.0.2.254", "87", 0),
            defaults_of("192.0.2.77", "static", 100)
        ]
    );

    apply_in(&ns, &spec("192.0.2.10/24", None, None)).0.unwrap();
    assert_eq!(
        defaults(&ns),
        vec![defaults_of("192.0.2.77", "static", 100)]
    );
}

#[test]
fn a_foreign_default_route_at_metric_zero_is_replaced_per_the_contract() {
    let (ns, _peer) = pod("net-gw-foreign");
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.0.2.99",
        "proto",
        "static",
    ])
    .unwrap();
    apply_in(&ns, &spec("192.0.2.10/24", Some("192.0.2.1"), None))
        .0
        .unwrap();
    assert_eq!(defaults(&ns), vec![defaults_of("192.0.2.1", "87", 0)]);
    // The address was already there (added by someone else): kept, not re-added.
    assert_eq!(ipv4_of(&ns, "eth0"), vec!["192.0.2.10/24"]);
}

/// A client in the pod connected to a server in the peer namespace, over the pod address.
struct Conversation {
    client: TcpStream,
    server: TcpStream,
}

impl Conversation {
    fn open(pod: &Netns, peer: &Netns) -> Conversation {
        let listener = peer.enter(|| TcpListener::bind("192.0.2.1:0").unwrap());
        let port = listener.local_addr().unwrap().port();
        let client = pod.enter(|| TcpStream::connect(("192.0.2.1", port)).unwrap());
        let (server, from) = listener.accept().unwrap();
        assert_eq!(from.ip().to_string(), "192.0.2.10");
        let c = Conversation { client, server };
        c.exchange("hello");
        c
    }

    /// One message each way on the same connection.
    fn exchange(&self, text: &str) {
        for s in [&self.client, &self.server] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        (&self.client).write_all(text.as_bytes()).unwrap();
        let mut buf = vec![0; text.len()];
        (&self.server).read_exact(&mut buf).unwrap();
        assert_eq!(buf, text.as_bytes());
        (&self.server).write_all(text.as_bytes()).unwrap();
        (&self.client).read_exact(&mut buf).unwrap();
        assert_eq!(buf, text.as_bytes());
    }
}

#[test]
fn a_tcp_connection_survives_a_reapply_and_an_mtu_change() {
    let (ns, peer) = pod("net-tcp");
    peer.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])
        .unwrap();
    let desired = spec("192.0.2.10/24", Some("192.0.2.1"), Some(1500));
    apply_in(&ns, &desired).0.unwrap();
    let index_before = ip_json(&ns, &["link", "show", "eth0"]).unwrap()[0]["ifindex"].clone();

    let talk = Conversation::open(&ns, &peer);
    let (result, sent) = apply_in(&ns, &desired);
    assert_eq!((result.unwrap(), sent), (0, 0));
    talk.exchange("after a re-apply");

    let smaller = spec("192.0.2.10/24", Some("192.0.2.1"), Some(1400));
    let (result, sent) = apply_in(&ns, &smaller);
    assert_eq!((result.unwrap(), sent), (1, 1), "only the mtu changes");
    talk.exchange("after an mtu change");
    assert_eq!(
        ip_json(&ns, &["link", "show", "eth0"]).unwrap()[0]["mtu"],
        1400
    );
    assert_eq!(
        ip_json(&ns, &["link", "show", "eth0"]).unwrap()[0]["ifindex"],
        index_before
    );
}

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("weft-net-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_resolver_file_is_complete_and_never_seen_half_written() {
    let dir = Scratch::new("resolv");
    let path = dir.0.join("resolv.conf");
    let a: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap()];
    let b: Vec<IpAddr> = vec![
        "198.51.100.53".parse().unwrap(),
        "203.0.113.53".parse().unwrap(),
        "2001:db8::53".parse().unwrap(),
    ];
    let search: Vec<String> = vec!["pods.local".into(), "svc.cluster.local".into()];

    assert!(resolv::write(&path, &a, &search).unwrap());
    let old = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        old,
        format!(
            "{}\nnameserver 192.0.2.53\nsearch pods.local svc.cluster.local\n",
            resolv::HEADER
        )
    );
    assert!(!resolv::write(&path, &a, &search).unwrap(), "same content");
    assert!(resolv::write(&path, &b, &search).unwrap());
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(new.starts_with("# Managed by weft-agent"));
    assert!(new.contains("nameserver 2001:db8::53\n"));

    let done = AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let seen = std::fs::read_to_string(&path).expect("the file always exists");
                assert!(seen == old || seen == new, "torn read: {seen:?}");
                reads += 1;
            }
            reads
        });
        for i in 0..1_000 {
            let servers = if i % 2 == 0 { &a } else { &b };
            assert!(resolv::write(&path, servers, &search).unwrap());
        }
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(
        reads > 100,
        "the reader ran alongside the writer ({reads} reads)"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
    let leftovers = std::fs::read_dir(&dir.0).unwrap().count();
    assert_eq!(leftovers, 1, "no temporary file is left behind");
}

#[test]
fn a_missing_interface_is_a_clear_error_and_a_degraded_status() {
    let (ns, _peer) = pod("net-missing");
    let mut desired = spec("192.0.2.10/24", None, None);
    desired.interface = IfName::parse("eth9").unwrap();
    let (result, sent) = apply_in(&ns, &desired);
    assert_eq!(
        result.unwrap_err().to_string(),
        "interface eth9 does not exist"
    );
    assert_eq!(sent, 0);
    let status = observe_in(&ns, &desired);
    assert_eq!(status.overall, Overall::Degraded);
    assert_eq!(status.last_error, "interface eth9 does not exist");
    assert_eq!(status.interface, "eth9");
}

#[test]
fn an_address_held_by_another_interface_is_refused_and_the_rest_applied() {
    let (ns, _peer) = pod("net-conflict");
    let other = Netns::new("net-conflict-other").unwrap();
    veth(&ns, "eth1", &other, "eth0").unwrap();
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth1"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "down"]).unwrap();

    let desired = spec("192.0.2.10/24", None, Some(1400));
    let err = apply_in(&ns, &desired).0.unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 192.0.2.10/24 is already on interface eth1, not adding it to eth0"
    );
    let link = ip_json(&ns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(link[0]["mtu"], 1400, "the mtu is still applied");
    assert!(link[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "UP"));
    assert_eq!(ipv4_of(&ns, "eth0"), Vec::<String>::new());
    assert_eq!(ipv4_of(&ns, "eth1"), vec!["192.0.2.10/24"]);

    let status = observe_in(&ns, &desired);
    assert_eq!(status.overall, Overall::Degraded);
    assert!(status.last_error.contains("eth1"), "{}", status.last_error);
}

#[test]
fn an_unreachable_gateway_is_a_clear_error_and_the_rest_applied() {
    let (ns, _peer) = pod("net-unreach");
    let desired = spec("192.0.2.10/24", Some("203.0.113.1"), Some(1400));
    let err = apply_in(&ns, &desired).0.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("replace default route via 203.0.113.1 on eth0: "),
        "{text}"
    );
    match &err {
        link::Error::Incomplete { failures, .. } => {
            assert_eq!(failures.len(), 1);
            match &failures[0] {
                link::Failure::Change { cause, .. } => {
                    assert_eq!(cause.errno(), Some(libc::ENETUNREACH), "{cause}")
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ipv4_of(&ns, "eth0"), vec!["192.0.2.10/24"]);
    assert_eq!(
        ip_json(&ns, &["link", "show", "eth0"]).unwrap()[0]["mtu"],
        1400
    );
    assert_eq!(defaults(&ns), vec![]);

    let status = observe_in(&ns, &desired);
    assert_eq!(status.overall, Overall::Degraded);
    assert!(
        status
            .last_error
            .contains("no default route, want via 203.0.113.1 on eth0"),
        "{}",
        status.last_error
    );
}

/// The agent's sockets opened inside a namespace from a thread that is not in it (as the
/// host role will, one set per sandbox): they act there and only there, and the nftables
/// socket owns the table it creates there.
#[test]
fn sockets_opened_inside_a_namespace_act_there() {
    use weft_agent::dataplane::firewall::{render, Firewall};
    use weft_agent::dataplane::Sockets;
    let (ns, _peer) = pod("sockin");
    let path = PathBuf::from(format!("/run/netns/{}", ns.name()));
    let sockets = Sockets::open_in(&path).unwrap();
    let mut rtnl = sockets.rtnl;
    let eth0 = rtnl.link("eth0").unwrap().expect("eth0 is seen from here");
    rtnl.add_address(eth0.index, "192.0.2.44/24".parse().unwrap())
        .unwrap();
    assert_eq!(ipv4_addrs(&ns, "eth0").unwrap(), vec!["192.0.2.44/24"]);
    // Not in the namespace of the thread that asked.
    assert!(!ipv4_addrs_here_contain("192.0.2.44"));
    let mut fw = Firewall::new(sockets.nft);
    let ruleset = render(&Default::default(), None);
    assert!(fw.apply(&ruleset).unwrap());
    assert!(ns.run("nft", &["list", "table", "inet", "weft-fw"]).is_ok());
    let err = ns
        .run(
            "nft",
            &["add", "rule", "inet", "weft-fw", "input", "accept"],
        )
        .err();
    if fw.owned() {
        assert!(
            err.is_some(),
            "the table is owned by the socket opened inside"
        );
    }
    let bad = Sockets::open_in(std::path::Path::new("/run/netns/weft-no-such-namespace"));
    assert!(bad
        .unwrap_err()
        .to_string()
        .starts_with("enter network namespace /run/netns/weft-no-such-namespace"));
}

/// Whether the calling thread's namespace has `addr` on any link (`ip -j addr` there).
fn ipv4_addrs_here_contain(addr: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-j", "addr"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(addr)
}

// ---- dual stack (issue 12) ----

use std::net::{Ipv6Addr, SocketAddr};
use weft_agent::dataplane::{Dataplane, Settings};
use weft_schema::validate::ValidSpec;
use weft_schema::{PodId, PodSpec};
use weft_testkit::wireguard::NsThread;

/// The whole dataplane on a thread in `ns` (its firewall table is owned by its socket, so
/// the thread keeps it), with a scratch state directory and resolver file.
fn dataplane_in(ns: &Netns, dir: &Scratch) -> NsThread<Dataplane> {
    let settings = Settings {
        state_dir: dir.0.join("state"),
        resolv_conf: dir.0.join("resolv.conf"),
        wireguard: weft_agent::dataplane::wireguard::Mode::Userspace,
        firewall_at_start: weft_agent::config::FirewallAtStart::Kept,
    };
    std::fs::create_dir_all(&settings.state_dir).unwrap();
    NsThread::spawn(ns, move || Dataplane::open(&settings).unwrap())
}

fn valid(spec: serde_json::Value) -> ValidSpec {
    let wire: PodSpec = serde_json::from_value(spec).unwrap();
    ValidSpec::validate(&wire, &PodId::parse(&wire.pod_id).unwrap()).unwrap()
}

/// Waits until no namespace holds a tentative IPv6 address.
fn settled(namespaces: &[&Netns]) {
    wait_until(Duration::from_secs(5), "no tentative IPv6 address", || {
        for ns in namespaces {
            let t = ip_json(ns, &["-6", "addr", "show", "tentative"]).map_err(|e| e.to_string())?;
            if t.as_array().is_some_and(|a| !a.is_empty()) {
                return Err(t.to_string());
            }
        }
        Ok(())
    });
}

fn ping6(ns: &Netns, dst: &str) -> bool {
    ns.run("ping", &["-6", "-c", "1", "-W", "2", "-q", dst])
        .is_ok()
}

/// A TCP connection from `from` to `to`, one message each way; `Err` when it cannot connect
/// within a second.
fn talk(from: &Netns, to: SocketAddr) -> std::io::Result<()> {
    from.enter(|| {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"hi")?;
        let mut buf = [0; 2];
        c.read_exact(&mut buf)?;
        assert_eq!(&buf, b"hi");
        Ok(())
    })
}

/// Echoes one message on every connection, until the test ends.
fn echo_server(ns: &Netns, at: &str) -> SocketAddr {
    let listener = ns.enter(|| TcpListener::bind(at).unwrap());
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0; 2];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    addr
}

/// pod (eth0) -- router (fe80::1, 2001:db8:1::1 | 2001:db8:2::1 | 2001:db8:3::1) -- peer
/// (2001:db8:2::2) and stranger (2001:db8:3::3). Every static address `nodad`, so none is
/// tentative when the test starts.
#[test]
fn dual_stack_reaches_a_peer_through_the_gateway_and_the_firewall_admits_only_the_allowed_source() {
    require_root();
    let pod = Netns::new("ds-pod").unwrap();
    let router = Netns::new("ds-router").unwrap();
    let peer = Netns::new("ds-peer").unwrap();
    let stranger = Netns::new("ds-stranger").unwrap();
    veth(&pod, "eth0", &router, "topod").unwrap();
    veth(&peer, "eth0", &router, "topeer").unwrap();
    veth(&stranger, "eth0", &router, "tostr").unwrap();
    router
        .run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    for (ns, dev, addr) in [
        (&router, "topod", "fe80::1/64"),
        (&router, "topod", "2001:db8:1::1/64"),
        (&router, "topeer", "2001:db8:2::1/64"),
        (&router, "tostr", "2001:db8:3::1/64"),
        (&peer, "eth0", "2001:db8:2::2/64"),
        (&stranger, "eth0", "2001:db8:3::3/64"),
    ] {
        ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])
            .unwrap();
    }
    peer.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])
        .unwrap();
    stranger
        .ip(&["-6", "route", "add", "default", "via", "2001:db8:3::1"])
        .unwrap();

    let dir = Scratch::new("dual-stack");
    let dp = dataplane_in(&pod, &dir);
    let spec = valid(serde_json::json!({
        "PodId": "ds", "Generation": 1,
        "Network": { "Interface": "eth0", "Address": "192.0.2.10/24",
                     "Address6": "2001:db8:1::10/64", "Gateway6": "fe80::1" },
        "Firewall": { "Ingress": [
            { "Protocol": "tcp", "Ports": ["8080"], "Sources": ["2001:db8:2::2"] } ] }
    }));
    let s = spec.clone();
    let failures = dp.run(move |d| d.apply(&s).len());
    assert_eq!(failures, 0);
    let s = spec.clone();
    let observed = dp.run(move |d| d.observe(&s));
    let net = observed.network.clone().unwrap();
    assert_eq!(net.overall, Overall::Healthy, "{}", net.last_error);
    assert_eq!(net.addresses6, vec!["2001:db8:1::10/64"]);
    assert_eq!(net.gateway6.as_deref(), Some("fe80::1"));
    let route = ip_json(&pod, &["-6", "route", "show", "default"]).unwrap();
    assert_eq!(route[0]["gateway"], "fe80::1", "{route}");
    assert_eq!(route[0]["protocol"], "87", "{route}");
    // The kernel's link-local address stays beside the agent's global one.
    let addrs = ip_json(&pod, &["-6", "addr", "show", "eth0"]).unwrap();
    assert!(addrs.to_string().contains("\"scope\":\"link\""), "{addrs}");

    // The kernel's own link-local addresses go through duplicate address detection first;
    // until then neighbour discovery between the namespaces can stall.
    settled(&[&pod, &router, &peer, &stranger]);

    // Out through the gateway: ping and TCP (replies come back as established).
    assert!(ping6(&pod, "2001:db8:2::2"), "ping through the gateway");
    let at_peer = echo_server(&peer, "[2001:db8:2::2]:0");
    talk(&pod, at_peer).expect("pod -> peer over TCP");

    // In: the allowed source on the allowed port, and nothing else.
    let allowed = echo_server(&pod, "[::]:8080");
    let other_port = echo_server(&pod, "[::]:8081");
    let pod6: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
    let to = |port: u16| SocketAddr::from((pod6, port));
    talk(&peer, to(allowed.port())).expect("the allowed source is admitted");
    assert!(
        talk(&stranger, to(allowed.port())).is_err(),
        "another source"
    );
    assert!(talk(&peer, to(other_port.port())).is_err(), "another port");

    // Neighbour discovery under policy drop: forget every neighbour, then again.
    for ns in [&pod, &router, &peer] {
        ns.ip(&["-6", "neigh", "flush", "all"]).unwrap();
    }
    assert!(
        ping6(&pod, "2001:db8:2::2"),
        "after the neighbour caches were flushed"
    );
    talk(&peer, to(allowed.port())).expect("admitted after the flush too");
    let neigh = ip_json(&router, &["-6", "neigh", "show", "dev", "topod"]).unwrap();
    assert!(
        neigh.to_string().contains("2001:db8:1::10"),
        "the router resolved the pod: {neigh}"
    );
    drop(dp);
}
