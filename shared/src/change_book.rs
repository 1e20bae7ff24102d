//! A node's book of in-flight changes: every change request the node has
//! heard of (from the fanout), its decision once the node held the order, and
//! the orders that ended at this node. Decisions are stored, so a redelivered
//! element gets exactly the same decisions; one transaction at a time decides
//! between "the order is still coming" and "the order already ended here", so
//! a change is resolved once, by one node. Shared by every instance of the node.
//!
//! The book stays bounded: requests larger than [`MAX_CHANGE_REQUEST_BYTES`]
//! are rejected unread, and requests and closed orders older than the
//! retention (`ORDERFLOW_CHANGE_RETENTION_S`) are purged, among them requests
//! for orders that never came or never visit this node.

use crate::change::{apply, decide, ChangeAuthority, ChangeRequest, Decision};
use crate::group_commit::Written;
use crate::order::OrderElement;
use crate::settings::Settings;
use crate::store::{Backend, Store};
use chrono::Utc;
use sqlx::{Any, AnyConnection, Row, Transaction};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What happened to a change request a node received.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// Kept until the order reaches this node.
    Pending,
    /// The order already ended here without this change: reject it with this reason.
    Reject(String),
    /// The order already ended here and had resolved this change: nothing to do.
    AlreadyResolved,
}

/// The largest change request a book stores: a real one is a few hundred bytes.
pub const MAX_CHANGE_REQUEST_BYTES: usize = 8 * 1024;

/// How often a book purges what is past its retention.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// A node's own check of a change its rules would apply, against what only
/// that node can see (payment's vault: was the card change's token issued
/// for this very order?). `Some(reason)` rejects the change.
pub trait VetChange: Send + Sync {
    fn vet<'a>(
        &'a self,
        element: &'a OrderElement,
        request: &'a ChangeRequest,
    ) -> futures::future::BoxFuture<'a, sqlx::Result<Option<String>>>;
}

/// The change request stored in `row`, unless the element already resolved it.
fn unresolved(row: &sqlx::any::AnyRow, element: &OrderElement) -> sqlx::Result<Option<ChangeRequest>> {
    let request = serde_json::from_str::<ChangeRequest>(&row.try_get::<String, _>("request")?).ok();
    Ok(request.filter(|r| !element.resolved_changes.contains(&r.change_id)))
}

pub struct ChangeBook {
    store: Store,
    changes: String,
    closed: String,
    known: std::sync::Mutex<Known>,
    retention: Duration,
    purged_at: std::sync::Mutex<Option<Instant>>,
    /// Who may change an order (checked before any other rule).
    authority: ChangeAuthority,
    /// The node's own check, after the rules (see [`VetChange`]).
    vetter: std::sync::OnceLock<std::sync::Arc<dyn VetChange>>,
}

/// Who may change orders in the stack the node `node` runs in.
fn change_authority(settings: &Settings, node: &str) -> anyhow::Result<ChangeAuthority> {
    let role = topology::permissions::Role::from_name(node)
        .ok_or_else(|| anyhow::anyhow!("no role is named {node}"))?;
    let trust = crate::trust::Trust::new(settings, role)?;
    let editors = topology::DomainCopy::all().into_iter().filter(|copy| copy.may_forward_edits());
    Ok(ChangeAuthority {
        support: trust.user_of(topology::permissions::Role::Support).to_string(),
        operator: trust.operator().to_string(),
        domains: editors
            .map(|copy| trust.user_of(topology::permissions::Role::Domain(copy)).to_string())
            .collect(),
    })
}

/// Which orders have had changes in this book, so that an element without
/// any skips the database. Refreshed from the table every [`POLL`] (changes
/// another instance received) and at once for the changes this one receives.
/// Missing a change here is safe: the next node, or the closing node (which
/// always reads the table), decides it.
#[derive(Default)]
struct Known {
    /// Orders with changes, and when this process last heard of one for it
    /// (forgotten after the retention, like the rows).
    orders: HashMap<Uuid, Instant>,
    polled_at: Option<Instant>,
    cursor: String,
}

const POLL: Duration = Duration::from_millis(100);

