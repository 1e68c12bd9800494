//! Drift: someone else changed one of the agent's objects. Kernel events wake a check; the
//! check reads the kernel back, and a subsystem that no longer matches is re-applied (which
//! writes only what differs). Repairs are rate-limited per subsystem, so two writers fighting
//! over the same object cannot spin the CPU.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weft_schema::{DriftEvent, Subsystem};

use crate::dataplane::events::{describe_port, own_transaction, Hints};

/// The repairs so far, for the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub repairs: u64,
    pub last: Option<DriftEvent>,
}

/// A token bucket: `BURST` repairs at once, then one per `REFILL`.
#[derive(Debug, Clone)]
pub struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    pub const BURST: f64 = 5.0;
    pub const REFILL: Duration = Duration::from_millis(500);

    pub fn new(now: Instant) -> Budget {
        Budget {
            tokens: Self::BURST,
            at: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let earned =
            now.saturating_duration_since(self.at).as_secs_f64() / Self::REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(Self::BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Self::REFILL.mul_f64(1.0 - self.tokens))
        }
    }
}

/// One budget per subsystem.
#[derive(Debug, Clone)]
pub struct Budgets([Budget; 3]);

impl Budgets {
    pub fn new(now: Instant) -> Budgets {
        Budgets([Budget::new(now), Budget::new(now), Budget::new(now)])
    }

    pub fn of(&mut self, s: Subsystem) -> &mut Budget {
        &mut self.0[match s {
            Subsystem::Network => 0,
            Subsystem::Firewall => 1,
            Subsystem::WireGuard => 2,
        }]
    }
}

/// Whether the hints name a change someone else may have made (our own requests carry our
/// socket's port or our pid), or say events were lost.
pub fn touched(hints: &Hints, own_port: u32) -> bool {
    hints.overrun
        // The watch drops the agent's own writes where it can tell; the read-back decides.
        || !hints.resolver.is_empty()
        || hints.network.iter().any(|c| c.port != own_port)
        || hints
            .firewall
            .iter()
            .any(|t| !own_transaction(t))
}

/// Who changed `subsystem`, as well as the hints tell; `unknown` otherwise. `found` is what
/// the read-back found different: a change to the resolver file is the file's writer's.
pub fn author(hints: &Hints, subsystem: Subsystem, own_port: u32, found: &str) -> String {
    if subsystem == Subsystem::Network && found.contains("resolver file") {
        if let Some(by) = hints.resolver.iter().rev().flatten().next() {
            return by.clone();
        }
    }
    match subsystem {
        Subsystem::Firewall => hints
            .firewall
            .iter()
            .rev()
            .find(|t| !own_transaction(t))
            .map(|t| t.by()),
        Subsystem::Network | Subsystem::WireGuard => hints
            .network
            .iter()
            .rev()
            .find(|c| c.port != own_port && c.port != 0)
            .map(|c| describe_port(c.port)),
    }
    .unwrap_or_else(|| "unknown".into())
}

/// What changed: the firewall's own words when the kernel told them (`rule added to chain
/// input`), else what the read-back found different.
pub fn change(hints: &Hints, subsystem: Subsystem, found: &str) -> String {
    if subsystem == Subsystem::Firewall {
        if let Some(t) = hints.firewall.iter().rev().find(|t| !own_transaction(t)) {
            return t.changes.join(", ");
        }
    }
    found.to_owned()
}

/// A drift event stamped now.
pub fn event(subsystem: Subsystem, change: String, by: String) -> DriftEvent {
    DriftEvent {
        at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        subsystem,
        change,
        by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::events::RouteChange;
    use crate::dataplane::events::Transaction;

    #[test]
    fn the_budget_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        for _ in 0..5 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Budget::REFILL);
        assert!(b.take(t0 + Budget::REFILL).is_ok());
        assert!(b.take(t0 + Budget::REFILL).is_err());
        // A long quiet spell refills the burst, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_resolver_file_change_wakes_a_check_by_an_unknown_writer() {
        let hints = Hints {
            resolver: vec![None],
            ..Hints::default()
        };
        assert!(touched(&hints, 77));
        let found = "resolver file /x differs from the spec";
        assert_eq!(author(&hints, Subsystem::Network, 77, found), "unknown");
        let named = Hints {
            resolver: vec![None, Some("tee (pid 4242)".into())],
            ..Hints::default()
        };
        assert_eq!(
            author(&named, Subsystem::Network, 77, found),
            "tee (pid 4242)"
        );
        assert_eq!(
            change(
                &hints,
                Subsystem::Network,
                "resolver file /x differs from the spec"
            ),
            "resolver file /x differs from the spec"
        );
    }

    #[test]
    fn our_own_changes_touch_nothing_and_authors_are_named() {
        let own = 77;
        let mut hints = Hints::default();
        hints.network.push(RouteChange {
            what: "address added",
            port: own,
            subject: None,
        });
        assert!(!touched(&hints, own));
        hints.network.push(RouteChange {
            what: "address removed",
            port: std::process::id(),
            subject: None,
        });
        assert!(touched(&hints, own));
        assert!(author(&hints, Subsystem::Network, own, "")
            .contains(&format!("pid {}", std::process::id())));

        let mut own_fw = Hints::default();
        own_fw.firewall.push(Transaction {
            changes: vec!["table created or changed".into()],
            pid: Some(std::process::id()),
            process: Some("weft-agent".into()),
        });
        assert!(!touched(&own_fw, own));
        hints.firewall.push(Transaction {
            changes: vec!["rule added to chain input".into()],
            pid: Some(4242),
            process: Some("nft".into()),
        });
        assert_eq!(
            author(&hints, Subsystem::Firewall, own, ""),
            "nft (pid 4242)"
        );
        assert_eq!(
            change(&hints, Subsystem::Firewall, "x"),
            "rule added to chain input"
        );
        assert_eq!(
            change(&hints, Subsystem::Network, "address missing"),
            "address missing"
        );
    }
}
