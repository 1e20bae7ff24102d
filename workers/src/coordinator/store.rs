//! The coordinator's durable record of every directed order, in its own
//! store (`coordinator.db`, or PostgreSQL with `DATABASE_URL`): its copy of
//! the element, the call it waits on (service and request id), how often
//! that call was sent, and when to send it again. Each step it took is
//! logged in `coordinator_steps`. Every change of a record is a conditional
//! update on the request id it expects, so two instances (or a redelivered
//! reply) never both move an order on: the second finds the record moved
//! and does nothing.

use shared::group_commit::Written;
use shared::order::OrderElement;
use shared::settings::Settings;
use shared::store::Store;
use sqlx::Row;
use uuid::Uuid;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS coordinator_orders (order_id TEXT PRIMARY KEY, element TEXT NOT NULL, \
     status TEXT NOT NULL, service TEXT, request_id TEXT, sent BIGINT NOT NULL, attempts BIGINT NOT NULL, \
     due_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, reason TEXT, trace TEXT, \
     waiting BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS coordinator_orders_by_request ON coordinator_orders (request_id)",
    "CREATE INDEX IF NOT EXISTS coordinator_orders_by_due ON coordinator_orders (status, due_at)",
    "CREATE TABLE IF NOT EXISTS coordinator_steps (request_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
     service TEXT NOT NULL, status TEXT NOT NULL, detail TEXT NOT NULL, at BIGINT NOT NULL)",
];

/// Where a directed order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting on a call to `service`.
    Calling,
    /// Ended in a terminal state.
    Done,
    /// Given up (a permanent failure, or too many transient ones): dead-lettered.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Calling => "calling",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Status {
        match text {
            "calling" => Status::Calling,
            "done" => Status::Done,
            _ => Status::Failed,
        }
    }
}

/// The call an order waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub service: String,
    pub request_id: String,
}

/// A directed order as the coordinator keeps it.
#[derive(Clone, Debug)]
pub struct Record {
    pub element: OrderElement,
    pub status: Status,
    pub pending: Option<Pending>,
    /// How many times the pending call was sent.
    pub sent: i64,
    /// Transient failures of the pending call so far.
    pub attempts: i64,
    /// The order's `traceparent` as it was placed (its calls continue it).
    pub trace: Option<String>,
    /// The pending call waits for a change (a new card) or for `due_at`
    /// (the wait ran out): it is not sent before either.
    pub waiting: bool,
    /// When the pending call is (next) due.
    pub due_at: i64,
}

/// What a record becomes after a step: its element and its next call (or its end).
pub struct Next<'a> {
    pub element: &'a OrderElement,
    /// The order's trace (kept when placed; later steps keep the first).
    pub trace: Option<String>,
    pub status: Status,
    pub pending: Option<Pending>,
    pub due_at: i64,
    pub reason: Option<String>,
    /// The call is held until a change or `due_at` (see [`Record::waiting`]).
    pub waiting: bool,
}

/// One step's move, owned by its write (which may run twice).
struct Advance {
    answered: String,
    /// The service that answered, the step's status and its detail.
    step: (String, String, String),
    order_id: String,
    element: String,
    status: &'static str,
    pending: (Option<String>, Option<String>),
    due_at: i64,
    reason: Option<String>,
    waiting: bool,
    /// Moves the record only while its call is held (a resume after a
    /// change): not once the wait ran out and the call went (`claim_resend`).
    only_held: bool,
}

