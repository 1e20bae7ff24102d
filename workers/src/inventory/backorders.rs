//! Inventory's backorders, as stored decisions (no broker here): an order
//! whose stock is short, when a distributor supplies every short SKU, waits
//! at inventory instead of ending `out_of_stock`. It takes at once what is
//! on hand, purchase orders go out for the rest, and received units are
//! handed to the waiting orders oldest first (`arrival`) before any is
//! left on hand, so a younger order never takes units an older one waits
//! for. An order whose every line is covered gets its reservation in the
//! same transaction (`covered`); one that waits past the limit (`expired`)
//! or is cancelled gives its units back to the next in line.
//!
//! Each row also says whether its purchase orders went out (`ordered`) and
//! whether its way out was sent on (`sent`): the desk
//! ([`crate::inventory::desk`]) sends both after the decision is
//! committed, and again after a crash (the receivers take each once).

use chrono::Utc;
use serde::{Deserialize, Serialize};
use shared::order::OrderElement;
use shared::store::Store;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS inventory_backorders (order_id TEXT PRIMARY KEY, \
     arrival BIGINT NOT NULL, element TEXT NOT NULL, status TEXT NOT NULL, \
     purchase_orders TEXT NOT NULL, ordered BIGINT NOT NULL DEFAULT 0, sent BIGINT NOT NULL DEFAULT 0, \
     waiting_since_ms BIGINT NOT NULL, ended_at TEXT)",
    "CREATE TABLE IF NOT EXISTS inventory_backorder_lines (order_id TEXT NOT NULL, sku TEXT NOT NULL, \
     qty BIGINT NOT NULL, allocated BIGINT NOT NULL, PRIMARY KEY (order_id, sku))",
    // Every purchase order decided, and the units received against it so
    // far: a receipt must name one that is still open (see `take_against`).
    "CREATE TABLE IF NOT EXISTS inventory_purchase_orders (po_id TEXT PRIMARY KEY, \
     order_id TEXT NOT NULL, distributor_id TEXT NOT NULL, sku TEXT NOT NULL, qty BIGINT NOT NULL, \
     received BIGINT NOT NULL DEFAULT 0)",
];

/// Units asked of a distributor for a backordered order's short line. Its
/// id is random (a receipt naming it comes from someone who saw the
/// purchase order, not from someone who knows the order id) and stored
/// with the decision: it is the same every time it is sent (the
/// distributors ship it once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseOrder {
    pub po_id: Uuid,
    pub order_id: Uuid,
    pub distributor_id: String,
    pub sku: String,
    pub qty: i64,
}

