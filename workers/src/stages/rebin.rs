//! rebin: consolidates the units of a multi-unit shipment picked from a
//! picklist into one bin, then sends it on to shipping.

use shared::{Node, OrderElement, OrderState, Outcome, Stage, StageError};

pub struct Rebin;

impl Stage for Rebin {
    const NODE: Node = Node::Rebin;

    async fn handle(&self, element: OrderElement) -> Result<Outcome, StageError> {
        let detail = format!("{} units consolidated", element.total_units());
        Ok(Outcome::new(element).step(OrderState::Rebinned, detail))
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move { transport::runner::run_stage(Rebin, settings, shutdown).await })
}
