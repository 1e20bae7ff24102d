//! One module per workflow node: the node's rules as plain functions, and a
//! [`shared::Stage`] (or [`shared::BatchStage`]) that applies them to an element.
//! Inventory's and payment's stages live in their own homes with what else
//! each owns (`crate::inventory`, `crate::payment`).
//! Which states a node accepts is the workflow definition's business
//! (`topology::WORKFLOW`): the transport checks it before a stage runs.

pub mod enrich;
pub mod exceptions;
pub mod fraud_check;
pub mod intake;
pub mod picklist;
pub mod purchasing;
pub mod rebin;
pub mod shipping;
