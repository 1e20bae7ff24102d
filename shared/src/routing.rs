//! Routing as data: where an element goes after a node, and in which states
//! it may arrive at one, both read from the workflow definition
//! ([`topology::WORKFLOW`]). Stages never name their successor or list the
//! states they accept; changing the workflow means changing that table.

use crate::order::OrderElement;
use crate::stage::StageError;
use topology::workflow::{Facts, StateKind, Workflow};
use topology::OrderState;
use topology::{Node, WORKFLOW};

/// What the definition's route guards look at in an element.
fn facts(element: &OrderElement) -> Facts {
    Facts { units: element.total_units(), holds_reservation: element.reservation.is_some() }
}

/// The definition the element follows (by its name and version), if this build runs it.
pub fn definition(element: &OrderElement) -> Option<&'static topology::workflow::Workflow> {
    topology::workflow::workflow(&element.workflow, element.workflow_version)
}

/// The next node for a non-terminal state, by the element's own definition
/// (an element of one this node does not run never passes [`check_arrival`]);
/// `None` ends the element's travel.
pub fn next_node(element: &OrderElement) -> Option<Node> {
    definition(element).unwrap_or(&WORKFLOW).next_node(element.state, &facts(element))
}

/// Whether the element's state ends its travel, by its own definition.
pub fn has_ended(element: &OrderElement) -> bool {
    definition(element).unwrap_or(&WORKFLOW).is_terminal(element.state)
}

/// Refuses an element that arrives at `node` in a state the workflow never
/// routes there: it can never succeed here, so it is dead-lettered.
pub fn check_arrival(node: Node, element: &OrderElement) -> Result<(), StageError> {
    let Some(definition) = definition(element) else {
        // Never guessed: a version this node does not run may route elsewhere.
        return Err(StageError::Permanent(format!(
            "refused: order {} follows workflow {:?} version {}, which this node does not run (it runs {})",
            element.order_id,
            crate::text::escaped(&element.workflow.chars().take(60).collect::<String>()),
            element.workflow_version,
            topology::workflow::known_workflows()
        )));
    };
    if definition.accepts_state(node, element.state) {
        return check_charge_claim(definition, node, element);
    }
    Err(StageError::Permanent(format!(
        "{} cannot handle order {} in state {}",
        node.name(),
        element.order_id,
        element.state
    )))
}

/// An element on its forward path carries a charge exactly when its
/// definition charges it before `node`: one switched to another workflow
/// between hops (a `standard` order, charged and shipped, sent to payment as
/// a `ship-then-bill` one; a `ship-then-bill` order sent to shipping as a
/// `standard` one, never charged) is refused, never charged or shipped again.
fn check_charge_claim(definition: &Workflow, node: Node, element: &OrderElement) -> Result<(), StageError> {
    if definition.kind(element.state) != Some(StateKind::Forward) {
        return Ok(()); // a compensation or a resumed wait: charged or not, by where it turned
    }
    let charged_first = charged_before(definition, node);
    if element.charge.is_some() == charged_first {
        return Ok(());
    }
    Err(StageError::Permanent(format!(
        "refused: order {} follows {} v{}, which charges an order {} it reaches {node}, but this element {}: \
         switched to another workflow or forged between hops",
        element.order_id,
        definition.name,
        definition.version,
        if charged_first { "before" } else { "after" },
        if element.charge.is_some() { "carries a charge" } else { "carries none" }
    )))
}

/// Whether `definition` charges an order before it reaches `node` (worked
/// out once per definition and node, not per message).
pub fn charged_before(definition: &Workflow, node: Node) -> bool {
    type Table = std::collections::HashMap<(&'static str, u32, Node), bool>;
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let pairs = topology::workflow::WORKFLOWS.iter().flat_map(|w| w.nodes().map(move |n| (*w, n)));
        pairs.map(|(w, n)| ((w.name, w.version, n), w.reached_before(n, OrderState::Charged))).collect()
    });
    table
        .get(&(definition.name, definition.version, node))
        .copied()
        .unwrap_or_else(|| definition.reached_before(node, OrderState::Charged))
}

