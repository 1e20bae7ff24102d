//! The dead-letter queue as a service: list what is there and why, replay a
//! message to where it failed exactly once (same message id and body), and
//! discard dead letters for good. A message is removed from the queue only
//! after its replay was confirmed, and further copies of an already replayed
//! message id are dropped, not replayed.
//!
//! Every reader holds what it keeps unacknowledged until it closes its
//! channel, so none is read twice. Replay also works on a snapshot: it reads
//! at most as many messages as the queue held when it started, and skips anything marked with their own run id, so
//! the copies a replay itself causes are never re-read in the same run. A
//! message already replayed once (`x-orderflow-replays`) is not replayed
//! again unless forced: it failed again after a replay.

use super::message::{
    DEAD_LETTERED_AT_HEADER, EXCHANGE_HEADER, NODE_HEADER, REASON_HEADER, REPLAYS_HEADER, ROUTING_KEY_HEADER,
};
use super::{Outgoing, Publisher};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use topology::DEAD_LETTER_QUEUE;

/// The id of the replay run that sent a message back; a run never re-reads
/// its own copies. Kept through dead-lettering like every other header.
pub const REPLAY_RUN_HEADER: &str = "x-orderflow-replay-run";

/// How often a message may be replayed before a replay refuses it (unless forced).
pub const MAX_REPLAYS: i64 = 1;

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
fn replay_message(delivery: &Delivery, letter: &DeadLetter, run: &str) -> Outgoing {
    let mut headers = FieldTable::default();
    for (key, value) in delivery.properties.headers().clone().unwrap_or_default().inner() {
        let key_text = key.as_str();
        if (key_text.starts_with("x-orderflow-") && key_text != REPLAY_RUN_HEADER)
            || key_text.starts_with("x-death")
            || key_text.contains("-death-")
        {
            continue;
        }
        headers.insert(key.clone(), value.clone());
    }
    headers.insert(REPLAYS_HEADER.into(), AMQPValue::LongLongInt(letter.replays + 1));
    headers.insert(REPLAY_RUN_HEADER.into(), AMQPValue::LongString(run.into()));
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

/// Every message in the dead-letter queue (they stay there). Each read
/// counts as a delivery of the quorum queue; the queue's explicit delivery
/// limit (`topology::DEAD_LETTER_DELIVERY_LIMIT`) is far beyond any listing.
pub async fn list(connection: &Connection) -> lapin::Result<Vec<DeadLetter>> {
    let channel = connection.create_channel().await?;
    let mut letters = Vec::new();
    // Held unacknowledged until the channel closes, so none is read twice.
    while let Some(message) =
        channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }).await?
    {
        letters.push(describe(&message.delivery));
    }
    // Closing the channel returns every message we held to the queue.
    channel.close(200, "listed".into()).await?;
    Ok(letters)
}

/// Dead letters grouped by reason: (reason, count), most frequent first.
pub fn by_reason(letters: &[DeadLetter]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in letters {
        *counts.entry(l.reason.as_str()).or_default() += 1;
    }
    let mut groups: Vec<(String, usize)> = counts.into_iter().map(|(r, n)| (r.to_string(), n)).collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    groups
}

/// How many messages the dead-letter queue holds now (ready ones).
async fn queue_length(channel: &lapin::Channel) -> lapin::Result<usize> {
    let queue = channel
        .queue_declare(
            DEAD_LETTER_QUEUE.into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.message_count() as usize)
}

/// A dead letter a replay left in the queue, and why.
#[derive(Debug, Serialize, PartialEq)]
pub struct Skipped {
    pub letter: DeadLetter,
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ReplayReport {
    /// How many messages the queue held when the replay started.
    pub snapshot: usize,
    pub replayed: Vec<DeadLetter>,
    /// Copies removed because the same message was replayed in this run.
    pub dropped_duplicates: usize,
    /// Left in the queue.
    pub skipped: Vec<Skipped>,
}

/// Which copies are one message: its message id; without one, a message
/// from the changes fanout is one per body (the fanout gave each node a
/// copy, and replaying one copy to the fanout reaches every node again).
fn identity(letter: &DeadLetter, body: &[u8]) -> Option<String> {
    if !letter.message_id.is_empty() {
        return Some(format!("id:{}", letter.message_id));
    }
    if letter.exchange == topology::CHANGES_EXCHANGE {
        return Some(format!("fanout:{}", String::from_utf8_lossy(body)));
    }
    None
}

/// Replays the dead letters whose message id or order id is `target` (all
/// of them when `None`), once per message, from a snapshot of the queue.
/// Messages replayed before are skipped unless `force`.
pub async fn replay(
    connection: &Connection,
    target: Option<&str>,
    force: bool,
) -> anyhow::Result<ReplayReport> {
    let publisher = Publisher::open(connection).await?;
    let channel = connection.create_channel().await?;
    let run = uuid::Uuid::new_v4().to_string();
    let mut report = ReplayReport { snapshot: queue_length(&channel).await?, ..Default::default() };
    let mut seen: HashSet<String> = HashSet::new();
    for _ in 0..report.snapshot {
        let Some(message) =
            channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }).await?
        else {
            break;
        };
        let delivery = message.delivery;
        let letter = describe(&delivery);
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        if text(headers.inner().get(&ShortString::from(REPLAY_RUN_HEADER))).as_deref() == Some(run.as_str()) {
            // Our own copy, dead-lettered again during this run: left alone.
            continue;
        }
        let wanted = target.is_none_or(|t| t == letter.message_id || t == letter.order_id);
        if !wanted {
            continue;
        }
        let identity = identity(&letter, &delivery.data);
        if identity.as_ref().is_some_and(|i| seen.contains(i)) {
            delivery.ack(BasicAckOptions::default()).await?;
            report.dropped_duplicates += 1;
            continue;
        }
        if letter.replays >= MAX_REPLAYS && !force {
            let reason = format!(
                "sent back {} time(s) already and dead-lettered again; use --force to send it once more",
                letter.replays
            );
            report.skipped.push(Skipped { letter, reason });
            continue;
        }
        if letter.routing_key.is_empty() && letter.exchange != topology::CHANGES_EXCHANGE {
            let reason = "no original routing key: it cannot be sent back".to_string();
            report.skipped.push(Skipped { letter, reason });
            continue;
        }
        publisher.publish_all(&[replay_message(&delivery, &letter, &run)]).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        if let Some(identity) = identity {
            seen.insert(identity);
        }
        report.replayed.push(letter);
    }
    // Closing the channel returns every message we held but did not ack.
    channel.close(200, "replayed".into()).await?;
    publisher.close().await;
    Ok(report)
}

/// Which dead letters a discard removes.
#[derive(Clone, Debug)]
pub enum Selection {
    /// Message id or order id.
    Id(String),
    /// Reason contains this text.
    Reason(String),
    All,
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            Selection::Id(id) => *id == letter.message_id || *id == letter.order_id,
            Selection::Reason(text) => letter.reason.contains(text.as_str()),
            Selection::All => true,
        }
    }
}

/// Removes the selected dead letters for good; returns them. What it keeps
/// is held unacknowledged until the channel closes, so it ends.
pub async fn discard(connection: &Connection, selection: &Selection) -> lapin::Result<Vec<DeadLetter>> {
    let channel = connection.create_channel().await?;
    let mut discarded = Vec::new();
    while let Some(message) =
        channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }).await?
    {
        let letter = describe(&message.delivery);
        if selection.matches(&letter) {
            message.delivery.ack(BasicAckOptions::default()).await?;
            discarded.push(letter);
        }
    }
    channel.close(200, "discarded".into()).await?;
    Ok(discarded)
}
