//! The last status of every pod and host, and what an operator reads from it: one [`Row`]
//! per pod (the columns of CONTRACT.md v1.1 "weftctl status") and one [`HostRow`] per host,
//! stale when the status is older than three status intervals (an agent publishes at least
//! once an interval, so three missed ones mean it, or the way to it, is gone).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use weft_schema::{HostStatus, Overall, PodStatus};

use crate::HOST_KEY;

/// How many intervals without a status make a pod stale.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// The newest status of each pod and host.
#[derive(Debug, Clone)]
pub struct Fleet {
    interval: Duration,
    pods: BTreeMap<String, PodStatus>,
    hosts: BTreeMap<String, HostStatus>,
    /// By spec bucket key: a pod id, or `host.<host>`.
    wanted: BTreeMap<String, u64>,
}

/// One pod as a table row (and as the dashboard's JSON, with the whole status beside it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Row {
    /// `pod`.
    pub kind: &'static str,
    pub id: String,
    pub observed_generation: u64,
    /// The generation the control plane last wrote to the spec bucket, when readable.
    pub wanted_generation: Option<u64>,
    pub overall: Overall,
    /// Each subsystem's `Overall`, `None` when not managed.
    pub network: Option<Overall>,
    pub firewall: Option<Overall>,
    pub wireguard: Option<Overall>,
    /// WireGuard peers that completed a handshake, and all peers.
    pub peers_handshaken: usize,
    pub peers: usize,
    pub drift_repairs: u64,
    /// `Subsystem: change (by)`, empty when there was none.
    pub last_drift: String,
    pub last_error: String,
    /// Milliseconds since the status was published.
    pub age_ms: u64,
    pub stale: bool,
    pub status: PodStatus,
}

/// One host as a table row (and as the dashboard's JSON, with the whole status beside it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostRow {
    /// `host`.
    pub kind: &'static str,
    pub id: String,
    pub observed_generation: u64,
    /// The generation the control plane last wrote to the spec bucket, when readable.
    pub wanted_generation: Option<u64>,
    pub overall: Overall,
    /// The uplink in use, `None` before a spec or when none resolves.
    pub uplink: Option<String>,
    pub forwarding: bool,
    /// Sandboxes whose slot is as the spec says (`Healthy` and up), and all of them.
    pub sandboxes_ready: usize,
    pub sandboxes: usize,
    /// Port forwards in force, over every sandbox.
    pub forwards: usize,
    pub drift_repairs: u64,
    /// `Subsystem: change (by)`, empty when there was none.
    pub last_drift: String,
    pub last_error: String,
    /// Milliseconds since the status was published.
    pub age_ms: u64,
    pub stale: bool,
    pub status: HostStatus,
}

impl Fleet {
    /// `interval`: the agents' `--status-interval`.
    pub fn new(interval: Duration) -> Fleet {
        Fleet {
            interval,
            pods: BTreeMap::new(),
            hosts: BTreeMap::new(),
            wanted: BTreeMap::new(),
        }
    }

    /// Keeps `status` unless an already newer one of its pod is known. Returns whether it
    /// was kept.
    pub fn update(&mut self, status: PodStatus) -> bool {
        match self.pods.get(&status.pod_id) {
            Some(old) if old.published_at_unix_ms > status.published_at_unix_ms => false,
            _ => {
                self.pods.insert(status.pod_id.clone(), status);
                true
            }
        }
    }

    /// Keeps a host's `status` unless an already newer one of its host is known. Returns
    /// whether it was kept.
    pub fn update_host(&mut self, status: HostStatus) -> bool {
        match self.hosts.get(&status.host_id) {
            Some(old) if old.published_at_unix_ms > status.published_at_unix_ms => false,
            _ => {
                self.hosts.insert(status.host_id.clone(), status);
                true
            }
        }
    }

    /// The generation the control plane wants under spec bucket key `key` (a pod id, or
    /// `host.<host>` for a host).
    pub fn want(&mut self, key: &str, generation: u64) {
        self.wanted.insert(key.to_owned(), generation);
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.hosts.is_empty()
    }

    /// A status older than this is stale.
    pub fn stale_after(&self) -> Duration {
        self.interval * STALE_AFTER_INTERVALS
    }

    /// One row per pod, by pod id, as of `now_unix_ms`.
    pub fn rows(&self, now_unix_ms: u64) -> Vec<Row> {
        self.pods
            .values()
            .map(|s| {
                row(
                    s,
                    self.wanted.get(&s.pod_id).copied(),
                    now_unix_ms,
                    self.stale_after(),
                )
            })
            .collect()
    }

    /// One row per host, by host id, as of `now_unix_ms`.
    pub fn host_rows(&self, now_unix_ms: u64) -> Vec<HostRow> {
        self.hosts
            .values()
            .map(|s| {
                host_row(
                    s,
                    self.wanted
                        .get(&format!("{HOST_KEY}{}", s.host_id))
                        .copied(),
                    now_unix_ms,
                    self.stale_after(),
                )
            })
            .collect()
    }
}