/// Where a backorder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for received items.
    Waiting,
    /// Every line covered: reserved, to be sent on to picking.
    Covered,
    /// Waited past the limit: to end `out_of_stock` with its refund.
    Expired,
    /// Cancelled while it waited: its authorization to be voided.
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Covered => "covered",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<Status> {
        [Status::Waiting, Status::Covered, Status::Expired, Status::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A backorder whose way out is decided but not yet sent on.
#[derive(Debug)]
pub struct Exit {
    pub element: OrderElement,
    pub status: Status,
    pub waited_ms: i64,
}

/// Takes the row lock of `sku`'s stock for the caller's transaction (a
/// no-op update: SQLite has one writer anyway; on PostgreSQL two instances
/// moving the same SKU's units wait for each other instead of both reading
/// the same units).
async fn lock_sku(conn: &mut AnyConnection, sku: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE inventory_bin_items SET qty = qty WHERE sku = $1")
        .bind(sku)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The units of `sku` on hand, read under its row lock inside the caller's transaction.
pub async fn on_hand(conn: &mut AnyConnection, sku: &str) -> sqlx::Result<i64> {
    lock_sku(conn, sku).await?;
    let qty: Option<i64> = sqlx::query_scalar("SELECT qty FROM inventory_bin_items WHERE sku = $1")
        .bind(sku)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(qty.unwrap_or(0).max(0))
}

/// Records the backorder of `element` (as it waits: state `backordered`)
/// inside the deciding transaction: each line takes what is on hand now,
/// and a purchase order asks `supplier(sku)` for the rest of each short line.
pub async fn record(
    conn: &mut AnyConnection,
    element: &OrderElement,
    lines: &[(String, i64)],
    supplier: impl Fn(&str) -> String,
) -> sqlx::Result<Vec<PurchaseOrder>> {
    let order_id = element.order_id.to_string();
    let mut purchase_orders = Vec::new();
    for (sku, qty) in lines {
        let allocated = on_hand(conn, sku).await?.min(*qty);
        sqlx::query("UPDATE inventory_bin_items SET qty = qty - $1 WHERE sku = $2")
            .bind(allocated)
            .bind(sku)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO inventory_backorder_lines (order_id, sku, qty, allocated) VALUES ($1, $2, $3, $4)",
        )
        .bind(&order_id)
        .bind(sku)
        .bind(*qty)
        .bind(allocated)
        .execute(&mut *conn)
        .await?;
        if allocated < *qty {
            purchase_orders.push(PurchaseOrder {
                po_id: Uuid::new_v4(),
                order_id: element.order_id,
                distributor_id: supplier(sku),
                sku: sku.clone(),
                qty: qty - allocated,
            });
        }
    }
    for po in &purchase_orders {
        insert_purchase_order(conn, po, 0).await?;
    }
    sqlx::query(
        "INSERT INTO inventory_backorders (order_id, arrival, element, status, purchase_orders, waiting_since_ms) \
         SELECT $1, COALESCE(MAX(arrival), 0) + 1, $2, $3, $4, $5 FROM inventory_backorders WHERE true",
    )
    .bind(&order_id)
    .bind(serde_json::to_string(element).expect("an element serializes"))
    .bind(Status::Waiting.as_str())
    .bind(serde_json::to_string(&purchase_orders).expect("purchase orders serialize"))
    .bind(Utc::now().timestamp_millis())
    .execute(&mut *conn)
    .await?;
    // Stock that came back meanwhile may cover it whole: reserved at once.
    cover_if_whole(conn, &order_id).await?;
    Ok(purchase_orders)
}

async fn insert_purchase_order(
    conn: &mut AnyConnection,
    po: &PurchaseOrder,
    received: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO inventory_purchase_orders (po_id, order_id, distributor_id, sku, qty, received) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (po_id) DO NOTHING",
    )
    .bind(po.po_id.to_string())
    .bind(po.order_id.to_string())
    .bind(&po.distributor_id)
    .bind(&po.sku)
    .bind(po.qty)
    .bind(received)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A purchase order as stored, with the units received against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenPurchaseOrder {
    pub po: PurchaseOrder,
    pub received: i64,
}

impl OpenPurchaseOrder {
    /// The units still to come.
    pub fn open(&self) -> i64 {
        (self.po.qty - self.received).max(0)
    }
}

/// The purchase order `po_id`, as stored, read in the caller's transaction.
pub async fn purchase_order(
    conn: &mut AnyConnection,
    po_id: Uuid,
) -> sqlx::Result<Option<OpenPurchaseOrder>> {
    let row = sqlx::query(
        "SELECT order_id, distributor_id, sku, qty, received FROM inventory_purchase_orders WHERE po_id = $1",
    )
    .bind(po_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let order_id: String = row.try_get(0)?;
    Ok(Some(OpenPurchaseOrder {
        po: PurchaseOrder {
            po_id,
            order_id: shared::store::stored_uuid(&order_id, "order_id")?,
            distributor_id: row.try_get(1)?,
            sku: row.try_get(2)?,
            qty: row.try_get(3)?,
        },
        received: row.try_get(4)?,
    }))
}

/// Counts `units` received against purchase order `po` (checked open for
/// them by the caller, in this transaction) and hands them to the order it
/// was sent for first; what that order no longer needs (it got units
/// meanwhile, or ended) goes to the other waiting orders oldest first, then
/// on hand. Returns the orders covered; `None` when the purchase order has
/// not `units` open any more (nothing was changed).
pub async fn take_against(
    conn: &mut AnyConnection,
    po: &PurchaseOrder,
    units: i64,
) -> sqlx::Result<Option<Vec<Uuid>>> {
    let counted = sqlx::query(
        "UPDATE inventory_purchase_orders SET received = received + $1 WHERE po_id = $2 AND received + $1 <= qty",
    )
    .bind(units)
    .bind(po.po_id.to_string())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if counted == 0 {
        return Ok(None);
    }
    lock_sku(conn, &po.sku).await?;
    let order_id = po.order_id.to_string();
    let needed: Option<i64> = sqlx::query_scalar(
        "SELECT l.qty - l.allocated FROM inventory_backorder_lines l \
         JOIN inventory_backorders b ON b.order_id = l.order_id \
         WHERE l.order_id = $1 AND l.sku = $2 AND b.status = 'waiting'",
    )
    .bind(&order_id)
    .bind(&po.sku)
    .fetch_optional(&mut *conn)
    .await?;
    let given = needed.unwrap_or(0).clamp(0, units);
    let mut covered = Vec::new();
    if given > 0 {
        sqlx::query(
            "UPDATE inventory_backorder_lines SET allocated = allocated + $1 WHERE order_id = $2 AND sku = $3",
        )
        .bind(given)
        .bind(&order_id)
        .bind(&po.sku)
        .execute(&mut *conn)
        .await?;
        if cover_if_whole(conn, &order_id).await? {
            covered.push(po.order_id);
        }
    }
    if units > given {
        covered.extend(distribute(conn, &po.sku, units - given).await?);
    }
    Ok(Some(covered))
}

/// Fills `inventory_purchase_orders` from the backorders of a store from
/// before it was kept (once: when it is empty); a purchase order the
/// simulated distributors shipped then (receipt `po-<po_id>`) counts as received.
pub async fn backfill_purchase_orders(store: &Store) -> sqlx::Result<()> {
    let kept: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM inventory_purchase_orders").fetch_one(&store.pool).await?;
    if kept > 0 {
        return Ok(());
    }
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT purchase_orders FROM inventory_backorders").fetch_all(&store.pool).await?;
    let mut tx = store.pool.begin().await?;
    for text in rows {
        for po in serde_json::from_str::<Vec<PurchaseOrder>>(&text).unwrap_or_default() {
            let shipped: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM inventory_receipts WHERE receipt_id = $1")
                    .bind(format!("po-{}", po.po_id))
                    .fetch_one(&mut *tx)
                    .await?;
            insert_purchase_order(&mut tx, &po, if shipped > 0 { po.qty } else { 0 }).await?;
        }
    }
    tx.commit().await
}

/// Hands `units` of `sku` to the waiting backorders that still need it,
/// oldest first; what none needs goes on hand. Covers (reserves) every
/// backorder whose last line this completes. Returns the orders covered.
pub async fn distribute(conn: &mut AnyConnection, sku: &str, units: i64) -> sqlx::Result<Vec<Uuid>> {
    lock_sku(conn, sku).await?;
    let rows = sqlx::query(
        "SELECT l.order_id, l.qty - l.allocated FROM inventory_backorder_lines l \
         JOIN inventory_backorders b ON b.order_id = l.order_id \
         WHERE l.sku = $1 AND b.status = 'waiting' AND l.allocated < l.qty ORDER BY b.arrival, b.order_id",
    )
    .bind(sku)
    .fetch_all(&mut *conn)
    .await?;
    let mut left = units;
    let mut touched = Vec::new();
    for row in rows {
        if left == 0 {
            break;
        }
        let (order_id, needed): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        let given = needed.min(left);
        sqlx::query(
            "UPDATE inventory_backorder_lines SET allocated = allocated + $1 WHERE order_id = $2 AND sku = $3",
        )
        .bind(given)
        .bind(&order_id)
        .bind(sku)
        .execute(&mut *conn)
        .await?;
        left -= given;
        touched.push(order_id);
    }
    if left > 0 {
        sqlx::query("UPDATE inventory_bin_items SET qty = qty + $1 WHERE sku = $2")
            .bind(left)
            .bind(sku)
            .execute(&mut *conn)
            .await?;
    }
    let mut covered = Vec::new();
    for order_id in touched {
        if cover_if_whole(conn, &order_id).await? {
            covered.push(shared::store::stored_uuid(&order_id, "order_id")?);
        }
    }
    Ok(covered)
}

/// Reserves a waiting backorder whose every line is allocated: its
/// reservation is written and it is marked covered, in the caller's transaction.
async fn cover_if_whole(conn: &mut AnyConnection, order_id: &str) -> sqlx::Result<bool> {
    let rows = sqlx::query(
        "SELECT sku, qty, allocated FROM inventory_backorder_lines WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut lines = Vec::with_capacity(rows.len());
    for row in &rows {
        let (sku, qty, allocated): (String, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if allocated < qty {
            return Ok(false);
        }
        lines.push((sku, qty));
    }
    let covered = sqlx::query(
        "UPDATE inventory_backorders SET status = 'covered', ended_at = $1 WHERE order_id = $2 AND status = 'waiting'",
    )
    .bind(Utc::now().to_rfc3339())
    .bind(order_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if covered == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO inventory_reservations (order_id, reservation_id, lines, reserved_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(Uuid::new_v4().to_string())
    .bind(serde_json::to_string(&lines).expect("lines serialize"))
    .bind(Utc::now().to_rfc3339())
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// The store's backorders, for the desk and the stock domain.
#[derive(Clone)]
pub struct Backorders {
    pub store: Store,
}

impl Backorders {
    /// Ends a waiting backorder as `status` (expired or cancelled) and hands
    /// its allocated units to the next in line. `false` when it was not
    /// waiting any more (covered meanwhile, or ended by another instance).
    pub async fn end(&self, order_id: Uuid, status: Status) -> sqlx::Result<bool> {
        let mut tx = self.store.pool.begin().await?;
        // Its SKUs' row locks first, as every move of their units takes them.
        sqlx::query(
            "UPDATE inventory_bin_items SET qty = qty WHERE sku IN \
             (SELECT sku FROM inventory_backorder_lines WHERE order_id = $1)",
        )
        .bind(order_id.to_string())
        .execute(&mut *tx)
        .await?;
        let ended = sqlx::query(
            "UPDATE inventory_backorders SET status = $1, ended_at = $2 WHERE order_id = $3 AND status = 'waiting'",
        )
        .bind(status.as_str())
        .bind(Utc::now().to_rfc3339())
        .bind(order_id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if ended == 1 {
            let rows = sqlx::query(
                "SELECT sku, allocated FROM inventory_backorder_lines WHERE order_id = $1 AND allocated > 0 ORDER BY sku",
            )
            .bind(order_id.to_string())
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let (sku, allocated): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
                sqlx::query(
                    "UPDATE inventory_backorder_lines SET allocated = 0 WHERE order_id = $1 AND sku = $2",
                )
                .bind(order_id.to_string())
                .bind(&sku)
                .execute(&mut *tx)
                .await?;
                distribute(&mut tx, &sku, allocated).await?;
            }
        }
        tx.commit().await?;
        Ok(ended == 1)
    }

    /// Moves units on hand to waiting backorders that still need them (a
    /// receipt that raced a new backorder, units given back meanwhile), so
    /// nothing sits on hand while an order waits for it.
    pub async fn rebalance(&self) -> sqlx::Result<Vec<Uuid>> {
        let skus: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT l.sku FROM inventory_backorder_lines l \
             JOIN inventory_backorders b ON b.order_id = l.order_id \
             JOIN inventory_bin_items i ON i.sku = l.sku \
             WHERE b.status = 'waiting' AND l.allocated < l.qty AND i.qty > 0",
        )
        .fetch_all(&self.store.pool)
        .await?;
        let mut covered = Vec::new();
        for sku in skus {
            let mut tx = self.store.pool.begin().await?;
            let units = on_hand(&mut tx, &sku).await?;
            sqlx::query("UPDATE inventory_bin_items SET qty = qty - $1 WHERE sku = $2")
                .bind(units)
                .bind(&sku)
                .execute(&mut *tx)
                .await?;
            covered.extend(distribute(&mut tx, &sku, units).await?);
            tx.commit().await?;
        }
        Ok(covered)
    }

    /// The waiting backorders, oldest first, as they wait.
    pub async fn waiting(&self) -> sqlx::Result<Vec<(OrderElement, i64)>> {
        let rows = sqlx::query(
            "SELECT element, waiting_since_ms FROM inventory_backorders WHERE status = 'waiting' ORDER BY arrival",
        )
        .fetch_all(&self.store.pool)
        .await?;
        let mut waiting = Vec::with_capacity(rows.len());
        for row in rows {
            let element: String = row.try_get(0)?;
            let element = serde_json::from_str(&element).map_err(|e| sqlx::Error::Decode(e.into()))?;
            waiting.push((element, row.try_get(1)?));
        }
        Ok(waiting)
    }

    /// Stores a backorder's element as changed (a new ship-to address),
    /// unless it was sent on already.
    pub async fn update_waiting(&self, element: &OrderElement) -> sqlx::Result<()> {
        sqlx::query("UPDATE inventory_backorders SET element = $1 WHERE order_id = $2 AND sent = 0")
            .bind(serde_json::to_string(element).expect("an element serializes"))
            .bind(element.order_id.to_string())
            .execute(&self.store.pool)
            .await?;
        Ok(())
    }

    /// Purchase orders decided but not yet sent, per backorder.
    pub async fn unordered(&self) -> sqlx::Result<Vec<(Uuid, Vec<PurchaseOrder>)>> {
        let rows =
            sqlx::query("SELECT order_id, purchase_orders FROM inventory_backorders WHERE ordered = 0")
                .fetch_all(&self.store.pool)
                .await?;
        let mut unordered = Vec::with_capacity(rows.len());
        for row in rows {
            let order_id = shared::store::stored_uuid(&row.try_get::<String, _>(0)?, "order_id")?;
            let orders: String = row.try_get(1)?;
            unordered.push((order_id, serde_json::from_str(&orders).unwrap_or_default()));
        }
        Ok(unordered)
    }

    pub async fn mark_ordered(&self, order_id: Uuid) -> sqlx::Result<()> {
        self.mark(order_id, "ordered").await
    }

    pub async fn mark_sent(&self, order_id: Uuid) -> sqlx::Result<()> {
        self.mark(order_id, "sent").await
    }

    async fn mark(&self, order_id: Uuid, column: &str) -> sqlx::Result<()> {
        sqlx::query(&format!("UPDATE inventory_backorders SET {column} = 1 WHERE order_id = $1"))
            .bind(order_id.to_string())
            .execute(&self.store.pool)
            .await?;
        Ok(())
    }

    /// Backorders whose way out is decided and not yet sent on, oldest first.
    pub async fn exits(&self) -> sqlx::Result<Vec<Exit>> {
        let rows = sqlx::query(
            "SELECT element, status, waiting_since_ms FROM inventory_backorders \
             WHERE status <> 'waiting' AND sent = 0 ORDER BY arrival",
        )
        .fetch_all(&self.store.pool)
        .await?;
        let now = Utc::now().timestamp_millis();
        let mut exits = Vec::with_capacity(rows.len());
        for row in rows {
            let element: String = row.try_get(0)?;
            let status: String = row.try_get(1)?;
            exits.push(Exit {
                element: serde_json::from_str(&element).map_err(|e| sqlx::Error::Decode(e.into()))?,
                status: Status::parse(&status).unwrap_or(Status::Expired),
                waited_ms: now - row.try_get::<i64, _>(2)?,
            });
        }
        Ok(exits)
    }

    /// Gives a reservation's units back, once (a cancelled order's, or a
    /// covered backorder's cancelled before it left): to the backorders
    /// waiting for them first, oldest first, the rest on hand. Returns the
    /// units released by this call (0 when released before).
    pub async fn release_reservation(&self, order_id: Uuid) -> sqlx::Result<i64> {
        let mut tx = self.store.pool.begin().await?;
        let released = sqlx::query(
            "UPDATE inventory_reservations SET released = 1 WHERE order_id = $1 AND released = 0",
        )
        .bind(order_id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mut units = 0;
        if released == 1 {
            let lines: String =
                sqlx::query_scalar("SELECT lines FROM inventory_reservations WHERE order_id = $1")
                    .bind(order_id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
            for (sku, qty) in serde_json::from_str::<Vec<(String, i64)>>(&lines).unwrap_or_default() {
                distribute(&mut tx, &sku, qty).await?;
                units += qty;
            }
        }
        tx.commit().await?;
        Ok(units)
    }

    /// The reservation id of a covered backorder.
    pub async fn reservation_id(&self, order_id: Uuid) -> sqlx::Result<Uuid> {
        let id: String =
            sqlx::query_scalar("SELECT reservation_id FROM inventory_reservations WHERE order_id = $1")
                .bind(order_id.to_string())
                .fetch_one(&self.store.pool)
                .await?;
        shared::store::stored_uuid(&id, "reservation_id")
    }

    /// Of `sku`: the waiting backorders, the units they still wait for, and
    /// the units already set aside for them.
    pub async fn of_sku(&self, sku: &str) -> sqlx::Result<(i64, i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(l.qty - l.allocated), 0) AS BIGINT), \
             CAST(COALESCE(SUM(l.allocated), 0) AS BIGINT) \
             FROM inventory_backorder_lines l JOIN inventory_backorders b ON b.order_id = l.order_id \
             WHERE l.sku = $1 AND b.status = 'waiting'",
        )
        .bind(sku)
        .fetch_one(&self.store.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::stage::{Inventory, ReserveResult, Supply};
    use shared::order::{Item, Order};
    use shared::settings::Settings;
    use std::collections::BTreeMap;

    const SKU: &str = "SKU-0901";

    fn order_of(qty: i64) -> OrderElement {
        let order = Order { items: vec![Item { sku: SKU.into(), qty }], ..Order::default() };
        OrderElement::placed(order)
    }

    async fn units(store: &Store, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&store.pool).await.unwrap()
    }

    /// Ten on hand; four orders of four: two reserved, two backordered (the
    /// first takes the two left). Receipts go to the oldest first and cover
    /// exactly the orders they complete; an expired or cancelled backorder
    /// gives its units to the next in line. Units in = units out + on hand.
    #[tokio::test]
    async fn receipts_cover_backorders_oldest_first_and_every_unit_is_counted() {
        let dir = std::env::temp_dir().join(format!("orderflow-backorders-{}", Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        let inventory = Inventory::open(&settings).await.unwrap();
        let store = Store::open(&settings, "inventory").await.unwrap();
        let backorders = Backorders { store: store.clone() };
        let suppliers: BTreeMap<String, String> = [(SKU.to_string(), "D-01".to_string())].into();
        let known = Supply::Known(&suppliers);
        let decide = |qty: i64| {
            let element = order_of(qty);
            let inventory = inventory.clone();
            async move {
                let lines = vec![(SKU.to_string(), qty)];
                (element.clone(), inventory.reserve(&element, &lines, known).await.unwrap())
            }
        };
        let (_, a) = decide(4).await;
        let (_, b) = decide(4).await;
        let (c_element, c) = decide(4).await;
        let (d_element, d) = decide(4).await;
        let ids = [c_element.order_id, d_element.order_id];
        assert!(matches!((&a, &b), (ReserveResult::Reserved(_), ReserveResult::Reserved(_))));
        let ReserveResult::Backordered(c_orders) = c else { panic!("c is backordered") };
        assert_eq!(c_orders.len(), 1);
        assert_eq!(
            (c_orders[0].qty, c_orders[0].distributor_id.as_str()),
            (2, "D-01"),
            "c took the 2 on hand"
        );
        let ReserveResult::Backordered(d_orders) = d else { panic!("d is backordered") };
        assert_eq!(d_orders[0].qty, 4);
        // A redelivered element gets the same decision and the same purchase orders.
        let again = inventory.reserve(&c_element, &[(SKU.to_string(), 4)], known).await.unwrap();
        assert!(matches!(again, ReserveResult::Backordered(orders) if orders == c_orders));
        assert_eq!(backorders.of_sku(SKU).await.unwrap(), (2, 6, 2));

        let mut tx = store.pool.begin().await.unwrap();
        assert!(distribute(&mut tx, SKU, 1).await.unwrap().is_empty(), "one unit covers nobody");
        assert_eq!(distribute(&mut tx, SKU, 5).await.unwrap(), vec![ids[0], ids[1]], "c, then d");
        tx.commit().await.unwrap();
        assert_eq!(units(&store, "SELECT qty FROM inventory_bin_items WHERE sku = 'SKU-0901'").await, 0);
        assert_eq!(backorders.exits().await.unwrap().len(), 2);

        // e waits and expires: it held nothing. f and g wait; 3 units cover f
        // and give g one, which g's cancel hands back (nobody else waits).
        let (e, _) = decide(4).await;
        assert!(backorders.end(e.order_id, Status::Expired).await.unwrap());
        assert!(!backorders.end(e.order_id, Status::Cancelled).await.unwrap(), "ended once");
        let (f, _) = decide(2).await;
        let (g, _) = decide(2).await;
        let mut tx = store.pool.begin().await.unwrap();
        assert_eq!(distribute(&mut tx, SKU, 3).await.unwrap(), vec![f.order_id]);
        tx.commit().await.unwrap();
        assert!(backorders.end(g.order_id, Status::Cancelled).await.unwrap());
        let on_hand = units(&store, "SELECT qty FROM inventory_bin_items WHERE sku = 'SKU-0901'").await;
        assert_eq!(on_hand, 1);
        let exits: Vec<(Uuid, Status)> =
            backorders.exits().await.unwrap().into_iter().map(|x| (x.element.order_id, x.status)).collect();
        assert_eq!(
            exits,
            [
                (ids[0], Status::Covered),
                (ids[1], Status::Covered),
                (e.order_id, Status::Expired),
                (f.order_id, Status::Covered),
                (g.order_id, Status::Cancelled)
            ]
        );
        // In: 10 seeded + 9 received. Out: the reservations (a, b, c, d, f).
        let reserved: Vec<String> = sqlx::query_scalar("SELECT lines FROM inventory_reservations")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        let out: i64 = reserved
            .iter()
            .flat_map(|l| serde_json::from_str::<Vec<(String, i64)>>(l).unwrap())
            .map(|(_, qty)| qty)
            .sum();
        assert_eq!(out, 18);
        assert_eq!(10 + 9, out + on_hand);
        assert_eq!(backorders.of_sku(SKU).await.unwrap(), (0, 0, 0));

        // h takes the unit on hand and waits for one more, i waits for two;
        // one unit covers h, which is cancelled before it leaves: its two
        // units go to i, which is covered in turn. Released once.
        let (h, _) = decide(2).await;
        let (i, _) = decide(2).await;
        let mut tx = store.pool.begin().await.unwrap();
        assert_eq!(distribute(&mut tx, SKU, 1).await.unwrap(), vec![h.order_id]);
        tx.commit().await.unwrap();
        assert_eq!(backorders.release_reservation(h.order_id).await.unwrap(), 2);
        assert_eq!(backorders.release_reservation(h.order_id).await.unwrap(), 0, "released once");
        let last = backorders.exits().await.unwrap().pop().unwrap();
        assert_eq!((last.element.order_id, last.status), (i.order_id, Status::Covered));
        assert_eq!(units(&store, "SELECT qty FROM inventory_bin_items WHERE sku = 'SKU-0901'").await, 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
