//! The orders waiting at payment for another card (`awaiting_payment`), as
//! stored decisions (no broker here). An order whose card was declined is
//! kept here, as it waits, with why it waits; the desk
//! ([`super::desk`]) charges the card a card change brings, ends the order
//! when its wait runs out or it is cancelled, and marks it ended here.
//!
//! A row is written before the decline's audit event is published and the
//! delivery acknowledged; written again for a redelivered element, it stays
//! as it was (`ON CONFLICT DO NOTHING`). The first decline stays in the row
//! (`first_reason`, `first_card`), so a redelivered element gets the same
//! outcome again whatever happened since ([`Waiting::first_outcome`]).

use shared::order::OrderElement;
use shared::store::Store;
use shared::{OrderState, Outcome};
use sqlx::Row;
use uuid::Uuid;

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS payment_waiting (order_id TEXT PRIMARY KEY, element TEXT NOT NULL, \
     reason TEXT NOT NULL, first_reason TEXT NOT NULL, first_card TEXT NOT NULL, \
     waiting_since_ms BIGINT NOT NULL, ended TEXT)",
    "CREATE INDEX IF NOT EXISTS payment_waiting_open ON payment_waiting (ended)",
];

/// An order waiting for a card.
#[derive(Clone, Debug)]
pub struct WaitingOrder {
    /// As it waits: state `awaiting_payment`, its card the declined one's token.
    pub element: OrderElement,
    /// Why its last card was declined.
    pub reason: String,
    pub since_ms: i64,
}

#[derive(Clone)]
pub struct Waiting {
    pub store: Store,
}

impl Waiting {
    pub async fn open(store: Store) -> anyhow::Result<Waiting> {
        store.migrate(SCHEMA).await?;
        Ok(Waiting { store })
    }

    /// Keeps `element` (as it waits) waiting for a card, declined for `reason`; a
    /// second keep of the same order changes nothing.
    pub async fn keep(&self, element: &OrderElement, reason: &str) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO payment_waiting (order_id, element, reason, first_reason, first_card, waiting_since_ms) \
             VALUES ($1, $2, $3, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(element.order_id.to_string())
        .bind(serde_json::to_string(element).map_err(|e| sqlx::Error::Encode(e.into()))?)
        .bind(reason)
        .bind(&element.order.payment.card_number)
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    /// The outcome the first decline of the order was: what a redelivered
    /// element of it gets again (it waits, or waited, here).
    pub async fn first_outcome(&self, element: &OrderElement) -> sqlx::Result<Option<Outcome>> {
        let row = sqlx::query("SELECT first_reason, first_card FROM payment_waiting WHERE order_id = $1")
            .bind(element.order_id.to_string())
            .fetch_optional(&self.store.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut element = element.clone();
        element.order.payment.card_number = row.try_get("first_card")?;
        Ok(Some(
            Outcome::new(element)
                .step(OrderState::AwaitingPayment, row.try_get::<String, _>("first_reason")?),
        ))
    }

    /// Every order still waiting, longest waiting first.
    pub async fn waiting(&self) -> sqlx::Result<Vec<WaitingOrder>> {
        let rows = sqlx::query(
            "SELECT element, reason, waiting_since_ms FROM payment_waiting WHERE ended IS NULL \
             ORDER BY waiting_since_ms",
        )
        .fetch_all(&self.store.pool)
        .await?;
        let mut orders = Vec::with_capacity(rows.len());
        for row in rows {
            let element = serde_json::from_str(&row.try_get::<String, _>("element")?)
                .map_err(|e| sqlx::Error::Decode(e.into()))?;
            orders.push(WaitingOrder {
                element,
                reason: row.try_get("reason")?,
                since_ms: row.try_get("waiting_since_ms")?,
            });
        }
        Ok(orders)
    }

    /// The order waits on, as `element` now stands (a change applied, a
    /// card declined again: then, `restart`, its wait starts again).
    pub async fn update(&self, element: &OrderElement, reason: &str, restart: bool) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE payment_waiting SET element = $1, reason = $2, \
             waiting_since_ms = CASE WHEN $3 = 1 THEN $4 ELSE waiting_since_ms END \
             WHERE order_id = $5 AND ended IS NULL",
        )
        .bind(serde_json::to_string(element).map_err(|e| sqlx::Error::Encode(e.into()))?)
        .bind(reason)
        .bind(i64::from(restart))
        .bind(chrono::Utc::now().timestamp_millis())
        .bind(element.order_id.to_string())
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    /// The order left payment in `state`: it waits no more.
    pub async fn end(&self, order_id: Uuid, state: OrderState) -> sqlx::Result<()> {
        sqlx::query("UPDATE payment_waiting SET ended = $1 WHERE order_id = $2 AND ended IS NULL")
            .bind(state.as_str())
            .bind(order_id.to_string())
            .execute(&self.store.pool)
            .await?;
        Ok(())
    }

    /// How many orders wait now (for tests and the report).
    pub async fn count(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM payment_waiting WHERE ended IS NULL")
            .fetch_one(&self.store.pool)
            .await
    }
}