/// [`check_arrival`] for a service call: a call may also bring an element
/// back to the node that keeps it waiting (`Workflow::resumes`).
pub fn check_call_arrival(node: Node, element: &OrderElement) -> Result<(), StageError> {
    if definition(element).is_some_and(|d| d.resumes(node, element.state)) {
        return Ok(());
    }
    check_arrival(node, element)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::OrderState;
    use crate::order::{Item, Order};

    /// A standard element in `state`: charged from `charged` on.
    fn element(state: OrderState, qty: i64) -> OrderElement {
        let order = Order { items: vec![Item { sku: "SKU-0001".into(), qty }], ..Order::default() };
        let after_payment =
            ["charged", "reserved", "picked", "rebinned", "shipped", "cancelling", "stock_short"];
        let charge = after_payment.contains(&state.as_str()).then(|| crate::order::Charge {
            charge_id: uuid::Uuid::new_v4(),
            amount_cents: 100,
            card_last4: "1111".into(),
        });
        OrderElement { state, charge, ..OrderElement::placed(order) }
    }

    #[test]
    fn an_element_of_a_workflow_or_version_this_node_does_not_run_is_refused() {
        let known = element(OrderState::Accepted, 1);
        assert!(check_arrival(Node::Payment, &known).is_ok());
        let old = serde_json::to_value(&known).map(|mut v| {
            let fields = v.as_object_mut().unwrap();
            fields.remove("workflow");
            fields.remove("workflow_version");
            v
        });
        let old: OrderElement = serde_json::from_value(old.unwrap()).unwrap();
        assert_eq!((old.workflow.as_str(), old.workflow_version), ("standard", 1), "an element from before");
        for (name, version) in
            [("standard", 3), ("standard", 0), ("ship-then-bill", 2), ("same-day", 1), ("", 1)]
        {
            let claimed = OrderElement { workflow: name.into(), workflow_version: version, ..known.clone() };
            match check_arrival(Node::Payment, &claimed) {
                Err(StageError::Permanent(reason)) => assert!(
                    reason.contains(
                        "which this node does not run (it runs standard v1, standard v2, ship-then-bill v1, drop-ship v1)"
                    ),
                    "{reason}"
                ),
                other => panic!("{name} v{version}: {other:?}"),
            }
        }
    }

    /// The same states go elsewhere, and end or not, by the element's workflow.
    #[test]
    fn an_element_goes_where_its_own_workflow_routes_it() {
        let named = |state, workflow: &str| OrderElement { workflow: workflow.into(), ..element(state, 2) };
        let billed_later = |state| OrderElement { charge: None, ..named(state, "ship-then-bill") };
        assert_eq!(next_node(&named(OrderState::Accepted, "ship-then-bill")), Some(Node::Inventory));
        assert_eq!(next_node(&named(OrderState::Shipped, "ship-then-bill")), Some(Node::Payment));
        assert_eq!(next_node(&named(OrderState::Shipped, "standard")), None);
        assert_eq!(next_node(&named(OrderState::Charged, "drop-ship")), Some(Node::Purchasing));
        assert!(has_ended(&named(OrderState::Charged, "ship-then-bill")));
        assert!(!has_ended(&named(OrderState::Shipped, "ship-then-bill")));
        assert!(has_ended(&named(OrderState::Shipped, "drop-ship")));
        assert!(check_arrival(Node::Payment, &billed_later(OrderState::Shipped)).is_ok());
        assert!(check_arrival(Node::Shipping, &billed_later(OrderState::Picked)).is_ok());
        assert!(check_arrival(Node::Payment, &named(OrderState::Shipped, "standard")).is_err());
        assert!(check_arrival(Node::Inventory, &named(OrderState::Charged, "ship-then-bill")).is_err());
        assert!(check_arrival(Node::Purchasing, &named(OrderState::Charged, "drop-ship")).is_ok());
    }

    /// An element switched to another workflow between hops carries what
    /// its first workflow gave it: a charge where the other has none yet, or
    /// none where the other has charged. Refused, with the reason.
    #[test]
    fn an_element_switched_between_workflows_is_refused_by_what_it_carries() {
        let standard_shipped_then_billed =
            OrderElement { workflow: "ship-then-bill".into(), ..element(OrderState::Shipped, 1) };
        let refused = check_arrival(Node::Payment, &standard_shipped_then_billed).unwrap_err().to_string();
        assert!(
            refused.contains("follows ship-then-bill v1, which charges an order after it reaches payment, but this element carries a charge"),
            "{refused}"
        );
        let uncharged_as_standard = OrderElement { charge: None, ..element(OrderState::Picked, 1) };
        let refused = check_arrival(Node::Shipping, &uncharged_as_standard).unwrap_err().to_string();
        assert!(
            refused.contains("charges an order before it reaches shipping, but this element carries none"),
            "{refused}"
        );
        let uncharged_drop_ship =
            OrderElement { workflow: "drop-ship".into(), charge: None, ..element(OrderState::Charged, 1) };
        assert!(check_arrival(Node::Purchasing, &uncharged_drop_ship).is_err());
        // A compensation is not held to it: a cancel turns wherever the order was.
        let cancelled_early = OrderElement { charge: None, ..element(OrderState::Cancelling, 1) };
        assert!(check_arrival(Node::Exceptions, &cancelled_early).is_ok());
    }

    #[test]
    fn an_element_goes_where_its_own_version_routes_it() {
        let v1 = element(OrderState::Picked, 2);
        let v2 = OrderElement { workflow_version: 2, ..v1.clone() };
        assert_eq!(next_node(&v1), Some(Node::Rebin));
        assert_eq!(next_node(&v2), Some(Node::Shipping), "version 2 has no rebin");
        assert!(check_arrival(Node::Rebin, &v1).is_ok());
        let refused = check_arrival(Node::Rebin, &v2).unwrap_err().to_string();
        assert!(refused.contains("rebin cannot handle order"), "{refused}");
    }

    #[test]
    fn picked_single_unit_skips_rebin() {
        assert_eq!(next_node(&element(OrderState::Picked, 1)), Some(Node::Shipping));
        assert_eq!(next_node(&element(OrderState::Picked, 2)), Some(Node::Rebin));
    }

    #[test]
    fn every_forward_is_allowed_by_the_senders_grant() {
        for def in WORKFLOW.nodes {
            for emit in def.produces {
                let reservations = match emit.holds_reservation {
                    Some(known) => vec![known],
                    None => vec![false, true],
                };
                for (units, reserved) in
                    [1, 2].into_iter().flat_map(|u| reservations.iter().map(move |&r| (u, r)))
                {
                    let mut leaving = element(emit.state, units);
                    if reserved {
                        leaving.reservation =
                            Some(crate::order::Reservation { reservation_id: uuid::Uuid::nil() });
                    }
                    if let Some(next) = next_node(&leaving) {
                        assert!(
                            topology::permissions::forwards_to(def.node).contains(&next),
                            "{:?} forwards {} to {next:?} but may not publish there",
                            def.node,
                            emit.state
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
    fn arrivals_in_states_never_routed_to_the_node_are_refused() {
        assert!(check_arrival(Node::Shipping, &element(OrderState::Rebinned, 2)).is_ok());
        let refused = check_arrival(Node::Shipping, &element(OrderState::Charged, 1)).unwrap_err();
        assert!(refused.to_string().contains("shipping cannot handle order"), "{refused}");
        assert!(check_arrival(Node::Exceptions, &element(OrderState::Refunded, 1)).is_err());
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for state in OrderState::all().into_iter().filter(|s| WORKFLOW.is_terminal(*s)) {
            assert_eq!(next_node(&element(state, 1)), None, "{state}");
        }
    }
}