impl ChangeBook {
    pub async fn open(settings: &Settings, node: &str) -> anyhow::Result<ChangeBook> {
        let store = Store::open(settings, node).await?;
        // A node's name may hold dashes (fraud-check); a table's may not.
        let prefix = node.replace('-', "_");
        let changes = format!("{prefix}_changes");
        store.add_column(&changes, "received_at TEXT NOT NULL DEFAULT ''").await?;
        let closed = format!("{prefix}_closed_orders");
        store
            .migrate(&[
                &format!(
                    "CREATE TABLE IF NOT EXISTS {changes} (change_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
                     request TEXT NOT NULL, requested_at TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, \
                     received_at TEXT NOT NULL DEFAULT '')"
                ),
                &format!("CREATE INDEX IF NOT EXISTS {changes}_by_order ON {changes} (order_id)"),
                &format!("CREATE INDEX IF NOT EXISTS {changes}_by_arrival ON {changes} (received_at)"),
                &format!(
                    "CREATE TABLE IF NOT EXISTS {closed} (order_id TEXT PRIMARY KEY, state TEXT NOT NULL, \
                     resolved TEXT NOT NULL, closed_at TEXT NOT NULL)"
                ),
            ])
            .await?;
        Ok(ChangeBook {
            store,
            changes,
            closed,
            known: std::sync::Mutex::new(Known::default()),
            retention: settings.change_retention,
            purged_at: std::sync::Mutex::new(None),
            authority: change_authority(settings, node)?,
            vetter: std::sync::OnceLock::new(),
        })
    }

    /// Has every change the rules would apply checked by `vetter` too (set once).
    pub fn vet_with(&self, vetter: std::sync::Arc<dyn VetChange>) {
        let _ = self.vetter.set(vetter);
    }

    /// The decision on a pending request: who asks, the rules, the node's own check.
    async fn decide_pending(
        &self,
        element: &OrderElement,
        request: &ChangeRequest,
    ) -> sqlx::Result<Decision> {
        if let Err(reason) = self.authority.check(element, request) {
            return Ok(Decision::Reject(reason));
        }
        let decision = decide(element, request, Utc::now());
        if let (Decision::Apply, Some(vetter)) = (&decision, self.vetter.get()) {
            if let Some(reason) = vetter.vet(element, request).await? {
                return Ok(Decision::Reject(reason));
            }
        }
        Ok(decision)
    }

    /// Serializes the decisions about one order (PostgreSQL; SQLite
    /// transactions that start with a write are serialized already).
    async fn lock_order(&self, tx: &mut Transaction<'_, Any>, order_id: Uuid) -> sqlx::Result<()> {
        if self.store.backend == Backend::Postgres {
            lock_order_on(tx, order_id).await?;
        }
        Ok(())
    }

    /// The table of the requests the book heard (`<node>_changes`, in its store).
    pub fn changes_table(&self) -> &str {
        &self.changes
    }

    /// The store the book is kept in (the node's own).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records a change request heard on the fanout.
    pub async fn receive(&self, request: &ChangeRequest) -> sqlx::Result<Received> {
        if let Some(reason) = request.change.refused_on_arrival() {
            // Every node decides this alike: nothing of it is stored.
            return Ok(Received::Reject(reason));
        }
        let encoded = serde_json::to_string(request).map_err(|e| sqlx::Error::Encode(e.into()))?;
        if encoded.len() > MAX_CHANGE_REQUEST_BYTES {
            // Every node decides this alike, and applied/rejected share one event id.
            return Ok(Received::Reject(format!(
                "the change request is {} bytes; at most {MAX_CHANGE_REQUEST_BYTES} are accepted",
                encoded.len()
            )));
        }
        self.purge_if_due().await?;
        let mut tx = self.store.pool.begin().await?;
        self.lock_order(&mut tx, request.order_id).await?;
        sqlx::query(&format!(
            "INSERT INTO {} (change_id, order_id, request, requested_at, status, received_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT (change_id) DO NOTHING",
            self.changes
        ))
        .bind(request.change_id.to_string())
        .bind(request.order_id.to_string())
        .bind(encoded)
        .bind(crate::audit::rfc3339::format(&request.requested_at))
        .bind(crate::audit::rfc3339::format(&Utc::now()))
        .execute(&mut *tx)
        .await?;
        let closed = sqlx::query(&format!("SELECT state, resolved FROM {} WHERE order_id = $1", self.closed))
            .bind(request.order_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let received = match closed {
            None => Received::Pending,
            Some(row) => {
                let resolved: Vec<Uuid> =
                    serde_json::from_str(&row.try_get::<String, _>("resolved")?).unwrap_or_default();
                let reason = format!("the order is already {}", row.try_get::<String, _>("state")?);
                if resolved.contains(&request.change_id)
                    || !self.set_status(&mut tx, request.change_id, ("rejected", &reason), false).await?
                {
                    // Resolved by the element, or applied here by a copy of it.
                    Received::AlreadyResolved
                } else {
                    Received::Reject(reason)
                }
            }
        };
        tx.commit().await?;
        self.known.lock().expect("known orders").orders.insert(request.order_id, Instant::now());
        Ok(received)
    }

    /// Deletes requests received and orders closed longer ago than the
    /// retention, at most once a minute. Returns the rows deleted.
    async fn purge_if_due(&self) -> sqlx::Result<u64> {
        {
            let mut purged_at = self.purged_at.lock().expect("purge time");
            if purged_at.is_some_and(|t| t.elapsed() < PURGE_EVERY) {
                return Ok(0);
            }
            *purged_at = Some(Instant::now());
        }
        self.purge().await
    }

    /// Deletes what is past the retention now.
    pub async fn purge(&self) -> sqlx::Result<u64> {
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::days(1));
        let cutoff = crate::audit::rfc3339::format(&(Utc::now() - retention));
        let changes = sqlx::query(&format!("DELETE FROM {} WHERE received_at < $1", self.changes))
            .bind(&cutoff)
            .execute(&self.store.pool)
            .await?
            .rows_affected();
        let closed = sqlx::query(&format!("DELETE FROM {} WHERE closed_at < $1", self.closed))
            .bind(&cutoff)
            .execute(&self.store.pool)
            .await?
            .rows_affected();
        let mut known = self.known.lock().expect("known orders");
        let retention = self.retention;
        known.orders.retain(|_, heard| heard.elapsed() < retention);
        Ok(changes + closed)
    }

    /// Rows in the book (requests, closed orders): for tests and audits.
    pub async fn row_counts(&self) -> sqlx::Result<(i64, i64)> {
        let count = |table: &str| format!("SELECT COUNT(*) FROM {table}");
        let changes = sqlx::query_scalar(&count(&self.changes)).fetch_one(&self.store.pool).await?;
        let closed = sqlx::query_scalar(&count(&self.closed)).fetch_one(&self.store.pool).await?;
        Ok((changes, closed))
    }

    /// Whether this book may hold changes for the order (see [`Known`]).
    pub async fn may_have_changes(&self, order_id: Uuid) -> sqlx::Result<bool> {
        // A book that only reads (a desk's) forgets what is past the retention too.
        self.purge_if_due().await?;
        let since = {
            let known = self.known.lock().expect("known orders");
            if known.polled_at.is_some_and(|t| t.elapsed() < POLL) {
                return Ok(known.orders.contains_key(&order_id));
            }
            // Re-read a few seconds back: another instance may commit an earlier arrival late.
            match chrono::DateTime::parse_from_rfc3339(&known.cursor) {
                Ok(t) => {
                    crate::audit::rfc3339::format(&(t.with_timezone(&Utc) - chrono::Duration::seconds(5)))
                }
                Err(_) => String::new(),
            }
        };
        let rows = sqlx::query(&format!(
            "SELECT order_id, received_at FROM {} WHERE received_at >= $1",
            self.changes
        ))
        .bind(since)
        .fetch_all(&self.store.pool)
        .await?;
        let mut known = self.known.lock().expect("known orders");
        for row in rows {
            let received_at: String = row.try_get("received_at")?;
            if let Ok(id) = row.try_get::<String, _>("order_id")?.parse() {
                known.orders.entry(id).or_insert_with(Instant::now);
            }
            if received_at > known.cursor {
                known.cursor = received_at;
            }
        }
        known.polled_at = Some(Instant::now());
        Ok(known.orders.contains_key(&order_id))
    }

    /// Sets a change's status unless it was applied, or (with `undecided_only`)
    /// decided at all, meanwhile; returns whether it did. On PostgreSQL a
    /// `resolve` of another instance (which takes no lock) may decide the
    /// change between a read of it and this write: the decision stands.
    async fn set_status(
        &self,
        tx: &mut Transaction<'_, Any>,
        change_id: Uuid,
        decision: (&str, &str),
        undecided_only: bool,
    ) -> sqlx::Result<bool> {
        set_status_on(tx, &self.changes, change_id, decision, undecided_only).await
    }

    /// Decides every change heard of for the element's order that it has not
    /// resolved yet (oldest request first), applies those accepted, and
    /// returns the element with each decision.
    pub async fn resolve(
        &self,
        element: OrderElement,
    ) -> sqlx::Result<(OrderElement, Vec<(ChangeRequest, Decision)>)> {
        self.resolve_with(element, true).await
    }

    /// The decisions already made for the element's order that it has not
    /// resolved (a step redone after a crash: the same element, the same
    /// records), applied; changes still pending stay for whoever holds the
    /// order next.
    pub async fn replay(
        &self,
        element: OrderElement,
    ) -> sqlx::Result<(OrderElement, Vec<(ChangeRequest, Decision)>)> {
        self.resolve_with(element, false).await
    }

    async fn resolve_with(
        &self,
        mut element: OrderElement,
        decide_pending: bool,
    ) -> sqlx::Result<(OrderElement, Vec<(ChangeRequest, Decision)>)> {
        // A replay reads the book itself: another instance may have decided
        // since this one last polled.
        if decide_pending && !self.may_have_changes(element.order_id).await? {
            return Ok((element, Vec::new()));
        }
        let rows = sqlx::query(&format!(
            "SELECT change_id, request, status, reason FROM {} WHERE order_id = $1 ORDER BY requested_at, change_id",
            self.changes
        ))
        .bind(element.order_id.to_string())
        .fetch_all(&self.store.pool)
        .await?;
        let mut decisions = Vec::new();
        for row in rows {
            let Some(request) = unresolved(&row, &element)? else { continue };
            let status: String = row.try_get("status")?;
            if status == "pending" && !decide_pending {
                continue;
            }
            let decision = match status.as_str() {
                "pending" => {
                    let decision = self.decide_pending(&element, &request).await?;
                    let (status, reason) = match &decision {
                        Decision::Apply => ("applied", String::new()),
                        Decision::Reject(reason) => ("rejected", reason.clone()),
                    };
                    let updated = sqlx::query(&format!(
                        "UPDATE {} SET status = $1, reason = $2 WHERE change_id = $3 AND status = 'pending'",
                        self.changes
                    ))
                    .bind(status)
                    .bind(&reason)
                    .bind(request.change_id.to_string())
                    .execute(&self.store.pool)
                    .await?
                    .rows_affected();
                    if updated == 1 {
                        decision
                    } else {
                        self.stored_decision(request.change_id).await?
                    }
                }
                "applied" => Decision::Apply,
                _ => Decision::Reject(row.try_get::<Option<String>, _>("reason")?.unwrap_or_default()),
            };
            match &decision {
                Decision::Apply => apply(&mut element, &request),
                Decision::Reject(_) => element.resolved_changes.push(request.change_id),
            }
            decisions.push((request, decision));
        }
        Ok((element, decisions))
    }

    async fn stored_decision(&self, change_id: Uuid) -> sqlx::Result<Decision> {
        let row = sqlx::query(&format!("SELECT status, reason FROM {} WHERE change_id = $1", self.changes))
            .bind(change_id.to_string())
            .fetch_one(&self.store.pool)
            .await?;
        Ok(match row.try_get::<String, _>("status")?.as_str() {
            "applied" => Decision::Apply,
            _ => Decision::Reject(row.try_get::<Option<String>, _>("reason")?.unwrap_or_default()),
        })
    }

    /// The order ended at this node in `element`'s state: remember that, and
    /// reject the changes that arrived while it was being handled, in one
    /// write of the node's group commit.
    ///
    /// Each of `close` and [`ChangeBook::receive`] writes first and reads the
    /// other's table after, in its own transaction: whichever writes second
    /// (SQLite's writers take turns; on PostgreSQL both hold the order's
    /// lock) sees the first.
    pub async fn close(&self, element: &OrderElement) -> sqlx::Result<Vec<(ChangeRequest, String)>> {
        let closing = std::sync::Arc::new(Closing {
            changes: self.changes.clone(),
            closed: self.closed.clone(),
            postgres: self.store.backend == Backend::Postgres,
            order_id: element.order_id,
            state: element.state.as_str().to_string(),
            shown: element.state.to_string(),
            resolved: element.resolved_changes.clone(),
        });
        self.store
            .write(move |connection| {
                let closing = closing.clone();
                Box::pin(async move { closing.run(connection).await.map(Written::Keep) })
            })
            .await
    }
}

