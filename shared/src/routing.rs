//! Routing as data: where an element goes after a node, decided from its
//! state alone (and, after picking, its unit count). Stages never name their
//! successor; changing the workflow means changing this table.

use crate::order::{OrderElement, OrderState};
use topology::Node;

/// Refuses an element that arrives at `node` in a state the workflow never
/// routes there: it can never succeed here, so it is dead-lettered.
pub fn check_arrival(node: Node, element: &OrderElement) -> Result<(), crate::stage::StageError> {
    use OrderState::*;
    let accepted: &[OrderState] = match node {
        Node::Intake => &[Placed],
        Node::Payment => &[Accepted],
        Node::Inventory => &[Charged, Cancelling],
        Node::Picklist => &[Reserved],
        Node::Rebin => &[Picked],
        Node::Shipping => &[Picked, Rebinned],
        Node::Exceptions => &[StockShort, Cancelling, StockReleased],
    };
    if accepted.contains(&element.state) {
        return Ok(());
    }
    Err(crate::stage::StageError::Permanent(format!(
        "{} cannot handle order {} in state {}",
        node.name(),
        element.order_id,
        element.state
    )))
}

/// The next node for a non-terminal state; `None` ends the element's travel.
pub fn next_node(element: &OrderElement) -> Option<Node> {
    use OrderState::*;
    match element.state {
        Placed => Some(Node::Intake),
        Accepted => Some(Node::Payment),
        Charged => Some(Node::Inventory),
        Reserved => Some(Node::Picklist),
        // Multi-unit shipments are consolidated at rebin; single units ship directly.
        Picked if element.total_units() > 1 => Some(Node::Rebin),
        Picked | Rebinned => Some(Node::Shipping),
        StockShort | Refunded => Some(Node::Exceptions),
        // A cancelled order gives its stock back first, then its money.
        Cancelling if element.reservation.is_some() => Some(Node::Inventory),
        Cancelling | StockReleased => Some(Node::Exceptions),
        Rejected | PaymentDeclined | OutOfStock | Shipped | Cancelled => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{Item, Order};

    fn element(state: OrderState, qty: i64) -> OrderElement {
        let order = Order { items: vec![Item { sku: "SKU-0001".into(), qty }], ..Order::default() };
        OrderElement { state, ..OrderElement::placed(order) }
    }

    #[test]
    fn picked_single_unit_skips_rebin() {
        assert_eq!(next_node(&element(OrderState::Picked, 1)), Some(Node::Shipping));
        assert_eq!(next_node(&element(OrderState::Picked, 2)), Some(Node::Rebin));
    }

    #[test]
    fn every_forward_is_allowed_by_the_senders_grant() {
        use OrderState::*;
        let emits: [(Node, &[OrderState]); 7] = [
            (Node::Intake, &[Accepted, Rejected]),
            (Node::Payment, &[Charged, PaymentDeclined]),
            (Node::Inventory, &[Reserved, StockShort]),
            (Node::Picklist, &[Picked]),
            (Node::Rebin, &[Rebinned]),
            (Node::Shipping, &[Shipped]),
            (Node::Exceptions, &[OutOfStock]),
        ];
        for (node, states) in emits {
            for &state in states {
                for units in [1, 2] {
                    if let Some(next) = next_node(&element(state, units)) {
                        assert!(
                            topology::permissions::forwards_to(node).contains(&next),
                            "{node:?} forwards {state} to {next:?} but may not publish there"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cancel_paths_are_allowed_by_the_senders_grant() {
        let mut reserved = element(OrderState::Cancelling, 1);
        reserved.reservation = Some(crate::order::Reservation { reservation_id: uuid::Uuid::nil() });
        for node in [Node::Picklist, Node::Rebin, Node::Shipping] {
            assert_eq!(next_node(&reserved), Some(Node::Inventory));
            assert!(topology::permissions::forwards_to(node).contains(&Node::Inventory), "{node:?}");
        }
        assert_eq!(next_node(&element(OrderState::Cancelling, 1)), Some(Node::Exceptions));
        assert_eq!(next_node(&element(OrderState::StockReleased, 1)), Some(Node::Exceptions));
        assert!(topology::permissions::forwards_to(Node::Inventory).contains(&Node::Exceptions));
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for state in OrderState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert_eq!(next_node(&element(state, 1)), None, "{state}");
        }
    }
}
