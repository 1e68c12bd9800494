//! Bodies that always fit: a status or a reply never exceeds the server's `max_payload`,
//! whatever a spec or the kernel put in it (CONTRACT.md v1.1 "Hostile input on the bus").
//!
//! Every `LastError` is bounded to [`LAST_ERROR_BYTES`] first. A status that is still too
//! large is one with a long list: a pod's WireGuard peers (10,000 peers are about 2 MB of
//! JSON, twice the server's default `max_payload` of 1 MiB) or a host's sandboxes (4,096 are
//! about 1.6 MB). It lists the items that fit, in the order the status has them, and a
//! `LastError` (`WireGuard.LastError`, the host's own) says how many of how many are listed.
//! That is a limit of the report, not of the pod or host, so `Overall` stays what the kernel
//! says. Should even that not fit (a `max_payload` of a few kilobytes), the status keeps its
//! top level only, with subsystems `null` (no sandboxes) and `LastError` saying why.

use serde::Serialize;
use weft_schema::text::{last_error, LAST_ERROR_BYTES};
use weft_schema::{ApplyReply, Encoding, HostStatus, Overall, PodStatus};

/// What the headers may take of `max_payload` (the server counts them in): the two weft
/// headers are about 70 bytes.
pub const HEADER_ROOM: usize = 256;

/// The `max_payload` a client reports before its first connection, and nats-server's
/// default.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Room kept for the note about the items left out, and the list's own framing.
const NOTE_ROOM: usize = 512;

/// What the emitter, `status.get` and these rules need of a status: a pod's or a host's.
pub trait Status: Clone + PartialEq + Serialize + Send + Sync + std::fmt::Debug + 'static {
    /// Sets `PublishedAtUnix` and `PublishedAtUnixMs`.
    fn stamp(&mut self, now_unix_ms: u64);
    fn observed_generation(&self) -> u64;
    fn overall(&self) -> Overall;
    /// `Overall: Degraded`, and `line` after the `LastError` there is.
    fn degrade(&mut self, line: &str);
    /// Every free text: the `LastError`s, the last drift's words.
    fn texts(&mut self) -> Vec<&mut String>;
    /// Cuts the status's one long list (a pod's WireGuard peers, a host's sandboxes) to what
    /// fits `budget` bytes in `encoding`, saying so in the right `LastError`. `max_payload`
    /// is for the note.
    fn cut_list(&mut self, encoding: Encoding, budget: usize, max_payload: usize);
    /// Drops everything below the top level (subsystems, lists, the last drift).
    fn top_level_only(&mut self);
    /// The top-level `LastError`.
    fn last_error_mut(&mut self) -> &mut String;
}

/// Bounds every free text of a status (the `LastError`s, the last drift's words).
pub fn bound_texts<S: Status>(status: &mut S) {
    for s in status.texts() {
        if s.len() > LAST_ERROR_BYTES || s.contains(char::is_control) {
            *s = last_error(s);
        }
    }
}

/// A reply with its `Error` bounded.
pub fn bound_reply(reply: &mut ApplyReply) {
    if reply.error.len() > LAST_ERROR_BYTES || reply.error.contains(char::is_control) {
        reply.error = last_error(&reply.error);
    }
}

/// Encodes `status` into a body of at most `max_payload` minus [`HEADER_ROOM`] bytes (0:
/// [`DEFAULT_MAX_PAYLOAD`]), cutting what must be cut as the module says.
pub fn encode_status<S: Status>(mut status: S, encoding: Encoding, max_payload: usize) -> Vec<u8> {
    let max_payload = if max_payload == 0 {
        DEFAULT_MAX_PAYLOAD
    } else {
        max_payload
    };
    let budget = max_payload.saturating_sub(HEADER_ROOM);
    bound_texts(&mut status);
    let body = encoding.encode(&status);
    if body.len() <= budget {
        return body;
    }
    let size = body.len();
    drop(body);
    // The cut's own note goes with the list if the list goes too.
    let before_cut = status.last_error_mut().clone();
    status.cut_list(encoding, budget, max_payload);
    let body = encoding.encode(&status);
    if body.len() <= budget {
        return body;
    }
    // Past saving in detail: the top level only.
    let note = format!(
        "status of {size} bytes cut to its top level: the server's max_payload is \
         {max_payload} bytes"
    );
    *status.last_error_mut() = last_error(&joined(&note, before_cut));
    if status.overall() == Overall::Healthy {
        // Nothing would say why the subsystems are missing otherwise.
        status.degrade("");
    }
    status.top_level_only();
    encoding.encode(&status)
}

