//! inventory: owns the stock (`bin_items`; no other process reads it) and
//! reserves an order's items once (`reserved`). When an item is short and a
//! distributor supplies every short item, the order waits here
//! (`backordered`, see [`super::backorders`]); otherwise it goes to
//! exceptions (`stock_short`) and ends `out_of_stock`.

use super::backorders::{self, PurchaseOrder};
use crate::catalog;
use crate::domain_reads::{DomainReader, DomainReads};
use chrono::Utc;
use shared::backorder::WaitingLine;
use shared::domains::{Distributor, RecordRequest};
use shared::group_commit::Written;
use shared::order::{Failure, Order, Reservation};
use shared::store::{stored_uuid, Store};
use shared::{settings::Settings, Node, OrderElement, OrderState, Outcome, Stage, StageError};
use sqlx::AnyConnection;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use topology::DomainCopy;
use uuid::Uuid;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS inventory_bin_items (sku TEXT PRIMARY KEY, qty BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS inventory_reservations (order_id TEXT PRIMARY KEY, \
     reservation_id TEXT NOT NULL, lines TEXT NOT NULL, reserved_at TEXT NOT NULL, \
     released BIGINT NOT NULL DEFAULT 0)",
    // A shortage is a decision like a reservation: a redelivered element gets it again.
    "CREATE TABLE IF NOT EXISTS inventory_shortages (order_id TEXT PRIMARY KEY, \
     skus TEXT NOT NULL, decided_at TEXT NOT NULL)",
];

/// The units to reserve per SKU, merged and sorted (a fixed lock order).
pub fn reservation_lines(order: &Order) -> Vec<(String, i64)> {
    let mut lines: BTreeMap<String, i64> = BTreeMap::new();
    for item in &order.items {
        *lines.entry(item.sku.clone()).or_default() += item.qty.max(0);
    }
    lines.into_iter().collect()
}

