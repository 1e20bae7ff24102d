//! Reads the figures of `shared::report` out of the tracking store: every
//! history with an entry in the range (from the active store and the
//! warehouse alike, streamed one order at a time so memory holds only the
//! samples), the nodes' incidents in the range, and the orders waiting now.

use super::store::TrackerStore;
use futures::TryStreamExt;
use shared::audit::rfc3339;
use shared::report::{stuck_thresholds, Entry, Report, Stuck, StuckOrder, Tally};
use sqlx::Row as _;
use std::collections::HashMap;
use std::time::Duration;
use topology::{OrderState, WORKFLOW};

/// `o` (a row of `tracker_orders`) is in a state a service call produced.
const SERVICE_CALL: &str = "EXISTS (SELECT 1 FROM tracker_events e WHERE e.order_id = o.order_id \
     AND e.to_state = o.state AND e.mode = 'service')";

/// At most this many stuck orders are listed (longest waiting first).
pub const MAX_STUCK_LISTED: usize = 200;

type Time = chrono::DateTime<chrono::Utc>;

fn parse_time(text: &str) -> sqlx::Result<Time> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| sqlx::Error::Decode(e.into()))
}

impl TrackerStore {
    /// The report for `[from, to)`; stuck orders as of `now`, each node's
    /// threshold `stuck_after` when given, else derived from its p99.
    pub async fn report(
        &self,
        from: Time,
        to: Time,
        now: Time,
        stuck_after: Option<Duration>,
    ) -> sqlx::Result<Report> {
        let columns = "order_id, seq, node, to_state, terminal, change_id, at";
        let sql = format!(
            "SELECT {columns} FROM tracker_events WHERE order_id IN \
             (SELECT order_id FROM tracker_events WHERE at >= $1 AND at < $2) UNION ALL \
             SELECT {columns} FROM warehouse_events WHERE order_id IN \
             (SELECT order_id FROM warehouse_events WHERE at >= $1 AND at < $2) ORDER BY order_id, seq"
        );
        let (from_text, to_text) = (rfc3339::format(&from), rfc3339::format(&to));
        let mut rows = sqlx::query(&sql).bind(&from_text).bind(&to_text).fetch(&self.store.pool);
        let mut tally = Tally::new(from, to);
        let mut order: Vec<Entry> = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let change_id: Option<String> = row.try_get("change_id")?;
            let entry = Entry {
                order_id: row.try_get("order_id")?,
                seq: row.try_get("seq")?,
                node: row.try_get("node")?,
                state: row.try_get("to_state")?,
                terminal: row.try_get::<i64, _>("terminal")? != 0,
                change: change_id.is_some(),
                at: parse_time(&row.try_get::<String, _>("at")?)?,
            };
            if order.first().is_some_and(|first| first.order_id != entry.order_id) {
                tally.add_order(std::mem::take(&mut order));
            }
            order.push(entry);
        }
        drop(rows);
        if !order.is_empty() {
            tally.add_order(order);
        }

        let mut incidents: HashMap<String, (u64, u64)> = HashMap::new();
        let counted = sqlx::query(
            "SELECT node, kind, COUNT(*) AS n FROM tracker_incidents WHERE at >= $1 AND at < $2 GROUP BY node, kind",
        )
        .bind(&from_text)
        .bind(&to_text)
        .fetch_all(&self.store.pool)
        .await?;
        for row in counted {
            let n = row.try_get::<i64, _>("n")? as u64;
            let entry = incidents.entry(row.try_get("node")?).or_default();
            match row.try_get::<String, _>("kind")?.as_str() {
                "retried" => entry.0 += n,
                _ => entry.1 += n,
            }
        }

