//! One module per workflow node: the node's rules as plain functions, and a
//! [`shared::Stage`] (or [`shared::BatchStage`]) that applies them to an element.
//! Inventory's stage lives in its own home with what else it owns
//! (`crate::inventory`).
//! Which states a node accepts is the workflow definition's business
//! (`topology::WORKFLOW`): the transport checks it before a stage runs.

pub mod enrich;
pub mod exceptions;
pub mod intake;
pub mod payment;
pub mod picklist;
pub mod rebin;
pub mod shipping;
