//! This process's Prometheus metrics, rendered in the text exposition format
//! for `GET /metrics` (served by every worker and the tracker on
//! `ORDERFLOW_METRICS_ADDR`). The counters are the named events of
//! [`crate::events`] (one place counts them); beside them a histogram of the
//! time from a delivery to its settling, the deliveries in hand, and for the
//! tracker the audit events waiting in its queue. Every series carries the
//! process's `node` and `instance` labels, as Prometheus conventions want
//! (`_total` counters, `_seconds` histograms, base units).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::{counter::ConstCounter, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

/// What is measured beside the events' counters.
pub struct Measured {
    /// Seconds from receiving a delivery (element or service call) to settling it.
    pub handle_seconds: Histogram,
    /// Deliveries received and not yet settled.
    pub in_flight: Gauge,
    /// The tracker's audit events waiting in its queue (the tracker only).
    pub tracker_lag: Gauge<u64, AtomicU64>,
}

/// A replica's distance from its primary (replicas only): changes not
/// applied, how long the oldest of them has waited, the last applied.
pub struct ReplicaGauges {
    pub lag_changes: Gauge,
    pub lag_ms: Gauge,
    pub applied_seq: Gauge,
}

static REPLICA: std::sync::OnceLock<ReplicaGauges> = std::sync::OnceLock::new();
/// What the process says about itself on `GET /status` (a domain copy's status).
static STATUS: std::sync::Mutex<Option<serde_json::Value>> = std::sync::Mutex::new(None);

/// This process's group commits (`crate::group_commit`): transactions
/// committed, and the writes they held.
static STORE_COMMITS: AtomicU64 = AtomicU64::new(0);
static STORE_WRITES: AtomicU64 = AtomicU64::new(0);

/// Counts one committed transaction holding `writes` writes.
pub fn count_commit(writes: u64) {
    STORE_COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    STORE_WRITES.fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
}

/// Sets a replica's lag gauges.
pub fn set_replica_lag(changes: i64, ms: i64, applied_seq: i64) {
    let gauges = REPLICA.get_or_init(|| ReplicaGauges {
        lag_changes: Gauge::default(),
        lag_ms: Gauge::default(),
        applied_seq: Gauge::default(),
    });
    gauges.lag_changes.set(changes);
    gauges.lag_ms.set(ms);
    gauges.applied_seq.set(applied_seq);
}

/// Sets what `GET /status` answers.
pub fn set_status(status: serde_json::Value) {
    *STATUS.lock().expect("not poisoned") = Some(status);
}

/// What `GET /status` answers, if the process says anything.
pub fn status() -> Option<serde_json::Value> {
    STATUS.lock().expect("not poisoned").clone()
}

static MEASURED: LazyLock<Measured> = LazyLock::new(|| Measured {
    // 1 ms to about 16 s.
    handle_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    )),
    in_flight: Gauge::default(),
    tracker_lag: Gauge::default(),
});

pub fn measured() -> &'static Measured {
    &MEASURED
}

/// Counts one delivery in hand until the guard is dropped, and then observes
/// how long it was held.
pub struct InHand {
    started: std::time::Instant,
}

impl InHand {
    pub fn start() -> InHand {
        MEASURED.in_flight.inc();
        InHand { started: std::time::Instant::now() }
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        MEASURED.in_flight.dec();
        MEASURED.handle_seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

/// The help text of each event counter, by its name in [`crate::events`].
fn help(name: &str) -> &'static str {
    match name {
        "elements_handled" => "Elements (and service calls) handled, their messages confirmed",
        "elements_failed" => "Deliveries whose handling failed (retried or dead-lettered)",
        "dead_lettered" => "Messages sent to the dead-letter queue",
        "retried" => "Elements sent round the retry queue after a transient failure",
        "gave_up" => "Elements dead-lettered after their last attempt",
        "reconnected" => "Sessions re-established after a lost connection",
        "changes_applied" => "In-flight changes applied by this process",
        "changes_rejected" => "In-flight changes rejected by this process",
        "calls_answered" => "Service calls answered",
        "events_recorded" => "Audit events recorded by the tracker (new ones)",
        _ => "An orderflow event",
    }
}

/// The metrics of this process, labelled `node` and `instance`, as text.
pub fn render(node: &str, instance: &str) -> String {
    let labels = [("node".into(), node.to_string().into()), ("instance".into(), instance.to_string().into())];
    let mut registry = Registry::with_prefix_and_labels("orderflow", labels.into_iter());
    for (name, value) in crate::events::snapshot() {
        registry.register(name, help(name), ConstCounter::new(value));
    }
    let measured = measured();
    registry.register(
        "handle_seconds",
        "Seconds from receiving a delivery to settling it",
        measured.handle_seconds.clone(),
    );
    registry.register("in_flight", "Deliveries received and not yet settled", measured.in_flight.clone());
    if node == "tracker" {
        registry.register(
            "tracker_lag_events",
            "Audit messages (single events or batches) waiting in the tracker's queue",
            measured.tracker_lag.clone(),
        );
    }
    let commits = STORE_COMMITS.load(std::sync::atomic::Ordering::Relaxed);
    if commits > 0 {
        let writes = STORE_WRITES.load(std::sync::atomic::Ordering::Relaxed);
        registry.register(
            "store_commits",
            "Transactions the store's writer committed",
            ConstCounter::new(commits),
        );
        registry.register(
            "store_writes",
            "Writes those transactions held (writes over commits: the group commit's size)",
            ConstCounter::new(writes),
        );
    }
    if let Some(replica) = REPLICA.get() {
        registry.register(
            "replica_lag_changes",
            "Changes made at the primary not yet applied here",
            replica.lag_changes.clone(),
        );
        registry.register(
            "replica_lag_ms",
            "Milliseconds the oldest change not applied here has waited",
            replica.lag_ms.clone(),
        );
        registry.register(
            "replica_applied_seq",
            "The last change of the primary applied here",
            replica.applied_seq.clone(),
        );
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String never fails");
    text
}

/// How often the tracker reads its queue's depth for `tracker_lag_events`.
pub const LAG_EVERY: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_follows_prometheus_conventions() {
        crate::events::DeadLettered { node: "payment", routing_key: "order.payment", reason: "bad" }.emit();
        drop(InHand::start());
        let text = render("payment", "payment-1");
        assert!(text.contains("# TYPE orderflow_elements_handled counter"), "{text}");
        assert!(
            text.contains(r#"orderflow_dead_lettered_total{node="payment",instance="payment-1"} "#),
            "{text}"
        );
        assert!(text.contains("# TYPE orderflow_handle_seconds histogram"), "{text}");
        assert!(
            text.contains(
                r#"orderflow_handle_seconds_bucket{le="0.001",node="payment",instance="payment-1"}"#
            ) || text.contains("orderflow_handle_seconds_bucket{"),
            "{text}"
        );
        assert!(text.contains("orderflow_in_flight{"), "{text}");
        assert!(!text.contains("tracker_lag"), "only the tracker reports its lag");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn group_commits_are_counted_with_the_writes_they_held() {
        count_commit(5);
        count_commit(3);
        let text = render("shipping", "shipping-1");
        let value = |name: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("orderflow_store_commits_total") >= 2, "{text}");
        assert!(value("orderflow_store_writes_total") >= 8, "{text}");
    }
}
