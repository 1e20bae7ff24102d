//! The stock domain, answered by the inventory node (which alone owns
//! `inventory_bin_items`): other business functions ask the stock of a SKU
//! (`stock`) and the receipts (`receipts`); and the manifesto's true queue
//! of received items (`orderflow.received-items`), taken one at a time in
//! order of arrival (single active consumer: with several inventory
//! instances, one takes it and the others stand by), each receipt recorded
//! once and its units handed, in the same transaction, to the backordered
//! orders waiting for them (oldest first) and the rest put on hand. Its
//! tick runs the [`BackorderDesk`].
//!
//! A receipt is bound to what was ordered: it names a distributor that
//! exists and supplies the SKU (asked of the distributor domain, kept 5 s),
//! and an open purchase order of that distributor for that SKU with at
//! least its units still to come; its units go to the order that purchase
//! order was sent for first. A receipt with no purchase order (unsolicited)
//! is dead-lettered with the reason, for an operator to look at. Its
//! identity is the distributor's shipment id (`shipment_id`), not the
//! message id: one physical delivery is counted once however often it is
//! scanned.

use super::backorders::{self, OpenPurchaseOrder};
use super::desk::BackorderDesk;
use crate::catalog;
use crate::domain_reads::{DomainReader, DomainReads};
use lapin::message::Delivery;
use serde::{Deserialize, Serialize};
use shared::domains::{check_id, page_size, Distributor, StockRequest};
use shared::settings::Settings;
use shared::store::Store;
use shared::StageError;
use sqlx::Row;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use topology::DomainCopy;
use transport::domain::{parse, DomainError, DomainService, Request};
use transport::settle::{ack, dead_letter, requeue};
use transport::{NodeContext, Publisher};
use uuid::Uuid;

const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS inventory_receipts (receipt_id TEXT PRIMARY KEY, \
     arrival BIGINT NOT NULL, distributor_id TEXT NOT NULL, sku TEXT NOT NULL, qty BIGINT NOT NULL, \
     received_at TEXT NOT NULL)"];

/// The largest quantity one receipt may bring.
pub const MAX_RECEIPT_QTY: i64 = 1_000_000;

/// How long the stock domain keeps what the distributor domain said of a distributor.
const DISTRIBUTORS_KEPT: Duration = Duration::from_secs(5);

/// Items arrived from a distributor, as a receiving station publishes them.
/// `shipment_id` is the distributor's id of the delivery and the receipt's
/// id: a delivery scanned twice (whatever its message ids) is counted once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub shipment_id: String,
    pub distributor_id: String,
    pub sku: String,
    pub qty: i64,
    /// The purchase order it fulfils; none: an unsolicited receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub po_id: Option<Uuid>,
}

/// Checks a receipt's shape: a shipment id, a distributor id, a known SKU,
/// 1 to [`MAX_RECEIPT_QTY`] units.
pub fn check_receipt(receipt: &Receipt) -> Result<(), String> {
    check_id("shipment_id", &receipt.shipment_id)?;
    check_id("distributor_id", &receipt.distributor_id)?;
    if !catalog::in_catalog(&receipt.sku) {
        return Err(format!("SKU {:?} is not in the catalog", shared::text::escaped(&receipt.sku)));
    }
    if !(1..=MAX_RECEIPT_QTY).contains(&receipt.qty) {
        return Err(format!("qty {} is not 1 to {MAX_RECEIPT_QTY}", receipt.qty));
    }
    Ok(())
}

/// Checks the receipt's distributor, as the distributor domain knows it
/// (`None`: no such distributor): it exists and supplies the SKU.
pub fn check_supplier(receipt: &Receipt, distributor: Option<&Distributor>) -> Result<(), String> {
    let Some(distributor) = distributor else {
        return Err(format!("distributor {} does not exist", receipt.distributor_id));
    };
    if !distributor.supplies.iter().any(|supply| supply.sku == receipt.sku) {
        return Err(format!("distributor {} does not supply {}", receipt.distributor_id, receipt.sku));
    }
    Ok(())
}

