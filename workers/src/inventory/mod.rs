//! Inventory's home: everything the inventory process owns, beside each
//! other. `stage` (the workflow node: reserving an order's items once,
//! deciding a shortage), `backorders` (the backorders and purchase orders
//! as stored decisions, no broker), `desk` (what inventory sends for its
//! backorders: purchase orders, and each waiting order's way out) and
//! `stock` (the stock domain and its received-items queue, run by the
//! inventory process in a session of its own beside the stage).

pub mod backorders;
pub mod desk;
pub mod stage;
pub mod stock;

pub use stage::Inventory;
