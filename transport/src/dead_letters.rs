//! The dead-letter queue as a service: list what is there and why, replay a
//! message to where it failed exactly once (same message id and body), and
//! discard dead letters for good.
//!
//! A replay goes only to the queue the node that dead-lettered the message
//! received it from (`x-orderflow-queue`), and only when the dead letter is
//! signed (`user_id`) by that node's own user: a header anyone can write
//! never steers it. Anything else (dead-lettered by the broker, or published
//! to the dead-letter exchange by someone else) is left in the queue, and the
//! report says why. A message is removed from the queue only
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
    DEAD_LETTERED_AT_HEADER, EXCHANGE_HEADER, MASKED_HEADER, NODE_HEADER, QUEUE_HEADER, REASON_HEADER,
    REPLAYS_HEADER, ROUTING_KEY_HEADER,
};
use super::{Outgoing, Publisher};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Connection;
use serde::Serialize;
use shared::settings::Settings;
use shared::trust::SENDER_HEADER;
use std::collections::{BTreeMap, HashSet};
use topology::permissions::Role;
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
    /// The queue its node received it from (where a replay sends it).
    pub queue: String,
    pub dead_lettered_at: String,
    pub replays: i64,
    pub body_bytes: usize,
    /// Card numbers were masked in its body when it was dead-lettered.
    pub card_masked: bool,
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
        queue: text(get(QUEUE_HEADER)).or_else(|| from_death("queue")).unwrap_or_default(),
        dead_lettered_at: text(get(DEAD_LETTERED_AT_HEADER))
            .or_else(|| from_death("time"))
            .unwrap_or_default(),
        replays: number(get(REPLAYS_HEADER)),
        body_bytes: delivery.data.len(),
        card_masked: matches!(get(MASKED_HEADER), Some(AMQPValue::Boolean(true))),
    }
}

/// Who may have dead-lettered what: the stack's user naming and the operator.
pub struct Signers {
    prefix: String,
    vhost: String,
    operator: String,
}

impl Signers {
    pub fn new(settings: &Settings) -> anyhow::Result<Signers> {
        let (_, _, vhost) = topology::management::amqp_url_parts(&settings.amqp_url)?;
        Ok(Signers { prefix: settings.user_prefix.clone(), vhost, operator: settings.operator_user.clone() })
    }

    /// The queue a dead letter goes back to, or why it may not go back: the
    /// queue its node recorded, when that node's own user signed it (or the
    /// operator's, which every process runs as when roles share one user).
    pub fn replay_queue(&self, delivery: &Delivery) -> Result<String, String> {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let get = |key: &str| text(headers.inner().get(&ShortString::from(key)));
        let Some(node) = get(NODE_HEADER) else {
            return Err(
                "no orderflow node dead-lettered it (the broker did, or someone published it to the \
                        dead-letter exchange): where it came from cannot be verified, so it is not sent back"
                    .into(),
            );
        };
        let role = Role::from_name(&node).ok_or_else(|| format!("it names no orderflow node ({node:?})"))?;
        let signer = delivery.properties.user_id().as_ref().map(|u| u.to_string());
        let signed_by_node = signer.as_deref().is_some_and(|user| {
            Role::of_user(user, &self.prefix, &self.vhost) == Some(role) || user == self.operator
        });
        if !signed_by_node {
            let by =
                signer.map(|u| shared::text::escaped(&u)).unwrap_or_else(|| "no one (no user_id)".into());
            return Err(format!("it says node {node} dead-lettered it, but it was published by {by}"));
        }
        let queue = get(QUEUE_HEADER).unwrap_or_default();
        let own_queues = match role {
            Role::Node(n) => {
                let served = topology::permissions::served_domains(n).flat_map(topology::domain_queues);
                [n.queue(), n.changes_queue(), n.service_queue()]
                    .into_iter()
                    .chain(served.map(|q| q.name))
                    .collect()
            }
            Role::Tracker => {
                vec![topology::TRACKER_QUEUE.to_string(), topology::POLL_RESULTS_QUEUE.to_string()]
            }
            Role::Coordinator => topology::coordinator_queues().into_iter().map(|q| q.name).collect(),
            Role::Publisher | Role::Support | Role::Receiving | Role::BackOffice => Vec::new(),
            Role::Domain(copy) => topology::domain_queues(copy).into_iter().map(|q| q.name).collect(),
            Role::DistributorSim => vec![topology::DISTRIBUTOR_SHIPMENTS_QUEUE.to_string()],
        };
        if !own_queues.contains(&queue) {
            return Err(format!("{node} does not consume {queue:?}: it cannot be sent back there"));
        }
        Ok(queue)
    }
}

/// The message as it was before it was dead-lettered, marked as replayed,
/// addressed straight to `queue` (through the default exchange) and still
/// naming the sender its node verified.
fn replay_message(delivery: &Delivery, letter: &DeadLetter, queue: &str, run: &str) -> Outgoing {
    let mut headers = FieldTable::default();
    for (key, value) in delivery.properties.headers().clone().unwrap_or_default().inner() {
        let key_text = key.as_str();
        let kept = [REPLAY_RUN_HEADER, SENDER_HEADER].contains(&key_text);
        if (key_text.starts_with("x-orderflow-") && !kept)
            || key_text.starts_with("x-death")
            || key_text.contains("-death-")
        {
            continue;
        }
        headers.insert(key.clone(), value.clone());
    }
    headers.insert(REPLAYS_HEADER.into(), AMQPValue::LongLongInt(letter.replays + 1));
    headers.insert(REPLAY_RUN_HEADER.into(), AMQPValue::LongString(run.into()));
    Outgoing {
        exchange: "",
        routing_key: queue.to_string(),
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

/// Which copies are one message for one queue: its message id; without
/// one, a message from the changes fanout is one per body. Each node's copy
/// of a fanout message goes back to that node's queue alone.
fn identity(letter: &DeadLetter, queue: &str, body: &[u8]) -> Option<String> {
    if !letter.message_id.is_empty() {
        return Some(format!("{queue} id:{}", letter.message_id));
    }
    if letter.exchange == topology::CHANGES_EXCHANGE {
        return Some(format!("{queue} fanout:{}", String::from_utf8_lossy(body)));
    }
    None
}

/// Replays the dead letters whose message id or order id is `target` (all
/// of them when `None`), once per message, from a snapshot of the queue.
/// Messages replayed before are skipped unless `force`.
pub async fn replay(
    connection: &Connection,
    settings: &Settings,
    target: Option<&str>,
    force: bool,
) -> anyhow::Result<ReplayReport> {
    let signers = Signers::new(settings)?;
    let publisher = Publisher::open(connection, &settings.broker_user()).await?;
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
        let queue = match signers.replay_queue(&delivery) {
            Ok(queue) => queue,
            Err(reason) => {
                report.skipped.push(Skipped { letter, reason });
                continue;
            }
        };
        let needs_card = topology::Node::all()
            .into_iter()
            .any(|node| node.queue() == queue && topology::WORKFLOW.needs_card(node));
        if letter.card_masked && needs_card {
            let reason = "its card number was masked when it was dead-lettered, so it cannot be charged: \
                          publish the order again"
                .to_string();
            report.skipped.push(Skipped { letter, reason });
            continue;
        }
        let identity = identity(&letter, &queue, &delivery.data);
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
        publisher.publish_all(&[replay_message(&delivery, &letter, &queue, &run)]).await?;
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
