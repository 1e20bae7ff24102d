//! fraud-check: screens each accepted order before it is charged (the node
//! `standard` v2 adds; version 1 orders never come here). An order worth
//! more than a new order may be without review is rejected with the reason
//! (nothing was charged or reserved yet, so nothing is given back); every
//! other order is `screened` and goes on to payment.

use crate::payment::stage::element_amount_cents;
use shared::{Node, OrderElement, OrderState, Outcome, Stage, StageError};

/// The most an order may be worth without a review, in cents (2,500.00).
pub const REVIEW_ABOVE_CENTS: i64 = 250_000;

pub struct FraudCheck;

impl FraudCheck {
    /// The pure rule: screened, or rejected with the reason.
    pub fn decide(element: OrderElement) -> Outcome {
        let worth = element_amount_cents(&element);
        if worth > REVIEW_ABOVE_CENTS {
            let reason = format!(
                "held by the fraud check: the order is worth {}, above the {} a new order may be without review",
                money(worth),
                money(REVIEW_ABOVE_CENTS)
            );
            return Outcome::new(element).step(OrderState::Rejected, reason);
        }
        let detail = format!("screened: worth {}, within the limit", money(worth));
        Outcome::new(element).step(OrderState::Screened, detail)
    }
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

impl Stage for FraudCheck {
    const NODE: Node = Node::FraudCheck;

    async fn handle(&self, element: OrderElement) -> Result<Outcome, StageError> {
        Ok(FraudCheck::decide(element))
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move { transport::runner::run_stage(FraudCheck, settings, shutdown).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::order::{Item, Order};

    fn worth_units(qty: i64) -> OrderElement {
        // SKU-0001 costs 5.99 at the seeded prices.
        let order = Order { items: vec![Item { sku: "SKU-0001".into(), qty }], ..Order::default() };
        OrderElement { state: OrderState::Accepted, workflow_version: 2, ..OrderElement::placed(order) }
    }

    #[test]
    fn an_order_within_the_limit_is_screened_and_a_larger_one_rejected_with_the_reason() {
        let small = FraudCheck::decide(worth_units(10));
        assert_eq!(small.steps[0].state, OrderState::Screened);
        assert_eq!(small.steps[0].detail, "screened: worth 59.90, within the limit");
        let large = FraudCheck::decide(worth_units(500));
        assert_eq!(large.steps[0].state, OrderState::Rejected);
        assert!(
            large.steps[0].detail.contains("worth 2995.00, above the 2500.00"),
            "{}",
            large.steps[0].detail
        );
        assert_eq!(large.element.charge, None, "nothing to give back");
    }
}
