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
}
