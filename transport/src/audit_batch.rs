//! Audit batching (group commit of audit messages): a node's concurrent
//! deliveries hand their audit-exchange messages (state events, change
//! records, incidents) to one batcher task, which sends whatever has queued
//! up as one `audit_batch` message and tells every waiting delivery how its
//! confirm went. While one batch waits for its confirm the next one fills,
//! so batches grow with the load and an idle node sends single messages as
//! before (a lone message goes out unchanged, not wrapped).
//!
//! Nothing is weakened: a delivery is still acknowledged only after its
//! element and its audit messages are confirmed; a failed batch fails every
//! delivery in it, which sends its messages again (the tracker drops
//! duplicates by event id). The tracker unpacks a batch and checks every
//! event in it against the batch's verified sender, as it checks a single
//! message. The broker stores and replicates one message per batch instead
//! of one per event: that is the saving (see BENCHMARKS.md).

use super::message::Outgoing;
use super::publish_error::PublishError;
use futures::future::BoxFuture;
use lapin::{
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use topology::AUDIT_EXCHANGE;

/// The `type` property of a batch of audit messages.
pub const AUDIT_BATCH_TYPE: &str = "audit_batch";
/// At most this many messages in one batch...
pub const MAX_EVENTS: usize = 64;
/// ...and at most this many bytes of their bodies (a batch's whole body is
/// allowed [`MAX_BATCH_BYTES`]; each event inside is checked against the
/// receiver's own message limit, as a single message would be).
const MAX_BODY_BYTES: usize = 32 * 1024;
/// The largest batch body a receiver accepts.
pub const MAX_BATCH_BYTES: usize = 48 * 1024;

/// One message of a batch: its `type`, its trace context, its body.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchedMessage {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub body: Box<RawValue>,
}

/// The body of an `audit_batch` message.
#[derive(Serialize, Deserialize)]
pub struct AuditBatch {
    pub messages: Vec<BatchedMessage>,
}

/// Whether `message` goes through the batcher: anything for the audit exchange.
pub fn is_audit(message: &Outgoing) -> bool {
    message.exchange == AUDIT_EXCHANGE
}

/// An audit message waiting for its batch's confirm.
struct Pending {
    message: Outgoing,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// The handle deliveries send their audit messages through (cloned with the publisher).
#[derive(Clone)]
pub struct AuditBatcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl AuditBatcher {
    /// Starts the batcher task, publishing each batch with `send` (a
    /// publisher that does not batch itself). It ends when every handle is dropped.
    pub fn start(send: SendBatch) -> AuditBatcher {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(send, waiting));
        AuditBatcher { queue }
    }

    /// Sends `messages` (all for the audit exchange) in the next batch and
    /// waits for the batch's confirm.
    pub async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let (done, confirmed) = oneshot::channel();
            if self.queue.send(Pending { message, done }).is_err() {
                return Err(PublishError::Unconfirmed("the audit batcher has stopped".into()));
            }
            confirms.push(confirmed);
        }
        for confirmed in confirms {
            confirmed
                .await
                .map_err(|_| PublishError::Unconfirmed("the audit batcher has stopped".into()))??;
        }
        Ok(())
    }
}

/// Publishes messages and waits for their confirms.
pub type SendBatch = Arc<dyn Fn(Vec<Outgoing>) -> BoxFuture<'static, Result<(), PublishError>> + Send + Sync>;

async fn run(send: SendBatch, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = waiting.recv().await {
        let mut pending = vec![first];
        let mut bytes = pending[0].message.body.len();
        while pending.len() < MAX_EVENTS && bytes < MAX_BODY_BYTES {
            match waiting.try_recv() {
                Ok(next) => {
                    bytes += next.message.body.len();
                    pending.push(next);
                }
                Err(_) => break,
            }
        }
        let messages = batches(pending.iter().map(|p| &p.message));
        let result = send(messages).await;
        for waiter in pending {
            let _ = waiter.done.send(result.clone());
        }
    }
}