/// What closing an order writes, owned by the write (which may run twice).
struct Closing {
    changes: String,
    closed: String,
    postgres: bool,
    order_id: Uuid,
    state: String,
    /// The state as the rejection reason names it.
    shown: String,
    resolved: Vec<Uuid>,
}

impl Closing {
    async fn run(&self, connection: &mut AnyConnection) -> sqlx::Result<Vec<(ChangeRequest, String)>> {
        let order_id = self.order_id.to_string();
        if self.postgres {
            lock_order_on(connection, self.order_id).await?;
        }
        sqlx::query(&format!(
            "INSERT INTO {} (order_id, state, resolved, closed_at) VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
            self.closed
        ))
        .bind(&order_id)
        .bind(&self.state)
        .bind(serde_json::to_string(&self.resolved).unwrap_or_default())
        .bind(crate::audit::rfc3339::format(&Utc::now()))
        .execute(&mut *connection)
        .await?;
        let undecided = sqlx::query(&format!(
            "SELECT change_id, request, status FROM {} WHERE order_id = $1 AND status IN ('pending', 'late')",
            self.changes
        ))
        .bind(&order_id)
        .fetch_all(&mut *connection)
        .await?;
        let reason = format!("the order is already {}", self.shown);
        let mut late = Vec::new();
        for row in undecided {
            let request = serde_json::from_str::<ChangeRequest>(&row.try_get::<String, _>("request")?).ok();
            let Some(request) = request.filter(|r| !self.resolved.contains(&r.change_id)) else { continue };
            // 'late' keeps them returned if this step is redone after a crash.
            if set_status_on(connection, &self.changes, request.change_id, ("late", &reason), true).await? {
                late.push((request, reason.clone()));
            }
        }
        Ok(late)
    }
}

