//! The decoders of what the kernel and `wg` clients send, as the fuzz targets of `agent/fuzz`
//! call them: one function per target, each fed arbitrary bytes. They must never panic, and
//! what they decode must satisfy the invariants checked here (a panic is a finding). The
//! unit tests below run each on real seeds, which `.ci/fuzz` also writes out as the starting
//! corpus (`WEFT_FUZZ_SEEDS=<dir>`).

use super::firewall::{self, ruleset_of};
use super::netlink::messages;
use super::nftables::{self, batch::rule_message, events::Decoder, expr::Expr};
use super::rtnl::{addr, events, link, route};
use super::wireguard::plan::ObservedDevice;
use super::wireguard::{kernel, uapi, userspace};

/// nf_tables messages as a dump or a batch carries them: tables, chains, rules (and their
/// expressions), set elements, the firewall's ruleset. A ruleset made only of rules this
/// agent writes encodes back to itself, and every expression re-encodes to itself.
pub fn nft_dump(data: &[u8]) {
    for msg in messages(data) {
        let _ = msg.ack();
        let _ = nftables::genid_of(&msg);
        let _ = nftables::table_of(&msg, firewall::TABLE);
        let _ = nftables::chain_of(&msg, firewall::TABLE);
        let mut elements = Vec::new();
        nftables::elements_of(&msg, &mut elements);
        if let Some(rule) = nftables::rule_of(&msg, firewall::TABLE) {
            // libnftnl writes every expression it knows by name; those it does not are left
            // out.
            let bytes = rule_message(firewall::TABLE_REF, &rule.chain, &rule.exprs, None, None);
            let again = messages(&bytes)
                .next()
                .and_then(|m| nftables::rule_of(&m, firewall::TABLE))
                .expect("one rule");
            let known: Vec<&Expr> = rule.exprs.iter().filter(|e| e.writable()).collect();
            assert_eq!(
                again.exprs.iter().collect::<Vec<_>>(),
                known,
                "an expression did not re-encode to itself"
            );
        }
    }
    let ruleset = ruleset_of(data);
    let _ = ruleset.hash();
    if !ruleset.has_foreign() {
        let again = ruleset_of(&firewall::replace_batch(&ruleset));
        assert_eq!(
            again, ruleset,
            "a decoded ruleset did not re-encode to itself"
        );
    }
}

/// `NFNLGRP_NFTABLES` notifications, whole and split in two datagrams.
pub fn nft_events(data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut whole = Decoder::new(firewall::TABLE_REF);
    let mut parts = Decoder::new(firewall::TABLE_REF);
    for t in whole
        .feed(data)
        .into_iter()
        .chain(parts.feed(&data[..split]))
        .chain(parts.feed(&data[split..]))
    {
        assert!(!t.changes.is_empty() && t.changes.len() <= 64);
        let _ = t.by();
    }
}

/// rtnetlink answers: links, addresses, routes, and the ends of answers.
pub fn rtnl_dump(data: &[u8]) {
    for msg in messages(data) {
        let _ = msg.ack();
        if let Some(l) = link::parse(&msg) {
            assert!(!l.name.contains('\0'));
        }
        let _ = addr::parse(&msg);
        let _ = route::parse(&msg);
    }
}

/// rtnetlink notifications.
pub fn rtnl_events(data: &[u8]) {
    assert!(events::changes(data).count() <= messages(data).count());
}

/// Generic netlink answers to `WG_CMD_GET_DEVICE` (a device over several messages).
pub fn genl_reply(data: &[u8]) {
    let mut device = ObservedDevice::default();
    for msg in messages(data) {
        let _ = msg.ack();
        if kernel::parse_device_message(&msg, &mut device).is_err() {
            return;
        }
    }
    for p in &device.peers {
        assert!(p.allowed_ips.iter().all(|n| *n == n.trunc()));
    }
}