impl Advance {
    async fn run(&self, connection: &mut sqlx::AnyConnection) -> sqlx::Result<bool> {
        let moved = sqlx::query(
            "UPDATE coordinator_orders SET element = $1, status = $2, service = $3, request_id = $4, sent = 1, \
             attempts = 0, due_at = $5, updated_at = $6, reason = $7, waiting = $10 \
             WHERE order_id = $8 AND request_id = $9 AND status = 'calling' AND waiting >= $11",
        )
        .bind(&self.element)
        .bind(self.status)
        .bind(self.pending.0.clone())
        .bind(self.pending.1.clone())
        .bind(self.due_at)
        .bind(now_ms())
        .bind(self.reason.clone())
        .bind(&self.order_id)
        .bind(&self.answered)
        .bind(i64::from(self.waiting))
        .bind(i64::from(self.only_held))
        .execute(&mut *connection)
        .await?
        .rows_affected();
        if moved != 1 {
            return Ok(false);
        }
        let (service_answered, step_status, detail) = &self.step;
        sqlx::query(
            "INSERT INTO coordinator_steps (request_id, order_id, service, status, detail, at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&self.answered)
        .bind(&self.order_id)
        .bind(service_answered)
        .bind(step_status)
        .bind(detail)
        .bind(now_ms())
        .execute(&mut *connection)
        .await?;
        Ok(true)
    }
}

#[derive(Clone)]
pub struct CoordinatorStore {
    store: Store,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn encode(element: &OrderElement) -> sqlx::Result<String> {
    serde_json::to_string(element).map_err(|e| sqlx::Error::Encode(e.into()))
}

fn record(row: &sqlx::any::AnyRow) -> sqlx::Result<Record> {
    let element: String = row.try_get("element")?;
    let service: Option<String> = row.try_get("service")?;
    let request_id: Option<String> = row.try_get("request_id")?;
    let status = Status::parse(&row.try_get::<String, _>("status")?);
    Ok(Record {
        element: serde_json::from_str(&element).map_err(|e| sqlx::Error::Decode(e.into()))?,
        status,
        pending: match (status, service, request_id) {
            (Status::Calling, Some(service), Some(request_id)) => Some(Pending { service, request_id }),
            _ => None,
        },
        sent: row.try_get("sent")?,
        attempts: row.try_get("attempts")?,
        trace: row.try_get("trace")?,
        waiting: row.try_get::<i64, _>("waiting")? != 0,
        due_at: row.try_get("due_at")?,
    })
}

const COLUMNS: &str = "element, status, service, request_id, sent, attempts, trace, waiting, due_at";

impl CoordinatorStore {
    pub async fn open(settings: &Settings) -> anyhow::Result<CoordinatorStore> {
        let store = Store::open(settings, "coordinator").await?;
        store.add_column("coordinator_orders", "trace TEXT").await?;
        store.add_column("coordinator_orders", "waiting BIGINT NOT NULL DEFAULT 0").await?;
        store.migrate(SCHEMA).await?;
        Ok(CoordinatorStore { store })
    }