/// Takes each line's units from the bins where there are enough: the SKUs
/// short, and the lines taken (to give back if any is short).
async fn take_units<'a>(
    conn: &mut AnyConnection,
    lines: &'a [(String, i64)],
) -> sqlx::Result<(Vec<String>, Vec<(&'a String, i64)>)> {
    let mut short = Vec::new();
    let mut taken = Vec::new();
    for (sku, qty) in lines {
        let updated =
            sqlx::query("UPDATE inventory_bin_items SET qty = qty - $1 WHERE sku = $2 AND qty >= $1")
                .bind(*qty)
                .bind(sku)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        if updated == 0 {
            short.push(sku.clone());
        } else {
            taken.push((sku, *qty));
        }
    }
    Ok((short, taken))
}

/// An order short of `short`, inside the deciding transaction: the units
/// `taken` go back and the reservation is removed; then the order is
/// backordered when every short SKU has a supplier (`suppliers`), or its
/// shortage is recorded.
async fn record_shortfall(
    conn: &mut AnyConnection,
    element: &OrderElement,
    lines: &[(String, i64)],
    short: Vec<String>,
    taken: &[(&String, i64)],
    suppliers: Option<&BTreeMap<String, String>>,
) -> sqlx::Result<ReserveResult> {
    for (sku, qty) in taken {
        sqlx::query("UPDATE inventory_bin_items SET qty = qty + $1 WHERE sku = $2")
            .bind(*qty)
            .bind(*sku)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM inventory_reservations WHERE order_id = $1")
        .bind(element.order_id.to_string())
        .execute(&mut *conn)
        .await?;
    if let Some(suppliers) = suppliers {
        let supplier = |sku: &str| suppliers.get(sku).cloned().unwrap_or_default();
        let purchase_orders = backorders::record(conn, &waiting_element(element), lines, supplier).await?;
        return Ok(ReserveResult::Backordered(purchase_orders));
    }
    sqlx::query("INSERT INTO inventory_shortages (order_id, skus, decided_at) VALUES ($1, $2, $3)")
        .bind(element.order_id.to_string())
        .bind(short.join(","))
        .bind(Utc::now().to_rfc3339())
        .execute(&mut *conn)
        .await?;
    Ok(ReserveResult::Short(short))
}

/// One reservation decision, owned by its write (which may run twice).
struct Reserving {
    element: OrderElement,
    lines: Vec<(String, i64)>,
    lines_json: String,
    reservation_id: String,
    /// Not asked yet (`None`), or the suppliers known (`Some(None)`: no backorders).
    suppliers: Option<Option<BTreeMap<String, String>>>,
}

impl Reserving {
    /// Decides in the group's transaction, which holds the write lock from
    /// its start: a decision that keeps nothing (given again, or to be
    /// decided once the suppliers are known) discards what it began.
    async fn run(&self, conn: &mut AnyConnection) -> sqlx::Result<Written<ReserveResult>> {
        let order_id = self.element.order_id.to_string();
        // The new reservation's id, or none when the order had one already (a redelivery).
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO inventory_reservations (order_id, reservation_id, lines, reserved_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING RETURNING reservation_id",
        )
        .bind(&order_id)
        .bind(&self.reservation_id)
        .bind(&self.lines_json)
        .bind(Utc::now().to_rfc3339())
        .fetch_optional(&mut *conn)
        .await?;
        // A decision made before is given again: a shortage, or a backorder
        // (a covered one has its reservation, but was answered `backordered`).
        let recorded: Option<(String, String)> = sqlx::query_as(
            "SELECT 'short', skus FROM inventory_shortages WHERE order_id = $1 \
             UNION ALL SELECT 'backordered', purchase_orders FROM inventory_backorders WHERE order_id = $1",
        )
        .bind(&order_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((decision, detail)) = recorded {
            let given_again = if decision == "short" {
                ReserveResult::Short(detail.split(',').map(str::to_string).collect())
            } else {
                ReserveResult::Backordered(serde_json::from_str(&detail).unwrap_or_default())
            };
            // The row just inserted must go (a short order holds none); with
            // nothing inserted there is nothing to undo, and the group stands.
            return Ok(if inserted.is_some() {
                Written::Discard(given_again)
            } else {
                Written::Keep(given_again)
            });
        }
        if inserted.is_some() {
            let (short, taken) = take_units(conn, &self.lines).await?;
            if !short.is_empty() {
                let suppliers = match &self.suppliers {
                    None => return Ok(Written::Discard(ReserveResult::AskSuppliers(short))),
                    Some(Some(suppliers)) if short.iter().all(|sku| suppliers.contains_key(sku)) => {
                        Some(suppliers)
                    }
                    Some(_) => None,
                };
                let result =
                    record_shortfall(conn, &self.element, &self.lines, short, &taken, suppliers).await?;
                return Ok(Written::Keep(result));
            }
        }
        let reservation_id: String = match inserted {
            Some(id) => id,
            None => {
                sqlx::query_scalar("SELECT reservation_id FROM inventory_reservations WHERE order_id = $1")
                    .bind(&order_id)
                    .fetch_one(&mut *conn)
                    .await?
            }
        };
        Ok(Written::Keep(ReserveResult::Reserved(Reservation {
            reservation_id: stored_uuid(&reservation_id, "reservation_id")?,
        })))
    }
}

/// What is known of who supplies the short items when deciding.
#[derive(Clone, Copy)]
pub enum Supply<'a> {
    /// Not asked yet: a fresh shortage comes back as [`ReserveResult::AskSuppliers`].
    NotAsked,
    /// The distributor of each SKU some distributor supplies.
    Known(&'a BTreeMap<String, String>),
    /// No backorders (a directed call): a shortage is final.
    NoBackorders,
}

pub enum ReserveResult {
    Reserved(Reservation),
    Short(Vec<String>),
    /// Waiting at inventory, with the purchase orders sent for it.
    Backordered(Vec<PurchaseOrder>),
    /// Short of these SKUs: ask who supplies them, then decide again.
    AskSuppliers(Vec<String>),
}

/// The element as it waits: one step more, in `backordered` (what the
/// runner's audit events make of the backordered step).
pub fn waiting_element(element: &OrderElement) -> OrderElement {
    OrderElement { seq: element.seq + 1, state: OrderState::Backordered, ..element.clone() }
}

/// Who supplies what, from the distributor domain (its `list`), kept for a
/// few seconds: a burst of shortages asks once.
pub struct Suppliers {
    reader: std::sync::Arc<dyn DomainReads>,
    known: tokio::sync::Mutex<Option<(Instant, BTreeMap<String, String>)>>,
}

/// How long inventory keeps the distributor domain's answer.
const SUPPLIERS_KEPT: Duration = Duration::from_secs(5);

impl Suppliers {
    /// Suppliers read on a connection of their own, named `connection_name`
    /// in the management UI.
    pub fn new(settings: &Settings, connection_name: &'static str) -> anyhow::Result<Suppliers> {
        Ok(Suppliers::reading(std::sync::Arc::new(DomainReader::new(settings, connection_name)?)))
    }

    /// Suppliers read through `reader` (a fake, in tests).
    pub fn reading(reader: std::sync::Arc<dyn DomainReads>) -> Suppliers {
        Suppliers { reader, known: tokio::sync::Mutex::new(None) }
    }

    /// The supplier of each SKU some distributor supplies: the shortest lead
    /// time, then the lowest distributor id. A domain that does not answer
    /// is a transient failure: the order is tried again later, like any
    /// transient failure (and dead-lettered for replay after the last try).
    pub async fn all(&self) -> Result<BTreeMap<String, String>, StageError> {
        let mut known = self.known.lock().await;
        if let Some((at, map)) = known.as_ref() {
            if at.elapsed() < SUPPLIERS_KEPT {
                return Ok(map.clone());
            }
        }
        let mut best: BTreeMap<String, (i64, String)> = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let request = RecordRequest::List { after: after.clone(), limit: Some(100) }.to_json();
            let page =
                self.reader.ask(DomainCopy::primary("distributor"), request).await?.map_err(|reason| {
                    StageError::Transient(anyhow::anyhow!(
                        "the distributor domain refused its list: {reason}"
                    ))
                })?;
            let records: Vec<Distributor> = serde_json::from_value(page["records"].clone())
                .map_err(|e| StageError::Transient(anyhow::anyhow!("not a distributor list: {e}")))?;
            let Some(last) = records.last() else { break };
            after = Some(last.distributor_id.clone());
            for distributor in &records {
                for supply in &distributor.supplies {
                    let offer = (supply.lead_time_days, distributor.distributor_id.clone());
                    let entry = best.entry(supply.sku.clone()).or_insert_with(|| offer.clone());
                    if offer < *entry {
                        *entry = offer;
                    }
                }
            }
        }
        let map: BTreeMap<String, String> = best.into_iter().map(|(sku, (_, id))| (sku, id)).collect();
        *known = Some((Instant::now(), map.clone()));
        Ok(map)
    }
}

#[derive(Clone)]
pub struct Inventory {
    store: Store,
    backorders: backorders::Backorders,
    suppliers: std::sync::Arc<Suppliers>,
}

impl Inventory {
    /// Opens the stock store and seeds the catalog (idempotent).
    pub async fn open(settings: &Settings) -> anyhow::Result<Inventory> {
        let store = Store::open(settings, <Self as Stage>::NODE.name()).await?;
        store.migrate(SCHEMA).await?;
        store.add_column("inventory_reservations", "released BIGINT NOT NULL DEFAULT 0").await?;
        store.migrate(backorders::SCHEMA).await?;
        store.add_column("inventory_bin_items", "bin TEXT").await?;
        let mut tx = store.pool.begin().await?;
        for (sku, qty) in catalog::seeded_stock() {
            // A store from before bins were kept gets its bins; stock is never reseeded.
            sqlx::query(
                "INSERT INTO inventory_bin_items (sku, qty, bin) VALUES ($1, $2, $3) ON CONFLICT (sku) \
                 DO UPDATE SET bin = excluded.bin WHERE inventory_bin_items.bin IS NULL",
            )
            .bind(&sku)
            .bind(qty)
            .bind(catalog::bin_of(&sku))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let backorders = backorders::Backorders { store: store.clone() };
        Ok(Inventory {
            store,
            backorders,
            suppliers: std::sync::Arc::new(Suppliers::new(settings, "inventory-suppliers")?),
        })
    }

    /// Reserves every line of an order in one transaction, once per order.
    /// The decision is recorded either way: a shortage or a backorder too,
    /// so a redelivered element gets the same decision even if stock
    /// arrived meanwhile. `element` is the element as it arrived.
    pub async fn reserve(
        &self,
        element: &OrderElement,
        lines: &[(String, i64)],
        supply: Supply<'_>,
    ) -> sqlx::Result<ReserveResult> {
        let lines_json = serde_json::to_string(lines).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let reserving = std::sync::Arc::new(Reserving {
            element: element.clone(),
            lines: lines.to_vec(),
            lines_json,
            reservation_id: Uuid::new_v4().to_string(),
            suppliers: match supply {
                Supply::NotAsked => None,
                Supply::Known(suppliers) => Some(Some(suppliers.clone())),
                Supply::NoBackorders => Some(None),
            },
        });
        self.store
            .write(move |connection| {
                let reserving = reserving.clone();
                Box::pin(async move { reserving.run(connection).await })
            })
            .await
    }

    /// Puts a reservation's units back, once: a second call finds it
    /// released. They go to the backorders waiting for them first, oldest
    /// first. Returns the units released by this call (0 when already released).
    pub async fn release(&self, order_id: Uuid) -> sqlx::Result<i64> {
        self.backorders.release_reservation(order_id).await
    }

    /// Reserves the element's items, or (`backorders`) backorders it when a
    /// distributor supplies what is short, or sends it to exceptions.
    async fn decide(&self, mut element: OrderElement, backorders: bool) -> Result<Outcome, StageError> {
        if element.state == OrderState::Cancelling {
            // A cancelled order comes back to give its reserved units back.
            let units = self.release(element.order_id).await?;
            let detail = format!("released the {units} units reserved for the cancelled order");
            return Ok(Outcome::new(element).step(OrderState::StockReleased, detail));
        }
        let lines = reservation_lines(&element.order);
        let first = if backorders { Supply::NotAsked } else { Supply::NoBackorders };
        let mut decided = self.reserve(&element, &lines, first).await?;
        if let ReserveResult::AskSuppliers(_) = decided {
            let suppliers = self.suppliers.all().await?;
            decided = self.reserve(&element, &lines, Supply::Known(&suppliers)).await?;
        }
        match decided {
            ReserveResult::Reserved(reservation) => {
                let units: i64 = lines.iter().map(|(_, q)| q).sum();
                let detail = format!("reserved {units} units (reservation {})", reservation.reservation_id);
                element.reservation = Some(reservation);
                Ok(Outcome::new(element).step(OrderState::Reserved, detail))
            }
            ReserveResult::Short(skus) => {
                let reason = format!("out of stock: {}", skus.join(", "));
                element.failure = Some(Failure { ends_as: OrderState::OutOfStock, reason: reason.clone() });
                Ok(Outcome::new(element).step(OrderState::StockShort, reason))
            }
            ReserveResult::Backordered(purchase_orders) => Ok(backordered(element, &purchase_orders)),
            ReserveResult::AskSuppliers(skus) => Err(StageError::Transient(anyhow::anyhow!(
                "still short of {} after asking the suppliers",
                skus.join(", ")
            ))),
        }
    }
}

/// The outcome of a backordered element: it waits, for what.
fn backordered(element: OrderElement, purchase_orders: &[PurchaseOrder]) -> Outcome {
    let lines: Vec<WaitingLine> = purchase_orders
        .iter()
        .map(|po| WaitingLine { sku: po.sku.clone(), qty: po.qty, distributor_id: po.distributor_id.clone() })
        .collect();
    Outcome::new(element).step(OrderState::Backordered, shared::backorder::describe(&lines))
}

impl Stage for Inventory {
    const NODE: Node = Node::Inventory;
    const KEEPS_ELEMENTS_WAITING: bool = true;

    /// A charged element of an order backordered before (its first delivery
    /// decided, then the node stopped before acknowledging it) is
    /// backordered again: a cancel pending for it is decided where it waits.
    async fn prior_outcome(&self, element: &OrderElement) -> Result<Option<Outcome>, StageError> {
        // Arrived to be reserved (charged; accepted, for ship-then-bill), not to give units back.
        if element.state == OrderState::Cancelling {
            return Ok(None);
        }
        // Reserved before (the node stopped, or the broker lost the
        // forwarded element, before the delivery was acknowledged): it goes
        // on reserved, and a cancel pending for it is decided by the next
        // node, which sends it back here to release the units. Deciding the
        // cancel here would send it on holding no reservation and the units
        // would never come back.
        let reserved: Option<String> = sqlx::query_scalar(
            "SELECT reservation_id FROM inventory_reservations WHERE order_id = $1 AND released = 0",
        )
        .bind(element.order_id.to_string())
        .fetch_optional(&self.store.pool)
        .await?;
        if let Some(reservation_id) = reserved {
            let reservation = Reservation { reservation_id: stored_uuid(&reservation_id, "reservation_id")? };
            let units: i64 = reservation_lines(&element.order).iter().map(|(_, q)| q).sum();
            let detail = format!("reserved {units} units (reservation {})", reservation.reservation_id);
            let element = OrderElement { reservation: Some(reservation), ..element.clone() };
            return Ok(Some(Outcome::new(element).step(OrderState::Reserved, detail)));
        }
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT purchase_orders FROM inventory_backorders WHERE order_id = $1")
                .bind(element.order_id.to_string())
                .fetch_optional(&self.store.pool)
                .await?;
        Ok(recorded.map(|orders| {
            let purchase_orders: Vec<PurchaseOrder> = serde_json::from_str(&orders).unwrap_or_default();
            backordered(element.clone(), &purchase_orders)
        }))
    }

    async fn handle(&self, element: OrderElement) -> Result<Outcome, StageError> {
        self.decide(element, true).await
    }

    /// The coordinator takes a service's outcome at once: a directed order
    /// is never kept waiting, so its shortage ends it `out_of_stock`.
    async fn handle_call(&self, element: OrderElement) -> Result<Outcome, StageError> {
        self.decide(element, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain_reads::FakeDomains;
    use shared::order::Item;

    /// Who supplies a short SKU is decided from the distributor domain
    /// (read page by page through a fake, no broker): the shortest lead
    /// time, then the lowest id; a refused or silent domain is passing.
    #[tokio::test]
    async fn the_supplier_of_a_short_sku_is_the_quickest_then_the_lowest_id() {
        let pages = |copy: &DomainCopy, request: &serde_json::Value| {
            assert_eq!(copy.domain, "distributor");
            let records = match request["after"].as_str() {
                None => serde_json::json!([
                    {"distributor_id": "D-02", "name": "B", "supplies": [{"sku": "SKU-1", "lead_time_days": 3}, {"sku": "SKU-2", "lead_time_days": 1}]},
                    {"distributor_id": "D-03", "name": "C", "supplies": [{"sku": "SKU-1", "lead_time_days": 2}]}]),
                Some("D-03") => serde_json::json!([
                    {"distributor_id": "D-01", "name": "A", "supplies": [{"sku": "SKU-2", "lead_time_days": 1}]}]),
                Some(_) => serde_json::json!([]),
            };
            Some(Ok(serde_json::json!({ "records": records })))
        };
        let suppliers = Suppliers::reading(std::sync::Arc::new(FakeDomains(pages)));
        let all = suppliers.all().await.unwrap();
        assert_eq!(all.get("SKU-1").map(String::as_str), Some("D-03"), "the shortest lead time");
        assert_eq!(all.get("SKU-2").map(String::as_str), Some("D-01"), "a tie goes to the lowest id");
        let refused =
            Suppliers::reading(std::sync::Arc::new(FakeDomains(|_: &DomainCopy, _: &serde_json::Value| {
                Some(Err("no".to_string()))
            })));
        assert!(matches!(refused.all().await, Err(StageError::Transient(_))));
        let silent =
            Suppliers::reading(std::sync::Arc::new(FakeDomains(|_: &DomainCopy, _: &serde_json::Value| {
                None
            })));
        assert!(matches!(silent.all().await, Err(StageError::Transient(_))));
    }

    /// An inventory on a SQLite store of its own, and the folder to remove after.
    async fn inventory_on_sqlite() -> (Inventory, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("orderflow-inventory-{}", Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        (Inventory::open(&settings).await.unwrap(), dir)
    }

    /// A charged element reserved before (its first delivery decided, then
    /// lost before its ack) is reserved again as its prior outcome, so a
    /// cancel pending for it is decided by the next node, which sends it
    /// back holding the reservation: its units are never lost.
    #[tokio::test]
    async fn a_redelivered_reserved_element_keeps_its_reservation_as_its_prior_outcome() {
        let (inventory, dir) = inventory_on_sqlite().await;
        let (sku, _) = catalog::seeded_stock().into_iter().next().unwrap();
        let order = Order { items: vec![Item { sku: sku.to_string(), qty: 2 }], ..Default::default() };
        let element = OrderElement { state: OrderState::Charged, ..OrderElement::placed(order) };
        assert!(inventory.prior_outcome(&element).await.unwrap().is_none(), "nothing decided yet");
        let first = inventory.handle(element.clone()).await.unwrap();
        let reservation = first.element.reservation.clone().expect("reserved");
        let prior = inventory.prior_outcome(&element).await.unwrap().expect("decided before");
        assert_eq!(prior.steps.last().unwrap().state, OrderState::Reserved);
        assert_eq!(prior.element.reservation, Some(reservation));
        inventory.release(element.order_id).await.unwrap();
        assert!(inventory.prior_outcome(&element).await.unwrap().is_none(), "released: nothing to keep");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Stock short, then stock arrives, then the same element is redelivered:
    /// it gets the recorded decision again, and the stock is untouched.
    #[tokio::test]
    async fn a_shortage_is_recorded_and_a_redelivery_is_short_again() {
        let (inventory, dir) = inventory_on_sqlite().await;
        let (sku, _) = catalog::seeded_stock().into_iter().next().unwrap();
        let element = OrderElement::placed(Order::default());
        let lines = vec![(sku.to_string(), 1_000_000_000)];
        let none = Supply::NoBackorders;
        assert!(
            matches!(inventory.reserve(&element, &lines, none).await.unwrap(), ReserveResult::Short(s) if s == [sku.to_string()])
        );
        sqlx::query("UPDATE inventory_bin_items SET qty = 2000000000 WHERE sku = $1")
            .bind(&sku)
            .execute(&inventory.store.pool)
            .await
            .unwrap();
        assert!(matches!(inventory.reserve(&element, &lines, none).await.unwrap(), ReserveResult::Short(_)));
        let qty: i64 = sqlx::query_scalar("SELECT qty FROM inventory_bin_items WHERE sku = $1")
            .bind(&sku)
            .fetch_one(&inventory.store.pool)
            .await
            .unwrap();
        assert_eq!(qty, 2_000_000_000, "a recorded shortage takes no stock");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn lines_merge_duplicate_skus_in_sorted_order() {
        let order = Order {
            items: vec![
                Item { sku: "SKU-0002".into(), qty: 2 },
                Item { sku: "SKU-0001".into(), qty: 1 },
                Item { sku: "SKU-0002".into(), qty: 3 },
            ],
            ..Order::default()
        };
        assert_eq!(reservation_lines(&order), vec![("SKU-0001".into(), 1), ("SKU-0002".into(), 5)]);
    }
}
