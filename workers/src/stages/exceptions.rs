//! exceptions: ends failed and cancelled orders with their terminal state
//! after performing their compensations (refunding the charge of an order that
//! could not be reserved or was cancelled), each recorded in the order's history.

use crate::processor::Processor;
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
        let Some(failure) = element.failure.clone().filter(|f| f.ends_as.is_terminal()) else {
            return Err(StageError::Permanent(format!(
                "order {} reached exceptions without a terminal failure",
                element.order_id
            )));
        };
        let mut outcome = Outcome::new(element.clone());
        if let Some(charge) = &element.charge {
            let refund = match self.processor.refund(element.order_id, charge).await? {
                Ok(refund) => refund,
                Err(reason) => {
                    shared::events::Refused { node: "exceptions", what: "a refund", reason: &reason }.emit();
                    return Err(StageError::Permanent(reason));
                }
            };
            let detail = format!(
                "refunded {} cents of charge {} (refund {})",
                refund.amount_cents, charge.charge_id, refund.refund_id
            );
            outcome = outcome.step(OrderState::Refunded, detail);
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
