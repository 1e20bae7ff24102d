//! picklist: an aggregation queue. Reserved shipments accumulate per shipping
//! method and are released as one picklist when the group reaches the batch
//! size or its oldest order has waited the flush interval (the batching and
//! acknowledgement rules live in the transport's batch runner).

use shared::{BatchStage, Node, OrderElement, OrderState, Outcome};
use uuid::Uuid;

pub struct Picklist;

impl BatchStage for Picklist {
    const NODE: Node = Node::Picklist;

    fn group_key(&self, element: &OrderElement) -> String {
        element.order.shipping_method.clone()
    }

    fn emit(&self, method: &str, batch: Vec<OrderElement>) -> Vec<Outcome> {
        let picklist_id = Uuid::new_v4();
        let size = batch.len();
        batch
            .into_iter()
            .map(|mut element| {
                element.picklist_id = Some(picklist_id);
                let detail = format!("picklist {picklist_id} ({method}, {size} orders)");
                Outcome::new(element).step(OrderState::Picked, detail)
            })
            .collect()
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move { transport::batch_runner::run_batch_stage(Picklist, settings, shutdown).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Order;

    #[test]
    fn a_batch_shares_one_picklist_id() {
        let batch = vec![OrderElement::placed(Order::default()), OrderElement::placed(Order::default())];
        let outcomes = Picklist.emit("express", batch);
        assert_eq!(outcomes.len(), 2);
        assert_eq!(outcomes[0].element.picklist_id, outcomes[1].element.picklist_id);
        assert!(outcomes[0].steps[0].detail.contains("express, 2 orders"));
    }
}