/// How many of `list`'s first items fit in `room` bytes of `encoding`, with a separator each.
fn fitting<T: Serialize>(list: &[T], encoding: Encoding, mut room: usize) -> usize {
    list.iter()
        .take_while(|item| {
            let n = encoding.encode(item).len() + 1;
            let fits = n <= room;
            room = room.saturating_sub(n);
            fits
        })
        .count()
}

/// `a; b`, or whichever is not empty.
fn joined(a: &str, b: String) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b,
        (false, true) => a.to_owned(),
        (false, false) => format!("{a}; {b}"),
    }
}

impl Status for PodStatus {
    fn stamp(&mut self, now_unix_ms: u64) {
        self.published_at_unix_ms = now_unix_ms;
        self.published_at_unix = now_unix_ms / 1000;
    }

    fn observed_generation(&self) -> u64 {
        self.observed_generation
    }

    fn overall(&self) -> Overall {
        self.overall
    }

    fn degrade(&mut self, line: &str) {
        self.overall = Overall::Degraded;
        if !line.is_empty() {
            self.last_error = joined(&self.last_error, line.to_owned());
        }
    }

    fn texts(&mut self) -> Vec<&mut String> {
        let mut texts = vec![&mut self.last_error];
        if let Some(d) = &mut self.last_drift {
            texts.push(&mut d.change);
            texts.push(&mut d.by);
        }
        if let Some(n) = &mut self.network {
            texts.push(&mut n.last_error);
        }
        if let Some(f) = &mut self.firewall {
            texts.push(&mut f.last_error);
        }
        if let Some(w) = &mut self.wireguard {
            texts.push(&mut w.last_error);
        }
        texts
    }

    fn cut_list(&mut self, encoding: Encoding, budget: usize, max_payload: usize) {
        let Some(wg) = self.wireguard.as_mut() else {
            return;
        };
        let peers = std::mem::take(&mut wg.peers);
        let total = peers.len();
        let without = encoding.encode(&*self).len();
        let kept = fitting(&peers, encoding, budget.saturating_sub(without + NOTE_ROOM));
        let wg = self.wireguard.as_mut().expect("checked above");
        wg.peers = peers;
        wg.peers.truncate(kept);
        let note = format!(
            "this status lists {kept} of {total} peers: all of them would exceed the server's \
             max_payload of {max_payload} bytes"
        );
        wg.last_error = last_error(&joined(&wg.last_error, note));
    }

    fn top_level_only(&mut self) {
        self.network = None;
        self.firewall = None;
        self.wireguard = None;
        self.last_drift = None;
    }

    fn last_error_mut(&mut self) -> &mut String {
        &mut self.last_error
    }
}

impl Status for HostStatus {
    fn stamp(&mut self, now_unix_ms: u64) {
        self.published_at_unix_ms = now_unix_ms;
        self.published_at_unix = now_unix_ms / 1000;
    }

    fn observed_generation(&self) -> u64 {
        self.observed_generation
    }

    fn overall(&self) -> Overall {
        self.overall
    }

    fn degrade(&mut self, line: &str) {
        self.overall = Overall::Degraded;
        if !line.is_empty() {
            self.last_error = joined(&self.last_error, line.to_owned());
        }
    }

    fn texts(&mut self) -> Vec<&mut String> {
        let mut texts = vec![&mut self.last_error];
        if let Some(d) = &mut self.last_drift {
            texts.push(&mut d.change);
            texts.push(&mut d.by);
        }
        texts.extend(self.sandboxes.iter_mut().map(|s| &mut s.last_error));
        texts
    }