    /// Records a newly placed order, unless it is known already; returns
    /// its record as it stands. Group-committed with the other writes.
    pub async fn place(&self, next: Next<'_>) -> sqlx::Result<Record> {
        let (service, request_id) = split(&next.pending);
        let row = (
            next.element.order_id.to_string(),
            encode(next.element)?,
            next.status.as_str(),
            (service, request_id),
            next.due_at,
            (next.reason.clone(), next.trace.clone()),
        );
        self.store
            .write(move |connection| {
                let (order_id, element, status, (service, request_id), due_at, (reason, trace)) = row.clone();
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO coordinator_orders (order_id, element, status, service, request_id, sent, \
                         attempts, due_at, updated_at, reason, trace) VALUES ($1, $2, $3, $4, $5, 1, 0, $6, $7, $8, $9) \
                         ON CONFLICT (order_id) DO NOTHING",
                    )
                    .bind(&order_id)
                    .bind(element)
                    .bind(status)
                    .bind(service)
                    .bind(request_id)
                    .bind(due_at)
                    .bind(now_ms())
                    .bind(reason)
                    .bind(trace)
                    .execute(&mut *connection)
                    .await?;
                    let stands = sqlx::query(&format!("SELECT {COLUMNS} FROM coordinator_orders WHERE order_id = $1"))
                        .bind(&order_id)
                        .fetch_one(&mut *connection)
                        .await?;
                    record(&stands).map(Written::Keep)
                })
            })
            .await
    }

    pub async fn order(&self, order_id: Uuid) -> sqlx::Result<Option<Record>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM coordinator_orders WHERE order_id = $1"))
            .bind(order_id.to_string())
            .fetch_optional(&self.store.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }

    /// The order waiting on the call `request_id`, if one is.
    pub async fn waiting_on(&self, request_id: &str) -> sqlx::Result<Option<Record>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM coordinator_orders WHERE request_id = $1 AND status = 'calling'"
        ))
        .bind(request_id)
        .fetch_optional(&self.store.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// Moves the order waiting on `answered` on to `next`, and logs the
    /// step, in one write of the group commit; false (and nothing changed)
    /// when the order no longer waits on that call.
    pub async fn advance(
        &self,
        answered: &str,
        step: (&str, &str, &str),
        next: Next<'_>,
    ) -> sqlx::Result<bool> {
        self.move_on(answered, step, next, false).await
    }

    /// [`CoordinatorStore::advance`] for an order whose call is held (it
    /// waits at a node), only while it is still held: false once its wait
    /// ran out and the call went meanwhile (another instance's `claim_resend`).
    pub async fn resume(&self, held: &str, step: (&str, &str, &str), next: Next<'_>) -> sqlx::Result<bool> {
        self.move_on(held, step, next, true).await
    }

    async fn move_on(
        &self,
        answered: &str,
        step: (&str, &str, &str),
        next: Next<'_>,
        only_held: bool,
    ) -> sqlx::Result<bool> {
        let (service, request_id) = split(&next.pending);
        let moving = std::sync::Arc::new(Advance {
            answered: answered.to_string(),
            step: (step.0.to_string(), step.1.to_string(), step.2.to_string()),
            order_id: next.element.order_id.to_string(),
            element: encode(next.element)?,
            status: next.status.as_str(),
            pending: (service, request_id),
            due_at: next.due_at,
            reason: next.reason.clone(),
            waiting: next.waiting,
            only_held,
        });
        self.store
            .write(move |connection| {
                let moving = moving.clone();
                Box::pin(async move { moving.run(connection).await.map(Written::Keep) })
            })
            .await
    }

    /// Counts a transient failure of the call and sets when to send it again.
    pub async fn retry_later(&self, request_id: &str, attempts: i64, due_at: i64) -> sqlx::Result<bool> {
        let updated = sqlx::query(
            "UPDATE coordinator_orders SET attempts = $1, due_at = $2, updated_at = $3 \
             WHERE request_id = $4 AND status = 'calling'",
        )
        .bind(attempts)
        .bind(due_at)
        .bind(now_ms())
        .bind(request_id)
        .execute(&self.store.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// The orders whose call is due to be sent (again) at `now`, oldest first.
    pub async fn due(&self, now: i64, limit: i64) -> sqlx::Result<Vec<Record>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM coordinator_orders WHERE status = 'calling' AND due_at <= $1 \
             ORDER BY due_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.store.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// The orders whose call is held (they wait at a node for a change)
    /// and that have a change pending in the coordinator's change book
    /// (`changes`, in the same store), oldest first.
    pub async fn waiting_with_changes(&self, changes: &str, limit: i64) -> sqlx::Result<Vec<Record>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM coordinator_orders WHERE status = 'calling' AND waiting = 1 \
             AND order_id IN (SELECT order_id FROM {changes} WHERE status = 'pending') \
             ORDER BY due_at LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.store.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Claims a due call for sending again (counted in `sent`), until
    /// `due_at`; false when another instance claimed it or it was answered.
    pub async fn claim_resend(&self, request_id: &str, sent: i64, due_at: i64) -> sqlx::Result<bool> {
        let updated = sqlx::query(
            "UPDATE coordinator_orders SET sent = $1, due_at = $2, updated_at = $3, waiting = 0 \
             WHERE request_id = $4 AND status = 'calling' AND sent = $5",
        )
        .bind(sent + 1)
        .bind(due_at)
        .bind(now_ms())
        .bind(request_id)
        .bind(sent)
        .execute(&self.store.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }
}

fn split(pending: &Option<Pending>) -> (Option<String>, Option<String>) {
    match pending {
        Some(p) => (Some(p.service.clone()), Some(p.request_id.clone())),
        None => (None, None),
    }
}
