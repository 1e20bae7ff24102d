//! The dashboard's view of the stack beyond the workflow nodes: the
//! coordinator and its directed orders in flight, each domain copy (its
//! requests waiting, whether anyone answers, and its feed's lag), the
//! backorders waiting per SKU, the true queues, each node's retry queue, the
//! dead-letter queue and the last hour's failures with their reasons.
//!
//! Queue figures come from the management API (`None` when it does not
//! answer); the rest from the tracker's own store: the history (the latest
//! step of each order in flight) and the incidents the nodes report.

use super::store::TrackerStore;
use serde::Serialize;
use shared::backorder;
use sqlx::Row;
use std::collections::BTreeMap;
use topology::{DomainCopy, WORKFLOW};

/// How far back the failures by reason go.
pub const FAILURES_WINDOW: chrono::Duration = chrono::Duration::hours(1);
/// At most this many (kind, node, reason) groups are shown, newest first.
const MAX_FAILURE_GROUPS: i64 = 20;
/// At most this many backordered orders are read for the SKU table.
const MAX_BACKORDERS_READ: i64 = 10_000;

/// A queue's messages (ready or in hand) and consumers, as the management
/// API tells them: `None` until it has gathered the queue's figures (every
/// few seconds; a queue's first figures can take longer on a busy broker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub messages: Option<u64>,
    pub consumers: Option<u64>,
}

/// One queue in the view: `label` says what it is for; the figures are
/// `None` when the management API did not answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueView {
    pub queue: String,
    pub label: String,
    pub messages: Option<u64>,
    pub consumers: Option<u64>,
}

/// The coordinator: its queues and the directed orders it is driving.
#[derive(Debug, Serialize)]
pub struct CoordinatorView {
    pub queue: QueueView,
    pub replies: QueueView,
    /// Orders in flight whose latest step the coordinator had done through a service.
    pub directed_in_flight: Option<u64>,
}

/// A domain copy: who answers it, its requests waiting, and its feed (a
/// replica's changes from its primary, or the primary's true queue) with
/// the messages not yet applied: its lag.
#[derive(Debug, Serialize)]
pub struct DomainView {
    pub copy: String,
    pub process: String,
    pub requests: QueueView,
    pub feed: Option<QueueView>,
}

/// Orders and units waiting for one SKU.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct BackorderView {
    pub sku: String,
    pub orders: u64,
    pub units: i64,
}

/// Failures of one kind (`retried`, `dead_lettered`) at one node for one reason.
#[derive(Debug, Serialize)]
pub struct FailureView {
    pub kind: String,
    pub node: String,
    pub reason: String,
    pub count: i64,
    pub last_at: String,
}

/// The whole stack beside the workflow.
#[derive(Debug, Serialize)]
pub struct StackView {
    pub coordinator: CoordinatorView,
    pub domains: Vec<DomainView>,
    /// Backordered orders in flight, per SKU; orders waiting for the items
    /// of purchase orders sent before count under "(received items)".
    pub backorders: Vec<BackorderView>,
    pub true_queues: Vec<QueueView>,
    pub retries: Vec<QueueView>,
    pub dead_letters: QueueView,
    pub failures: Vec<FailureView>,
}

/// The view from the queues' depths (`None`: the management API did not answer) and the store.
pub async fn read(store: &TrackerStore, depths: Option<&BTreeMap<String, QueueDepth>>) -> StackView {
    let queue = |name: &str, label: &str| queue_view(name, label, depths);
    let coordinator = CoordinatorView {
        queue: queue(topology::COORDINATOR_QUEUE, "orders placed for the coordinator"),
        replies: queue(topology::COORDINATOR_REPLIES_QUEUE, "the services' answers"),
        directed_in_flight: directed_in_flight(store).await.ok(),
    };
    let domains = DomainCopy::all()
        .into_iter()
        .map(|copy| DomainView {
            copy: copy.label(),
            process: copy.process(),
            requests: queue(&copy.queue(), "requests"),
            feed: copy.feed_queue().map(|feed| queue(&feed, "feed")),
        })
        .collect();
    let backorders = backordered_details(store).await.map(|d| backorders_by_sku(&d)).unwrap_or_default();
    let true_queues = vec![
        queue(topology::RECEIVED_ITEMS_QUEUE, "received items"),
        queue(topology::DISTRIBUTOR_SHIPMENTS_QUEUE, "distributor shipments (purchase orders)"),
        queue(topology::SETTLEMENT_QUEUE, "captures to settle (aggregation queue, in batches)"),
    ];
    let retries = WORKFLOW.nodes().map(|node| queue(&node.retry_queue(), node.name())).collect();
    StackView {
        coordinator,
        domains,
        backorders,
        true_queues,
        retries,
        dead_letters: queue(topology::DEAD_LETTER_QUEUE, "dead letters"),
        failures: failures(store).await.unwrap_or_default(),
    }
}

