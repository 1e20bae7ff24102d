//! The warehouse: where an order's history goes once the order has ended
//! and a quiet period (`ORDERFLOW_WAREHOUSE_AFTER_S`) has passed, so that the
//! active store (`tracker_events`, `tracker_orders`) holds only the orders
//! in flight and those recently ended, however many were ever placed.
//!
//! The warehouse is two tables in the tracker's own database, shaped for
//! analysis: `warehouse_events` (every entry of the history, with the day it
//! happened and the step's dwell time, the time since the order's previous
//! state) and `warehouse_orders` (one row per order: final state, customer,
//! placed and ended times, end-to-end latency). Being in the same database
//! makes each move one transaction: an order is never in both stores, never
//! in neither, whatever moment a crash comes. DuckDB (`ATTACH 'tracker.db'
//! (TYPE sqlite)`), pandas (`read_sql`) or any PostgreSQL client read them
//! as they are.
//!
//! A late record of a moved order (a duplicate redelivered, a change record
//! after the quiet period) is not made active again: its row waits in
//! `tracker_events` until the next pass moves it beside the rest, and
//! status queries read both stores meanwhile.

use super::store::{numbered, TrackerStore};
use shared::audit::rfc3339;
use shared::tracker_api::StoreRows;
use sqlx::any::AnyRow;
use sqlx::Row as _;
use std::collections::HashMap;
use std::time::Duration;

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS warehouse_events (event_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
     seq BIGINT NOT NULL, version BIGINT NOT NULL, node TEXT NOT NULL, instance_id TEXT NOT NULL, \
     from_state TEXT, to_state TEXT NOT NULL, terminal BIGINT NOT NULL, at TEXT NOT NULL, detail TEXT NOT NULL, \
     recorded_at TEXT NOT NULL, change_id TEXT, mode TEXT, trace_id TEXT, day TEXT NOT NULL, dwell_ms BIGINT, \
     moved_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS warehouse_events_by_order ON warehouse_events (order_id, seq)",
    "CREATE INDEX IF NOT EXISTS warehouse_events_by_time ON warehouse_events (at)",
    "CREATE TABLE IF NOT EXISTS warehouse_orders (order_id TEXT PRIMARY KEY, state TEXT NOT NULL, \
     customer_id TEXT, placed_at TEXT, updated_at TEXT NOT NULL, latency_ms BIGINT, steps BIGINT NOT NULL, \
     day TEXT NOT NULL, moved_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS warehouse_orders_by_state ON warehouse_orders (state)",
    "CREATE INDEX IF NOT EXISTS warehouse_orders_by_customer ON warehouse_orders (customer_id, order_id)",
    "CREATE INDEX IF NOT EXISTS warehouse_orders_by_time ON warehouse_orders (updated_at)",
];

/// The columns an event row has in both stores.
pub const EVENT_COLUMNS: &str = "event_id, order_id, seq, version, node, instance_id, from_state, to_state, \
     terminal, at, detail, recorded_at, change_id, mode, trace_id";

/// How many orders one move transaction takes.
pub const MOVE_BATCH: usize = 500;

/// What one pass moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub orders: u64,
    pub events: u64,
    /// Records of already moved orders that arrived late.
    pub late_events: u64,
}

/// A value of a row being copied from one table to another.
#[derive(Clone, Debug)]
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

/// One `tracker_events` row as read for its move.
struct EventRow {
    values: Vec<Value>,
    order_id: String,
    seq: i64,
    at: String,
    is_change: bool,
}

const TEXT_COLUMNS: &[&str] =
    &["event_id", "order_id", "node", "instance_id", "to_state", "at", "detail", "recorded_at"];

fn read_event(row: &AnyRow) -> sqlx::Result<EventRow> {
    let mut values = Vec::new();
    for column in EVENT_COLUMNS.split(',').map(str::trim) {
        let value = match column {
            "seq" | "version" | "terminal" => Value::Int(row.try_get(column)?),
            c if TEXT_COLUMNS.contains(&c) => Value::Text(Some(row.try_get(column)?)),
            _ => Value::Text(row.try_get(column)?),
        };
        values.push(value);
    }
    let change_id: Option<String> = row.try_get("change_id")?;
    Ok(EventRow {
        values,
        order_id: row.try_get("order_id")?,
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        is_change: change_id.is_some(),
    })
}

/// Milliseconds from `from` to `to` (RFC 3339 texts), when both parse.
fn millis_between(from: &str, to: &str) -> Option<i64> {
    let from = chrono::DateTime::parse_from_rfc3339(from).ok()?;
    let to = chrono::DateTime::parse_from_rfc3339(to).ok()?;
    Some((to - from).num_milliseconds())
}

