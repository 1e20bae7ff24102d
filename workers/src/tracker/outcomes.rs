//! The outcomes the tracker owes the placers (`shared::answer`): when an
//! order that named where its outcome goes ends, the transaction that
//! records its terminal event also writes the outcome into
//! `tracker_outcomes`, one row per order, so a redelivered or late copy of
//! the event sends nothing again. After the commit, and on every tick for
//! what could not be sent, unsent outcomes are published (each confirmed)
//! and marked sent. A tracker killed between a confirm and its mark sends
//! that outcome again, with the same `message_id` (the order id): the one
//! window where a placer may see an outcome twice.
//!
//! An outcome nobody can take is not retried for ever: a callback key no
//! queue is bound to comes back unroutable and is marked so (`result`),
//! and a direct reply-to whose channel closed drops it at the broker.

use shared::answer::{AnswerTo, OrderOutcome, OUTCOME_TYPE};
use shared::audit::{rfc3339, AuditEvent};
use sqlx::Row as _;
use transport::{publisher::PublishError, Outgoing, Publisher};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tracker_outcomes (order_id TEXT PRIMARY KEY, answer_to TEXT NOT NULL, \
     body TEXT NOT NULL, queued_at TEXT NOT NULL, sent_at TEXT, result TEXT)",
    "CREATE INDEX IF NOT EXISTS tracker_outcomes_unsent ON tracker_outcomes (sent_at)",
];

/// Outcomes published per pass at most.
const SEND_BATCH: i64 = 200;

/// Writes the outcome of each terminal event that names where it goes
/// (`events`: those new to the tracker), in the recording transaction.
pub(super) async fn queue(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    events: &[&AuditEvent],
    queued_at: &str,
) -> sqlx::Result<usize> {
    let mut queued = 0;
    for event in events {
        let Some(answer_to) = event.answer_to.as_ref().filter(|_| event.terminal) else { continue };
        let outcome = OrderOutcome {
            order_id: event.order_id,
            outcome: event.to_state.as_str().to_string(),
            node: event.node.clone(),
            detail: event.detail.clone(),
            at: rfc3339::format(&event.at),
        };
        let (answer_to, body) = (json(answer_to)?, json(&outcome)?);
        queued += sqlx::query(
            "INSERT INTO tracker_outcomes (order_id, answer_to, body, queued_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(event.order_id.to_string())
        .bind(answer_to)
        .bind(body)
        .bind(queued_at)
        .execute(&mut **tx)
        .await?
        .rows_affected() as usize;
    }
    Ok(queued)
}

fn json<T: serde::Serialize>(value: &T) -> sqlx::Result<String> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// The message of one outcome.
fn message(order_id: &str, answer_to: &AnswerTo, body: String) -> Outgoing {
    let (exchange, routing_key) = answer_to.target();
    let properties = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(order_id.into())
        .with_correlation_id(order_id.into())
        .with_type(OUTCOME_TYPE.into());
    Outgoing { exchange, routing_key, body: body.into_bytes(), properties }
}

/// Publishes the unsent outcomes (up to [`SEND_BATCH`]) and marks each sent
/// once confirmed; returns how many were sent. A store or broker failure
/// leaves the rest for the next pass.
pub async fn send_due(pool: &sqlx::AnyPool, publisher: &Publisher) -> usize {
    match try_send_due(pool, publisher).await {
        Ok(sent) => sent,
        Err(error) => {
            tracing::warn!(%error, "could not send the orders' outcomes; trying again on the next tick");
            0
        }
    }
}

async fn try_send_due(pool: &sqlx::AnyPool, publisher: &Publisher) -> sqlx::Result<usize> {
    let rows = sqlx::query(
        "SELECT order_id, answer_to, body FROM tracker_outcomes WHERE sent_at IS NULL ORDER BY queued_at LIMIT $1",
    )
    .bind(SEND_BATCH)
    .fetch_all(pool)
    .await?;
    let mut sends = Vec::with_capacity(rows.len());
    for row in &rows {
        let order_id: String = row.try_get("order_id")?;
        let answer_to: String = row.try_get("answer_to")?;
        let body: String = row.try_get("body")?;
        let Ok(answer_to) = serde_json::from_str::<AnswerTo>(&answer_to) else {
            mark(pool, &order_id, "unreadable").await?;
            continue;
        };
        let message = message(&order_id, &answer_to, body);
        sends.push(async move { (order_id, publisher.publish_all(std::slice::from_ref(&message)).await) });
    }
    let mut sent = 0;
    for (order_id, published) in futures::future::join_all(sends).await {
        match published {
            Ok(()) => {
                mark(pool, &order_id, "sent").await?;
                sent += 1;
            }
            Err(PublishError::Unroutable(target)) => {
                tracing::info!(order_id, target, "an order's outcome has no queue to go to; dropped");
                mark(pool, &order_id, "unroutable").await?;
            }
            Err(error) => {
                tracing::warn!(order_id, %error, "an order's outcome was not confirmed; sent again later")
            }
        }
    }
    Ok(sent)
}

/// How the outcomes queued in `[from, to)` (RFC 3339 texts) went.
pub async fn figures(
    pool: &sqlx::AnyPool,
    from: &str,
    to: &str,
) -> sqlx::Result<shared::report::AnswerFigures> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT result, COUNT(*) FROM tracker_outcomes WHERE queued_at >= $1 AND queued_at < $2 GROUP BY result",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut figures = shared::report::AnswerFigures::default();
    for (result, n) in rows {
        let n = n.max(0) as u64;
        match result.as_deref() {
            None => figures.waiting += n,
            Some("unroutable") | Some("unreadable") => figures.unroutable += n,
            Some(_) => figures.sent += n,
        }
    }
    Ok(figures)
}

async fn mark(pool: &sqlx::AnyPool, order_id: &str, result: &str) -> sqlx::Result<()> {
    let now = rfc3339::format(&chrono::Utc::now());
    sqlx::query("UPDATE tracker_outcomes SET sent_at = $1, result = $2 WHERE order_id = $3")
        .bind(now)
        .bind(result)
        .bind(order_id)
        .execute(pool)
        .await?;
    Ok(())
}