/// A `get=1` reply from the device, and what a `wg` client sends the socket we serve.
pub fn uapi_get(data: &[u8]) {
    let _ = userspace::request(data);
    let _ = uapi::reply_complete(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let elapsed = uapi::parse_get(text, uapi::HandshakeClock::Elapsed { now_unix: 1 << 31 });
    let rewritten = uapi::handshake_elapsed_to_epoch(text, std::time::Duration::from_secs(1 << 31));
    let epoch = uapi::parse_get(&rewritten, uapi::HandshakeClock::SinceEpoch);
    // Rewriting handshake times changes nothing else a reader sees.
    match (elapsed, epoch) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.public_key, b.public_key);
            assert_eq!(a.listen_port, b.listen_port);
            let keys =
                |d: &ObservedDevice| d.peers.iter().map(|p| p.public_key).collect::<Vec<_>>();
            assert_eq!(keys(&a), keys(&b));
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("the rewrite changed whether the reply parses: {a:?} / {b:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::firewall::render;
    use crate::dataplane::netlink::message::NLMSG_HDRLEN;
    use crate::dataplane::rtnl::{Family, Route};
    use crate::dataplane::wireguard::plan::{self, tests as wg};
    use neli::consts::rtnl::Rtm;
    use weft_schema::validate::{Firewall, PortRange, Protocol, Rule};

    /// Requests turned into the answers of the same layout (`NEW*` instead of the request).
    fn as_answer(mut d: Vec<u8>, ty: u16) -> Vec<u8> {
        d[4..6].copy_from_slice(&ty.to_ne_bytes());
        d
    }

    fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        let fw = Firewall {
            ingress: vec![Rule {
                protocol: Protocol::Tcp,
                ports: vec![
                    PortRange {
                        first: 22,
                        last: 22,
                    },
                    PortRange {
                        first: 80,
                        last: 90,
                    },
                ],
                v4: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "192.0.2.7/32".parse().unwrap(),
                ],
                v6: vec!["2001:db8::/32".parse().unwrap()],
                comment: Some("seed".into()),
            }],
            egress: vec![Rule {
                protocol: Protocol::Any,
                ports: vec![],
                v4: vec!["169.254.169.254/32".parse().unwrap()],
                v6: vec![],
                comment: None,
            }],
        };
        let batch = firewall::replace_batch(&render(&fw, Some(51820)));
        let mut rtnl = Vec::new();
        rtnl.extend(as_answer(
            link::create_request("wg0", "wireguard", 1),
            Rtm::Newlink.into(),
        ));
        rtnl.extend(as_answer(
            addr::add_request(2, "192.0.2.5/24".parse().unwrap(), 2),
            Rtm::Newaddr.into(),
        ));
        let default = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            oif: 2,
            metric: 0,
        };
        rtnl.extend(as_answer(
            route::replace_request(&default, 3),
            Rtm::Newroute.into(),
        ));
        rtnl.extend(route::dump_request(Family::V6, 4));
        let mut spec = wg::spec(vec![
            wg::peer(1, &["10.9.0.2/32", "2001:db8::/64"]),
            wg::peer(2, &[]),
        ]);
        spec.peers[0].endpoint = Some("192.0.2.1:51820".parse().unwrap());
        let key = spec.private_key.clone().unwrap();
        let genl: Vec<u8> = kernel::render_set(
            0x1c,
            "wg0",
            &plan::plan(&spec, &key, &ObservedDevice::default()),
            1,
            1024,
        )
        .iter()
        .flat_map(|d| d.to_vec())
        .collect();
        let get = format!(
            "own_public_key={}\nlisten_port=51820\npublic_key={}\nendpoint=192.0.2.1:51820\n\
             allowed_ip=10.9.0.2/32\nlast_handshake_time_sec=7\nlast_handshake_time_nsec=1\n\
             rx_bytes=1\ntx_bytes=2\nerrno=0\n\n",
            hex::encode([1; 32]),
            hex::encode([2; 32])
        );
        assert!(rtnl.len() > NLMSG_HDRLEN);
        vec![
            ("nft_dump", "batch", batch.clone()),
            ("nft_events", "batch", batch),
            ("rtnl_dump", "answers", rtnl.clone()),
            ("rtnl_events", "answers", rtnl),
            ("genl_reply", "set", genl),
            ("uapi_get", "reply", get.into_bytes()),
            ("uapi_get", "request", b"get=1\n\n".to_vec()),
        ]
    }

    /// Every target on its seeds; with `WEFT_FUZZ_SEEDS=<dir>`, the seeds are also written to
    /// `<dir>/<target>/<name>` as the fuzzer's starting corpus.
    #[test]
    fn every_target_takes_its_seeds() {
        let out = std::env::var_os("WEFT_FUZZ_SEEDS").map(std::path::PathBuf::from);
        for (target, name, bytes) in seeds() {
            match target {
                "nft_dump" => nft_dump(&bytes),
                "nft_events" => nft_events(&bytes),
                "rtnl_dump" => rtnl_dump(&bytes),
                "rtnl_events" => rtnl_events(&bytes),
                "genl_reply" => genl_reply(&bytes),
                "uapi_get" => uapi_get(&bytes),
                other => panic!("no target {other}"),
            }
            // Truncated and bit-flipped copies too: a cheap taste of what the fuzzer does.
            for cut in [
                1,
                bytes.len() / 3,
                bytes.len() / 2,
                bytes.len().saturating_sub(1),
            ] {
                let mut b = bytes[..cut.min(bytes.len())].to_vec();
                if let Some(x) = b.last_mut() {
                    *x ^= 0x55;
                }
                match target {
                    "nft_dump" => nft_dump(&b),
                    "nft_events" => nft_events(&b),
                    "rtnl_dump" => rtnl_dump(&b),
                    "rtnl_events" => rtnl_events(&b),
                    "genl_reply" => genl_reply(&b),
                    _ => uapi_get(&b),
                }
            }
            if let Some(dir) = &out {
                let dir = dir.join(target);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(name), &bytes).unwrap();
            }
        }
    }
}
