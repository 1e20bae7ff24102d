//! The data domains' services (see `topology::domains` for which exist and
//! where they run): `documents` (a copy's store and change log), `copy_store` (one copy
//! of any domain: its store with the primary's stream or a replica's following),
//! `replication` (a primary's change stream, a replica following it),
//! `epochs` (which copy is the primary: promotion and fencing),
//! `edits` (a primary's edits sent to the orders that copied the old data),
//! `customer` (customers, addresses, cards on file; a primary and
//! replicas), `records` (the catalog and the distributors). The stock
//! domain, answered by the inventory process, lives with inventory
//! (`crate::inventory::stock`).

pub mod copy_store;
pub mod customer;
pub mod documents;
pub mod edits;
pub mod epochs;
pub mod records;
pub mod replication;
