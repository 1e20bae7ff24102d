//! A simulated card processor with its own ledger. Charges are keyed by order
//! id and refunds by charge id, so asking twice returns the first answer:
//! an order is never charged (or refunded) twice, whatever is redelivered.
//! A refund is checked against the ledger, not the element: only a charge
//! recorded for that order is refunded, and never more than was charged.
//! The processor also keeps the cards themselves (`vault`): orderflow's
//! doors hand it a card number and carry only the token it returns.

use chrono::Utc;
use shared::group_commit::Written;
use shared::order::Charge;
use shared::settings::Settings;
use shared::store::{stored_uuid, Store};
use uuid::Uuid;

mod vault;
pub use vault::{TokenCharge, VaultCard};

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
        store.migrate(vault::SCHEMA).await?;
        Ok(Processor { store })
    }

    /// Charges an order once; a repeated request returns the original
    /// charge. Group-committed with the node's other writes.
    pub async fn charge(&self, order_id: Uuid, amount_cents: i64, card_last4: &str) -> sqlx::Result<Charge> {
        let row = Self::charge_row(order_id, amount_cents, card_last4);
        let (charge_id, amount_cents, card_last4): (String, i64, String) = self
            .store
            .write(move |connection| {
                let row = row.clone();
                Box::pin(async move { Ok(Written::Keep(insert_charge(connection, row).await?)) })
            })
            .await?;
        Ok(Charge { charge_id: stored_uuid(&charge_id, "charge_id")?, amount_cents, card_last4 })
    }

    /// The charge recorded for `order_id`, if it was charged.
    pub async fn charge_for(&self, order_id: Uuid) -> sqlx::Result<Option<Charge>> {
        let row: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT charge_id, amount_cents, card_last4 FROM processor_charges WHERE order_id = $1",
        )
        .bind(order_id.to_string())
        .fetch_optional(&self.store.pool)
        .await?;
        let Some((charge_id, amount_cents, card_last4)) = row else { return Ok(None) };
        Ok(Some(Charge { charge_id: stored_uuid(&charge_id, "charge_id")?, amount_cents, card_last4 }))
    }

    /// The row of a new charge of `order_id` (its id, its time).
    fn charge_row(order_id: Uuid, amount_cents: i64, card_last4: &str) -> ChargeRow {
        ChargeRow {
            order_id: order_id.to_string(),
            charge_id: Uuid::new_v4().to_string(),
            amount_cents,
            card_last4: card_last4.to_string(),
            charged_at: Utc::now().to_rfc3339(),
        }
    }

    /// Refunds the charge recorded for `order_id` once; a repeated request
    /// returns the original refund. `Ok(Err(reason))` when the ledger
    /// refuses: no charge for the order, another charge than `claimed`, or
    /// a claimed amount above the charged one.
    pub async fn refund(&self, order_id: Uuid, claimed: &Charge) -> sqlx::Result<Result<Refund, String>> {
        let recorded: Option<(String, i64)> =
            sqlx::query_as("SELECT charge_id, amount_cents FROM processor_charges WHERE order_id = $1")
                .bind(order_id.to_string())
                .fetch_optional(&self.store.pool)
                .await?;
        let Some((charge_id, charged_cents)) = recorded else {
            return Ok(Err(format!("no charge is recorded for order {order_id}: nothing to refund")));
        };
        if charge_id != claimed.charge_id.to_string() || claimed.amount_cents > charged_cents {
            return Ok(Err(format!(
                "order {order_id} was charged {charged_cents} cents (charge {charge_id}), not {} cents \
                 (charge {}): refund refused",
                claimed.amount_cents, claimed.charge_id
            )));
        }
        let charge = Charge { amount_cents: charged_cents, ..claimed.clone() };
        self.refund_recorded(&charge).await.map(Ok)
    }

    async fn refund_recorded(&self, charge: &Charge) -> sqlx::Result<Refund> {
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

/// A charge as the ledger keeps it.
#[derive(Clone)]
struct ChargeRow {
    order_id: String,
    charge_id: String,
    amount_cents: i64,
    card_last4: String,
    charged_at: String,
}

/// Records a charge in one statement: a repeated request touches the
/// existing row and returns it (charge id, amount, last four digits).
async fn insert_charge(
    connection: &mut sqlx::AnyConnection,
    row: ChargeRow,
) -> sqlx::Result<(String, i64, String)> {
    sqlx::query_as(
        "INSERT INTO processor_charges (order_id, charge_id, amount_cents, card_last4, charged_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id \
         RETURNING charge_id, amount_cents, card_last4",
    )
    .bind(row.order_id)
    .bind(row.charge_id)
    .bind(row.amount_cents)
    .bind(row.card_last4)
    .bind(row.charged_at)
    .fetch_one(&mut *connection)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forged refund an inventory user tried: a charge of 99,999,999
    /// cents claimed for an order, with no charge (or a smaller one) in the ledger.
    #[tokio::test]
    async fn only_a_recorded_charge_is_refunded_and_never_more_than_charged() {
        let scratch = shared::settings::ScratchRun::new("processor");
        let processor = Processor::open(&scratch.settings()).await.unwrap();
        let forged =
            Charge { charge_id: Uuid::new_v4(), amount_cents: 99_999_999, card_last4: "4242".into() };
        let never_charged = Uuid::new_v4();
        let refused = processor.refund(never_charged, &forged).await.unwrap().unwrap_err();
        assert!(refused.contains("no charge is recorded"), "{refused}");

        let order_id = Uuid::new_v4();
        let charge = processor.charge(order_id, 1_500, "4242").await.unwrap();
        let inflated = Charge { amount_cents: 99_999_999, ..charge.clone() };
        assert!(processor.refund(order_id, &inflated).await.unwrap().unwrap_err().contains("refund refused"));
        let other = Charge { charge_id: Uuid::new_v4(), ..charge.clone() };
        assert!(processor.refund(order_id, &other).await.unwrap().is_err());

        let refund = processor.refund(order_id, &charge).await.unwrap().unwrap();
        assert_eq!(refund.amount_cents, 1_500);
        let again = processor.refund(order_id, &charge).await.unwrap().unwrap();
        assert_eq!(again, refund, "a repeated refund returns the first");
    }
}