/// Checks the receipt against the purchase order it names, as stored
/// (`None`: no such purchase order): of its distributor, for its SKU, with
/// at least the receipt's units still to come. A receipt that brings more
/// than is open is refused whole (the units beyond the order were not
/// asked for: an operator splits or returns them). A receipt that names no
/// purchase order is unsolicited: refused, for an operator's review.
pub fn check_against_order(receipt: &Receipt, po: Option<&OpenPurchaseOrder>) -> Result<(), String> {
    let Some(po_id) = receipt.po_id else {
        return Err(format!(
            "unsolicited receipt: shipment {} of {} x{} from {} names no purchase order; it needs an operator's review",
            receipt.shipment_id, receipt.sku, receipt.qty, receipt.distributor_id
        ));
    };
    let Some(po) = po else {
        return Err(format!("purchase order {po_id} does not exist"));
    };
    if po.po.distributor_id != receipt.distributor_id || po.po.sku != receipt.sku {
        return Err(format!(
            "purchase order {po_id} asked {} for {}, not {} for {}",
            po.po.distributor_id, po.po.sku, receipt.distributor_id, receipt.sku
        ));
    }
    match po.open() {
        0 => Err(format!("purchase order {po_id} was received in full ({} units)", po.po.qty)),
        open if receipt.qty > open => Err(format!(
            "shipment {} brings {} units; purchase order {po_id} has {open} of {} still open",
            receipt.shipment_id, receipt.qty, po.po.qty
        )),
        _ => Ok(()),
    }
}

/// A shipment counted before, as stored: the same delivery again (`Ok`),
/// or another one under the same shipment id (refused with the reason).
pub fn check_same_shipment(stored: &Receipt, receipt: &Receipt) -> Result<(), String> {
    if stored == receipt {
        return Ok(());
    }
    Err(format!(
        "shipment {} was counted already as {} x{} from {}{}; this one differs",
        stored.shipment_id,
        stored.sku,
        stored.qty,
        stored.distributor_id,
        stored.po_id.map(|po| format!(" against purchase order {po}")).unwrap_or_default()
    ))
}

/// What became of a receipt.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// Counted now; the backorders it covered.
    Counted(Vec<Uuid>),
    /// The same shipment was counted before: nothing changed.
    Again,
    /// Not counted, for this reason.
    Refused(String),
}

pub struct StockDomain {
    store: Store,
    desk: BackorderDesk,
    /// Receipts are applied one at a time (SQLite sees one writer).
    applying: tokio::sync::Mutex<()>,
    /// Asks the distributor domain who a receipt's distributor is.
    distributors: std::sync::Arc<dyn DomainReads>,
    /// What it said of each distributor asked lately (`None`: no such distributor).
    known: tokio::sync::Mutex<HashMap<String, (Instant, Option<Distributor>)>>,
}