fn host_row(
    s: &HostStatus,
    wanted: Option<u64>,
    now_unix_ms: u64,
    stale_after: Duration,
) -> HostRow {
    let age_ms = now_unix_ms.saturating_sub(s.published_at_unix_ms);
    HostRow {
        kind: "host",
        id: s.host_id.clone(),
        observed_generation: s.observed_generation,
        wanted_generation: wanted,
        overall: s.overall,
        uplink: s.uplink.clone(),
        forwarding: s.forwarding,
        sandboxes_ready: s
            .sandboxes
            .iter()
            .filter(|b| b.up && b.overall == Overall::Healthy)
            .count(),
        sandboxes: s.sandboxes.len(),
        forwards: s.sandboxes.iter().map(|b| b.port_forwards.len()).sum(),
        drift_repairs: s.drift_repairs,
        last_drift: drift(s.last_drift.as_ref()),
        last_error: s.last_error.clone(),
        age_ms,
        stale: u128::from(age_ms) > stale_after.as_millis(),
        status: s.clone(),
    }
}

fn drift(d: Option<&weft_schema::DriftEvent>) -> String {
    d.map(|d| format!("{:?}: {} ({})", d.subsystem, d.change, d.by))
        .unwrap_or_default()
}

fn row(s: &PodStatus, wanted: Option<u64>, now_unix_ms: u64, stale_after: Duration) -> Row {
    let age_ms = now_unix_ms.saturating_sub(s.published_at_unix_ms);
    let peers = s.wireguard.as_ref().map_or(&[][..], |w| &w.peers[..]);
    Row {
        kind: "pod",
        id: s.pod_id.clone(),
        observed_generation: s.observed_generation,
        wanted_generation: wanted,
        overall: s.overall,
        network: s.network.as_ref().map(|n| n.overall),
        firewall: s.firewall.as_ref().map(|f| f.overall),
        wireguard: s.wireguard.as_ref().map(|w| w.overall),
        peers_handshaken: peers.iter().filter(|p| p.last_handshake_unix > 0).count(),
        peers: peers.len(),
        drift_repairs: s.drift_repairs,
        last_drift: drift(s.last_drift.as_ref()),
        last_error: s.last_error.clone(),
        age_ms,
        stale: u128::from(age_ms) > stale_after.as_millis(),
        status: s.clone(),
    }
}

fn overall(o: Option<Overall>) -> &'static str {
    match o {
        Some(Overall::Healthy) => "Healthy",
        Some(Overall::Degraded) => "Degraded",
        Some(Overall::Pending) => "Pending",
        None => "-",
    }
}