/// The messages to send for `messages`: one batch per sending node (the
/// routing key's middle part), or a lone message unchanged.
fn batches<'a>(messages: impl Iterator<Item = &'a Outgoing>) -> Vec<Outgoing> {
    let mut by_node: Vec<(&str, Vec<&Outgoing>)> = Vec::new();
    for message in messages {
        let node = node_of(&message.routing_key);
        match by_node.iter_mut().find(|(known, _)| *known == node) {
            Some((_, group)) => group.push(message),
            None => by_node.push((node, vec![message])),
        }
    }
    by_node
        .into_iter()
        .map(|(node, group)| match group.as_slice() {
            [one] => (*one).clone(),
            _ => batch_message(node, &group),
        })
        .collect()
}

/// `payment` of `audit.payment.charged`.
fn node_of(routing_key: &str) -> &str {
    routing_key.split('.').nth(1).unwrap_or("")
}

/// One `audit_batch` message holding `group` (all sent by `node`), routed
/// as `audit.<node>.batch`.
pub fn batch_message(node: &str, group: &[&Outgoing]) -> Outgoing {
    let messages = group
        .iter()
        .map(|message| BatchedMessage {
            kind: message.properties.kind().as_ref().map(|k| k.to_string()),
            traceparent: shared::trace::from_headers(message.properties.headers().as_ref())
                .map(|t| t.header()),
            body: RawValue::from_string(String::from_utf8_lossy(&message.body).into_owned())
                .expect("an audit message's body is JSON"),
        })
        .collect();
    let body = serde_json::to_vec(&AuditBatch { messages }).expect("a batch always serializes");
    let mut headers = FieldTable::default();
    headers.insert(super::message::SCHEMA_HEADER.into(), AMQPValue::LongUInt(shared::order::SCHEMA_VERSION));
    Outgoing {
        exchange: AUDIT_EXCHANGE,
        routing_key: topology::audit_routing_key(node, "batch"),
        body,
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_type(AUDIT_BATCH_TYPE.into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers),
    }
}

/// The messages of a received batch body, or why it is not one.
pub fn unpack(body: &[u8]) -> Result<Vec<BatchedMessage>, String> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(format!("an audit batch of {} bytes is over the {MAX_BATCH_BYTES} allowed", body.len()));
    }
    let batch: AuditBatch = serde_json::from_slice(body).map_err(|e| format!("not an audit batch: {e}"))?;
    if batch.messages.is_empty() || batch.messages.len() > MAX_EVENTS {
        return Err(format!("an audit batch holds 1 to {MAX_EVENTS} messages, not {}", batch.messages.len()));
    }
    Ok(batch.messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(node: &str, body: &str) -> Outgoing {
        Outgoing {
            exchange: AUDIT_EXCHANGE,
            routing_key: format!("audit.{node}.charged"),
            body: body.as_bytes().to_vec(),
            properties: BasicProperties::default().with_type("audit".into()),
        }
    }

    #[test]
    fn messages_are_batched_per_node_and_a_lone_one_goes_unchanged() {
        let messages =
            [audit("payment", r#"{"a":1}"#), audit("shipping", r#"{"b":2}"#), audit("payment", "[3]")];
        let sent = batches(messages.iter());
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].routing_key, "audit.payment.batch");
        assert_eq!(sent[1].routing_key, "audit.shipping.charged");
        assert_eq!(sent[1].body, br#"{"b":2}"#);
        let inside = unpack(&sent[0].body).unwrap();
        let bodies: Vec<&str> = inside.iter().map(|m| m.body.get()).collect();
        assert_eq!(bodies, [r#"{"a":1}"#, "[3]"]);
        assert_eq!(inside[0].kind.as_deref(), Some("audit"));
    }

    #[test]
    fn a_malformed_empty_or_oversized_batch_is_refused_with_a_reason() {
        assert!(unpack(b"{\"messages\": 3}").unwrap_err().contains("not an audit batch"));
        assert!(unpack(b"{\"messages\": []}").unwrap_err().contains("1 to 64"));
        let huge = vec![b' '; MAX_BATCH_BYTES + 1];
        assert!(unpack(&huge).unwrap_err().contains("over the"));
        let too_many = format!(
            "{{\"messages\": [{}]}}",
            vec![r#"{"type":"audit","body":{}}"#; MAX_EVENTS + 1].join(",")
        );
        assert!(unpack(too_many.as_bytes()).unwrap_err().contains("not 65"));
    }
}
