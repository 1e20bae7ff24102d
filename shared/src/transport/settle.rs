//! Settling a delivery: acknowledge it once what it caused is confirmed,
//! retry a transient failure after a growing delay, dead-letter a permanent
//! one (or a transient one out of attempts) with its reason. An element
//! waits out its delay in its node's retry queue, not in the consumer, so a
//! retry holds no prefetch slot. Nothing here waits for ever on a dead
//! connection: a stale tag or a lost channel only means the broker delivers
//! the message again.

use super::context::NodeContext;
use super::message::{self, dead_letter_message, Origin};
use super::publisher::Publisher;
use crate::events::{DeadLettered, GaveUp, Retried};
use crate::incident::{Incident, IncidentKind};
use crate::stage::StageError;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicRejectOptions},
};
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

/// Which attempt this delivery is (1 for a first delivery): the attempts
/// made before it went round the retry queue, plus the deliveries the
/// quorum queue has counted since (crashes, requeues), plus this one.
pub fn attempt_of(delivery: &Delivery) -> i64 {
    message::earlier_attempts(delivery) + message::delivery_count(delivery) + 1
}

/// Carries out a failure decision for one delivery.
pub async fn settle(publisher: &Publisher, ctx: &NodeContext, delivery: &Delivery, decision: Settle) {
    crate::events::ElementFailed { node: ctx.node, routing_key: delivery.routing_key.as_str() }.emit();
    match decision {
        Settle::DeadLetter { reason } => dead_letter(publisher, ctx, delivery, &reason).await,
        Settle::GiveUp { attempts, error } => {
            GaveUp { node: ctx.node, attempts, error: &error }.emit();
            let reason = format!("gave up after {attempts} attempts: {error:#}");
            dead_letter(publisher, ctx, delivery, &reason).await;
        }
        Settle::Retry { attempts, delay, error } => {
            Retried { node: ctx.node, attempts, delay, error: &error }.emit();
            retry_later(publisher, ctx, delivery, attempts, delay, &format!("{error:#}")).await;
        }
    }
}

/// Sends an element round its node's retry queue (confirmed, with the
/// attempts made and a TTL of `delay`), then acknowledges the original: the
/// consumer's slot is free at once and the message is never only in flight.
/// A delivery that is not an element of this node (a change request) or
/// that cannot be sent there waits in the task and is requeued, as before.
async fn retry_later(
    publisher: &Publisher,
    ctx: &NodeContext,
    delivery: &Delivery,
    attempts: i64,
    delay: Duration,
    reason: &str,
) {
    let node = ctx.workflow_node().filter(|n| delivery.routing_key.as_str() == n.routing_key());
    if let Some(node) = node {
        let sender = ctx.trust.sender(&delivery.properties);
        let retry = message::retry_message(delivery, node, sender.as_deref(), attempts, delay);
        let incident = incident(ctx, delivery, IncidentKind::Retried, reason, attempts);
        match publisher.publish_all(&[Some(retry), incident].into_iter().flatten().collect::<Vec<_>>()).await
        {
            Ok(()) => return ack(delivery).await,
            Err(error) => {
                tracing::warn!(node = ctx.node, %error, "could not send to the retry queue; waiting here")
            }
        }
    }
    tokio::time::sleep(delay).await;
    requeue(delivery).await;
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

/// Sends a delivery that can never succeed to the dead-letter exchange with
/// its reason, then acknowledges it; if that publish fails it is requeued.
pub async fn dead_letter(publisher: &Publisher, ctx: &NodeContext, delivery: &Delivery, reason: &str) {
    // What a reason quotes of the message (a parser's error quotes the value) never shows a card.
    let reason = &crate::text::mask_card_numbers(reason);
    let routing_key = delivery.routing_key.as_str();
    let sender = ctx.trust.sender(&delivery.properties);
    let origin = Origin { node: ctx.node, queue: &ctx.queue_of(delivery), sender: sender.as_deref() };
    let dead = dead_letter_message(delivery, &origin, reason);
    let incident = incident(ctx, delivery, IncidentKind::DeadLettered, reason, attempt_of(delivery));
    match publisher.publish_all(&[Some(dead), incident].into_iter().flatten().collect::<Vec<_>>()).await {
        Ok(()) => {
            DeadLettered { node: ctx.node, routing_key, reason }.emit();
            ack(delivery).await
        }
        Err(error) => {
            tracing::warn!(node = ctx.node, routing_key, reason, %error, "could not dead-letter; requeueing");
            requeue(delivery).await;
        }
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

/// Waits before a retry: 200 ms doubling with each earlier delivery, up to 10 s.
pub fn retry_delay(delivery_count: i64) -> Duration {
    let exponent = delivery_count.clamp(0, 6) as u32;
    Duration::from_millis(200 * 2u64.pow(exponent)).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_up_to_ten_seconds() {
        let delays: Vec<u128> = (0..9).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
    }

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
