//! The pod network against the real kernel: each test in a fresh namespace with a veth end
//! named eth0, checked with `ip -j` as the independent observer.

use weft_agent::dataplane::rtnl::{Family, Route, Rtnl, RTPROT_WEFT};
use weft_testkit::observe::ip_json;
use weft_testkit::{require_root, veth, Netns};

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
