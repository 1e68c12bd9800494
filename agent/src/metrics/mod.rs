//! Prometheus metrics and health (CONTRACT.md v1.1 "Metrics and health"), served with
//! `--metrics-listen` ([`endpoints`]).
//!
//! Two kinds of figures:
//!
//! - **Events** (applies, rejections, repairs, apply durations, failed status publishes) are
//!   counted where they happen, in one process-wide [`EVENTS`] value. An agent process runs
//!   one reconciler, and a static keeps each hook in intake, the reconciler and the dataplane
//!   one line long, with nothing threaded through their constructors. They are counted
//!   whether or not anything serves them (a few atomic adds per spec).
//! - **State** (generations, firewall rules, WireGuard peers and bytes, the NATS link) is read
//!   at each scrape from what the agent already publishes: the newest status and the NATS
//!   client ([`Live`], a `prometheus_client` collector), so it can never disagree with them.
//!
//! Every name starts with `weft_agent_`. `prometheus_client` writes OpenMetrics text; a
//! scraper that does not ask for it (`Accept: application/openmetrics-text`) gets the same
//! families in the Prometheus text format 0.0.4 ([`prometheus_text`]).

pub mod endpoints;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;
use weft_schema::{
    ApplyResult, FirewallStatus, HostStatus, Overall, PodStatus, Subsystem, WireGuardStatus,
};

/// The prefix of every family.
pub const PREFIX: &str = "weft_agent";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubsystemLabel {
    subsystem: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// What happened, counted where it happens (see the module's doc).
#[derive(Debug)]
pub struct Events {
    apply_seconds: Family<SubsystemLabel, Histogram>,
    applies: Family<ResultLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    drift_repairs: Family<SubsystemLabel, Counter>,
    status_publish_failures: Counter,
    desired_generation: AtomicU64,
    reconciler_turns: AtomicU64,
}

/// The process's events.
pub static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    // 100 us to about 26 s: a no-op re-assert takes well under a millisecond, 10,000 rules a
    // few hundred.
    apply_seconds: Family::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.0001, 4.0, 10))
    }),
    applies: Family::default(),
    rejected: Family::default(),
    drift_repairs: Family::default(),
    status_publish_failures: Counter::default(),
    desired_generation: AtomicU64::new(0),
    reconciler_turns: AtomicU64::new(0),
});

fn subsystem_label(s: Subsystem) -> SubsystemLabel {
    SubsystemLabel {
        subsystem: match s {
            Subsystem::Network => "Network",
            Subsystem::Firewall => "Firewall",
            Subsystem::WireGuard => "WireGuard",
        },
    }
}

fn result_label(r: ApplyResult) -> ResultLabel {
    ResultLabel {
        result: match r {
            ApplyResult::Applied => "Applied",
            ApplyResult::Rejected => "Rejected",
            ApplyResult::Stale => "Stale",
            ApplyResult::Failed => "Failed",
        },
    }
}

/// A spec was handled with `result` (an apply, a kept spec re-asserted at start included).
pub fn spec_handled(result: ApplyResult) {
    EVENTS.applies.get_or_create(&result_label(result)).inc();
}

/// A spec was refused before the kernel (`signature`, `decode`, `invalid`, `expired`,
/// `conflict`); also counted as a `Rejected` apply.
pub fn spec_rejected(reason: &'static str) {
    EVENTS.rejected.get_or_create(&ReasonLabel { reason }).inc();
    spec_handled(ApplyResult::Rejected);
}

/// A spec of `generation` arrived (valid or not): the newest the control plane wants.
pub fn spec_desired(generation: u64) {
    EVENTS
        .desired_generation
        .fetch_max(generation, Ordering::Relaxed);
}

/// One subsystem's part of an apply or a repair took `took`.
pub fn apply_took(subsystem: Subsystem, took: Duration) {
    EVENTS
        .apply_seconds
        .get_or_create(&subsystem_label(subsystem))
        .observe(took.as_secs_f64());
}

/// Someone else's change to `subsystem` was repaired.
pub fn drift_repaired(subsystem: Subsystem) {
    EVENTS
        .drift_repairs
        .get_or_create(&subsystem_label(subsystem))
        .inc();
}

/// A status snapshot could not be published.
pub fn status_publish_failed() {
    EVENTS.status_publish_failures.inc();
}

/// The reconciler's loop went round once (what `/healthz` watches).
pub fn reconciler_turned() {
    EVENTS.reconciler_turns.fetch_add(1, Ordering::Relaxed);
}