        let batches: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT captures, amount_cents, oldest_wait_ms FROM tracker_settlements WHERE at >= $1 AND at < $2",
        )
        .bind(&from_text)
        .bind(&to_text)
        .fetch_all(&self.store.pool)
        .await?;

        let nodes: Vec<&str> = WORKFLOW.nodes().map(|n| n.name()).collect();
        let thresholds = stuck_thresholds(&nodes, &tally.p99s(), stuck_after);
        let stuck = self.stuck(now, &thresholds).await?;
        let mut report = tally.finish(&incidents, &nodes, stuck, thresholds);
        report.settlement = shared::report::SettlementFigures::of(&batches);
        report.answers = super::outcomes::figures(&self.store.pool, &from_text, &to_text).await?;
        report.in_flight = self.in_flight().await?;
        Ok(report)
    }

    /// The active orders per workflow version, read from their `accepted`
    /// events; every version this build runs is listed, 0 included.
    async fn in_flight(&self) -> sqlx::Result<Vec<shared::report::WorkflowInFlight>> {
        let counted: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT e.workflow, e.workflow_version, COUNT(*) FROM tracker_orders o JOIN tracker_events e \
             ON e.order_id = o.order_id AND e.workflow IS NOT NULL AND e.workflow_version IS NOT NULL \
             WHERE o.terminal = 0 GROUP BY e.workflow, e.workflow_version",
        )
        .fetch_all(&self.store.pool)
        .await?;
        let mut listed: Vec<shared::report::WorkflowInFlight> = topology::workflow::WORKFLOWS
            .iter()
            .map(|w| shared::report::WorkflowInFlight {
                workflow: w.name.to_string(),
                version: i64::from(w.version),
                orders: 0,
            })
            .collect();
        for (workflow, version, orders) in counted {
            let orders = orders.max(0) as u64;
            match listed.iter_mut().find(|w| w.workflow == workflow && w.version == version) {
                Some(known) => known.orders = orders,
                None => listed.push(shared::report::WorkflowInFlight { workflow, version, orders }),
            }
        }
        Ok(listed)
    }

    /// The node an order in `state` goes to next, as routing decides it
    /// from the order's units and whether it holds a reservation (asked of
    /// its history only for the states whose route depends on it).
    async fn waits_at(
        &self,
        order_id: &str,
        state: &str,
        units: Option<i64>,
    ) -> sqlx::Result<Option<topology::Node>> {
        let Some(state) = OrderState::parse(state) else { return Ok(None) };
        // The order's own definition (its version may route elsewhere).
        let follows: Option<(String, i64)> = sqlx::query_as(
            "SELECT workflow, workflow_version FROM tracker_events WHERE order_id = $1 \
             AND workflow IS NOT NULL AND workflow_version IS NOT NULL LIMIT 1",
        )
        .bind(order_id)
        .fetch_optional(&self.store.pool)
        .await?;
        let definition = follows
            .and_then(|(name, version)| topology::workflow::workflow(&name, u32::try_from(version).ok()?))
            .unwrap_or(&WORKFLOW);
        let mut facts = topology::workflow::Facts { units: units.unwrap_or(1), holds_reservation: false };
        let with_reservation = topology::workflow::Facts { holds_reservation: true, ..facts };
        if definition.next_node(state, &facts) != definition.next_node(state, &with_reservation) {
            let reserved: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM tracker_events WHERE order_id = $1 AND to_state = 'reserved'",
            )
            .bind(order_id)
            .fetch_one(&self.store.pool)
            .await?;
            facts.holds_reservation = reserved > 0;
        }
        Ok(definition.next_node(state, &facts))
    }

    /// The active orders waiting at a node for longer than its threshold;
    /// an order whose current state a service call produced (`mode`
    /// `service`: its element does not travel on) is counted apart, never stuck.
    async fn stuck(
        &self,
        now: Time,
        thresholds: &std::collections::BTreeMap<String, u64>,
    ) -> sqlx::Result<Stuck> {
        let service_calls: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM tracker_orders o WHERE o.terminal = 0 AND {SERVICE_CALL}"
        ))
        .fetch_one(&self.store.pool)
        .await?;
        let shortest = thresholds.values().min().copied().unwrap_or(0);
        let before = rfc3339::format(&(now - chrono::Duration::milliseconds(shortest as i64)));
        let rows = sqlx::query(&format!(
            "SELECT order_id, state, updated_at, units FROM tracker_orders o WHERE terminal = 0 AND updated_at <= $1 \
             AND NOT {SERVICE_CALL} ORDER BY updated_at LIMIT 5000"
        ))
        .bind(before)
        .fetch_all(&self.store.pool)
        .await?;
        let mut stuck = Vec::new();
        for row in rows {
            let state: String = row.try_get("state")?;
            let order_id: String = row.try_get("order_id")?;
            let units: Option<i64> = row.try_get("units")?;
            let Some(node) = self.waits_at(&order_id, &state, units).await? else { continue };
            let since: String = row.try_get("updated_at")?;
            let waiting_ms = (now - parse_time(&since)?).num_milliseconds().max(0) as u64;
            let threshold_ms = thresholds.get(node.name()).copied().unwrap_or(u64::MAX);
            if waiting_ms >= threshold_ms {
                stuck.push(StuckOrder {
                    order_id,
                    state,
                    at_node: node.name().to_string(),
                    since,
                    waiting_ms,
                    threshold_ms,
                });
            }
        }
        stuck.truncate(MAX_STUCK_LISTED);
        Ok(Stuck { orders: stuck, service_calls: service_calls.max(0) as u64 })
    }
}
