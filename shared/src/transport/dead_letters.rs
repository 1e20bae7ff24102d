//! The dead-letter queue as a service: list what is there and why, and replay
//! a message to where it failed exactly once (same message id and body). A
//! message is removed from the queue only after its replay was confirmed, and
//! further copies of an already replayed message id are dropped, not replayed.

use super::message::{
    DEAD_LETTERED_AT_HEADER, EXCHANGE_HEADER, NODE_HEADER, REASON_HEADER, REPLAYS_HEADER, ROUTING_KEY_HEADER,
};
use super::{Outgoing, Publisher};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Connection;
use serde::Serialize;
use std::collections::HashSet;
use topology::DEAD_LETTER_QUEUE;

/// What the dead-letter queue says about one message.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DeadLetter {
    pub message_id: String,
    pub order_id: String,
    pub node: String,
    pub reason: String,
    pub exchange: String,
    pub routing_key: String,
    pub dead_lettered_at: String,
    pub replays: i64,
    pub body_bytes: usize,
}

fn text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::Timestamp(t) => Some(t.to_string()),
        AMQPValue::FieldArray(a) => a.as_slice().first().and_then(|v| text(Some(v))),
        other => Some(format!("{other:?}")),
    }
}

fn number(value: Option<&AMQPValue>) -> i64 {
    match value {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Reads a dead letter's headers: ours when a node dead-lettered it, the
/// broker's `x-death` when a queue did (delivery limit exceeded).
pub fn describe(delivery: &Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let get = |key: &str| headers.inner().get(&ShortString::from(key));
    let death = match get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
            Some(AMQPValue::FieldTable(t)) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    };
    let from_death = |key: &str| death.as_ref().and_then(|d| text(d.inner().get(&ShortString::from(key))));
    let property = |p: &Option<ShortString>| p.as_ref().map(|s| s.to_string()).unwrap_or_default();
    DeadLetter {
        message_id: property(delivery.properties.message_id()),
        order_id: property(delivery.properties.correlation_id()),
        node: text(get(NODE_HEADER))
            .or_else(|| from_death("queue").map(|q| q.trim_start_matches("orderflow.").to_string()))
            .unwrap_or_default(),
        reason: text(get(REASON_HEADER))
            .or_else(|| from_death("reason").map(|r| format!("dead-lettered by the broker: {r}")))
            .unwrap_or_default(),
        exchange: text(get(EXCHANGE_HEADER)).or_else(|| from_death("exchange")).unwrap_or_default(),
        routing_key: text(get(ROUTING_KEY_HEADER)).or_else(|| from_death("routing-keys")).unwrap_or_default(),
        dead_lettered_at: text(get(DEAD_LETTERED_AT_HEADER))
            .or_else(|| from_death("time"))
            .unwrap_or_default(),
        replays: number(get(REPLAYS_HEADER)),
        body_bytes: delivery.data.len(),
    }
}

/// The message as it was before it was dead-lettered, marked as replayed.
fn replay_message(delivery: &Delivery, letter: &DeadLetter) -> Outgoing {
    let mut headers = FieldTable::default();
    for (key, value) in delivery.properties.headers().clone().unwrap_or_default().inner() {
        let key_text = key.as_str();
        if key_text.starts_with("x-orderflow-")
            || key_text.starts_with("x-death")
            || key_text.contains("-death-")
        {
            continue;
        }
        headers.insert(key.clone(), value.clone());
    }
    headers.insert(REPLAYS_HEADER.into(), AMQPValue::LongLongInt(letter.replays + 1));
    let exchange: &'static str = match letter.exchange.as_str() {
        topology::AUDIT_EXCHANGE => topology::AUDIT_EXCHANGE,
        topology::CHANGES_EXCHANGE => topology::CHANGES_EXCHANGE,
        _ => topology::WORKFLOW_EXCHANGE,
    };
    Outgoing {
        exchange,
        routing_key: letter.routing_key.clone(),
        body: delivery.data.clone(),
        properties: delivery.properties.clone().with_headers(headers),
    }
}

/// Every message in the dead-letter queue (they stay there).
pub async fn list(connection: &Connection) -> lapin::Result<Vec<DeadLetter>> {
    let channel = connection.create_channel().await?;
    let mut letters = Vec::new();
    while let Some(message) =
        channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }).await?
    {
        letters.push(describe(&message.delivery));
    }
    // Closing the channel returns every message we held to the queue.
    channel.close(200, "listed".into()).await?;
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ReplayReport {
    pub replayed: Vec<DeadLetter>,
    pub dropped_duplicates: usize,
}

/// Replays the dead letters whose message id or order id is `target` (all
/// of them when `None`), once per message id.
pub async fn replay(connection: &Connection, target: Option<&str>) -> anyhow::Result<ReplayReport> {
    let publisher = Publisher::open(connection).await?;
    let channel = connection.create_channel().await?;
    let mut report = ReplayReport::default();
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(message) =
        channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }).await?
    {
        let delivery = message.delivery;
        let letter = describe(&delivery);
        let wanted = target.is_none_or(|t| t == letter.message_id || t == letter.order_id);
        if !wanted {
            continue;
        }
        if !letter.message_id.is_empty() && !seen.insert(letter.message_id.clone()) {
            delivery.ack(BasicAckOptions::default()).await?;
            report.dropped_duplicates += 1;
            continue;
        }
        if letter.routing_key.is_empty() && letter.exchange != topology::CHANGES_EXCHANGE {
            anyhow::bail!("message {} has no original routing key; it cannot be replayed", letter.message_id);
        }
        publisher.publish_all(&[replay_message(&delivery, &letter)]).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        report.replayed.push(letter);
    }
    channel.close(200, "replayed".into()).await?;
    Ok(report)
}
