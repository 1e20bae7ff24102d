//! The stock domain, answered by the inventory node (which alone owns
//! `inventory_bin_items`): other business functions ask the stock of a SKU
//! (`stock`) and the receipts (`receipts`); and the manifesto's true queue
//! of received items (`orderflow.received-items`), taken one at a time in
//! order of arrival (single active consumer: with several inventory
//! instances, one takes it and the others stand by), each receipt recorded
//! once and its units handed, in the same transaction, to the backordered
//! orders waiting for them (oldest first) and the rest put on hand. Its
//! tick runs the [`BackorderDesk`].

use super::backorder_desk::BackorderDesk;
use crate::catalog;
use crate::stages::backorders;
use lapin::message::Delivery;
use serde::{Deserialize, Serialize};
use shared::domains::{check_id, page_size};
use shared::settings::Settings;
use shared::store::Store;
use shared::transport::domain::{parse, DomainError, DomainService, Request};
use shared::transport::settle::{ack, dead_letter, requeue};
use shared::transport::{NodeContext, Publisher};
use sqlx::Row;
use topology::DomainCopy;

const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS inventory_receipts (receipt_id TEXT PRIMARY KEY, \
     arrival BIGINT NOT NULL, distributor_id TEXT NOT NULL, sku TEXT NOT NULL, qty BIGINT NOT NULL, \
     received_at TEXT NOT NULL)"];

/// The largest quantity one receipt may bring.
pub const MAX_RECEIPT_QTY: i64 = 1_000_000;

/// Items arrived from a distributor, as a receiving station publishes them
/// (its `message_id` is the receipt id: a receipt sent twice is counted once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub distributor_id: String,
    pub sku: String,
    pub qty: i64,
}

/// Checks a receipt: a known SKU, a distributor id, 1 to [`MAX_RECEIPT_QTY`] units.
pub fn check_receipt(receipt: &Receipt) -> Result<(), String> {
    check_id("distributor_id", &receipt.distributor_id)?;
    if !catalog::in_catalog(&receipt.sku) {
        return Err(format!("SKU {:?} is not in the catalog", shared::text::escaped(&receipt.sku)));
    }
    if !(1..=MAX_RECEIPT_QTY).contains(&receipt.qty) {
        return Err(format!("qty {} is not 1 to {MAX_RECEIPT_QTY}", receipt.qty));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum StockRequest {
    Stock {
        sku: String,
    },
    Receipts {
        #[serde(default)]
        sku: Option<String>,
        #[serde(default)]
        after: Option<i64>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Status {},
}

pub struct StockDomain {
    store: Store,
    desk: BackorderDesk,
    /// Receipts are applied one at a time (SQLite sees one writer).
    applying: tokio::sync::Mutex<()>,
}

impl StockDomain {
    pub async fn open(settings: &Settings) -> anyhow::Result<StockDomain> {
        let store = Store::open(settings, topology::Node::Inventory.name()).await?;
        store.migrate(SCHEMA).await?;
        store.migrate(backorders::SCHEMA).await?;
        let desk = BackorderDesk::open(settings, store.clone()).await?;
        Ok(StockDomain { store, desk, applying: tokio::sync::Mutex::new(()) })
    }

    /// Adds a receipt's units once, first to the backorders waiting for them
    /// (oldest first); returns the backorders it covered (none when it was
    /// counted before).
    pub async fn receive(&self, receipt_id: &str, receipt: &Receipt) -> sqlx::Result<Vec<uuid::Uuid>> {
        let _one = self.applying.lock().await;
        let mut tx = self.store.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO inventory_receipts (receipt_id, arrival, distributor_id, sku, qty, received_at) \
             SELECT $1, COALESCE(MAX(arrival), 0) + 1, $2, $3, $4, $5 FROM inventory_receipts WHERE true \
             ON CONFLICT (receipt_id) DO NOTHING",
        )
        .bind(receipt_id)
        .bind(&receipt.distributor_id)
        .bind(&receipt.sku)
        .bind(receipt.qty)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let covered = match inserted {
            1 => backorders::distribute(&mut tx, &receipt.sku, receipt.qty).await?,
            _ => Vec::new(),
        };
        tx.commit().await?;
        Ok(covered)
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
            "SELECT receipt_id, arrival, distributor_id, sku, qty, received_at FROM inventory_receipts \
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

    /// One received item, in order of arrival: from the receiving station
    /// (the publisher, support or the operator) only, checked, counted once.
    async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        let sender = ctx.trust.sender(&delivery.properties);
        if let Err(reason) = ctx.trust.check_receipt_sender(sender.as_deref()) {
            return dead_letter(publisher, ctx, &delivery, &format!("refused: {reason}")).await;
        }
        let Some(receipt_id) = delivery.properties.message_id().as_ref().map(|id| id.to_string()) else {
            return dead_letter(
                publisher,
                ctx,
                &delivery,
                "a received item needs its receipt id as message_id",
            )
            .await;
        };
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
        match self.receive(&receipt_id, &receipt).await {
            Ok(covered) => {
                ack(&delivery).await;
                if !covered.is_empty() {
                    // The orders it covered go on at once (else at the next tick).
                    self.desk.round(publisher).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not record a receipt; it will be tried again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                requeue(&delivery).await
            }
        }
    }

    async fn tick(&self, publisher: &Publisher) {
        self.desk.round(publisher).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn careless_receipts_are_refused_with_the_reason() {
        let good = Receipt { distributor_id: "D-01".into(), sku: "SKU-0001".into(), qty: 5 };
        assert!(check_receipt(&good).is_ok());
        for (receipt, reason) in [
            (Receipt { qty: 0, ..good.clone() }, "qty 0"),
            (Receipt { qty: -3, ..good.clone() }, "qty -3"),
            (Receipt { qty: i64::MAX, ..good.clone() }, "not 1 to"),
            (Receipt { sku: "SKU-7777".into(), ..good.clone() }, "not in the catalog"),
            (Receipt { distributor_id: "D 1\u{7}".into(), ..good.clone() }, "distributor_id"),
        ] {
            assert!(check_receipt(&receipt).unwrap_err().contains(reason), "{receipt:?}");
        }
    }
}