/// Each state step's dwell time: the time since the order's previous state
/// step (by seq, the order the steps happened in); `None` for `placed` and
/// for change records.
fn dwell_times(events: &[EventRow]) -> HashMap<usize, i64> {
    let mut by_order: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, event) in events.iter().enumerate().filter(|(_, e)| !e.is_change) {
        by_order.entry(&event.order_id).or_default().push(i);
    }
    let mut dwell = HashMap::new();
    for steps in by_order.values_mut() {
        steps.sort_by_key(|&i| events[i].seq);
        for pair in steps.windows(2) {
            if let Some(ms) = millis_between(&events[pair[0]].at, &events[pair[1]].at) {
                dwell.insert(pair[1], ms);
            }
        }
    }
    dwell
}

/// `($1, $2, ...), (...)` for `rows` rows of `columns` values each.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    values: &'q [Value],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for value in values {
        query = match value {
            Value::Text(text) => query.bind(text.clone()),
            Value::Int(n) => query.bind(*n),
        };
    }
    query
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// The `tracker_events` rows of `order_ids`.
async fn events_of(tx: &mut Tx<'_>, order_ids: &[String]) -> sqlx::Result<Vec<EventRow>> {
    let mut events = Vec::new();
    for chunk in order_ids.chunks(400) {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM tracker_events WHERE order_id IN ({})",
            numbered(1, chunk.len())
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            events.push(read_event(&row)?);
        }
    }
    Ok(events)
}

