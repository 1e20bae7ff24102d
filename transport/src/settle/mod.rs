//! Settling a delivery: acknowledge it once what it caused is confirmed,
//! retry a transient failure after a growing delay, dead-letter a permanent
//! one (or a transient one out of attempts) with its reason. An element
//! waits out its delay in its node's retry queue, not in the consumer, so a
//! retry holds no prefetch slot. Nothing here waits for ever on a dead
//! connection: a stale tag or a lost channel only means the broker delivers
//! the message again.
//!
//! Each way out sits beside the message it makes: `retry` (which attempt
//! this is, the delay, the copy for the retry queue) and `dead_letter` (the
//! dead letter and its headers); this file holds the decision and the
//! acknowledgements.

mod dead_letter;
mod retry;

pub use dead_letter::{dead_letter, dead_letter_headers, dead_letter_message, Origin};
pub use retry::{attempt_of, delivery_count, earlier_attempts, retry_delay, retry_message};

use super::context::NodeContext;
use super::message;
use super::publisher::Publisher;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicRejectOptions},
};
use shared::events::{GaveUp, Retried};
use shared::incident::{Incident, IncidentKind};
use shared::stage::StageError;
use std::time::Duration;

/// How long an acknowledgement may take before the connection is presumed dead.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a delivery whose handling failed is settled.
#[derive(Debug)]
pub enum Settle {
    /// Back to its queue after `delay`: this was attempt `attempts` of a transient failure.
    Retry { attempts: i64, delay: Duration, error: anyhow::Error },
    /// A transient failure on every allowed attempt: dead-letter it, saying so.
    GiveUp { attempts: i64, error: anyhow::Error },
    /// It can never succeed: dead-letter it with this reason.
    DeadLetter { reason: String },
}

impl Settle {
    /// The decision for a failure on attempt `attempts` (1 for a first
    /// delivery): a permanent failure is dead-lettered at once; a transient
    /// one is retried after a growing delay until `max_attempts`.
    pub fn after_failure(error: StageError, attempts: i64, max_attempts: u32) -> Settle {
        match error {
            StageError::Permanent(reason) => Settle::DeadLetter { reason },
            StageError::Transient(error) if attempts >= i64::from(max_attempts) => {
                Settle::GiveUp { attempts, error }
            }
            StageError::Transient(error) => {
                Settle::Retry { attempts, delay: retry_delay(attempts - 1), error }
            }
        }
    }
}

/// Carries out a failure decision for one delivery.
pub async fn settle(publisher: &Publisher, ctx: &NodeContext, delivery: &Delivery, decision: Settle) {
    shared::events::ElementFailed { node: ctx.node, routing_key: delivery.routing_key.as_str() }.emit();
    match decision {
        Settle::DeadLetter { reason } => dead_letter(publisher, ctx, delivery, &reason).await,
        Settle::GiveUp { attempts, error } => {
            GaveUp { node: ctx.node, attempts, error: &error }.emit();
            let reason = format!("gave up after {attempts} attempts: {error:#}");
            dead_letter(publisher, ctx, delivery, &reason).await;
        }
        Settle::Retry { attempts, delay, error } => {
            Retried { node: ctx.node, attempts, delay, error: &error }.emit();
            retry::retry_later(publisher, ctx, delivery, attempts, delay, &format!("{error:#}")).await;
        }
    }
}

/// Settles a delivery after a failed attempt (see [`Settle::after_failure`]).
pub async fn settle_failure(
    publisher: &Publisher,
    ctx: &NodeContext,
    delivery: &Delivery,
    error: StageError,
) {
    let decision = Settle::after_failure(error, attempt_of(delivery), ctx.max_attempts);
    settle(publisher, ctx, delivery, decision).await
}

/// Acknowledges one delivery; a stale tag (from before a reconnect) or a dead
/// connection only means the broker will deliver the message again.
pub async fn ack(delivery: &Delivery) {
    ack_with(delivery, BasicAckOptions::default()).await
}

/// Acknowledges with options (e.g. `multiple`), never waiting for ever.
pub async fn ack_with(delivery: &Delivery, options: BasicAckOptions) {
    match tokio::time::timeout(SETTLE_TIMEOUT, delivery.ack(options)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::debug!("stale delivery tag; the message will be redelivered"),
        Ok(Err(error)) => tracing::debug!(%error, "ack failed; the message will be redelivered"),
        Err(_) => tracing::warn!("ack not answered; the message will be redelivered"),
    }
}

/// Returns a delivery to its queue (counted toward the delivery limit).
pub async fn requeue(delivery: &Delivery) {
    match tokio::time::timeout(SETTLE_TIMEOUT, delivery.reject(BasicRejectOptions { requeue: true })).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::debug!(%error, "reject failed; the message will be redelivered"),
        Err(_) => tracing::warn!("reject not answered; the message will be redelivered"),
    }
}

/// The incident to record beside a retry or a dead letter, when the node
/// records history (workflow nodes do; the tracker and the coordinator,
/// which have no audit rights, do not).
fn incident(
    ctx: &NodeContext,
    delivery: &Delivery,
    kind: IncidentKind,
    reason: &str,
    attempts: i64,
) -> Option<message::Outgoing> {
    ctx.workflow_node()?;
    let order_id =
        delivery.properties.correlation_id().as_ref().and_then(|id| uuid::Uuid::parse_str(id.as_str()).ok());
    let incident = Incident::new(ctx.node, order_id, kind, reason, attempts);
    Some(message::incident_message(&incident))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_failure_is_retried_until_the_last_attempt() {
        let transient = || StageError::Transient(anyhow::anyhow!("store down"));
        match Settle::after_failure(transient(), 2, 5) {
            Settle::Retry { attempts: 2, delay, .. } => assert_eq!(delay, Duration::from_millis(400)),
            other => panic!("expected a retry, got {other:?}"),
        }
        assert!(matches!(Settle::after_failure(transient(), 5, 5), Settle::GiveUp { attempts: 5, .. }));
    }

    #[test]
    fn a_permanent_failure_is_dead_lettered_at_once() {
        let decision = Settle::after_failure(StageError::Permanent("bad card".into()), 1, 5);
        assert!(matches!(decision, Settle::DeadLetter { reason } if reason == "bad card"));
    }
}
