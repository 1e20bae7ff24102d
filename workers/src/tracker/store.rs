//! The tracking store: `tracker_events` holds one row per state change (the
//! event id is the key, so a duplicate is dropped), `tracker_orders` each
//! order's latest state and its customer (from the `placed` event), which
//! `search` lists by state, node, customer and age, a page at a time.
//! SQLite by default, PostgreSQL with `DATABASE_URL`, where several trackers
//! may write at once: each batch writes its rows in key order, so their
//! transactions never deadlock.

use shared::audit::{rfc3339, AuditEvent};
use shared::change::ChangeEvent;
use shared::incident::Incident;
use shared::order_search::{OrderPage, OrderSearch, OrderSummary};
use shared::service::CallResult;
use shared::settings::Settings;
use shared::store::{Backend, Store};
use shared::tracker_api::KeptResult;
use shared::tracker_api::{HistoryEntry, OrderStatus, OrderView, Stats, Statuses};
use sqlx::Row as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// The warehouse's tables (`super::warehouse` moves ended orders there),
/// kept with the active store's: one database, migrated at once.
const WAREHOUSE_SCHEMA: &[&str] = &[
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
     terminal, at, detail, recorded_at, change_id, mode, trace_id, workflow, workflow_version";

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

/// Indexes on columns added after the first schema.
const INDEXES: &[&str] =
    &["CREATE INDEX IF NOT EXISTS tracker_orders_by_customer ON tracker_orders (customer_id, order_id)"];

/// Incidents at the nodes (retries, dead letters), for the report. They
/// stay here, not in the warehouse: there is one per failure, not per order.
const INCIDENTS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tracker_incidents (incident_id TEXT PRIMARY KEY, node TEXT NOT NULL, \
     order_id TEXT, kind TEXT NOT NULL, reason TEXT NOT NULL, attempts BIGINT NOT NULL, at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tracker_incidents_by_time ON tracker_incidents (at)",
    "CREATE TABLE IF NOT EXISTS tracker_settlements (batch_id TEXT PRIMARY KEY, captures BIGINT NOT NULL, \
     amount_cents BIGINT NOT NULL, oldest_wait_ms BIGINT NOT NULL, at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tracker_settlements_by_time ON tracker_settlements (at)",
];

/// Service results kept for polling (`GET /calls/{request_id}`), each under
/// (caller, request id, poll key): the caller as the answering service
/// verified it, the poll key the SHA-256 of the caller's token
/// (`shared::poll`). The first result of a key stands, unless it was a
/// failure worth retrying and a later result came; `collected_at` is set
/// when it is first read. Request ids are kept with card numbers masked,
/// like the rest. The first table kept results by request id alone, for
/// anyone: it is dropped.
const CALL_RESULTS: &[&str] = &[
    "DROP TABLE IF EXISTS tracker_call_results",
    "CREATE TABLE IF NOT EXISTS tracker_polled_results (caller TEXT NOT NULL, request_id TEXT NOT NULL, \
     poll_key TEXT NOT NULL, service TEXT NOT NULL, result TEXT NOT NULL, retryable BIGINT NOT NULL, \
     received_at BIGINT NOT NULL, collected_at BIGINT, PRIMARY KEY (caller, request_id, poll_key))",
    "CREATE INDEX IF NOT EXISTS tracker_polled_results_by_key ON tracker_polled_results (request_id, poll_key)",
    "CREATE INDEX IF NOT EXISTS tracker_polled_results_by_age ON tracker_polled_results (received_at)",
];

/// Every order the tracker knows, active or moved to the warehouse.
const ALL_ORDERS: &str =
    "SELECT order_id, state, terminal, updated_at, customer_id FROM tracker_orders UNION ALL \
     SELECT order_id, state, 1 AS terminal, updated_at, customer_id FROM warehouse_orders";

/// What the tracker receives on the audit exchange.
pub enum Record {
    State(AuditEvent),
    Change(ChangeEvent),
    Incident(Incident),
    /// A batch of captures payment settled (the settlement aggregation queue).
    Settlement(shared::settlement::SettledBatch),
}

/// The tracker's page cache per connection: its writes append (events by
/// id, orders by id) and its reads are one order's rows, so a small cache
/// serves both; the default's megabyte per connection was a tenth of its memory.
const TRACKER_PAGE_CACHE_KIB: u32 = 256;

#[derive(Clone)]
pub struct TrackerStore {
    pub(super) store: Store,
}

impl TrackerStore {
    pub async fn open(settings: &Settings) -> anyhow::Result<TrackerStore> {
        let store = Store::open_with_cache(settings, "tracker", TRACKER_PAGE_CACHE_KIB).await?;
        store.migrate(SCHEMA).await?;
        store.add_column("tracker_events", "change_id TEXT").await?;
        store.add_column("tracker_orders", "customer_id TEXT").await?;
        store.add_column("tracker_events", "mode TEXT").await?;
        store.add_column("tracker_events", "trace_id TEXT").await?;
        store.add_column("tracker_orders", "units BIGINT").await?;
        store.migrate(INDEXES).await?;
        store.migrate(CALL_RESULTS).await?;
        store.migrate(WAREHOUSE_SCHEMA).await?;
        for table in ["tracker_events", "warehouse_events"] {
            store.add_column(table, "workflow TEXT").await?;
            store.add_column(table, "workflow_version BIGINT").await?;
        }
        store.migrate(INCIDENTS).await?;
        store.migrate(super::outcomes::SCHEMA).await?;
        Ok(TrackerStore { store })
    }

    /// Records a batch in one transaction with a few multi-row statements;
    /// returns how many records were new. The tracker records changes; it
    /// never decides them (the node holding the order does, once).
    pub async fn record(&self, records: &[Record]) -> sqlx::Result<u64> {
        let recorded_at = rfc3339::format(&chrono::Utc::now());
        let mut seen = HashSet::new();
        let mut rows: Vec<Row> =
            records.iter().filter_map(Row::of).filter(|row| seen.insert(row.event_id.clone())).collect();
        let incidents: Vec<&Incident> =
            records.iter().filter_map(|r| if let Record::Incident(i) = r { Some(i) } else { None }).collect();
        // Rows in key order: two trackers' transactions then wait for each
        // other's locks in the same order instead of deadlocking (PostgreSQL).
        rows.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        let backend = self.store.backend;
        let mut tx = self.store.pool.begin().await?;
        let new_ids = insert_events(&mut tx, backend, &rows, &recorded_at).await?;
        let ended: Vec<&AuditEvent> = records
            .iter()
            .filter_map(|r| if let Record::State(e) = r { Some(e) } else { None })
            .filter(|e| new_ids.contains(&e.event_id.to_string()))
            .collect();
        super::outcomes::queue(&mut tx, &ended, &recorded_at).await?;
        insert_incidents(&mut tx, &incidents).await?;
        insert_settlements(&mut tx, records).await?;
        let moved = already_moved(&mut tx, backend, &rows).await?;

        // Each order's newest new state, and what its `placed` event says
        // (the customer and the units) when that is new, whatever order the
        // events came in.
        let mut latest: HashMap<&str, Latest> = HashMap::new();
        let active = |r: &&Row| new_ids.contains(&r.event_id) && !moved.contains(&r.order_id);
        for row in rows.iter().filter(|r| r.change_id.is_none()).filter(active) {
            let entry = latest.entry(row.order_id.as_str()).or_insert(Latest { row, placed: None });
            if row.seq > entry.row.seq {
                entry.row = row;
            }
            if row.to_state == "placed" {
                entry.placed = Some(row);
            }
        }
        let mut latest: Vec<Latest> = latest.into_values().collect();
        latest.sort_by_key(|order| order.row.order_id.as_str());
        upsert_orders(&mut tx, backend, &latest).await?;
        tx.commit().await?;
        Ok(new_ids.len() as u64)
    }

    /// An order's state and ordered history, if the tracker knows it.
    pub async fn order(&self, order_id: Uuid) -> sqlx::Result<Option<OrderView>> {
        // Both stores: a moved order's late records wait in the active one until the next move.
        let columns = EVENT_COLUMNS;
        let sql = format!(
            "SELECT {columns} FROM tracker_events WHERE order_id = $1 UNION ALL \
             SELECT {columns} FROM warehouse_events WHERE order_id = $1 ORDER BY seq, at"
        );
        let mut rows = sqlx::query(&sql).bind(order_id.to_string()).fetch_all(&self.store.pool).await?;
        let mut seen = HashSet::new();
        rows.retain(|row| seen.insert(row.try_get::<String, _>("event_id").unwrap_or_default()));
        if rows.is_empty() {
            return Ok(None);
        }
        let mut history = Vec::with_capacity(rows.len());
        let mut terminal = false;
        let mut state = String::new();
        let mut workflow = (None, None);
        for row in rows {
            if let Some(name) = row.try_get::<Option<String>, _>("workflow")? {
                workflow = (Some(name), row.try_get::<Option<i64>, _>("workflow_version")?);
            }
            let change_id: Option<String> = row.try_get("change_id")?;
            if change_id.is_none() {
                // Rows come by seq: the last state step is the current state.
                terminal |= row.try_get::<i64, _>("terminal")? != 0;
                state = row.try_get("to_state")?;
            }
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
                change_id,
                mode: row.try_get("mode")?,
                trace_id: row.try_get("trace_id")?,
            });
        }
        let history = in_order(history);
        let (workflow, workflow_version) = workflow;
        Ok(Some(OrderView {
            order_id: order_id.to_string(),
            state,
            terminal,
            history,
            workflow,
            workflow_version,
        }))
    }

    /// Keeps a service's result for polling under (caller, request id, poll
    /// key): the first result stands, unless it is a failure worth retrying
    /// and a new result came. `result` is kept as given: the caller masks it
    /// (`results::masked`).
    pub async fn keep_call_result(
        &self,
        result: &CallResult,
        caller: &str,
        poll_key: &str,
    ) -> sqlx::Result<()> {
        let body = serde_json::to_string(result).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query(
            "INSERT INTO tracker_polled_results (caller, request_id, poll_key, service, result, retryable, \
             received_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (caller, request_id, poll_key) \
             DO UPDATE SET result = excluded.result, retryable = excluded.retryable, \
             received_at = excluded.received_at, service = excluded.service \
             WHERE tracker_polled_results.retryable = 1",
        )
        .bind(caller)
        .bind(shared::text::mask_card_numbers(&result.request_id))
        .bind(poll_key)
        .bind(&result.service)
        .bind(body)
        .bind(i64::from(result.retryable))
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    /// The result kept for `request_id` under `poll_key` (marked collected
    /// the first time it is read). Should two callers have used the same
    /// request id and key, the first kept is the one read.
    pub async fn call_result(&self, request_id: &str, poll_key: &str) -> sqlx::Result<Option<KeptResult>> {
        let request_id = shared::text::mask_card_numbers(request_id);
        let now = chrono::Utc::now().timestamp_millis();
        sqlx::query(
            "UPDATE tracker_polled_results SET collected_at = $1 \
             WHERE request_id = $2 AND poll_key = $3 AND collected_at IS NULL",
        )
        .bind(now)
        .bind(&request_id)
        .bind(poll_key)
        .execute(&self.store.pool)
        .await?;
        let row = sqlx::query(
            "SELECT service, caller, result, received_at, collected_at FROM tracker_polled_results \
             WHERE request_id = $1 AND poll_key = $2 ORDER BY received_at, caller LIMIT 1",
        )
        .bind(&request_id)
        .bind(poll_key)
        .fetch_optional(&self.store.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let result: String = row.try_get("result")?;
        Ok(Some(KeptResult {
            caller: row.try_get("caller")?,
            result: serde_json::from_str(&result).map_err(|e| sqlx::Error::Decode(e.into()))?,
            received_at_ms: row.try_get("received_at")?,
            collected_at_ms: row.try_get("collected_at")?,
        }))
    }

    /// Deletes results collected more than `collected` ago and results
    /// never collected, received more than `uncollected` ago.
    pub async fn purge_call_results(
        &self,
        collected: std::time::Duration,
        uncollected: std::time::Duration,
    ) -> sqlx::Result<u64> {
        let now = chrono::Utc::now().timestamp_millis();
        let removed = sqlx::query(
            "DELETE FROM tracker_polled_results WHERE (collected_at IS NOT NULL AND collected_at < $1) \
             OR (collected_at IS NULL AND received_at < $2)",
        )
        .bind(now - collected.as_millis() as i64)
        .bind(now - uncollected.as_millis() as i64)
        .execute(&self.store.pool)
        .await?;
        Ok(removed.rows_affected())
    }

    /// Latest state of each of `ids` the tracker knows.
    pub async fn statuses(&self, ids: &[Uuid]) -> sqlx::Result<Statuses> {
        let mut found = Statuses::new();
        for chunk in ids.chunks(500) {
            let marks = self.store.backend.marks(1, chunk.len());
            let sql = format!(
                "SELECT order_id, state, terminal FROM ({ALL_ORDERS}) AS known WHERE order_id IN ({marks})"
            );
            let mut query = sqlx::query(&sql).persistent(false);
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

    /// One page of the orders matching `search`, in order id order; `now`
    /// is what the ages count from.
    pub async fn search(
        &self,
        search: &OrderSearch,
        now: chrono::DateTime<chrono::Utc>,
    ) -> sqlx::Result<OrderPage> {
        let mut filter = Filter::default();
        if let Some(state) = search.state {
            filter.add("state = ?", &[state.as_str().to_string()]);
        }
        if let Some(node) = search.at {
            let states: Vec<String> =
                topology::WORKFLOW.held_at(node).iter().map(|s| s.as_str().to_string()).collect();
            let marks = vec!["?"; states.len()].join(", ");
            filter.add(&format!("state IN ({marks})"), &states);
        }
        if let Some(customer) = &search.customer {
            filter.add("customer_id = ?", std::slice::from_ref(customer));
        }
        // Ages are checked (at most ten years), so the subtraction holds; `updated_at`
        // is RFC 3339 with microseconds in UTC, so text order is time order.
        let before = |age: std::time::Duration| {
            rfc3339::format(&(now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::zero())))
        };
        if let Some(age) = search.older_than {
            filter.add("updated_at <= ?", &[before(age)]);
        }
        if let Some(age) = search.newer_than {
            filter.add("updated_at >= ?", &[before(age)]);
        }
        if let Some(after) = search.after {
            filter.add("order_id > ?", &[after.to_string()]);
        }
        let Filter { conditions, values } = filter;
        let filter =
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        // One more than asked for says whether there is a next page.
        let sql = format!(
            "SELECT order_id, state, terminal, updated_at, customer_id FROM ({ALL_ORDERS}) AS o {filter} \
             ORDER BY order_id LIMIT {}",
            u64::from(search.limit) + 1
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for value in &values {
            query = query.bind(value);
        }
        let mut orders = Vec::new();
        for row in query.fetch_all(&self.store.pool).await? {
            orders.push(OrderSummary {
                order_id: row.try_get("order_id")?,
                state: row.try_get("state")?,
                terminal: row.try_get::<i64, _>("terminal")? != 0,
                since: row.try_get("updated_at")?,
                customer_id: row.try_get("customer_id")?,
            });
        }
        let more = orders.len() > search.limit as usize;
        orders.truncate(search.limit as usize);
        let next = if more { orders.last().map(|o| o.order_id.clone()) } else { None };
        Ok(OrderPage { orders, next })
    }

    /// Orders per state, and in all.
    pub async fn stats(&self) -> sqlx::Result<Stats> {
        let sql = format!("SELECT state, COUNT(*) AS n FROM ({ALL_ORDERS}) AS o GROUP BY state");
        let rows = sqlx::query(&sql).fetch_all(&self.store.pool).await?;
        let by_state: BTreeMap<String, i64> = rows
            .into_iter()
            .map(|row| Ok((row.try_get("state")?, row.try_get("n")?)))
            .collect::<sqlx::Result<_>>()?;
        Ok(Stats { orders: by_state.values().sum(), by_state })
    }
}

/// The conditions of a search, each `?` numbered in turn (`$1`, `$2`, ...), with their values.
#[derive(Default)]
struct Filter {
    conditions: Vec<String>,
    values: Vec<String>,
}

impl Filter {
    fn add(&mut self, sql: &str, values: &[String]) {
        let mut numbered = String::new();
        for (i, part) in sql.split('?').enumerate() {
            if i > 0 {
                self.values.push(values[i - 1].clone());
                numbered.push_str(&format!("${}", self.values.len()));
            }
            numbered.push_str(part);
        }
        self.conditions.push(numbered);
    }
}

/// One row of `tracker_events`, from either kind of record.
struct Row {
    event_id: String,
    order_id: String,
    seq: i64,
    version: i64,
    node: String,
    instance_id: String,
    from_state: Option<String>,
    to_state: String,
    terminal: i64,
    at: String,
    detail: String,
    change_id: Option<String>,
    /// Set on `placed` events (the publisher's, which trust checked).
    customer_id: Option<String>,
    /// Set on `placed` events: how many units the order is for.
    units: Option<i64>,
    /// `directed` or `service` for steps done through a node's service.
    mode: Option<String>,
    /// The trace its message carried.
    trace_id: Option<String>,
    /// Set on `accepted` events: the workflow the order follows, and its version.
    workflow: Option<String>,
    workflow_version: Option<i64>,
}

impl Row {
    /// The row of a state step or a change record (incidents and settled
    /// batches have their own tables).
    fn of(record: &Record) -> Option<Row> {
        Some(match record {
            Record::Incident(_) | Record::Settlement(_) => return None,
            Record::State(e) => Row {
                event_id: e.event_id.to_string(),
                order_id: e.order_id.to_string(),
                seq: i64::from(e.seq),
                version: i64::from(e.version),
                node: e.node.clone(),
                instance_id: e.instance_id.clone(),
                from_state: e.from_state.map(|s| s.as_str().to_string()),
                to_state: e.to_state.as_str().to_string(),
                terminal: i64::from(e.terminal),
                at: rfc3339::format(&e.at),
                detail: e.detail.clone(),
                change_id: None,
                customer_id: e.customer_id.clone(),
                units: e.units,
                mode: e.mode.clone(),
                trace_id: e.trace_id.clone(),
                // Kept once per order, on its `accepted` step (every event
                // names it, for the tracker to tell which states end it).
                workflow: e.workflow.clone().filter(|_| e.to_state == shared::OrderState::Accepted),
                workflow_version: e
                    .workflow_version
                    .filter(|_| e.to_state == shared::OrderState::Accepted)
                    .map(i64::from),
            },
            Record::Change(e) => Row {
                event_id: e.event_id.to_string(),
                order_id: e.order_id.to_string(),
                seq: -1,
                version: i64::from(e.version),
                node: e.node.clone(),
                instance_id: e.instance_id.clone(),
                from_state: None,
                to_state: e.kind.as_str().to_string(),
                terminal: 0,
                at: rfc3339::format(&e.at),
                detail: e.detail.clone(),
                change_id: Some(e.change_id.to_string()),
                customer_id: None,
                units: None,
                mode: None,
                trace_id: e.trace_id.clone(),
                workflow: None,
                workflow_version: None,
            },
        })
    }
}

/// Inserts incidents not known yet (a redelivered one has the same id).
async fn insert_incidents(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    incidents: &[&Incident],
) -> sqlx::Result<()> {
    for incident in incidents {
        sqlx::query(
            "INSERT INTO tracker_incidents (incident_id, node, order_id, kind, reason, attempts, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (incident_id) DO NOTHING",
        )
        .bind(incident.incident_id.to_string())
        .bind(&incident.node)
        .bind(incident.order_id.map(|id| id.to_string()))
        .bind(incident.kind.as_str())
        .bind(&incident.reason)
        .bind(incident.attempts)
        .bind(rfc3339::format(&incident.at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Inserts settled batches not known yet (a batch reported again, after
/// the settling process stopped before acknowledging it, has the same id).
async fn insert_settlements(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    records: &[Record],
) -> sqlx::Result<()> {
    for record in records {
        let Record::Settlement(batch) = record else { continue };
        sqlx::query(
            "INSERT INTO tracker_settlements (batch_id, captures, amount_cents, oldest_wait_ms, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(batch.batch_id.to_string())
        .bind(batch.captures)
        .bind(batch.amount_cents)
        .bind(batch.oldest_wait_ms)
        .bind(rfc3339::format(&batch.settled_at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Inserts the rows whose event ids are not known yet (multi-row
/// statements); returns the ids that were new.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    rows: &[Row],
    recorded_at: &str,
) -> sqlx::Result<HashSet<String>> {
    const COLUMNS: usize = 17;
    let mut new_ids = HashSet::new();
    for chunk in rows.chunks(300) {
        let sql = format!(
            "INSERT INTO tracker_events (event_id, order_id, seq, version, node, instance_id, from_state, \
             to_state, terminal, at, detail, recorded_at, change_id, mode, trace_id, workflow, workflow_version) \
             VALUES {} \
             ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            backend.rows(1, chunk.len(), COLUMNS)
        );
        // Multi-row statements vary in length: keep them out of the statement cache.
        let mut query = sqlx::query(&sql).persistent(false);
        for row in chunk {
            query = query
                .bind(&row.event_id)
                .bind(&row.order_id)
                .bind(row.seq)
                .bind(row.version)
                .bind(&row.node)
                .bind(&row.instance_id)
                .bind(row.from_state.clone())
                .bind(&row.to_state)
                .bind(row.terminal)
                .bind(&row.at)
                .bind(&row.detail)
                .bind(recorded_at)
                .bind(row.change_id.clone())
                .bind(row.mode.clone())
                .bind(row.trace_id.clone())
                .bind(row.workflow.clone())
                .bind(row.workflow_version);
        }
        for returned in query.fetch_all(&mut **tx).await? {
            new_ids.insert(returned.try_get::<String, _>("event_id")?);
        }
    }
    Ok(new_ids)
}

/// Which of the orders of `rows` the warehouse already holds; the rows of
/// theirs that the warehouse holds already (duplicates redelivered) are
/// dropped here, the new ones wait for the next move.
async fn already_moved(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    rows: &[Row],
) -> sqlx::Result<HashSet<String>> {
    let ids: Vec<&str> =
        rows.iter().map(|r| r.order_id.as_str()).collect::<HashSet<_>>().into_iter().collect();
    let mut moved = HashSet::new();
    for chunk in ids.chunks(400) {
        let marks = backend.marks(1, chunk.len());
        let sql = format!("SELECT order_id FROM warehouse_orders WHERE order_id IN ({marks})");
        let mut query = sqlx::query(&sql).persistent(false);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            moved.insert(row.try_get::<String, _>("order_id")?);
        }
    }
    let moved_list: Vec<&String> = moved.iter().collect();
    for chunk in moved_list.chunks(400) {
        let marks = backend.marks(1, chunk.len());
        let sql = format!(
            "DELETE FROM tracker_events WHERE order_id IN ({marks}) AND event_id IN \
             (SELECT event_id FROM warehouse_events WHERE warehouse_events.order_id = tracker_events.order_id)"
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(moved)
}

/// An order's newest new state step in a batch, and its new `placed` step if any.
struct Latest<'a> {
    row: &'a Row,
    placed: Option<&'a Row>,
}

/// Writes each order's current state, one multi-row upsert per 300 orders
/// that never moves an order backwards (a step older than the one stored
/// leaves the state as it is), and fills in the customer and the units
/// from a new `placed` step, whenever it comes.
async fn upsert_orders(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    orders: &[Latest<'_>],
) -> sqlx::Result<()> {
    const COLUMNS: usize = 7;
    let newer = "excluded.seq > tracker_orders.seq";
    let newer_or_kept = |column: &str| {
        format!("{column} = CASE WHEN {newer} THEN excluded.{column} ELSE tracker_orders.{column} END")
    };
    let updates: Vec<String> =
        ["state", "terminal", "updated_at", "seq"].into_iter().map(newer_or_kept).collect();
    for chunk in orders.chunks(300) {
        let sql = format!(
            "INSERT INTO tracker_orders (order_id, state, seq, terminal, updated_at, customer_id, units) \
             VALUES {} ON CONFLICT (order_id) DO UPDATE SET {}, \
             customer_id = COALESCE(excluded.customer_id, tracker_orders.customer_id), \
             units = COALESCE(excluded.units, tracker_orders.units) \
             WHERE {newer} OR excluded.customer_id IS NOT NULL OR excluded.units IS NOT NULL",
            backend.rows(1, chunk.len(), COLUMNS),
            updates.join(", ")
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for Latest { row, placed } in chunk {
            query = query
                .bind(&row.order_id)
                .bind(&row.to_state)
                .bind(row.seq)
                .bind(row.terminal)
                .bind(&row.at)
                .bind(placed.and_then(|p| p.customer_id.clone()))
                .bind(placed.and_then(|p| p.units));
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// An order's history in the order it happened: state steps by their `seq`
/// (the step counter the element carries), never by their timestamps. A
/// step redone after a crash (its node killed after forwarding the element
/// but before its event was confirmed) is sent again with a later `at`, and
/// sorting by time put `picked` after `shipped`. A change record (no seq)
/// goes after the last step recorded no later than it.
fn in_order(entries: Vec<HistoryEntry>) -> Vec<HistoryEntry> {
    let (mut changes, mut steps): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.change_id.is_some());
    steps.sort_by_key(|e| e.seq);
    changes.sort_by(|a, b| a.at.cmp(&b.at));
    // For each change, how many steps precede it.
    let place = |change: &HistoryEntry| steps.iter().rposition(|s| s.at <= change.at).map_or(0, |i| i + 1);
    let places: Vec<usize> = changes.iter().map(place).collect();
    let mut changes = changes.into_iter().zip(places).peekable();
    let mut history = Vec::with_capacity(steps.len() + changes.len());
    for (i, step) in steps.into_iter().enumerate() {
        while let Some((change, _)) = changes.next_if(|(_, place)| *place <= i) {
            history.push(change);
        }
        history.push(step);
    }
    history.extend(changes.map(|(change, _)| change));
    history
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::OrderState;

    fn step(order_id: Uuid, seq: u32, state: OrderState, customer: Option<&str>) -> Record {
        Record::State(AuditEvent {
            schema_version: 1,
            event_id: Uuid::new_v5(&order_id, format!("{seq}-{}", state.as_str()).as_bytes()),
            order_id,
            node: "intake".into(),
            instance_id: "intake-1".into(),
            from_state: None,
            to_state: state,
            terminal: topology::WORKFLOW.is_terminal(state),
            at: chrono::Utc::now(),
            detail: String::new(),
            seq,
            version: 0,
            customer_id: customer.map(str::to_string),
            units: customer.map(|_| 3),
            mode: None,
            copied: None,
            answer_to: None,
            workflow: None,
            workflow_version: None,
            trace_id: None,
        })
    }

    async fn scratch_store() -> (TrackerStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("orderflow-tracker-{}", Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        (TrackerStore::open(&settings).await.unwrap(), dir)
    }

    /// The batch writer's bookkeeping: duplicates dropped, the newest step
    /// wins whatever order steps come in, and the customer and units of a
    /// `placed` step are kept even when it comes after later steps; batches
    /// larger than one multi-row statement (300 orders) included.
    #[tokio::test]
    async fn a_batch_keeps_the_newest_state_and_the_placed_customer_in_any_order() {
        let (store, dir) = scratch_store().await;
        let late_placed = Uuid::new_v4();
        let first = [
            step(late_placed, 2, OrderState::Reserved, None),
            step(late_placed, 3, OrderState::Picked, None),
        ];
        assert_eq!(store.record(&first).await.unwrap(), 2);
        let second = [
            step(late_placed, 0, OrderState::Placed, Some("c-late")),
            step(late_placed, 3, OrderState::Picked, None),
        ];
        assert_eq!(store.record(&second).await.unwrap(), 1, "the duplicate step is dropped");
        let many: Vec<Uuid> = (0..450).map(|_| Uuid::new_v4()).collect();
        let mut batch = Vec::new();
        for order in &many {
            batch.push(step(*order, 7, OrderState::Shipped, None));
            batch.push(step(*order, 0, OrderState::Placed, Some("c-many")));
        }
        assert_eq!(store.record(&batch).await.unwrap(), 900);

        let statuses = store.statuses(&[late_placed, many[0], many[449]]).await.unwrap();
        assert_eq!(statuses[&late_placed.to_string()].state, "picked");
        assert!(statuses[&many[449].to_string()].terminal);
        let search = |customer: &str| OrderSearch {
            customer: Some(customer.into()),
            limit: 500,
            ..Default::default()
        };
        let late = store.search(&search("c-late"), chrono::Utc::now()).await.unwrap();
        assert_eq!(late.orders.len(), 1);
        assert_eq!(late.orders[0].state, "picked");
        let shipped = store.search(&search("c-many"), chrono::Utc::now()).await.unwrap();
        assert_eq!(shipped.orders.len(), 450);
        assert!(shipped.orders.iter().all(|o| o.state == "shipped"));
        let units: i64 = sqlx::query_scalar("SELECT SUM(units) FROM tracker_orders")
            .fetch_one(&store.store.pool)
            .await
            .unwrap();
        assert_eq!(units, 3 * 451);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A polled result is kept per (caller, request id, poll key) and read
    /// only with its key: a second caller's result for the same request id
    /// is its own, and the first result of a key stands unless retryable.
    #[tokio::test]
    async fn a_polled_result_is_read_only_with_its_callers_key() {
        let (store, dir) = scratch_store().await;
        let answer = |error: &str, retryable: bool| CallResult::failed("req-1", "intake", error, retryable);
        let (first, second) =
            (shared::poll::key_of("first-caller-token"), shared::poll::key_of("second-token-1234"));
        store.keep_call_result(&answer("first's", false), "alice", &first).await.unwrap();
        store.keep_call_result(&answer("second's", false), "bob", &second).await.unwrap();
        store.keep_call_result(&answer("a later one", false), "alice", &first).await.unwrap();
        let read = |key: String| {
            let store = store.clone();
            async move { store.call_result("req-1", &key).await.unwrap() }
        };
        let alices = read(first.clone()).await.unwrap();
        assert_eq!((alices.caller.as_str(), alices.result.error.as_deref()), ("alice", Some("first's")));
        assert!(alices.collected_at_ms.is_some());
        let bobs = read(second.clone()).await.unwrap();
        assert_eq!((bobs.caller.as_str(), bobs.result.error.as_deref()), ("bob", Some("second's")));
        assert_eq!(read(shared::poll::key_of("a-guess-at-a-token")).await, None);
        assert_eq!(store.call_result("req-2", &first).await.unwrap(), None);
        // A failure worth retrying gives way to the next result.
        store.keep_call_result(&answer("busy", true), "carol", &first).await.unwrap();
        store.keep_call_result(&answer("done now", false), "carol", &first).await.unwrap();
        let carols: Vec<String> =
            sqlx::query_scalar("SELECT result FROM tracker_polled_results WHERE caller = 'carol'")
                .fetch_all(&store.store.pool)
                .await
                .unwrap();
        assert_eq!(carols.len(), 1);
        assert!(carols[0].contains("done now"), "{carols:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn entry(state: &str, seq: i64, at: &str, change: bool) -> HistoryEntry {
        HistoryEntry {
            state: state.into(),
            from_state: None,
            node: "n".into(),
            instance_id: "n-1".into(),
            at: at.into(),
            recorded_at: at.into(),
            detail: String::new(),
            seq,
            version: 0,
            event_id: format!("{state}-{seq}"),
            change_id: change.then(|| "c".to_string()),
            mode: None,
            trace_id: None,
        }
    }

    /// The flaky `kill_9` failure: picklist was killed after forwarding an
    /// element and before its `picked` event was confirmed; the redone step
    /// was recorded with a later time than the shipment.
    #[test]
    fn a_redone_step_keeps_its_place_in_the_history() {
        let rows = vec![
            entry("reserved", 4, "2026-11-29T00:00:01.000000Z", false),
            entry("rebinned", 6, "2026-11-29T00:00:02.000000Z", false),
            entry("shipped", 7, "2026-11-29T00:00:03.000000Z", false),
            entry("picked", 5, "2026-11-29T00:00:09.000000Z", false),
            entry("change_applied", -1, "2026-11-29T00:00:01.500000Z", true),
            entry("change_requested", -1, "2026-11-29T00:00:00.000000Z", true),
        ];
        let states: Vec<String> = in_order(rows).into_iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            ["change_requested", "reserved", "change_applied", "picked", "rebinned", "shipped"]
        );
    }
}
