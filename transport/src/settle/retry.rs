//! Retrying: which attempt a delivery is, how long it waits before the
//! next, and the copy sent round its node's retry queue (where it waits out
//! the delay without holding a prefetch slot).

use super::{ack, incident, requeue};
use crate::context::NodeContext;
use crate::message::{Outgoing, ATTEMPT_HEADER};
use crate::publisher::Publisher;
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
};
use shared::incident::IncidentKind;
use std::time::Duration;
use topology::{Node, WORKFLOW_EXCHANGE};

/// Which attempt this delivery is (1 for a first delivery): the attempts
/// made before it went round the retry queue, plus the deliveries the
/// quorum queue has counted since (crashes, requeues; at least one when the
/// broker says it redelivers), plus this one.
pub fn attempt_of(delivery: &Delivery) -> i64 {
    earlier_attempts(delivery) + delivery_count(delivery).max(i64::from(delivery.redelivered)) + 1
}

/// An integer header of a delivery (0 when absent or not an integer).
fn int_header(delivery: &Delivery, key: &str) -> i64 {
    let headers = delivery.properties.headers().as_ref();
    match headers.and_then(|h| h.inner().get(&ShortString::from(key))) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// How many times the broker has delivered this message before (quorum queues).
pub fn delivery_count(delivery: &Delivery) -> i64 {
    int_header(delivery, "x-delivery-count")
}

/// How many attempts were made before the message went round its retry queue.
pub fn earlier_attempts(delivery: &Delivery) -> i64 {
    int_header(delivery, ATTEMPT_HEADER).max(0)
}

/// Waits before a retry: 200 ms doubling with each earlier delivery, up to 10 s.
pub fn retry_delay(delivery_count: i64) -> Duration {
    let exponent = delivery_count.clamp(0, 6) as u32;
    Duration::from_millis(200 * 2u64.pow(exponent)).min(Duration::from_secs(10))
}

/// A delivery sent round `node`'s retry queue: unchanged but for the
/// attempts made so far (`attempts`), its verified `sender` (the node signs
/// the copy as its own) and a per-message TTL of `delay`, after which the
/// retry queue dead-letters it back to the node's queue.
pub fn retry_message(
    delivery: &Delivery,
    node: Node,
    sender: Option<&str>,
    attempts: i64,
    delay: Duration,
) -> Outgoing {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut inner = headers.inner().clone();
    inner.remove(&ShortString::from("x-delivery-count"));
    let mut headers = shared::trust::with_sender(FieldTable::from(inner), sender);
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempts));
    Outgoing {
        exchange: WORKFLOW_EXCHANGE,
        routing_key: node.retry_routing_key(),
        body: delivery.data.clone(),
        properties: delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_expiration(delay.as_millis().max(1).to_string().into()),
    }
}

/// Sends an element round its node's retry queue (confirmed, with the
/// attempts made and a TTL of `delay`), then acknowledges the original: the
/// consumer's slot is free at once and the message is never only in flight.
/// A delivery that is not an element of this node (a change request) or
/// that cannot be sent there waits in the task and is requeued, as before.
pub(super) async fn retry_later(
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
        let retry = retry_message(delivery, node, sender.as_deref(), attempts, delay);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_up_to_ten_seconds() {
        let delays: Vec<u128> = (0..9).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
    }
}