/// `name`'s figures from `depths`; unknown when the API did not answer, did
/// not list the queue or has no figures for it yet.
pub fn queue_view(name: &str, label: &str, depths: Option<&BTreeMap<String, QueueDepth>>) -> QueueView {
    let depth = depths.and_then(|d| d.get(name).copied()).unwrap_or_default();
    QueueView {
        queue: name.to_string(),
        label: label.to_string(),
        messages: depth.messages,
        consumers: depth.consumers,
    }
}

/// Orders and units per SKU of the backordered orders' details, the SKU
/// with the most units first; an order waiting on purchase orders sent
/// before counts under "(received items)".
pub fn backorders_by_sku(details: &[String]) -> Vec<BackorderView> {
    let mut by_sku: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for lines in details.iter().filter_map(|d| backorder::parse(d)) {
        if lines.is_empty() {
            by_sku.entry("(received items)".into()).or_default().0 += 1;
        }
        let mut skus: BTreeMap<&str, i64> = BTreeMap::new();
        for line in &lines {
            *skus.entry(&line.sku).or_default() += line.qty;
        }
        for (sku, units) in skus {
            let entry = by_sku.entry(sku.to_string()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.saturating_add(units);
        }
    }
    let mut view: Vec<BackorderView> =
        by_sku.into_iter().map(|(sku, (orders, units))| BackorderView { sku, orders, units }).collect();
    view.sort_by(|a, b| b.units.cmp(&a.units).then(b.orders.cmp(&a.orders)).then(a.sku.cmp(&b.sku)));
    view
}

/// Orders in flight whose latest step was done in directed mode.
async fn directed_in_flight(store: &TrackerStore) -> sqlx::Result<u64> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tracker_orders o JOIN tracker_events e \
         ON e.order_id = o.order_id AND e.seq = o.seq WHERE o.terminal = 0 AND e.mode = 'directed'",
    )
    .fetch_one(&store.store.pool)
    .await?;
    Ok(count.max(0) as u64)
}

/// The latest step's detail of each backordered order in flight.
async fn backordered_details(store: &TrackerStore) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT e.detail FROM tracker_orders o JOIN tracker_events e \
         ON e.order_id = o.order_id AND e.seq = o.seq WHERE o.state = 'backordered' LIMIT $1",
    )
    .bind(MAX_BACKORDERS_READ)
    .fetch_all(&store.store.pool)
    .await
}

/// The last hour's incidents by kind, node and reason, the latest first.
async fn failures(store: &TrackerStore) -> sqlx::Result<Vec<FailureView>> {
    let since = shared::audit::rfc3339::format(&(chrono::Utc::now() - FAILURES_WINDOW));
    let rows = sqlx::query(
        "SELECT kind, node, reason, COUNT(*) AS n, MAX(at) AS last_at FROM tracker_incidents \
         WHERE at >= $1 GROUP BY kind, node, reason ORDER BY MAX(at) DESC LIMIT $2",
    )
    .bind(since)
    .bind(MAX_FAILURE_GROUPS)
    .fetch_all(&store.store.pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(FailureView {
                kind: row.try_get("kind")?,
                node: row.try_get("node")?,
                reason: row.try_get("reason")?,
                count: row.try_get("n")?,
                last_at: row.try_get("last_at")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_orders_add_up_per_sku_and_the_largest_comes_first() {
        let details: Vec<String> = [
            "backordered: waiting for SKU-1 x3 from D-1, SKU-2 x1 from D-2",
            "backordered: waiting for SKU-1 x2 from D-1, SKU-1 x1 from D-3",
            "backordered: waiting for the received items",
            "reserved",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let view = backorders_by_sku(&details);
        let row = |sku: &str, orders, units| BackorderView { sku: sku.into(), orders, units };
        assert_eq!(view, vec![row("SKU-1", 2, 6), row("SKU-2", 1, 1), row("(received items)", 1, 0)]);
    }

    #[test]
    fn a_queue_without_figures_is_unknown_never_empty() {
        let known = QueueDepth { messages: Some(4), consumers: Some(1) };
        let depths = BTreeMap::from([("q".to_string(), known), ("new".to_string(), QueueDepth::default())]);
        assert_eq!(queue_view("q", "x", Some(&depths)).messages, Some(4));
        assert_eq!(queue_view("new", "x", Some(&depths)).consumers, None);
        assert_eq!(queue_view("other", "x", Some(&depths)).consumers, None);
        assert_eq!(queue_view("q", "x", None).messages, None);
    }
}