/// Serializes the decisions about one order on PostgreSQL, until the transaction ends.
async fn lock_order_on(connection: &mut AnyConnection, order_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::text")
        .bind(order_id.to_string())
        .fetch_optional(&mut *connection)
        .await?;
    Ok(())
}

/// Sets a change's status in `changes` unless it was applied, or (with
/// `undecided_only`) decided at all, meanwhile; returns whether it did.
async fn set_status_on(
    connection: &mut AnyConnection,
    changes: &str,
    change_id: Uuid,
    (status, reason): (&str, &str),
    undecided_only: bool,
) -> sqlx::Result<bool> {
    let unless = if undecided_only { "status IN ('pending', 'late')" } else { "status <> 'applied'" };
    let sql = format!("UPDATE {changes} SET status = $1, reason = $2 WHERE change_id = $3 AND {unless}");
    let updated = sqlx::query(&sql)
        .bind(status)
        .bind(reason)
        .bind(change_id.to_string())
        .execute(&mut *connection)
        .await?
        .rows_affected();
    Ok(updated == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;
    use crate::order::{Order, OrderState, ShipTo};

    async fn book(retention: Duration) -> (ChangeBook, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("orderflow-book-{}", Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        settings.change_retention = retention;
        (ChangeBook::open(&settings, "payment").await.unwrap(), dir)
    }

    #[tokio::test]
    async fn a_node_whose_name_has_a_dash_keeps_its_book() {
        let scratch = crate::settings::ScratchRun::new("dashed-book");
        let book = ChangeBook::open(&scratch.settings(), "fraud-check").await.unwrap();
        assert_eq!(book.changes_table(), "fraud_check_changes");
        let request = ChangeRequest::new(Uuid::new_v4(), Change::Cancel, None);
        assert_eq!(book.receive(&request).await.unwrap(), Received::Pending);
        assert_eq!(book.row_counts().await.unwrap(), (1, 0));
    }

    #[tokio::test]
    async fn requests_for_orders_that_never_come_are_purged_after_the_retention() {
        let (book, dir) = book(Duration::from_millis(300)).await;
        for _ in 0..200 {
            let request = ChangeRequest::new(Uuid::new_v4(), Change::Cancel, None);
            assert_eq!(book.receive(&request).await.unwrap(), Received::Pending);
        }
        let mut ended = OrderElement::placed(Order::default());
        ended.state = OrderState::Shipped;
        book.close(&ended).await.unwrap();
        assert_eq!(book.row_counts().await.unwrap(), (200, 1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(book.purge().await.unwrap(), 201);
        assert_eq!(book.row_counts().await.unwrap(), (0, 0));
        assert!(book.known.lock().unwrap().orders.is_empty(), "the in-memory set is bounded too");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_oversized_request_is_rejected_and_not_stored() {
        let (book, dir) = book(Duration::from_secs(3600)).await;
        let ship_to = ShipTo { name: "x".repeat(1_000_000), ..ShipTo::default() };
        let request = ChangeRequest::new(Uuid::new_v4(), Change::ShipTo { ship_to }, None);
        match book.receive(&request).await.unwrap() {
            Received::Reject(reason) => assert!(reason.contains("at most 8192"), "{reason}"),
            other => panic!("stored a 1 MB change request: {other:?}"),
        }
        assert_eq!(book.row_counts().await.unwrap(), (0, 0));
        let _ = std::fs::remove_dir_all(dir);
    }
}