impl StockDomain {
    pub async fn open(settings: &Settings) -> anyhow::Result<StockDomain> {
        let store = Store::open(settings, topology::Node::Inventory.name()).await?;
        store.migrate(SCHEMA).await?;
        store.migrate(backorders::SCHEMA).await?;
        store.add_column("inventory_receipts", "po_id TEXT").await?;
        backorders::backfill_purchase_orders(&store).await?;
        let desk = BackorderDesk::open(settings, store.clone()).await?;
        Ok(StockDomain {
            store,
            desk,
            applying: tokio::sync::Mutex::new(()),
            distributors: std::sync::Arc::new(DomainReader::new(settings, "stock-distributors")?),
            known: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The distributor `id` as the distributor domain knows it (`None`: it
    /// has no such record); kept a few seconds. A domain that does not
    /// answer is a transient failure.
    async fn distributor(&self, id: &str) -> Result<Option<Distributor>, StageError> {
        let mut known = self.known.lock().await;
        if let Some((at, distributor)) = known.get(id) {
            if at.elapsed() < DISTRIBUTORS_KEPT {
                return Ok(distributor.clone());
            }
        }
        let request = shared::domains::RecordRequest::Get { id: id.to_string() }.to_json();
        let distributor = match self.distributors.ask(DomainCopy::primary("distributor"), request).await? {
            Ok(record) => Some(
                serde_json::from_value::<Distributor>(record)
                    .map_err(|e| StageError::Transient(anyhow::anyhow!("not a distributor record: {e}")))?,
            ),
            Err(_refused) => None,
        };
        known.retain(|_, (at, _)| at.elapsed() < DISTRIBUTORS_KEPT);
        known.insert(id.to_string(), (Instant::now(), distributor.clone()));
        Ok(distributor)
    }

    /// The receipt stored under `shipment_id`, if it was counted.
    async fn counted(&self, shipment_id: &str) -> sqlx::Result<Option<Receipt>> {
        let row = sqlx::query(
            "SELECT distributor_id, sku, qty, po_id FROM inventory_receipts WHERE receipt_id = $1",
        )
        .bind(shipment_id)
        .fetch_optional(&self.store.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let po_id: Option<String> = row.try_get(3)?;
        Ok(Some(Receipt {
            shipment_id: shipment_id.to_string(),
            distributor_id: row.try_get(0)?,
            sku: row.try_get(1)?,
            qty: row.try_get(2)?,
            po_id: po_id.and_then(|id| Uuid::parse_str(&id).ok()),
        }))
    }

    /// Counts a receipt (its shape and its distributor checked) once: against
    /// its purchase order, if that is open for its units, in one transaction
    /// keyed by its shipment id; its units go to the order the purchase order
    /// was sent for first, then to the other waiting orders oldest first,
    /// then on hand.
    pub async fn receive(&self, receipt: &Receipt) -> sqlx::Result<Received> {
        let _one = self.applying.lock().await;
        if let Some(stored) = self.counted(&receipt.shipment_id).await? {
            return Ok(match check_same_shipment(&stored, receipt) {
                Ok(()) => Received::Again,
                Err(reason) => Received::Refused(reason),
            });
        }
        let mut tx = self.store.pool.begin().await?;
        let po = match receipt.po_id {
            Some(po_id) => backorders::purchase_order(&mut tx, po_id).await?,
            None => None,
        };
        if let Err(reason) = check_against_order(receipt, po.as_ref()) {
            return Ok(Received::Refused(reason));
        }
        let po = po.expect("checked against its purchase order").po;
        let inserted = sqlx::query(
            "INSERT INTO inventory_receipts (receipt_id, arrival, distributor_id, sku, qty, received_at, po_id) \
             SELECT $1, COALESCE(MAX(arrival), 0) + 1, $2, $3, $4, $5, $6 FROM inventory_receipts WHERE true \
             ON CONFLICT (receipt_id) DO NOTHING",
        )
        .bind(&receipt.shipment_id)
        .bind(&receipt.distributor_id)
        .bind(&receipt.sku)
        .bind(receipt.qty)
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(po.po_id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Counted meanwhile (another instance): the check above, again.
            drop(tx);
            return Ok(match self.counted(&receipt.shipment_id).await? {
                Some(stored) => match check_same_shipment(&stored, receipt) {
                    Ok(()) => Received::Again,
                    Err(reason) => Received::Refused(reason),
                },
                None => Received::Again,
            });
        }
        let Some(covered) = backorders::take_against(&mut tx, &po, receipt.qty).await? else {
            return Ok(Received::Refused(format!(
                "purchase order {} has fewer than {} units open",
                po.po_id, receipt.qty
            )));
        };
        tx.commit().await?;
        Ok(Received::Counted(covered))
    }

    async fn stock(&self, sku: &str) -> sqlx::Result<Option<serde_json::Value>> {
        let row: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT qty, bin FROM inventory_bin_items WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&self.store.pool)
                .await?;
        let Some((on_hand, bin)) = row else { return Ok(None) };
        // Units held by reservations not released (picked and shipped orders keep theirs).
        let lines: Vec<String> =
            sqlx::query_scalar("SELECT lines FROM inventory_reservations WHERE released = 0")
                .fetch_all(&self.store.pool)
                .await?;
        let reserved: i64 = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Vec<(String, i64)>>(l).ok())
            .flatten()
            .filter(|(line_sku, _)| line_sku == sku)
            .map(|(_, qty)| qty)
            .sum();
        let received: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(qty), 0) AS BIGINT) FROM inventory_receipts WHERE sku = $1",
        )
        .bind(sku)
        .fetch_one(&self.store.pool)
        .await?;
        let (backorders, backordered, held) = self.desk.backorders().of_sku(sku).await?;
        Ok(Some(serde_json::json!({
            "sku": sku, "bin": bin, "on_hand": on_hand, "reserved": reserved, "received": received,
            "backordered": backordered, "backorders": backorders, "held_for_backorders": held,
        })))
    }

    async fn receipts(
        &self,
        sku: Option<&str>,
        after: i64,
        limit: usize,
    ) -> sqlx::Result<Vec<serde_json::Value>> {
        let rows = sqlx::query(
            "SELECT receipt_id, arrival, distributor_id, sku, qty, received_at, po_id FROM inventory_receipts \
             WHERE arrival > $1 AND ($2 = '' OR sku = $2) ORDER BY arrival LIMIT $3",
        )
        .bind(after)
        .bind(sku.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.store.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                serde_json::json!({
                    "receipt_id": row.get::<String, _>(0), "arrival": row.get::<i64, _>(1),
                    "distributor_id": row.get::<String, _>(2), "sku": row.get::<String, _>(3),
                    "qty": row.get::<i64, _>(4), "received_at": row.get::<String, _>(5),
                    "po_id": row.get::<Option<String>, _>(6),
                })
            })
            .collect())
    }
}

