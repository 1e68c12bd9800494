//! Rate limits for what the bus can provoke: answers (`status.get`) and log lines
//! (rejections), so that a flood costs a bounded amount of work and log.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most `max` events in any window of `span` (a sliding window: the times of the last
/// `max` accepted events are kept).
#[derive(Debug)]
pub struct Window {
    max: usize,
    span: Duration,
    accepted: VecDeque<Instant>,
}

impl Window {
    pub fn new(max: usize, span: Duration) -> Window {
        Window {
            max,
            span,
            accepted: VecDeque::with_capacity(max),
        }
    }

    /// Whether one more event may happen at `now`; counts it when it may.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .accepted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.span)
        {
            self.accepted.pop_front();
        }
        if self.accepted.len() >= self.max {
            return false;
        }
        self.accepted.push_back(now);
        true
    }
}

/// One log line per reason per [`LogGate::EVERY`]; the lines in between are counted, and the
/// count goes out with the next line of the same reason.
#[derive(Debug, Default)]
pub struct LogGate {
    reasons: HashMap<&'static str, (Instant, u64)>,
}

impl LogGate {
    pub const EVERY: Duration = Duration::from_secs(1);

    /// `Some(skipped)` when a line for `reason` may be logged now (`skipped`: how many were
    /// not logged since the last one), `None` when it is to be skipped.
    pub fn pass(&mut self, reason: &'static str) -> Option<u64> {
        self.pass_at(reason, Instant::now())
    }

    pub fn pass_at(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.reasons.get_mut(reason) {
            Some((last, skipped)) if now.saturating_duration_since(*last) < Self::EVERY => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                self.reasons.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_max_per_span() {
        let t0 = Instant::now();
        let mut w = Window::new(100, Duration::from_secs(1));
        let admitted = (0..300)
            .filter(|i| w.allow(t0 + Duration::from_millis(*i)))
            .count();
        assert_eq!(admitted, 100);
        // A full second after the first, room again, one by one.
        assert!(w.allow(t0 + Duration::from_millis(1000)));
        assert!(!w.allow(t0 + Duration::from_millis(1000)));
        assert!(w.allow(t0 + Duration::from_millis(1001)));
    }

    #[test]
    fn log_lines_go_once_a_second_per_reason_with_a_count() {
        let t0 = Instant::now();
        let mut g = LogGate::default();
        assert_eq!(g.pass_at("decode", t0), Some(0));
        assert_eq!(g.pass_at("signature", t0), Some(0));
        for i in 1..=50 {
            assert_eq!(
                g.pass_at("decode", t0 + Duration::from_millis(i * 10)),
                None
            );
        }
        assert_eq!(
            g.pass_at("decode", t0 + Duration::from_millis(1000)),
            Some(50)
        );
        assert_eq!(g.pass_at("decode", t0 + Duration::from_millis(1001)), None);
    }
}
