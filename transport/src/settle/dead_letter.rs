//! Dead-lettering: the message that says why a delivery can never
//! succeed (masked, signed by the node, with where it came from and where
//! it was going), and sending it before the original is acknowledged.

use super::{ack, incident, requeue};
use crate::context::NodeContext;
use crate::message::{
    Outgoing, DEAD_LETTERED_AT_HEADER, EXCHANGE_HEADER, MASKED_HEADER, NODE_HEADER, QUEUE_HEADER,
    REASON_HEADER, ROUTING_KEY_HEADER, SCHEMA_HEADER,
};
use crate::publisher::Publisher;
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use shared::events::DeadLettered;
use shared::incident::IncidentKind;
use shared::order::SCHEMA_VERSION;
use topology::DEAD_LETTER_EXCHANGE;

/// Where a dead letter came from: the node that gave up on it, the queue
/// it was received from, and its verified sender.
pub struct Origin<'a> {
    pub node: &'a str,
    pub queue: &'a str,
    pub sender: Option<&'a str>,
}

/// A received message sent on to the dead-letter exchange, unchanged but for
/// headers saying why, which node gave up on it, the queue it came from, its
/// verified sender (the node signs the dead letter as its own), and where it
/// was going. Card numbers are masked in the reason and the body: a dead
/// letter may be kept for a long time and read by anyone who operates it.
pub fn dead_letter_message(delivery: &Delivery, origin: &Origin, reason: &str) -> Outgoing {
    let reason = shared::text::mask_card_numbers(reason);
    let masked_body = shared::text::mask_card_numbers_in_body(&delivery.data);
    let node = origin.node;
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut headers = shared::trust::with_sender(headers, origin.sender);
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(REASON_HEADER.into(), text(&reason));
    if masked_body.is_some() {
        headers.insert(MASKED_HEADER.into(), AMQPValue::Boolean(true));
    }
    headers.insert(NODE_HEADER.into(), text(node));
    headers.insert(QUEUE_HEADER.into(), text(origin.queue));
    headers.insert(ROUTING_KEY_HEADER.into(), text(delivery.routing_key.as_str()));
    headers.insert(EXCHANGE_HEADER.into(), text(delivery.exchange.as_str()));
    headers
        .insert(DEAD_LETTERED_AT_HEADER.into(), text(&shared::audit::rfc3339::format(&chrono::Utc::now())));
    Outgoing {
        exchange: DEAD_LETTER_EXCHANGE,
        routing_key: format!("{node}.{}", delivery.routing_key.as_str()),
        body: masked_body.unwrap_or_else(|| delivery.data.clone()),
        properties: delivery.properties.clone().with_headers(headers).with_delivery_mode(2),
    }
}

/// The properties of a dead letter a process writes itself (not a received
/// message's): the same headers [`dead_letter_message`] adds, signed as its own.
pub fn dead_letter_headers(node: &str, queue: &str, routing_key: &str, reason: &str) -> BasicProperties {
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut headers = FieldTable::default();
    headers.insert(SCHEMA_HEADER.into(), AMQPValue::LongUInt(SCHEMA_VERSION));
    headers.insert(REASON_HEADER.into(), text(&shared::text::mask_card_numbers(reason)));
    headers.insert(NODE_HEADER.into(), text(node));
    headers.insert(QUEUE_HEADER.into(), text(queue));
    headers.insert(ROUTING_KEY_HEADER.into(), text(routing_key));
    headers
        .insert(DEAD_LETTERED_AT_HEADER.into(), text(&shared::audit::rfc3339::format(&chrono::Utc::now())));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Sends a delivery that can never succeed to the dead-letter exchange with
/// its reason, then acknowledges it; if that publish fails it is requeued.
pub async fn dead_letter(publisher: &Publisher, ctx: &NodeContext, delivery: &Delivery, reason: &str) {
    // What a reason quotes of the message (a parser's error quotes the value) never shows a card.
    let reason = &shared::text::mask_card_numbers(reason);
    let routing_key = delivery.routing_key.as_str();
    let sender = ctx.trust.sender(&delivery.properties);
    let origin = Origin { node: ctx.node, queue: &ctx.queue_of(delivery), sender: sender.as_deref() };
    let dead = dead_letter_message(delivery, &origin, reason);
    let incident = incident(ctx, delivery, IncidentKind::DeadLettered, reason, super::attempt_of(delivery));
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