impl DomainService for StockDomain {
    fn copy(&self) -> DomainCopy {
        DomainCopy::primary("stock")
    }

    async fn answer(&self, request: Request<'_>) -> Result<serde_json::Value, DomainError> {
        let unavailable = |e: sqlx::Error| DomainError::Unavailable(e.into());
        match parse::<StockRequest>(request.body)? {
            StockRequest::Stock { sku } => {
                check_id("sku", &sku).map_err(DomainError::Refused)?;
                self.stock(&sku)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| DomainError::Refused(format!("no stock of {sku}")))
            }
            StockRequest::Receipts { sku, after, limit } => {
                let page = self
                    .receipts(sku.as_deref(), after.unwrap_or(0), page_size(limit))
                    .await
                    .map_err(unavailable)?;
                Ok(serde_json::json!({ "receipts": page }))
            }
            StockRequest::Status {} => {
                let receipts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inventory_receipts")
                    .fetch_one(&self.store.pool)
                    .await
                    .map_err(unavailable)?;
                let skus: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inventory_bin_items")
                    .fetch_one(&self.store.pool)
                    .await
                    .map_err(unavailable)?;
                let status = shared::domains::CopyStatus {
                    copy: "stock".into(),
                    role: "primary".into(),
                    records: skus,
                    seq: receipts,
                    ..Default::default()
                };
                Ok(serde_json::to_value(status).expect("a status serializes"))
            }
        }
    }

    /// One received item, in order of arrival: from a receiving station
    /// only, checked, bound to its purchase order, counted once per shipment.
    async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        let sender = ctx.trust.sender(&delivery.properties);
        if let Err(reason) = ctx.trust.check_receipt_sender(sender.as_deref()) {
            return dead_letter(publisher, ctx, &delivery, &format!("refused: {reason}")).await;
        }
        let receipt: Receipt = match serde_json::from_slice(&delivery.data) {
            Ok(receipt) => receipt,
            Err(error) => {
                let reason = format!("not a received item: {}", shared::text::escaped(&error.to_string()));
                return dead_letter(publisher, ctx, &delivery, &reason).await;
            }
        };
        if let Err(reason) = check_receipt(&receipt) {
            return dead_letter(publisher, ctx, &delivery, &format!("not a received item: {reason}")).await;
        }
        // The same shipment again needs no distributor: known before asking.
        let again = match self.counted(&receipt.shipment_id).await {
            Ok(stored) => stored.is_some(),
            Err(error) => return retry(&delivery, &anyhow::Error::from(error)).await,
        };
        if !again {
            let distributor = match self.distributor(&receipt.distributor_id).await {
                Ok(distributor) => distributor,
                Err(error) => return retry(&delivery, &anyhow::anyhow!("{error}")).await,
            };
            if let Err(reason) = check_supplier(&receipt, distributor.as_ref()) {
                return dead_letter(publisher, ctx, &delivery, &format!("receipt refused: {reason}")).await;
            }
        }
        match self.receive(&receipt).await {
            Ok(Received::Counted(covered)) => {
                ack(&delivery).await;
                if !covered.is_empty() {
                    // The orders it covered go on at once (else at the next tick).
                    self.desk.round(publisher).await;
                }
            }
            Ok(Received::Again) => ack(&delivery).await,
            Ok(Received::Refused(reason)) => {
                let reason = match reason.starts_with("unsolicited receipt") {
                    true => reason,
                    false => format!("receipt refused: {reason}"),
                };
                dead_letter(publisher, ctx, &delivery, &reason).await
            }
            Err(error) => retry(&delivery, &anyhow::Error::from(error)).await,
        }
    }

    async fn tick(&self, _ctx: &NodeContext, publisher: &Publisher) {
        self.desk.round(publisher).await;
    }
}