/// The age of a status in words: `800ms`, `4s`, `3m12s`.
pub fn age(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m{}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// The table's header cells.
pub const COLUMNS: [&str; 10] = [
    "POD",
    "GEN",
    "OVERALL",
    "NETWORK",
    "FIREWALL",
    "WIREGUARD",
    "PEERS",
    "DRIFT",
    "AGE",
    "LAST DRIFT",
];

/// A row's cells, in [`COLUMNS`] order. `GEN` is `observed/wanted` (`-` when the wanted
/// generation is not known); `AGE` ends with ` STALE` for a stale pod.
pub fn cells(r: &Row) -> [String; 10] {
    [
        r.id.clone(),
        format!(
            "{}/{}",
            r.observed_generation,
            r.wanted_generation.map_or("-".into(), |g| g.to_string())
        ),
        overall(Some(r.overall)).to_owned(),
        overall(r.network).to_owned(),
        overall(r.firewall).to_owned(),
        overall(r.wireguard).to_owned(),
        format!("{}/{}", r.peers_handshaken, r.peers),
        r.drift_repairs.to_string(),
        if r.stale {
            format!("{} STALE", age(r.age_ms))
        } else {
            age(r.age_ms)
        },
        if r.last_drift.is_empty() {
            "-".into()
        } else {
            r.last_drift.clone()
        },
    ]
}

/// The host table's header cells.
pub const HOST_COLUMNS: [&str; 9] = [
    "HOST",
    "GEN",
    "OVERALL",
    "UPLINK",
    "SANDBOXES",
    "FORWARDS",
    "DRIFT",
    "AGE",
    "LAST DRIFT",
];

/// A host row's cells, in [`HOST_COLUMNS`] order: `GEN` as for pods, `SANDBOXES` ready/all,
/// `UPLINK` `-` when none is in use.
pub fn host_cells(r: &HostRow) -> [String; 9] {
    [
        r.id.clone(),
        format!(
            "{}/{}",
            r.observed_generation,
            r.wanted_generation.map_or("-".into(), |g| g.to_string())
        ),
        overall(Some(r.overall)).to_owned(),
        r.uplink.clone().unwrap_or_else(|| "-".into()),
        format!("{}/{}", r.sandboxes_ready, r.sandboxes),
        r.forwards.to_string(),
        r.drift_repairs.to_string(),
        if r.stale {
            format!("{} STALE", age(r.age_ms))
        } else {
            age(r.age_ms)
        },
        if r.last_drift.is_empty() {
            "-".into()
        } else {
            r.last_drift.clone()
        },
    ]
}

/// The rows as an aligned text table with a header line.
pub fn table(rows: &[Row]) -> String {
    aligned(COLUMNS, rows.iter().map(cells))
}

/// The host rows as an aligned text table with a header line.
pub fn host_table(rows: &[HostRow]) -> String {
    aligned(HOST_COLUMNS, rows.iter().map(host_cells))
}

fn aligned<const N: usize>(header: [&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let lines: Vec<[String; N]> = std::iter::once(header.map(str::to_owned))
        .chain(rows)
        .collect();
    let mut widths = [0usize; N];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (i, (c, w)) in l.iter().zip(widths).enumerate() {
            if i + 1 == l.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::{DriftEvent, PeerStatus, Subsystem, WireGuardStatus};

    fn status(pod: &str, published_ms: u64) -> PodStatus {
        PodStatus {
            pod_id: pod.into(),
            agent_version: "0.1.0".into(),
            observed_generation: 7,
            overall: Overall::Healthy,
            last_error: String::new(),
            published_at_unix: published_ms / 1000,
            published_at_unix_ms: published_ms,
            drift_repairs: 2,
            last_drift: Some(DriftEvent {
                at_unix_ms: 0,
                subsystem: Subsystem::Network,
                change: "link down".into(),
                by: "ip (pid 42)".into(),
            }),
            signed_by: None,
            network: None,
            firewall: None,
            wireguard: Some(WireGuardStatus {
                overall: Overall::Healthy,
                last_error: String::new(),
                backend: weft_schema::Backend::Userspace,
                interface: "wg0".into(),
                public_key: "k".into(),
                listen_port: 51820,
                peers: vec![
                    PeerStatus {
                        public_key: "a".into(),
                        endpoint: None,
                        last_handshake_unix: 5,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    },
                    PeerStatus {
                        public_key: "b".into(),
                        endpoint: None,
                        last_handshake_unix: 0,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    },
                ],
            }),
        }
    }

    #[test]
    fn rows_say_what_the_status_says_and_stale_after_three_intervals() {
        let mut fleet = Fleet::new(Duration::from_secs(1));
        assert!(fleet.update(status("web-1", 10_000)));
        assert!(!fleet.update(status("web-1", 9_000)), "older is ignored");
        fleet.want("web-1", 8);
        let rows = fleet.rows(13_000);
        assert!(!rows[0].stale);
        assert_eq!(
            cells(&rows[0]),
            [
                "web-1",
                "7/8",
                "Healthy",
                "-",
                "-",
                "Healthy",
                "1/2",
                "2",
                "3s",
                "Network: link down (ip (pid 42))"
            ]
            .map(str::to_owned)
        );
        let rows = fleet.rows(13_001);
        assert!(rows[0].stale);
        assert_eq!(cells(&rows[0])[8], "3s STALE");
        let t = table(&rows);
        assert!(t.starts_with("POD    GEN  OVERALL"), "{t}");
        assert_eq!(t.lines().count(), 2);
    }

    #[test]
    fn host_rows_count_ready_sandboxes_and_forwards_and_turn_stale() {
        let sandbox = |slot: u32, overall: Overall, forwards: usize| weft_schema::SandboxStatus {
            slot,
            namespace: format!("sb{slot}"),
            guest: weft_schema::Guest::Veth,
            guest_mac: None,
            host_ip: "10.11.0.1".into(),
            veth_ip: "10.12.0.2/31".into(),
            vpeer_ip: "10.12.0.3/31".into(),
            guest_ip: "169.254.0.21".into(),
            up: true,
            egress: true,
            port_forwards: (0..forwards)
                .map(|i| weft_schema::PortForward {
                    protocol: "tcp".into(),
                    host_port: 8000 + i as u16,
                    sandbox_port: 80,
                })
                .collect(),
            overall,
            last_error: String::new(),
        };
        let host = HostStatus {
            host_id: "host-a".into(),
            agent_version: "0.1.0".into(),
            observed_generation: 3,
            overall: Overall::Degraded,
            last_error: "slot 2: weft-v2 is down".into(),
            published_at_unix: 10,
            published_at_unix_ms: 10_000,
            drift_repairs: 1,
            last_drift: None,
            signed_by: None,
            uplink: Some("up0".into()),
            forwarding: true,
            sandboxes: vec![
                sandbox(1, Overall::Healthy, 2),
                sandbox(2, Overall::Degraded, 1),
            ],
        };
        let mut fleet = Fleet::new(Duration::from_secs(1));
        assert!(fleet.update_host(host.clone()));
        fleet.want("host.host-a", 4);
        fleet.want("host-a", 9); // a pod of that name: not the host's
        let rows = fleet.host_rows(13_000);
        assert!(fleet.rows(13_000).is_empty());
        assert_eq!(
            host_cells(&rows[0]),
            ["host-a", "3/4", "Degraded", "up0", "1/2", "3", "1", "3s", "-"].map(str::to_owned)
        );
        assert!(fleet.host_rows(13_001)[0].stale);
        assert!(host_table(&rows).starts_with("HOST    GEN  OVERALL"));
    }
}
