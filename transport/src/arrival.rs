//! What a node checks of a delivery before any stage sees it: the body is an
//! element, its sender may send that state here (`shared::trust`: the sender
//! the broker vouches for, checked against the workflow definition), and the
//! state is one the workflow routes here.
//!
//! Intake is the public door. It takes an element (what `orderflow publish`
//! sends, which records `placed` itself) or a plain order, the README's JSON
//! as any client publishes it (the management UI, pika, ...), which intake
//! records as `placed` itself. Either way it keeps only the order and its id
//! (never a charge, reservation or step count a body claims) and records who
//! placed it: the verified sender, never a field of the body.

use super::context::NodeContext;
use super::message::{audit_message, check_seq, decode, decode_element, DecodeError, Outgoing};
use lapin::message::Delivery;
use serde_json::Value;
use shared::audit::AuditEvent;
use shared::order::{Order, OrderElement, OrderState};
use shared::routing::check_arrival;
use shared::stage::StageError;
use topology::Node;
use uuid::Uuid;

/// An element a node may take, and (for a plain order at intake) the
/// `placed` record to publish before anything it leads to.
pub struct Arrival {
    pub element: OrderElement,
    pub placed: Option<Outgoing>,
}

/// The element a delivery carries, if `node` may take it from its sender;
/// otherwise a permanent failure (dead-lettered with the reason).
pub fn receive(ctx: &NodeContext, node: Node, delivery: &Delivery) -> Result<Arrival, StageError> {
    let sender = ctx.trust.sender(&delivery.properties);
    let public_door = topology::WORKFLOW.door() == node;
    let (element, plain) = if public_door {
        decode_at_intake(delivery, ctx.max_message_bytes)
    } else {
        decode_element(delivery, ctx.max_message_bytes).map(|element| (element, false))
    }
    .map_err(|e| StageError::Permanent(e.to_string()))?;
    if let Err(reason) = ctx.trust.check_element(node, element.state, sender.as_deref()) {
        shared::events::Refused { node: node.name(), what: "an element", reason: &reason }.emit();
        return Err(StageError::Permanent(format!("refused: {reason}")));
    }
    check_arrival(node, &element)?;
    if !(public_door && element.state == OrderState::Placed) {
        return Ok(Arrival { element, placed: None });
    }
    let element = at_the_door(element, sender, delivery)?;
    let placed = plain.then(|| placed_record(ctx, &element, delivery));
    Ok(Arrival { element, placed })
}

/// A placed order taken at a door (intake's queue, the coordinator's):
/// as from outside, with where its placer wants its outcome (the placing
/// message's `reply_to` or callback header; a place the tracker may not
/// post to refuses the order with the reason).
fn at_the_door(
    element: OrderElement,
    sender: Option<String>,
    delivery: &Delivery,
) -> Result<OrderElement, StageError> {
    let answer_to = shared::answer::AnswerTo::of_properties(&delivery.properties)
        .map_err(|reason| StageError::Permanent(format!("refused: {reason}")))?;
    Ok(OrderElement { answer_to, ..from_outside(element, sender) })
}

/// An order placed in directed mode, as the coordinator takes it: like
/// intake, a placed element or a plain order (recorded `placed` by the
/// coordinator), of which only the order, its id and its verified placer
/// are kept.
pub fn receive_directed(ctx: &NodeContext, delivery: &Delivery) -> Result<Arrival, StageError> {
    let sender = ctx.trust.sender(&delivery.properties);
    let (element, plain) = decode_at_intake(delivery, ctx.max_message_bytes)
        .map_err(|e| StageError::Permanent(e.to_string()))?;
    if element.state != OrderState::Placed {
        return Err(StageError::Permanent(format!(
            "the coordinator takes placed orders only; this one is {}",
            element.state
        )));
    }
    let element = at_the_door(element, sender, delivery)?;
    let placed = plain.then(|| placed_record(ctx, &element, delivery));
    Ok(Arrival { element, placed })
}

/// [`receive`] without the `placed` record (for nodes other than intake).
pub fn receive_element(
    ctx: &NodeContext,
    node: Node,
    delivery: &Delivery,
) -> Result<OrderElement, StageError> {
    receive(ctx, node, delivery).map(|arrival| arrival.element)
}

/// An element, or a plain order (no `state` field) made into a placed
/// element. A plain order without an `order_id` gets one derived from the
/// message (its `message_id`, else its body), so that a redelivered copy is
/// the same order, never a second one.
pub(super) fn decode_at_intake(
    delivery: &Delivery,
    max_bytes: usize,
) -> Result<(OrderElement, bool), DecodeError> {
    let headers = delivery.properties.headers().as_ref();
    let value: Value = decode(&delivery.data, headers, max_bytes)?;
    if value.get("state").is_some() {
        let element: OrderElement =
            serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        check_seq(&element)?;
        return Ok((element, false));
    }
    let mut order: Order = serde_json::from_value(value).map_err(|e| {
        DecodeError::Invalid(format!("not an order (see README, \"Placing orders from any client\"): {e}"))
    })?;
    if order.order_id.is_none() {
        let key = match delivery.properties.message_id() {
            Some(id) => format!("message:{id}"),
            None => format!("body:{}", String::from_utf8_lossy(&delivery.data)),
        };
        order.order_id = Some(Uuid::new_v5(&PLAIN_ORDER_NAMESPACE, key.as_bytes()));
    }
    Ok((OrderElement::placed(order), true))
}

/// Namespace of the ids given to plain orders that come without one.
const PLAIN_ORDER_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_706c_6169_6e21);

/// The `placed` record of a plain order, by intake, which saw it first.
pub(super) fn placed_record(ctx: &NodeContext, element: &OrderElement, delivery: &Delivery) -> Outgoing {
    let by =
        element.placed_by.as_deref().map(shared::text::escaped).unwrap_or_else(|| "an unnamed client".into());
    let detail = format!(
        "plain order from {} with {} units, published by {by} to {}",
        shared::text::escaped(&element.order.customer_id.chars().take(64).collect::<String>()),
        element.total_units(),
        shared::text::escaped(delivery.routing_key.as_str())
    );
    audit_message(&AuditEvent::for_transition(element, None, ctx.node, &ctx.instance_id, detail))
}

/// A placed order as intake takes it from outside: the order itself and
/// its id, nothing of what later nodes record (a charge, a reservation, a
/// failure, applied changes, steps taken), whatever the body claims; and
/// its placer, the verified sender.
pub(super) fn from_outside(element: OrderElement, sender: Option<String>) -> OrderElement {
    let mut fresh = OrderElement::placed(element.order);
    fresh.order_id = element.order_id;
    fresh.placed_at = element.placed_at;
    fresh.placed_by = sender;
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::order::Charge;

    #[test]
    fn intake_keeps_the_order_and_drops_what_an_outsider_claims_was_done() {
        let mut forged = OrderElement::placed(Order::default());
        forged.charge = Some(Charge {
            charge_id: uuid::Uuid::new_v4(),
            amount_cents: 99_999_999,
            card_last4: "1111".into(),
        });
        forged.seq = 7;
        forged.placed_by = Some("of-shop.support".into());
        let taken = from_outside(forged.clone(), Some("mallory".into()));
        assert_eq!(taken.order_id, forged.order_id);
        assert_eq!((taken.charge, taken.seq), (None, 0));
        assert_eq!(taken.placed_by.as_deref(), Some("mallory"));
    }
}
