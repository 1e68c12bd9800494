//! Shared by the schema crate's integration tests: the golden values, the fixture directory
//! with its bless mode, and the one pipeline every inbound spec goes through.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod json_schema;

use std::path::PathBuf;

use weft_schema::codec::decode_message;
use weft_schema::key::{PublicKey, SecretKey};
use weft_schema::{
    ApplyReply, ApplyResult, Backend, DriftEvent, EgressRule, FirewallSpec, FirewallStatus,
    IngressRule, NetworkSpec, NetworkStatus, Overall, PacketCount, PeerSpec, PeerStatus, PodId,
    PodSpec, PodStatus, Secret, Subsystem, ValidSpec, WireGuardSpec, WireGuardStatus,
};

/// The agent every test spec is addressed to.
pub const POD: &str = "web-1";

pub fn pod() -> PodId {
    PodId::parse(POD).expect("web-1 is a pod id")
}

/// `WEFT_BLESS=1` rewrites checked-in fixtures instead of comparing against them.
pub fn blessing() -> bool {
    std::env::var_os("WEFT_BLESS").is_some_and(|v| v == "1")
}

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_path(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures").join(name)
}

pub fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (WEFT_BLESS=1 cargo test -p weft-schema writes it)",
            path.display()
        )
    })
}

/// Compares `actual` with the checked-in file at `path`, or rewrites the file when blessing.
pub fn check_or_bless(path: &std::path::Path, actual: &[u8]) {
    if blessing() {
        std::fs::write(path, actual)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let stored = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (WEFT_BLESS=1 cargo test -p weft-schema writes it)",
            path.display()
        )
    });
    if stored != actual {
        panic!(
            "{} differs from what the types encode now (a renamed, reordered or retyped field \
             changes the wire; if that is intended, rerun with WEFT_BLESS=1 and say so in the \
             contract):\n stored: {}\n actual: {}",
            path.display(),
            show(&stored),
            show(actual),
        );
    }
}

/// Text as text, anything else as hex, for failure messages.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Everything an inbound spec goes through in the agent: headers, decode, validate. Errors
/// are the one-line texts that end up in `ApplyReply.Error` and `PodStatus.LastError`.
pub fn accept(
    content_type: Option<&str>,
    schema: Option<&str>,
    body: &[u8],
) -> Result<ValidSpec, String> {
    let (_, spec): (_, PodSpec) =
        decode_message(content_type, schema, body).map_err(|e| e.to_line())?;
    ValidSpec::validate(&spec, &pod()).map_err(|e| e.to_string())
}

/// A JSON body without headers, the way most control planes publish.
pub fn accept_json(body: &str) -> Result<ValidSpec, String> {
    accept(None, None, body.as_bytes())
}

/// A distinct, valid public key for every `n`.
pub fn public_key(n: u8) -> String {
    PublicKey([n; 32]).to_base64()
}

