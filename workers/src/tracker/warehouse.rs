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
//! as they are. A move is SQL only (`INSERT ... SELECT`, the dwell times
//! by a window function): no row passes through the tracker.
//!
//! A late record of a moved order (a duplicate redelivered, a change record
//! after the quiet period) is not made active again: its row waits in
//! `tracker_events` until the next pass moves it beside the rest, and
//! status queries read both stores meanwhile.

use super::store::{TrackerStore, EVENT_COLUMNS};
use shared::audit::rfc3339;
use shared::store::Backend;
use shared::tracker_api::StoreRows;
use sqlx::Row as _;
use std::time::Duration;

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

/// SQL for the whole milliseconds from `from` to `to` (RFC 3339 texts).
fn millis_sql(backend: Backend, from: &str, to: &str) -> String {
    match backend {
        Backend::Sqlite => format!("CAST(ROUND((julianday({to}) - julianday({from})) * 86400000.0) AS INTEGER)"),
        Backend::Postgres => format!(
            "CAST(ROUND(EXTRACT(EPOCH FROM (CAST({to} AS timestamptz) - CAST({from} AS timestamptz))) * 1000) AS BIGINT)"
        ),
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Copies the `tracker_events` rows of `order_ids` into `warehouse_events`
/// (an event already there stays as it is), each state step with its dwell
/// time (since the order's previous step by seq) unless `late`, then
/// deletes them from the active store; returns how many were copied. All
/// of it in SQL: no row passes through the tracker.
async fn move_events(
    tx: &mut Tx<'_>,
    backend: Backend,
    order_ids: &[String],
    moved_at: &str,
    late: bool,
) -> sqlx::Result<u64> {
    let previous = "LAG(at) OVER (PARTITION BY order_id, (change_id IS NULL) ORDER BY seq)";
    let dwell = if late {
        "NULL".to_string()
    } else {
        format!("CASE WHEN change_id IS NULL AND seq > 0 THEN {} END", millis_sql(backend, previous, "at"))
    };
    let mut copied = 0;
    for chunk in order_ids.chunks(400) {
        let (moved_at_mark, marks) = (backend.marks(1, 1), backend.marks(2, chunk.len()));
        let sql = format!(
            "INSERT INTO warehouse_events ({EVENT_COLUMNS}, day, dwell_ms, moved_at) \
             SELECT {EVENT_COLUMNS}, substr(at, 1, 10), {dwell}, {moved_at_mark} FROM tracker_events \
             WHERE order_id IN ({marks}) ON CONFLICT (event_id) DO NOTHING"
        );
        let mut query = sqlx::query(&sql).persistent(false).bind(moved_at);
        for id in chunk {
            query = query.bind(id);
        }
        copied += query.execute(&mut **tx).await?.rows_affected();
        for table in ["tracker_events", "tracker_orders"] {
            let sql = format!("DELETE FROM {table} WHERE order_id IN ({})", backend.marks(1, chunk.len()));
            let mut query = sqlx::query(&sql).persistent(false);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut **tx).await?;
        }
    }
    Ok(copied)
}

impl TrackerStore {
    /// Moves the orders that ended more than `quiet` ago, up to
    /// [`MOVE_BATCH`] of them, in one transaction; with `late_too`, also the
    /// late records of orders moved before.
    pub async fn move_ended(&self, quiet: Duration, late_too: bool) -> sqlx::Result<Moved> {
        let now = chrono::Utc::now();
        let cutoff = rfc3339::format(&(now - chrono::Duration::from_std(quiet).unwrap_or_default()));
        let moved_at = rfc3339::format(&now);
        let backend = self.store.backend;
        let mut tx = self.store.pool.begin().await?;
        // The summary first: a write, so SQLite takes its lock at once. Of two
        // trackers (PostgreSQL) only one inserts each order, and moves it.
        let sql = format!(
            "INSERT INTO warehouse_orders (order_id, state, customer_id, placed_at, updated_at, latency_ms, steps, \
             day, moved_at) SELECT o.order_id, o.state, o.customer_id, p.at, o.updated_at, {latency}, \
             (SELECT COUNT(*) FROM tracker_events s WHERE s.order_id = o.order_id AND s.change_id IS NULL), \
             substr(o.updated_at, 1, 10), $2 FROM tracker_orders o \
             LEFT JOIN tracker_events p ON p.order_id = o.order_id AND p.seq = 0 AND p.change_id IS NULL \
             WHERE o.order_id IN (SELECT order_id FROM tracker_orders WHERE terminal = 1 AND updated_at <= $1 \
             ORDER BY order_id LIMIT {MOVE_BATCH}) ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            latency = millis_sql(backend, "p.at", "o.updated_at")
        );
        let ids: Vec<String> = sqlx::query(&sql)
            .bind(&cutoff)
            .bind(&moved_at)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get("order_id"))
            .collect::<sqlx::Result<_>>()?;
        let events = move_events(&mut tx, backend, &ids, &moved_at, false).await?;
        let mut late_events = 0;
        if late_too {
            let late_ids: Vec<String> = sqlx::query(&format!(
                "SELECT DISTINCT order_id FROM tracker_events WHERE order_id IN \
                 (SELECT order_id FROM warehouse_orders) LIMIT {MOVE_BATCH}"
            ))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get("order_id"))
            .collect::<sqlx::Result<_>>()?;
            late_events = move_events(&mut tx, backend, &late_ids, &moved_at, true).await?;
        }
        tx.commit().await?;
        Ok(Moved { orders: ids.len() as u64, events, late_events })
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
