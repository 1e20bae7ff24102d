//! A simulated card processor with its own ledger. Charges are keyed by order
//! id and refunds by charge id, so asking twice returns the first answer:
//! an order is never charged (or refunded) twice, whatever is redelivered.

use chrono::Utc;
use shared::order::Charge;
use shared::settings::Settings;
use shared::store::{stored_uuid, Store};
use uuid::Uuid;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS processor_charges (order_id TEXT PRIMARY KEY, charge_id TEXT NOT NULL, \
     amount_cents BIGINT NOT NULL, card_last4 TEXT NOT NULL, charged_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS processor_refunds (charge_id TEXT PRIMARY KEY, refund_id TEXT NOT NULL, \
     amount_cents BIGINT NOT NULL, refunded_at TEXT NOT NULL)",
];

#[derive(Clone)]
pub struct Processor {
    store: Store,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Refund {
    pub refund_id: Uuid,
    pub amount_cents: i64,
}

impl Processor {
    pub async fn open(settings: &Settings) -> anyhow::Result<Processor> {
        let store = Store::open(settings, "processor").await?;
        store.migrate(SCHEMA).await?;
        Ok(Processor { store })
    }

    /// Charges an order once; a repeated request returns the original charge.
    pub async fn charge(&self, order_id: Uuid, amount_cents: i64, card_last4: &str) -> sqlx::Result<Charge> {
        // One statement: a repeated request touches the existing row and returns it.
        let (charge_id, amount_cents, card_last4): (String, i64, String) = sqlx::query_as(
            "INSERT INTO processor_charges (order_id, charge_id, amount_cents, card_last4, charged_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id \
             RETURNING charge_id, amount_cents, card_last4",
        )
        .bind(order_id.to_string())
        .bind(Uuid::new_v4().to_string())
        .bind(amount_cents)
        .bind(card_last4)
        .bind(Utc::now().to_rfc3339())
        .fetch_one(&self.store.pool)
        .await?;
        Ok(Charge { charge_id: stored_uuid(&charge_id, "charge_id")?, amount_cents, card_last4 })
    }

    /// Refunds a charge once; a repeated request returns the original refund.
    pub async fn refund(&self, charge: &Charge) -> sqlx::Result<Refund> {
        sqlx::query(
            "INSERT INTO processor_refunds (charge_id, refund_id, amount_cents, refunded_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (charge_id) DO NOTHING",
        )
        .bind(charge.charge_id.to_string())
        .bind(Uuid::new_v4().to_string())
        .bind(charge.amount_cents)
        .bind(Utc::now().to_rfc3339())
        .execute(&self.store.pool)
        .await?;
        let (refund_id, amount_cents): (String, i64) =
            sqlx::query_as("SELECT refund_id, amount_cents FROM processor_refunds WHERE charge_id = $1")
                .bind(charge.charge_id.to_string())
                .fetch_one(&self.store.pool)
                .await?;
        Ok(Refund { refund_id: stored_uuid(&refund_id, "refund_id")?, amount_cents })
    }
}