/// A distinct, valid private or preshared key for every `n`.
pub fn secret_key(n: u8) -> String {
    SecretKey::from_bytes([n; 32]).expose_base64()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A spec with every field set, including WireGuard.Mtu (our addition to the contract).
pub fn full_spec() -> PodSpec {
    PodSpec {
        pod_id: POD.into(),
        generation: 7,
        not_after_unix: Some(1_763_782_800),
        network: Some(NetworkSpec {
            interface: "eth0".into(),
            address: "192.0.2.5/24".into(),
            gateway: Some("192.0.2.1".into()),
            address6: Some("2001:db8::5/64".into()),
            gateway6: Some("fe80::1".into()),
            mtu: Some(1500),
            nameservers: strings(&["192.0.2.53", "2001:db8::53"]),
            search_domains: strings(&["pods.example", "example.org"]),
        }),
        firewall: Some(FirewallSpec {
            ingress: vec![
                IngressRule {
                    protocol: "tcp".into(),
                    ports: strings(&["22", "8000-8080"]),
                    sources: strings(&["198.51.100.0/24", "2001:db8:1::/48"]),
                    comment: Some("ssh and app".into()),
                },
                IngressRule {
                    protocol: "icmp".into(),
                    ports: vec![],
                    sources: vec![],
                    comment: None,
                },
            ],
            egress: vec![
                EgressRule {
                    protocol: "any".into(),
                    ports: vec![],
                    destinations: strings(&["169.254.169.254/32"]),
                    comment: Some("no metadata".into()),
                },
                EgressRule {
                    protocol: "udp".into(),
                    ports: strings(&["53"]),
                    destinations: strings(&["203.0.113.53"]),
                    comment: None,
                },
            ],
        }),
        wireguard: Some(WireGuardSpec {
            interface: "wg0".into(),
            address: "10.9.0.1/24".into(),
            listen_port: 51821,
            private_key: Some(Secret::new(secret_key(0x11))),
            peers: vec![
                PeerSpec {
                    public_key: public_key(0x21),
                    endpoint: Some("203.0.113.10:51820".into()),
                    allowed_ips: strings(&["10.9.0.2/32"]),
                    persistent_keepalive_seconds: Some(25),
                    preshared_key: Some(Secret::new(secret_key(0x31))),
                },
                PeerSpec {
                    public_key: public_key(0x22),
                    endpoint: Some("[2001:db8::10]:51820".into()),
                    allowed_ips: strings(&["10.9.0.3/32", "2001:db8:9::/64"]),
                    persistent_keepalive_seconds: None,
                    preshared_key: None,
                },
            ],
            mtu: Some(1380),
            default_route: Some(true),
        }),
    }
}

/// Only the required fields.
pub fn minimal_spec() -> PodSpec {
    PodSpec {
        pod_id: POD.into(),
        generation: 1,
        not_after_unix: None,
        network: None,
        firewall: None,
        wireguard: None,
    }
}

/// Before the first spec: nothing managed yet.
pub fn pending_status() -> PodStatus {
    PodStatus {
        pod_id: POD.into(),
        agent_version: "0.1.0".into(),
        observed_generation: 0,
        overall: Overall::Pending,
        last_error: String::new(),
        published_at_unix: 1_763_779_200,
        published_at_unix_ms: 1_763_779_200_123,
        drift_repairs: 0,
        last_drift: None,
        signed_by: None,
        network: None,
        firewall: None,
        wireguard: None,
    }
}

/// All three subsystems and a drift repair. Every number differs from every other of its
/// type, so swapping two fields of the same type changes the bincode bytes.
pub fn healthy_status() -> PodStatus {
    PodStatus {
        pod_id: POD.into(),
        agent_version: "0.1.0".into(),
        observed_generation: 7,
        overall: Overall::Healthy,
        last_error: String::new(),
        published_at_unix: 1_763_779_260,
        published_at_unix_ms: 1_763_779_260_456,
        drift_repairs: 3,
        last_drift: Some(DriftEvent {
            at_unix_ms: 1_763_779_250_789,
            subsystem: Subsystem::Firewall,
            change: "rule added to chain input".into(),
            by: "nft (pid 4242)".into(),
        }),
        signed_by: Some(public_key(9)),
        network: Some(NetworkStatus {
            overall: Overall::Healthy,
            last_error: String::new(),
            interface: "eth0".into(),
            up: true,
            addresses: strings(&["192.0.2.5/24"]),
            gateway: Some("192.0.2.1".into()),
            mtu: 1500,
            addresses6: strings(&["2001:db8::5/64"]),
            gateway6: Some("fe80::1".into()),
        }),
        firewall: Some(FirewallStatus {
            overall: Overall::Healthy,
            last_error: String::new(),
            table_present: true,
            ingress_rules: 3,
            egress_rules: 2,
            ruleset_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            input_dropped: Some(PacketCount {
                packets: 12,
                bytes: 720,
            }),
            egress_dropped: Some(PacketCount {
                packets: 1,
                bytes: 84,
            }),
        }),
        wireguard: Some(WireGuardStatus {
            overall: Overall::Healthy,
            last_error: String::new(),
            backend: Backend::Userspace,
            interface: "wg0".into(),
            public_key: public_key(0x12),
            listen_port: 51821,
            peers: vec![
                PeerStatus {
                    public_key: public_key(0x21),
                    endpoint: Some("203.0.113.10:51820".into()),
                    last_handshake_unix: 1_763_779_190,
                    rx_bytes: 4_096,
                    tx_bytes: 2_048,
                },
                PeerStatus {
                    public_key: public_key(0x22),
                    endpoint: None,
                    last_handshake_unix: 0,
                    rx_bytes: 0,
                    tx_bytes: 148,
                },
            ],
        }),
    }
}

pub fn applied_reply() -> ApplyReply {
    ApplyReply {
        pod_id: POD.into(),
        generation: 7,
        result: ApplyResult::Applied,
        error: String::new(),
        apply_micros: 812,
    }
}

/// The reply to a body that did not decode: generation 0, the agent's own pod id.
pub fn rejected_reply() -> ApplyReply {
    ApplyReply {
        pod_id: POD.into(),
        generation: 0,
        result: ApplyResult::Rejected,
        error: "invalid JSON at Firewall.Ingress[0]: unknown field `Source`".into(),
        apply_micros: 35,
    }
}

/// The host every test host spec is addressed to.
pub const HOST: &str = "host-a";

pub fn host() -> weft_schema::HostId {
    weft_schema::HostId::parse(HOST).expect("host-a is a host id")
}

/// A host spec through what the host agent does with it (headers, decode, validate).
pub fn accept_host(
    content_type: Option<&str>,
    schema: Option<&str>,
    body: &[u8],
) -> Result<weft_schema::ValidHostSpec, String> {
    let (_, spec): (_, weft_schema::HostSpec) =
        decode_message(content_type, schema, body).map_err(|e| e.to_line())?;
    weft_schema::ValidHostSpec::validate(&spec, &host()).map_err(|e| e.to_string())
}

/// A host spec with every field set: a tap and a veth sandbox, one without egress, forwards
/// of both protocols.
pub fn full_host_spec() -> weft_schema::HostSpec {
    use weft_schema::{HostSpec, PortForwardSpec, SandboxSpec};
    HostSpec {
        host_id: HOST.into(),
        generation: 3,
        not_after_unix: Some(1_893_456_000),
        uplink: Some("eth0".into()),
        sandboxes: vec![
            SandboxSpec {
                slot: 7,
                guest: "tap".into(),
                egress: true,
                port_forwards: vec![
                    PortForwardSpec {
                        protocol: "tcp".into(),
                        host_port: 8080,
                        sandbox_port: 80,
                    },
                    PortForwardSpec {
                        protocol: "udp".into(),
                        host_port: 5353,
                        sandbox_port: 53,
                    },
                ],
            },
            SandboxSpec {
                slot: 16_383,
                guest: "veth".into(),
                egress: false,
                port_forwards: vec![PortForwardSpec {
                    protocol: "tcp".into(),
                    host_port: 2222,
                    sandbox_port: 22,
                }],
            },
        ],
    }
}

/// Only the required fields of a host spec.
pub fn minimal_host_spec() -> weft_schema::HostSpec {
    weft_schema::HostSpec {
        host_id: HOST.into(),
        generation: 1,
        not_after_unix: None,
        uplink: None,
        sandboxes: vec![],
    }
}

/// A host before its first spec.
pub fn pending_host_status() -> weft_schema::HostStatus {
    weft_schema::HostStatus {
        host_id: HOST.into(),
        agent_version: "0.1.0".into(),
        observed_generation: 0,
        overall: Overall::Pending,
        last_error: String::new(),
        published_at_unix: 1_763_779_200,
        published_at_unix_ms: 1_763_779_200_123,
        drift_repairs: 0,
        last_drift: None,
        signed_by: None,
        uplink: None,
        forwarding: false,
        sandboxes: vec![],
    }
}

/// A host with two slots, one of them degraded, and a drift repair. Numbers differ from
/// each other so that swapping two fields changes the bincode bytes.
pub fn degraded_host_status() -> weft_schema::HostStatus {
    use weft_schema::{Guest, HostStatus, PortForward, SandboxStatus};
    HostStatus {
        host_id: HOST.into(),
        agent_version: "0.1.0".into(),
        observed_generation: 3,
        overall: Overall::Degraded,
        last_error: "Sandboxes[1]: link weft-v16383 is down".into(),
        published_at_unix: 1_763_779_260,
        published_at_unix_ms: 1_763_779_260_456,
        drift_repairs: 2,
        last_drift: Some(DriftEvent {
            at_unix_ms: 1_763_779_250_789,
            subsystem: Subsystem::Network,
            change: "slot 7: route 10.11.0.7/32 missing".into(),
            by: "ip (pid 4243)".into(),
        }),
        signed_by: Some(public_key(9)),
        uplink: Some("eth0".into()),
        forwarding: true,
        sandboxes: vec![
            SandboxStatus {
                slot: 7,
                namespace: "weft-sb-7".into(),
                guest: Guest::Tap,
                guest_mac: Some("02:fc:00:00:00:05".into()),
                host_ip: "10.11.0.7".into(),
                veth_ip: "10.12.0.14/31".into(),
                vpeer_ip: "10.12.0.15/31".into(),
                guest_ip: "169.254.0.21".into(),
                up: true,
                egress: true,
                port_forwards: vec![PortForward {
                    protocol: "tcp".into(),
                    host_port: 8080,
                    sandbox_port: 80,
                }],
                overall: Overall::Healthy,
                last_error: String::new(),
            },
            SandboxStatus {
                slot: 16_383,
                namespace: "weft-sb-16383".into(),
                guest: Guest::Veth,
                guest_mac: None,
                host_ip: "10.11.63.255".into(),
                veth_ip: "10.12.127.254/31".into(),
                vpeer_ip: "10.12.127.255/31".into(),
                guest_ip: "169.254.0.21".into(),
                up: false,
                egress: false,
                port_forwards: vec![],
                overall: Overall::Degraded,
                last_error: "link weft-v16383 is down".into(),
            },
        ],
    }
}
