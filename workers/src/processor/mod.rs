//! A simulated card processor with its own ledger. A charge (payment's
//! authorization: the amount held) is keyed by order id, and its capture,
//! void and refund by charge id, so asking twice returns the first answer:
//! an order is never charged, captured, voided or refunded twice, whatever
//! is redelivered. A release (void or refund) and a capture are checked
//! against the ledger, not the element: only a charge recorded for that
//! order, and never more than was charged. The processor also keeps the
//! cards themselves (`vault`): orderflow's doors hand it a card number and
//! carry only the token it returns; and settles (`settlement`): captures
//! in batches, voids before capture, refunds after.

use chrono::Utc;
use shared::group_commit::Written;
use shared::order::Charge;
use shared::settings::Settings;
use shared::store::{stored_uuid, Store};
use uuid::Uuid;

mod settlement;
mod vault;
pub use settlement::{Released, Settled};
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
        store.migrate(settlement::SCHEMA).await?;
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

    /// The charge recorded for `order_id` when it is the `claimed` one (and
    /// the claim is not above it), as recorded; else why not: no charge for
    /// the order, another charge, or a claimed amount above the charged one.
    async fn recorded_charge(
        &self,
        order_id: Uuid,
        claimed: &Charge,
    ) -> sqlx::Result<Result<Charge, String>> {
        let recorded: Option<(String, i64)> =
            sqlx::query_as("SELECT charge_id, amount_cents FROM processor_charges WHERE order_id = $1")
                .bind(order_id.to_string())
                .fetch_optional(&self.store.pool)
                .await?;
        let Some((charge_id, charged_cents)) = recorded else {
            return Ok(Err(format!("no charge is recorded for order {order_id}: nothing to void or refund")));
        };
        if charge_id != claimed.charge_id.to_string() || claimed.amount_cents > charged_cents {
            return Ok(Err(format!(
                "order {order_id} was charged {charged_cents} cents (charge {charge_id}), not {} cents \
                 (charge {}): void or refund refused",
                claimed.amount_cents, claimed.charge_id
            )));
        }
        Ok(Ok(Charge { amount_cents: charged_cents, ..claimed.clone() }))
    }

    /// Refunds a captured charge once (see [`Processor::release`]).
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

    fn capture_of(order_id: Uuid, charge: &Charge) -> shared::settlement::Capture {
        shared::settlement::Capture {
            order_id,
            charge_id: charge.charge_id,
            amount_cents: charge.amount_cents,
            shipped_at: Utc::now(),
        }
    }

    /// The forged refund an inventory user tried: a charge of 99,999,999
    /// cents claimed for an order, with no charge (or a smaller one) in the
    /// ledger. An authorization not captured is voided, once; a captured
    /// one is refunded, once.
    #[tokio::test]
    async fn only_a_recorded_charge_is_voided_or_refunded_and_never_more_than_charged() {
        let scratch = shared::settings::ScratchRun::new("processor");
        let processor = Processor::open(&scratch.settings()).await.unwrap();
        let forged =
            Charge { charge_id: Uuid::new_v4(), amount_cents: 99_999_999, card_last4: "4242".into() };
        let never_charged = Uuid::new_v4();
        let refused = processor.release(never_charged, &forged).await.unwrap().unwrap_err();
        assert!(refused.contains("no charge is recorded"), "{refused}");

        let order_id = Uuid::new_v4();
        let charge = processor.charge(order_id, 1_500, "4242").await.unwrap();
        let inflated = Charge { amount_cents: 99_999_999, ..charge.clone() };
        assert!(processor.release(order_id, &inflated).await.unwrap().unwrap_err().contains("refused"));
        let other = Charge { charge_id: Uuid::new_v4(), ..charge.clone() };
        assert!(processor.release(order_id, &other).await.unwrap().is_err());

        let voided = processor.release(order_id, &charge).await.unwrap().unwrap();
        assert!(matches!(voided, Released::Voided { amount_cents: 1_500, .. }), "{voided:?}");
        assert_eq!(processor.release(order_id, &charge).await.unwrap().unwrap(), voided, "voided once");
        let late = processor.capture_batch(&[capture_of(order_id, &charge)], 5).await.unwrap();
        assert!(late.batch.is_none() && late.refused[0].1.contains("voided"), "{late:?}");

        let shipped = Uuid::new_v4();
        let shipped_charge = processor.charge(shipped, 700, "1111").await.unwrap();
        let first = processor.capture_batch(&[capture_of(shipped, &shipped_charge)], 5).await.unwrap();
        let batch = first.batch.expect("a new capture makes a batch");
        assert_eq!((batch.captures, batch.amount_cents), (1, 700));
        let Released::Refunded(refund) = processor.release(shipped, &shipped_charge).await.unwrap().unwrap()
        else {
            panic!("a captured charge is refunded, not voided")
        };
        assert_eq!(refund.amount_cents, 700);
        let again = processor.release(shipped, &shipped_charge).await.unwrap().unwrap();
        assert_eq!(again, Released::Refunded(refund), "a repeated refund returns the first");
    }

    /// A batch captures each authorization once: redelivered (the settling
    /// process stopped before acknowledging it), it makes no new batch and
    /// names the batch that captured it; a forged capture (another charge, a
    /// higher amount, no authorization) is refused, and the others go on.
    #[tokio::test]
    async fn a_batch_captures_each_authorization_once() {
        let scratch = shared::settings::ScratchRun::new("settlement");
        let processor = Processor::open(&scratch.settings()).await.unwrap();
        let mut captures = Vec::new();
        for cents in [100, 200, 300] {
            let order_id = Uuid::new_v4();
            let charge = processor.charge(order_id, cents, "1111").await.unwrap();
            captures.push(capture_of(order_id, &charge));
        }
        let first = processor.capture_batch(&captures, 40).await.unwrap();
        let batch = first.batch.clone().unwrap();
        assert_eq!((batch.captures, batch.amount_cents, batch.oldest_wait_ms), (3, 600, 40));
        assert!(first.refused.is_empty() && first.earlier.is_empty());

        let mut forged = captures.clone();
        forged[0].amount_cents = 99_999;
        forged[1].charge_id = Uuid::new_v4();
        forged.push(shared::settlement::Capture { order_id: Uuid::new_v4(), ..captures[0].clone() });
        let fresh_order = Uuid::new_v4();
        let fresh = processor.charge(fresh_order, 50, "1111").await.unwrap();
        forged.push(capture_of(fresh_order, &fresh));
        let second = processor.capture_batch(&forged, 10).await.unwrap();
        let refused: Vec<usize> = second.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, vec![0, 1, 3], "{:?}", second.refused);
        assert_eq!(second.batch.as_ref().map(|b| (b.captures, b.amount_cents)), Some((1, 50)));
        assert_eq!(second.earlier, vec![batch.clone()], "the third was captured in the first batch");

        let twice_order = Uuid::new_v4();
        let twice = capture_of(twice_order, &processor.charge(twice_order, 70, "1111").await.unwrap());
        let doubled = processor.capture_batch(&[twice.clone(), twice], 1).await.unwrap();
        assert_eq!(doubled.batch.map(|b| (b.captures, b.amount_cents)), Some((1, 70)), "made once");
        assert!(doubled.refused.is_empty() && doubled.earlier.is_empty());

        let redelivered = processor.capture_batch(&captures, 90).await.unwrap();
        assert!(redelivered.batch.is_none(), "nothing captured twice");
        assert_eq!(redelivered.earlier, vec![batch]);
    }
}