/// Puts a receipt back for later (a store or a domain that did not answer).
async fn retry(delivery: &Delivery, error: &anyhow::Error) {
    tracing::warn!(error = %format!("{error:#}"), "could not take a receipt; it will be tried again");
    tokio::time::sleep(Duration::from_millis(200)).await;
    requeue(delivery).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::backorders::PurchaseOrder;
    use crate::inventory::stage::{Inventory, ReserveResult, Supply};
    use shared::domains::Supply as Supplies;
    use shared::order::{Item, Order, OrderElement};
    use std::collections::BTreeMap;

    fn receipt() -> Receipt {
        Receipt {
            shipment_id: "SHP-1".into(),
            distributor_id: "D-01".into(),
            sku: "SKU-0001".into(),
            qty: 5,
            po_id: None,
        }
    }

    #[test]
    fn careless_receipts_are_refused_with_the_reason() {
        let good = receipt();
        assert!(check_receipt(&good).is_ok());
        for (receipt, reason) in [
            (Receipt { qty: 0, ..good.clone() }, "qty 0"),
            (Receipt { qty: -3, ..good.clone() }, "qty -3"),
            (Receipt { qty: i64::MAX, ..good.clone() }, "not 1 to"),
            (Receipt { sku: "SKU-7777".into(), ..good.clone() }, "not in the catalog"),
            (Receipt { distributor_id: "D 1\u{7}".into(), ..good.clone() }, "distributor_id"),
            (Receipt { shipment_id: "".into(), ..good.clone() }, "shipment_id"),
            (Receipt { shipment_id: "a/b".into(), ..good.clone() }, "shipment_id"),
        ] {
            assert!(check_receipt(&receipt).unwrap_err().contains(reason), "{receipt:?}");
        }
        // Its identity is in the body: a receipt without a shipment id, or
        // with a field it does not know (a misspelt purchase order), is none.
        for body in [
            r#"{"distributor_id": "D-01", "sku": "SKU-0001", "qty": 5}"#,
            r#"{"shipment_id": "S", "distributor_id": "D-01", "sku": "SKU-0001", "qty": 5, "po": "x"}"#,
            r#"{"shipment_id": "S", "distributor_id": "D-01", "sku": "SKU-0001", "qty": 5, "po_id": "x"}"#,
        ] {
            assert!(serde_json::from_str::<Receipt>(body).is_err(), "{body}");
        }
    }

    #[test]
    fn a_receipt_names_a_distributor_that_supplies_its_sku() {
        let supplies = |skus: &[&str]| Distributor {
            distributor_id: "D-01".into(),
            name: "Acme Supply".into(),
            supplies: skus.iter().map(|sku| Supplies { sku: sku.to_string(), lead_time_days: 1 }).collect(),
        };
        assert!(check_supplier(&receipt(), Some(&supplies(&["SKU-0002", "SKU-0001"]))).is_ok());
        let nobody = check_supplier(&receipt(), None).unwrap_err();
        assert_eq!(nobody, "distributor D-01 does not exist");
        let other = check_supplier(&receipt(), Some(&supplies(&["SKU-0002"]))).unwrap_err();
        assert_eq!(other, "distributor D-01 does not supply SKU-0001");
    }

    #[test]
    fn a_receipt_is_bound_to_an_open_purchase_order_of_its_distributor_and_sku() {
        let po_id = Uuid::new_v4();
        let po = |received: i64| OpenPurchaseOrder {
            po: PurchaseOrder {
                po_id,
                order_id: Uuid::new_v4(),
                distributor_id: "D-01".into(),
                sku: "SKU-0001".into(),
                qty: 8,
            },
            received,
        };
        let against = Receipt { po_id: Some(po_id), ..receipt() };
        assert!(check_against_order(&against, Some(&po(0))).is_ok());
        assert!(check_against_order(&against, Some(&po(3))).is_ok(), "5 of the 5 still open");
        let unsolicited = check_against_order(&receipt(), None).unwrap_err();
        assert!(unsolicited.starts_with("unsolicited receipt: shipment SHP-1 of SKU-0001 x5 from D-01"));
        assert!(unsolicited.contains("needs an operator's review"), "{unsolicited}");
        for (receipt, po, reason) in [
            (against.clone(), None, "does not exist"),
            (
                Receipt { distributor_id: "D-02".into(), ..against.clone() },
                Some(po(0)),
                "asked D-01 for SKU-0001",
            ),
            (Receipt { sku: "SKU-0002".into(), ..against.clone() }, Some(po(0)), "not D-01 for SKU-0002"),
            (against.clone(), Some(po(4)), "brings 5 units; purchase order"),
            (Receipt { qty: 9, ..against.clone() }, Some(po(0)), "has 8 of 8 still open"),
            (against.clone(), Some(po(8)), "was received in full (8 units)"),
        ] {
            let refused = check_against_order(&receipt, po.as_ref()).unwrap_err();
            assert!(refused.contains(reason), "{receipt:?}: {refused}");
        }
    }

    #[test]
    fn a_shipment_is_counted_as_it_was_first_scanned() {
        assert!(check_same_shipment(&receipt(), &receipt()).is_ok());
        let other = check_same_shipment(&receipt(), &Receipt { qty: 50, ..receipt() }).unwrap_err();
        assert!(other.contains("shipment SHP-1 was counted already as SKU-0001 x5 from D-01"), "{other}");
    }

    /// In a store of its own (no broker): an order of 14 of SKU-0901 (10 on
    /// hand) waits with a purchase order of 4 from D-01. Unsolicited, unknown,
    /// foreign and oversized receipts are refused and change nothing; the
    /// purchase order's shipment counts once however often it is scanned,
    /// a partial one holds its units for the order, and the last unit covers it.
    #[tokio::test]
    async fn receipts_count_once_per_shipment_and_only_against_an_open_purchase_order() {
        let dir = std::env::temp_dir().join(format!("orderflow-receipts-{}", Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        let inventory = Inventory::open(&settings).await.unwrap();
        let domain = StockDomain::open(&settings).await.unwrap();
        let order = Order { items: vec![Item { sku: "SKU-0901".into(), qty: 14 }], ..Order::default() };
        let element = OrderElement::placed(order);
        let suppliers: BTreeMap<String, String> = [("SKU-0901".to_string(), "D-01".to_string())].into();
        let lines = vec![("SKU-0901".to_string(), 14)];
        let decided = inventory.reserve(&element, &lines, Supply::Known(&suppliers)).await.unwrap();
        let ReserveResult::Backordered(orders) = decided else { panic!("backordered") };
        let po = orders[0].clone();
        assert_eq!((po.qty, po.distributor_id.as_str()), (4, "D-01"));
        // On hand, waiting backorders, units held for them.
        let on_hand = || async {
            let stock = domain.stock("SKU-0901").await.unwrap().unwrap();
            let units = |field: &str| stock[field].as_i64().unwrap();
            (units("on_hand"), units("backorders"), units("held_for_backorders"))
        };
        assert_eq!(on_hand().await, (0, 1, 10));

        let shipment = |id: &str, qty: i64, po_id: Option<Uuid>| Receipt {
            shipment_id: id.into(),
            distributor_id: "D-01".into(),
            sku: "SKU-0901".into(),
            qty,
            po_id,
        };
        for (receipt, reason) in [
            (shipment("S-0", 1_000_000, None), "unsolicited receipt"),
            (shipment("S-0", 5, Some(Uuid::new_v4())), "does not exist"),
            (Receipt { distributor_id: "D-04".into(), ..shipment("S-0", 4, Some(po.po_id)) }, "asked D-01"),
            (shipment("S-0", 5, Some(po.po_id)), "brings 5 units"),
        ] {
            let Received::Refused(refused) = domain.receive(&receipt).await.unwrap() else {
                panic!("{receipt:?}")
            };
            assert!(refused.contains(reason), "{refused}");
        }
        assert_eq!(on_hand().await, (0, 1, 10), "nothing refused moved a unit");

        assert_eq!(
            domain.receive(&shipment("S-1", 3, Some(po.po_id))).await.unwrap(),
            Received::Counted(vec![])
        );
        assert_eq!(domain.receive(&shipment("S-1", 3, Some(po.po_id))).await.unwrap(), Received::Again);
        let Received::Refused(other) = domain.receive(&shipment("S-1", 1, Some(po.po_id))).await.unwrap()
        else {
            panic!("another delivery under a counted shipment id")
        };
        assert!(other.contains("was counted already"), "{other}");
        assert_eq!(on_hand().await, (0, 1, 13), "the 3 are held for the order");
        assert_eq!(
            domain.receive(&shipment("S-2", 1, Some(po.po_id))).await.unwrap(),
            Received::Counted(vec![element.order_id])
        );
        let Received::Refused(full) = domain.receive(&shipment("S-3", 1, Some(po.po_id))).await.unwrap()
        else {
            panic!("a purchase order received in full")
        };
        assert!(full.contains("received in full"), "{full}");
        let stock = domain.stock("SKU-0901").await.unwrap().unwrap();
        assert_eq!(
            (&stock["on_hand"], &stock["received"], &stock["backorders"]),
            (&serde_json::json!(0), &serde_json::json!(4), &serde_json::json!(0))
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
