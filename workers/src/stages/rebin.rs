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
