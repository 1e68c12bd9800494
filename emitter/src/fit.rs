//! Bodies that always fit: a status or a reply never exceeds the server's `max_payload`,
//! whatever a spec or the kernel put in it (CONTRACT.md v1.1 "Hostile input on the bus").
//!
//! Every `LastError` is bounded to [`LAST_ERROR_BYTES`] first. A status that is still too
//! large is one with many WireGuard peers (10,000 peers are about 2 MB of JSON, twice the
//! server's default `max_payload` of 1 MiB): it lists the peers that fit, in the order the
//! status has them, and `WireGuard.LastError` says how many of how many are listed. That is a
//! limit of the report, not of the pod, so `Overall` stays what the kernel says. Should even
//! that not fit (a `max_payload` of a few kilobytes), the status keeps its top level only,
//! with subsystems `null` and `LastError` saying why.

use weft_schema::text::{last_error, LAST_ERROR_BYTES};
use weft_schema::{ApplyReply, Encoding, Overall, PodStatus};

/// What the headers may take of `max_payload` (the server counts them in): the two weft
/// headers are about 70 bytes.
pub const HEADER_ROOM: usize = 256;

/// The `max_payload` a client reports before its first connection, and nats-server's
/// default.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Room kept for the note about the peers left out, and the list's own framing.
const NOTE_ROOM: usize = 512;

/// Bounds every free text of a status (the `LastError`s, the last drift's words).
pub fn bound_texts(status: &mut PodStatus) {
    let bound = |s: &mut String| {
        if s.len() > LAST_ERROR_BYTES || s.contains(char::is_control) {
            *s = last_error(s);
        }
    };
    bound(&mut status.last_error);
    if let Some(d) = &mut status.last_drift {
        bound(&mut d.change);
        bound(&mut d.by);
    }
    if let Some(n) = &mut status.network {
        bound(&mut n.last_error);
    }
    if let Some(f) = &mut status.firewall {
        bound(&mut f.last_error);
    }
    if let Some(w) = &mut status.wireguard {
        bound(&mut w.last_error);
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
pub fn encode_status(mut status: PodStatus, encoding: Encoding, max_payload: usize) -> Vec<u8> {
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
    if let Some(wg) = status.wireguard.as_mut() {
        let peers = std::mem::take(&mut wg.peers);
        let total = peers.len();
        let without = encoding.encode(&status).len();
        let mut room = budget.saturating_sub(without + NOTE_ROOM);
        let kept = peers
            .iter()
            .take_while(|p| {
                // One more for the separator.
                let n = encoding.encode(p).len() + 1;
                let fits = n <= room;
                room = room.saturating_sub(n);
                fits
            })
            .count();
        let wg = status.wireguard.as_mut().expect("checked above");
        wg.peers = peers;
        wg.peers.truncate(kept);
        let note = format!(
            "this status lists {kept} of {total} peers: all of them would exceed the server's \
             max_payload of {max_payload} bytes"
        );
        wg.last_error = last_error(&if wg.last_error.is_empty() {
            note
        } else {
            format!("{}; {note}", wg.last_error)
        });
        let body = encoding.encode(&status);
        if body.len() <= budget {
            return body;
        }
    }
    // Past saving in detail: the top level only.
    let note = format!(
        "status of {size} bytes cut to its top level: the server's max_payload is \
         {max_payload} bytes"
    );
    status.last_error = last_error(&if status.last_error.is_empty() {
        note
    } else {
        format!("{note}; {}", status.last_error)
    });
    if status.overall == Overall::Healthy {
        // Nothing would say why the subsystems are missing otherwise.
        status.overall = Overall::Degraded;
    }
    status.network = None;
    status.firewall = None;
    status.wireguard = None;
    status.last_drift = None;
    encoding.encode(&status)
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
