//! exceptions: ends failed and cancelled orders with their terminal state
//! after performing their compensations (releasing the money of an order
//! that could not be reserved or was cancelled: the authorization payment
//! holds is voided, or a charge already captured is refunded), each
//! recorded in the order's history.

use crate::processor::{Processor, Released};
use shared::{Node, OrderElement, OrderState, Outcome, Stage, StageError};

pub struct Exceptions {
    processor: Processor,
}

impl Exceptions {
    pub fn new(processor: Processor) -> Exceptions {
        Exceptions { processor }
    }
}

impl Stage for Exceptions {
    const NODE: Node = Node::Exceptions;

    async fn handle(&self, element: OrderElement) -> Result<Outcome, StageError> {
        let definition = shared::routing::definition(&element).unwrap_or(&topology::WORKFLOW);
        let Some(failure) = element.failure.clone().filter(|f| definition.is_terminal(f.ends_as)) else {
            return Err(StageError::Permanent(format!(
                "order {} reached exceptions without a terminal failure",
                element.order_id
            )));
        };
        let mut outcome = Outcome::new(element.clone());
        if let Some(charge) = &element.charge {
            let released = match self.processor.release(element.order_id, charge).await? {
                Ok(released) => released,
                Err(reason) => {
                    shared::events::Refused { node: "exceptions", what: "a void or refund", reason: &reason }
                        .emit();
                    return Err(StageError::Permanent(reason));
                }
            };
            outcome = match released {
                Released::Voided { void_id, amount_cents } => outcome.step(
                    OrderState::Voided,
                    format!(
                        "voided the authorization of {amount_cents} cents (charge {}, void {void_id}): nothing was captured",
                        charge.charge_id
                    ),
                ),
                Released::Refunded(refund) => outcome.step(
                    OrderState::Refunded,
                    format!(
                        "refunded {} cents of charge {} (refund {})",
                        refund.amount_cents, charge.charge_id, refund.refund_id
                    ),
                ),
            };
        }
        Ok(outcome.step(failure.ends_as, failure.reason))
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let stage = Exceptions::new(crate::processor::Processor::open(&settings).await?);
        transport::runner::run_stage(stage, settings, shutdown).await
    })
}