/// Copies `events` into `warehouse_events` (an event already there stays as
/// it is), then deletes every `tracker_events` row of `order_ids`.
async fn move_events(
    tx: &mut Tx<'_>,
    events: &[EventRow],
    order_ids: &[String],
    moved_at: &str,
) -> sqlx::Result<()> {
    let dwell = dwell_times(events);
    let rows: Vec<Vec<Value>> = events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let mut values = event.values.clone();
            values.push(Value::Text(Some(event.at.chars().take(10).collect())));
            values.push(Value::Int(dwell.get(&i).copied()));
            values.push(Value::Text(Some(moved_at.to_string())));
            values
        })
        .collect();
    const COLUMNS: usize = 18;
    for chunk in rows.chunks(200) {
        let sql = format!(
            "INSERT INTO warehouse_events ({EVENT_COLUMNS}, day, dwell_ms, moved_at) VALUES {} \
             ON CONFLICT (event_id) DO NOTHING",
            placeholders(chunk.len(), COLUMNS)
        );
        let flat: Vec<Value> = chunk.iter().flatten().cloned().collect();
        bind_all(sqlx::query(&sql).persistent(false), &flat).execute(&mut **tx).await?;
    }
    for chunk in order_ids.chunks(400) {
        let sql = format!("DELETE FROM tracker_events WHERE order_id IN ({})", numbered(1, chunk.len()));
        let mut query = sqlx::query(&sql).persistent(false);
        for id in chunk {
            query = query.bind(id);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// An ended order claimed for its move.
struct Ended {
    order_id: String,
    state: String,
    customer_id: Option<String>,
    updated_at: String,
}

impl TrackerStore {
    /// Moves the orders that ended more than `quiet` ago, up to
    /// [`MOVE_BATCH`] of them, in one transaction; also moves late records
    /// of orders moved before.
    pub async fn move_ended(&self, quiet: Duration) -> sqlx::Result<Moved> {
        let now = chrono::Utc::now();
        let cutoff = rfc3339::format(&(now - chrono::Duration::from_std(quiet).unwrap_or_default()));
        let moved_at = rfc3339::format(&now);
        let mut tx = self.store.pool.begin().await?;
        // Claim by deleting: of two trackers (PostgreSQL) only one gets each order.
        let sql = format!(
            "DELETE FROM tracker_orders WHERE order_id IN (SELECT order_id FROM tracker_orders \
             WHERE terminal = 1 AND updated_at <= $1 ORDER BY order_id LIMIT {MOVE_BATCH}) AND terminal = 1 \
             RETURNING order_id, state, customer_id, updated_at"
        );
        let claimed: Vec<Ended> = sqlx::query(&sql)
            .bind(&cutoff)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok(Ended {
                    order_id: row.try_get("order_id")?,
                    state: row.try_get("state")?,
                    customer_id: row.try_get("customer_id")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect::<sqlx::Result<_>>()?;
        let ids: Vec<String> = claimed.iter().map(|o| o.order_id.clone()).collect();
        let events = events_of(&mut tx, &ids).await?;
        let mut placed_at: HashMap<&str, &str> = HashMap::new();
        let mut steps: HashMap<&str, i64> = HashMap::new();
        for event in events.iter().filter(|e| !e.is_change) {
            *steps.entry(&event.order_id).or_default() += 1;
            if event.seq == 0 {
                placed_at.insert(&event.order_id, &event.at);
            }
        }
        let orders: Vec<Value> = claimed
            .iter()
            .flat_map(|order| {
                let placed = placed_at.get(order.order_id.as_str()).map(|at| at.to_string());
                let latency = placed.as_deref().and_then(|placed| millis_between(placed, &order.updated_at));
                vec![
                    Value::Text(Some(order.order_id.clone())),
                    Value::Text(Some(order.state.clone())),
                    Value::Text(order.customer_id.clone()),
                    Value::Text(placed),
                    Value::Text(Some(order.updated_at.clone())),
                    Value::Int(latency),
                    Value::Int(Some(steps.get(order.order_id.as_str()).copied().unwrap_or(0))),
                    Value::Text(Some(order.updated_at.chars().take(10).collect())),
                    Value::Text(Some(moved_at.clone())),
                ]
            })
            .collect();
        const ORDER_COLUMNS: usize = 9;
        for chunk in orders.chunks(ORDER_COLUMNS * 200) {
            let sql = format!(
                "INSERT INTO warehouse_orders (order_id, state, customer_id, placed_at, updated_at, latency_ms, \
                 steps, day, moved_at) VALUES {} ON CONFLICT (order_id) DO NOTHING",
                placeholders(chunk.len() / ORDER_COLUMNS, ORDER_COLUMNS)
            );
            bind_all(sqlx::query(&sql).persistent(false), chunk).execute(&mut *tx).await?;
        }
        move_events(&mut tx, &events, &ids, &moved_at).await?;

        // Late records of orders moved earlier.
        let late_ids: Vec<String> = sqlx::query(&format!(
            "SELECT DISTINCT order_id FROM tracker_events WHERE order_id IN \
             (SELECT order_id FROM warehouse_orders) LIMIT {MOVE_BATCH}"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("order_id"))
        .collect::<sqlx::Result<_>>()?;
        let late = events_of(&mut tx, &late_ids).await?;
        // No dwell for these: their neighbours are already moved.
        let late: Vec<EventRow> = late.into_iter().map(|e| EventRow { is_change: true, ..e }).collect();
        move_events(&mut tx, &late, &late_ids, &moved_at).await?;
        for chunk in late_ids.chunks(400) {
            let sql = format!("DELETE FROM tracker_orders WHERE order_id IN ({})", numbered(1, chunk.len()));
            let mut query = sqlx::query(&sql).persistent(false);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Moved { orders: ids.len() as u64, events: events.len() as u64, late_events: late.len() as u64 })
    }

    /// How many rows the active store and the warehouse hold.
    pub async fn row_counts(&self) -> sqlx::Result<StoreRows> {
        let count = |table: &str| format!("SELECT COUNT(*) FROM {table}");
        let mut counts = [0i64; 4];
        for (i, table) in
            ["tracker_orders", "tracker_events", "warehouse_orders", "warehouse_events"].iter().enumerate()
        {
            counts[i] = sqlx::query_scalar(&count(table)).fetch_one(&self.store.pool).await?;
        }
        Ok(StoreRows {
            active_orders: counts[0],
            active_events: counts[1],
            warehouse_orders: counts[2],
            warehouse_events: counts[3],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(order: &str, seq: i64, at: &str) -> EventRow {
        EventRow { values: vec![], order_id: order.into(), seq, at: at.into(), is_change: false }
    }

    #[test]
    fn dwell_is_the_time_since_the_previous_step_by_seq() {
        let events = vec![
            step("a", 2, "2026-11-29T00:00:03.500000Z"),
            step("a", 0, "2026-11-29T00:00:01.000000Z"),
            step("b", 0, "2026-11-29T00:00:00.000000Z"),
            EventRow { is_change: true, ..step("a", -1, "2026-11-29T00:00:02.000000Z") },
            step("a", 1, "2026-11-29T00:00:01.250000Z"),
        ];
        let dwell = dwell_times(&events);
        assert_eq!(dwell.get(&4), Some(&250));
        assert_eq!(dwell.get(&0), Some(&2250));
        assert_eq!(dwell.get(&1), None, "placed has no dwell");
        assert_eq!(dwell.get(&3), None, "a change record has no dwell");
        assert_eq!(dwell.get(&2), None);
    }

    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