/// How many times the reconciler's loop went round.
pub fn reconciler_turns() -> u64 {
    EVENTS.reconciler_turns.load(Ordering::Relaxed)
}

/// A status sink that counts the publishes that failed.
#[derive(Debug, Clone)]
pub struct Counted<S>(pub S);

impl<S: weft_emitter::Sink> weft_emitter::Sink for Counted<S> {
    type Error = S::Error;

    async fn publish(
        &self,
        headers: async_nats::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<(), Self::Error> {
        let published = self.0.publish(headers, body).await;
        if published.is_err() {
            status_publish_failed();
        }
        published
    }

    fn max_payload(&self) -> usize {
        self.0.max_payload()
    }

    fn problem(&self) -> Option<String> {
        self.0.problem()
    }
}

/// What the scrapes and the health answers read from a role's status.
pub trait Scraped: weft_emitter::Status {
    fn last_error(&self) -> &str;
    /// A pod's firewall and WireGuard parts (a host has neither).
    fn pod_parts(&self) -> (Option<&FirewallStatus>, Option<&WireGuardStatus>) {
        (None, None)
    }
}

impl Scraped for PodStatus {
    fn last_error(&self) -> &str {
        &self.last_error
    }
    fn pod_parts(&self) -> (Option<&FirewallStatus>, Option<&WireGuardStatus>) {
        (self.firewall.as_ref(), self.wireguard.as_ref())
    }
}

impl Scraped for HostStatus {
    fn last_error(&self) -> &str {
        &self.last_error
    }
}

/// The agent's state, read at each scrape: the newest status and the NATS client.
#[derive(Debug)]
pub struct Live<S> {
    pub status: watch::Receiver<S>,
    pub client: Option<async_nats::Client>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, unit, c.metric_type())?)
}

impl<S: Scraped> Collector for Live<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.status.borrow().clone();
        gauge(
            &mut encoder,
            "observed_generation",
            "The generation last applied (0 before any)",
            status.observed_generation() as i64,
        )?;
        let desired = EVENTS
            .desired_generation
            .load(Ordering::Relaxed)
            .max(status.observed_generation());
        gauge(
            &mut encoder,
            "desired_generation",
            "The newest generation received, applied or not",
            desired as i64,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "overall",
                "1 for the pod's current Overall state",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (state, which) in [
                ("Healthy", Overall::Healthy),
                ("Degraded", Overall::Degraded),
                ("Pending", Overall::Pending),
            ] {
                ConstGauge::new(i64::from(status.overall() == which))
                    .encode(family.encode_family(&StateLabel { state })?)?;
            }
        }
        let (firewall, wireguard) = status.pod_parts();
        if let Some(fw) = firewall {
            let mut family = encoder.encode_descriptor(
                "firewall_rules",
                "Rules of the spec in table inet weft-fw, as read back",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (direction, n) in [("ingress", fw.ingress_rules), ("egress", fw.egress_rules)] {
                ConstGauge::new(i64::from(n))
                    .encode(family.encode_family(&DirectionLabel { direction })?)?;
            }
        }
        if let Some(wg) = wireguard {
            gauge(
                &mut encoder,
                "wireguard_peers",
                "WireGuard peers on the device",
                wg.peers.len() as i64,
            )?;
            gauge(
                &mut encoder,
                "wireguard_peers_handshaken",
                "WireGuard peers that completed a handshake",
                wg.peers
                    .iter()
                    .filter(|p| p.last_handshake_unix > 0)
                    .count() as i64,
            )?;
            let (rx, tx) = wg.peers.iter().fold((0u64, 0u64), |(r, t), p| {
                (r.saturating_add(p.rx_bytes), t.saturating_add(p.tx_bytes))
            });
            let mut family = encoder.encode_descriptor(
                "wireguard",
                "Bytes through the WireGuard device, all peers (userspace: inner packets; kernel: wire bytes)",
                Some(&Unit::Bytes),
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (direction, n) in [("rx", rx), ("tx", tx)] {
                ConstCounter::new(n)
                    .encode(family.encode_family(&DirectionLabel { direction })?)?;
            }
        }
        if let Some(client) = &self.client {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            gauge(
                &mut encoder,
                "nats_connected",
                "1 while the NATS connection is up",
                i64::from(connected),
            )?;
            let connects = client.statistics().connects.load(Ordering::Relaxed);
            counter(
                &mut encoder,
                "nats_reconnects",
                "Connections to NATS after the first",
                None,
                connects.saturating_sub(1),
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every family of the agent, under [`PREFIX`].
pub fn registry<S: Scraped>(live: Live<S>) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let e = &*EVENTS;
    r.register_with_unit(
        "apply_duration",
        "Time one subsystem's part of an apply or a drift repair took",
        Unit::Seconds,
        e.apply_seconds.clone(),
    );
    r.register(
        "applies",
        "Specs handled, by result (a kept spec re-asserted at start included)",
        e.applies.clone(),
    );
    r.register(
        "rejected_specs",
        "Specs refused before the kernel, by reason",
        e.rejected.clone(),
    );
    r.register(
        "drift_repairs",
        "Repairs of changes someone else made to the agent's objects",
        e.drift_repairs.clone(),
    );
    r.register(
        "status_publish_failures",
        "Status snapshots that could not be published",
        e.status_publish_failures.clone(),
    );
    r.register(
        "build",
        "The agent's version",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        }),
    );
    // Families with no sample yet still get their HELP and TYPE, so a dashboard sees them.
    for s in [
        Subsystem::Network,
        Subsystem::Firewall,
        Subsystem::WireGuard,
    ] {
        let _ = e.drift_repairs.get_or_create(&subsystem_label(s));
    }
    for result in [
        ApplyResult::Applied,
        ApplyResult::Rejected,
        ApplyResult::Stale,
        ApplyResult::Failed,
    ] {
        let _ = e.applies.get_or_create(&result_label(result));
    }
    r.register_collector(Box::new(live));
    r
}

/// The registry as OpenMetrics text (`openmetrics`) or Prometheus text 0.0.4.
pub fn render(registry: &Registry, openmetrics: bool) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    if openmetrics {
        out
    } else {
        prometheus_text(&out)
    }
}

