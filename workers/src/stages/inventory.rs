//! inventory: owns the stock (`bin_items`; no other process reads it) and
//! reserves an order's items once (`reserved`), or sends the order to
//! exceptions (`stock_short`) when any item is short.

use crate::catalog;
use chrono::Utc;
use shared::order::{Failure, Order, Reservation};
use shared::store::{stored_uuid, Store};
use shared::{settings::Settings, Node, OrderElement, OrderState, Outcome, Stage, StageError};
use std::collections::BTreeMap;
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

pub enum ReserveResult {
    Reserved(Reservation),
    Short(Vec<String>),
}

#[derive(Clone)]
pub struct Inventory {
    store: Store,
}

impl Inventory {
    /// Opens the stock store and seeds the catalog (idempotent).
    pub async fn open(settings: &Settings) -> anyhow::Result<Inventory> {
        let store = Store::open(settings, <Self as Stage>::NODE.name()).await?;
        store.migrate(SCHEMA).await?;
        store.add_column("inventory_reservations", "released BIGINT NOT NULL DEFAULT 0").await?;
        let mut tx = store.pool.begin().await?;
        for (sku, qty) in catalog::seeded_stock() {
            sqlx::query(
                "INSERT INTO inventory_bin_items (sku, qty) VALUES ($1, $2) ON CONFLICT (sku) DO NOTHING",
            )
            .bind(sku)
            .bind(qty)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Inventory { store })
    }

    /// Reserves every line of an order in one transaction, once per order.
    /// The decision is recorded either way: a shortage too, so a redelivered
    /// element is short again even if stock arrived meanwhile.
    pub async fn reserve(&self, order_id: Uuid, lines: &[(String, i64)]) -> sqlx::Result<ReserveResult> {
        // The first statement writes, so the transaction takes SQLite's write
        // lock at once (waiting on the busy timeout) instead of upgrading a
        // read later, which fails at once with "database is locked".
        let mut tx = self.store.pool.begin().await?;
        let lines_json = serde_json::to_string(lines).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let inserted = sqlx::query(
            "INSERT INTO inventory_reservations (order_id, reservation_id, lines, reserved_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id.to_string())
        .bind(Uuid::new_v4().to_string())
        .bind(lines_json)
        .bind(Utc::now().to_rfc3339())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            let recorded: Option<String> =
                sqlx::query_scalar("SELECT skus FROM inventory_shortages WHERE order_id = $1")
                    .bind(order_id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(skus) = recorded {
                // Decided short before: undo the insert, give the same answer.
                tx.rollback().await?;
                return Ok(ReserveResult::Short(skus.split(',').map(str::to_string).collect()));
            }
            let mut short = Vec::new();
            let mut taken = Vec::new();
            for (sku, qty) in lines {
                let updated =
                    sqlx::query("UPDATE inventory_bin_items SET qty = qty - $1 WHERE sku = $2 AND qty >= $1")
                        .bind(*qty)
                        .bind(sku)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if updated == 0 {
                    short.push(sku.clone());
                } else {
                    taken.push((sku, *qty));
                }
            }
            if !short.is_empty() {
                // Undo in the same transaction, and record the shortage instead.
                for (sku, qty) in taken {
                    sqlx::query("UPDATE inventory_bin_items SET qty = qty + $1 WHERE sku = $2")
                        .bind(qty)
                        .bind(sku)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("DELETE FROM inventory_reservations WHERE order_id = $1")
                    .bind(order_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO inventory_shortages (order_id, skus, decided_at) VALUES ($1, $2, $3)",
                )
                .bind(order_id.to_string())
                .bind(short.join(","))
                .bind(Utc::now().to_rfc3339())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(ReserveResult::Short(short));
            }
        }
        let reservation_id: String =
            sqlx::query_scalar("SELECT reservation_id FROM inventory_reservations WHERE order_id = $1")
                .bind(order_id.to_string())
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(ReserveResult::Reserved(Reservation {
            reservation_id: stored_uuid(&reservation_id, "reservation_id")?,
        }))
    }

    /// Puts a reservation's units back, once: a second call finds it released.
    /// Returns the units released by this call (0 when already released).
    pub async fn release(&self, order_id: Uuid) -> sqlx::Result<i64> {
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
            let lines: Vec<(String, i64)> = serde_json::from_str(&lines).unwrap_or_default();
            for (sku, qty) in lines {
                sqlx::query("UPDATE inventory_bin_items SET qty = qty + $1 WHERE sku = $2")
                    .bind(qty)
                    .bind(&sku)
                    .execute(&mut *tx)
                    .await?;
                units += qty;
            }
        }
        tx.commit().await?;
        Ok(units)
    }
}

impl Stage for Inventory {
    const NODE: Node = Node::Inventory;

    async fn handle(&self, mut element: OrderElement) -> Result<Outcome, StageError> {
        if element.state == OrderState::Cancelling {
            // A cancelled order comes back to give its reserved units back.
            let units = self.release(element.order_id).await?;
            let detail = format!("released the {units} units reserved for the cancelled order");
            return Ok(Outcome::new(element).step(OrderState::StockReleased, detail));
        }
        let lines = reservation_lines(&element.order);
        match self.reserve(element.order_id, &lines).await? {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::order::Item;

    /// Stock short, then stock arrives, then the same element is redelivered:
    /// it gets the recorded decision again, and the stock is untouched.
    #[tokio::test]
    async fn a_shortage_is_recorded_and_a_redelivery_is_short_again() {
        let dir = std::env::temp_dir().join(format!("orderflow-inventory-{}", Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        let inventory = Inventory::open(&settings).await.unwrap();
        let (sku, _) = catalog::seeded_stock().into_iter().next().unwrap();
        let order_id = Uuid::new_v4();
        let lines = vec![(sku.to_string(), 1_000_000_000)];
        assert!(
            matches!(inventory.reserve(order_id, &lines).await.unwrap(), ReserveResult::Short(s) if s == [sku.to_string()])
        );
        sqlx::query("UPDATE inventory_bin_items SET qty = 2000000000 WHERE sku = $1")
            .bind(&sku)
            .execute(&inventory.store.pool)
            .await
            .unwrap();
        assert!(matches!(inventory.reserve(order_id, &lines).await.unwrap(), ReserveResult::Short(_)));
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
