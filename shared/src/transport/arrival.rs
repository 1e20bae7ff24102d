//! What a node checks of a delivery before any stage sees it: the body is an
//! element, its sender may send that state here (`crate::trust`: the sender
//! the broker vouches for, checked against the workflow definition), and the
//! state is one the workflow routes here. Intake, the public door, records
//! who placed the order: the verified sender, never a field of the body.

use super::context::NodeContext;
use super::message::decode_element;
use crate::order::{OrderElement, OrderState};
use crate::routing::check_arrival;
use crate::stage::StageError;
use lapin::message::Delivery;
use topology::Node;

/// The element a delivery carries, if `node` may take it from its sender;
/// otherwise a permanent failure (dead-lettered with the reason).
pub fn receive_element(
    ctx: &NodeContext,
    node: Node,
    delivery: &Delivery,
) -> Result<OrderElement, StageError> {
    let mut element =
        decode_element(delivery, ctx.max_message_bytes).map_err(|e| StageError::Permanent(e.to_string()))?;
    let sender = ctx.trust.sender(&delivery.properties);
    if let Err(reason) = ctx.trust.check_element(node, element.state, sender.as_deref()) {
        let (order_id, state) = (element.order_id, element.state);
        tracing::error!(node = node.name(), %order_id, %state, reason, "refused an element from a sender that may not send it");
        return Err(StageError::Permanent(format!("refused: {reason}")));
    }
    check_arrival(node, &element)?;
    if node == Node::Intake && element.state == OrderState::Placed {
        element = from_outside(element, sender);
    }
    Ok(element)
}

/// A placed order as intake takes it from outside: the order itself and
/// its id, nothing of what later nodes record (a charge, a reservation, a
/// failure, applied changes, steps taken), whatever the body claims; and
/// its placer, the verified sender.
fn from_outside(element: OrderElement, sender: Option<String>) -> OrderElement {
    let mut fresh = OrderElement::placed(element.order);
    fresh.order_id = element.order_id;
    fresh.placed_at = element.placed_at;
    fresh.placed_by = sender;
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{Charge, Order};

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
