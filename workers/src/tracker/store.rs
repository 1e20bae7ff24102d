//! The tracking store: `tracker_events` holds one row per state change (the
//! event id is the key, so a duplicate is dropped), `tracker_orders` each
//! order's latest state. SQLite by default, PostgreSQL with `DATABASE_URL`.

use serde::Serialize;
use shared::audit::{rfc3339, AuditEvent};
use shared::settings::Settings;
use shared::store::Store;
use sqlx::Row;
use std::collections::BTreeMap;
use uuid::Uuid;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tracker_events (event_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
     seq BIGINT NOT NULL, version BIGINT NOT NULL, node TEXT NOT NULL, instance_id TEXT NOT NULL, \
     from_state TEXT, to_state TEXT NOT NULL, terminal BIGINT NOT NULL, at TEXT NOT NULL, detail TEXT NOT NULL, \
     recorded_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tracker_events_by_order ON tracker_events (order_id, seq)",
    "CREATE TABLE IF NOT EXISTS tracker_orders (order_id TEXT PRIMARY KEY, state TEXT NOT NULL, \
     seq BIGINT NOT NULL, terminal BIGINT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tracker_orders_by_state ON tracker_orders (state)",
];

/// One entry of an order's history.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HistoryEntry {
    pub state: String,
    pub from_state: Option<String>,
    pub node: String,
    pub instance_id: String,
    /// When the node made the change.
    pub at: String,
    /// When the tracker recorded it.
    pub recorded_at: String,
    pub detail: String,
    pub seq: i64,
    pub version: i64,
    pub event_id: String,
}

/// An order as the tracker knows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OrderView {
    pub order_id: String,
    pub state: String,
    pub terminal: bool,
    pub history: Vec<HistoryEntry>,
}

/// An order's latest state only.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OrderStatus {
    pub state: String,
    pub terminal: bool,
}

#[derive(Clone)]
pub struct TrackerStore {
    store: Store,
}

impl TrackerStore {
    pub async fn open(settings: &Settings) -> anyhow::Result<TrackerStore> {
        let store = Store::open(settings, "tracker").await?;
        store.migrate(SCHEMA).await?;
        Ok(TrackerStore { store })
    }

    /// Records a batch of events in one transaction; returns how many were new.
    pub async fn record(&self, events: &[AuditEvent]) -> sqlx::Result<u64> {
        let mut tx = self.store.pool.begin().await?;
        let recorded_at = rfc3339::format(&chrono::Utc::now());
        let mut new = 0;
        for event in events {
            let at = rfc3339::format(&event.at);
            let inserted = sqlx::query(
                "INSERT INTO tracker_events (event_id, order_id, seq, version, node, instance_id, from_state, \
                 to_state, terminal, at, detail, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event.event_id.to_string())
            .bind(event.order_id.to_string())
            .bind(i64::from(event.seq))
            .bind(i64::from(event.version))
            .bind(&event.node)
            .bind(&event.instance_id)
            .bind(event.from_state.map(|s| s.as_str()))
            .bind(event.to_state.as_str())
            .bind(i64::from(event.terminal))
            .bind(&at)
            .bind(&event.detail)
            .bind(&recorded_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                continue;
            }
            new += 1;
            sqlx::query(
                "INSERT INTO tracker_orders (order_id, state, seq, terminal, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (order_id) DO UPDATE SET state = excluded.state, seq = excluded.seq, \
                 terminal = excluded.terminal, updated_at = excluded.updated_at \
                 WHERE excluded.seq > tracker_orders.seq",
            )
            .bind(event.order_id.to_string())
            .bind(event.to_state.as_str())
            .bind(i64::from(event.seq))
            .bind(i64::from(event.terminal))
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// An order's state and ordered history, if the tracker knows it.
    pub async fn order(&self, order_id: Uuid) -> sqlx::Result<Option<OrderView>> {
        let rows = sqlx::query(
            "SELECT to_state, from_state, node, instance_id, at, recorded_at, detail, seq, version, event_id, terminal \
             FROM tracker_events WHERE order_id = $1 ORDER BY seq, at",
        )
        .bind(order_id.to_string())
        .fetch_all(&self.store.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut history = Vec::with_capacity(rows.len());
        let mut terminal = false;
        for row in rows {
            terminal = row.try_get::<i64, _>("terminal")? != 0;
            history.push(HistoryEntry {
                state: row.try_get("to_state")?,
                from_state: row.try_get("from_state")?,
                node: row.try_get("node")?,
                instance_id: row.try_get("instance_id")?,
                at: row.try_get("at")?,
                recorded_at: row.try_get("recorded_at")?,
                detail: row.try_get("detail")?,
                seq: row.try_get("seq")?,
                version: row.try_get("version")?,
                event_id: row.try_get("event_id")?,
            });
        }
        let state = history.last().map(|h| h.state.clone()).unwrap_or_default();
        Ok(Some(OrderView { order_id: order_id.to_string(), state, terminal, history }))
    }

    /// Latest state of each of `ids` the tracker knows.
    pub async fn statuses(&self, ids: &[Uuid]) -> sqlx::Result<BTreeMap<String, OrderStatus>> {
        let mut found = BTreeMap::new();
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT order_id, state, terminal FROM tracker_orders WHERE order_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(&self.store.pool).await? {
                let status = OrderStatus {
                    state: row.try_get("state")?,
                    terminal: row.try_get::<i64, _>("terminal")? != 0,
                };
                found.insert(row.try_get("order_id")?, status);
            }
        }
        Ok(found)
    }

    /// Orders per state.
    pub async fn stats(&self) -> sqlx::Result<BTreeMap<String, i64>> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM tracker_orders GROUP BY state")
            .fetch_all(&self.store.pool)
            .await?;
        rows.into_iter().map(|row| Ok((row.try_get("state")?, row.try_get("n")?))).collect()
    }

    /// Every event recorded, for audits in tests: (order id, state, terminal).
    pub async fn event_count(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM tracker_events").fetch_one(&self.store.pool).await
    }
}
