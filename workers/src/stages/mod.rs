//! One module per workflow node: the node's rules as plain functions, and a
//! [`shared::Stage`] (or [`shared::BatchStage`]) that applies them to an element.

pub mod exceptions;
pub mod intake;
pub mod inventory;
pub mod payment;
pub mod picklist;
pub mod rebin;
pub mod shipping;

use shared::{OrderElement, OrderState, StageError};

/// Refuses an element that arrives in a state this node does not handle: it
/// can never succeed here, so it is dead-lettered with this reason.
pub fn expect_state(element: &OrderElement, node: &str, allowed: &[OrderState]) -> Result<(), StageError> {
    if allowed.contains(&element.state) {
        return Ok(());
    }
    Err(StageError::Permanent(format!(
        "{node} cannot handle order {} in state {}",
        element.order_id, element.state
    )))
}