    /// A host of 4,096 sandboxes is about 1.6 MB of JSON: the sandboxes that fit are listed,
    /// in slot order, and the top-level `LastError` says how many of how many. A limit of
    /// the report, not of the host: `Overall` stays what the kernel says.
    fn cut_list(&mut self, encoding: Encoding, budget: usize, max_payload: usize) {
        let sandboxes = std::mem::take(&mut self.sandboxes);
        let total = sandboxes.len();
        let without = encoding.encode(&*self).len();
        let kept = fitting(
            &sandboxes,
            encoding,
            budget.saturating_sub(without + NOTE_ROOM),
        );
        self.sandboxes = sandboxes;
        self.sandboxes.truncate(kept);
        let note = format!(
            "this status lists {kept} of {total} sandboxes: all of them would exceed the \
             server's max_payload of {max_payload} bytes"
        );
        self.last_error = last_error(&joined(&self.last_error, note));
    }

    fn top_level_only(&mut self) {
        self.sandboxes = Vec::new();
        self.last_drift = None;
    }

    fn last_error_mut(&mut self) -> &mut String {
        &mut self.last_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::{Backend, PeerStatus, WireGuardStatus};

    fn status(peers: usize) -> PodStatus {
        PodStatus {
            pod_id: "web-1".into(),
            agent_version: "0.1.0".into(),
            observed_generation: 7,
            overall: Overall::Healthy,
            last_error: String::new(),
            published_at_unix: 1_763_779_200,
            published_at_unix_ms: 1_763_779_200_123,
            drift_repairs: 0,
            last_drift: None,
            signed_by: None,
            network: None,
            firewall: None,
            wireguard: Some(WireGuardStatus {
                overall: Overall::Healthy,
                last_error: String::new(),
                backend: Backend::Userspace,
                interface: "wg0".into(),
                public_key: "A".repeat(44),
                listen_port: 51820,
                peers: (0..peers)
                    .map(|i| PeerStatus {
                        public_key: format!("{i:0>43}="),
                        endpoint: Some(format!("[2001:db8::{i:x}]:51820")),
                        last_handshake_unix: 1_763_779_000 + i as u64,
                        rx_bytes: u64::MAX - i as u64,
                        tx_bytes: u64::MAX - i as u64,
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn ten_thousand_peers_fit_the_default_max_payload() {
        for encoding in [Encoding::Json, Encoding::Bincode] {
            let whole = encoding.encode(&status(10_000)).len();
            let body = encode_status(status(10_000), encoding, DEFAULT_MAX_PAYLOAD);
            assert!(body.len() <= DEFAULT_MAX_PAYLOAD - HEADER_ROOM);
            let back: PodStatus = encoding.decode(&body).unwrap();
            let wg = back.wireguard.unwrap();
            let listed = wg.peers.len();
            if whole <= DEFAULT_MAX_PAYLOAD - HEADER_ROOM {
                assert_eq!(listed, 10_000, "{encoding}: {whole} bytes fit whole");
                continue;
            }
            assert!(listed > 3_000 && listed < 10_000, "{encoding}: {listed}");
            assert_eq!(
                wg.last_error,
                format!(
                    "this status lists {listed} of 10000 peers: all of them would exceed the \
                     server's max_payload of 1048576 bytes"
                )
            );
            // The report is cut, not the pod: still Healthy.
            assert_eq!(
                (back.overall, wg.overall),
                (Overall::Healthy, Overall::Healthy)
            );
            // The peers listed are the first ones, unchanged.
            assert_eq!(wg.peers[..], status(listed).wireguard.unwrap().peers[..]);
        }
    }

    fn host(sandboxes: u32) -> HostStatus {
        use weft_schema::{Guest, PortForward, SandboxStatus};
        HostStatus {
            host_id: "host-a".into(),
            agent_version: "0.1.0".into(),
            observed_generation: 3,
            overall: Overall::Healthy,
            last_error: String::new(),
            published_at_unix: 1_763_779_200,
            published_at_unix_ms: 1_763_779_200_123,
            drift_repairs: 0,
            last_drift: None,
            signed_by: None,
            uplink: Some("eth0".into()),
            forwarding: true,
            sandboxes: (1..=sandboxes)
                .map(|n| SandboxStatus {
                    slot: n,
                    namespace: format!("weft-sb-{n}"),
                    guest: Guest::Tap,
                    guest_mac: Some("02:fc:00:00:00:05".into()),
                    host_ip: format!("10.11.{}.{}", n >> 8, n & 255),
                    veth_ip: format!("10.12.{}.{}/31", (2 * n) >> 8, (2 * n) & 255),
                    vpeer_ip: format!("10.12.{}.{}/31", (2 * n + 1) >> 8, (2 * n + 1) & 255),
                    guest_ip: "169.254.0.21".into(),
                    up: true,
                    egress: true,
                    port_forwards: (0..4)
                        .map(|i| PortForward {
                            protocol: "tcp".into(),
                            host_port: (10_000 + 4 * n + i) as u16,
                            sandbox_port: 80,
                        })
                        .collect(),
                    overall: Overall::Healthy,
                    last_error: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_host_of_4096_sandboxes_fits_the_default_max_payload() {
        for encoding in [Encoding::Json, Encoding::Bincode] {
            let whole = encoding.encode(&host(4_096)).len();
            let body = encode_status(host(4_096), encoding, DEFAULT_MAX_PAYLOAD);
            assert!(body.len() <= DEFAULT_MAX_PAYLOAD - HEADER_ROOM);
            let back: HostStatus = encoding.decode(&body).unwrap();
            let listed = back.sandboxes.len();
            if whole <= DEFAULT_MAX_PAYLOAD - HEADER_ROOM {
                assert_eq!(listed, 4_096, "{encoding}: {whole} bytes fit whole");
                assert_eq!(back.last_error, "");
                continue;
            }
            assert!(listed > 1_000 && listed < 4_096, "{encoding}: {listed}");
            assert_eq!(
                back.last_error,
                format!(
                    "this status lists {listed} of 4096 sandboxes: all of them would exceed \
                     the server's max_payload of 1048576 bytes"
                )
            );
            assert_eq!(back.overall, Overall::Healthy);
            assert_eq!(back.sandboxes[..], host(listed as u32).sandboxes[..]);
        }
        // A small limit lists none, and says so; a tiny one keeps the top level, and says why.
        let body = encode_status(host(10), Encoding::Json, HEADER_ROOM + 400);
        assert!(body.len() <= 400, "{}", body.len());
        let back: HostStatus = Encoding::Json.decode(&body).unwrap();
        assert!(back.sandboxes.is_empty());
        assert_eq!(back.overall, Overall::Healthy);
        assert!(back
            .last_error
            .starts_with("this status lists 0 of 10 sandboxes"));
        let body = encode_status(host(10), Encoding::Json, HEADER_ROOM + 350);
        assert!(body.len() <= 350, "{}", body.len());
        let back: HostStatus = Encoding::Json.decode(&body).unwrap();
        assert_eq!(back.overall, Overall::Degraded);
        assert!(
            back.last_error.starts_with("status of "),
            "{}",
            back.last_error
        );
        assert!(!back.last_error.contains("lists"), "{}", back.last_error);
    }

    #[test]
    fn texts_are_bounded_and_tiny_limits_keep_the_top_level() {
        let mut s = status(3);
        s.last_error = "\u{1}x".repeat(1 << 20);
        let body = encode_status(s.clone(), Encoding::Json, DEFAULT_MAX_PAYLOAD);
        let back: PodStatus = Encoding::Json.decode(&body).unwrap();
        assert!(back.last_error.len() <= LAST_ERROR_BYTES);
        assert!(!back.last_error.contains(char::is_control));
        assert_eq!(back.wireguard.unwrap().peers.len(), 3);

        let body = encode_status(s, Encoding::Json, HEADER_ROOM + 1500);
        assert!(body.len() <= 1500, "{}", body.len());
        let back: PodStatus = Encoding::Json.decode(&body).unwrap();
        assert!(back.wireguard.is_none());
        assert_eq!(back.overall, Overall::Degraded);
        assert!(
            back.last_error.starts_with("status of "),
            "{}",
            back.last_error
        );
    }
}