/// Rewrites `prometheus_client`'s OpenMetrics text (of the families it writes: counters,
/// gauges, histograms, info) as Prometheus text 0.0.4, where a counter's family is named
/// like its samples (`_total`), an info is a gauge named `_info`, and there is no `# UNIT` or
/// `# EOF` line.
pub fn prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics
        .lines()
        .filter(|l| *l != "# EOF" && !l.starts_with("# UNIT "))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = renamed(name, kind);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            // HELP comes right before its TYPE line, which says what the family is.
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = lines
                .get(i + 1)
                .and_then(|next| next.strip_prefix("# TYPE "))
                .and_then(|ty| ty.split_once(' '))
                .map_or("untyped", |(_, kind)| kind);
            out.push_str(&format!("# HELP {} {help}\n", renamed(name, kind).0));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A family's name and type in Prometheus text 0.0.4.
fn renamed(name: &str, kind: &str) -> (String, &'static str) {
    match kind {
        "counter" => (format!("{name}_total"), "counter"),
        "info" => (format!("{name}_info"), "gauge"),
        "gauge" => (name.to_owned(), "gauge"),
        "histogram" => (name.to_owned(), "histogram"),
        _ => (name.to_owned(), "untyped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_infos_are_renamed_for_the_prometheus_text_format() {
        let om = "# HELP weft_agent_applies Specs handled.\n\
                  # TYPE weft_agent_applies counter\n\
                  weft_agent_applies_total{result=\"Applied\"} 2\n\
                  # HELP weft_agent_build The agent's version.\n\
                  # TYPE weft_agent_build info\n\
                  weft_agent_build_info{version=\"0.1.0\"} 1\n\
                  # HELP weft_agent_apply_duration_seconds Time.\n\
                  # TYPE weft_agent_apply_duration_seconds histogram\n\
                  # UNIT weft_agent_apply_duration_seconds seconds\n\
                  weft_agent_apply_duration_seconds_sum{subsystem=\"Network\"} 0.5\n\
                  # EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP weft_agent_applies_total Specs handled.\n\
             # TYPE weft_agent_applies_total counter\n\
             weft_agent_applies_total{result=\"Applied\"} 2\n\
             # HELP weft_agent_build_info The agent's version.\n\
             # TYPE weft_agent_build_info gauge\n\
             weft_agent_build_info{version=\"0.1.0\"} 1\n\
             # HELP weft_agent_apply_duration_seconds Time.\n\
             # TYPE weft_agent_apply_duration_seconds histogram\n\
             weft_agent_apply_duration_seconds_sum{subsystem=\"Network\"} 0.5\n"
        );
    }
}
