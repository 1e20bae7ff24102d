//! The data domains' services (see `topology::domains` for which exist and
//! where they run): `documents` (a copy's store and change log),
//! `replication` (a primary's change stream, a replica following it),
//! `customer` (customers, addresses, cards on file; a primary and
//! replicas), `records` (the catalog and the distributors), `stock`
//! (inventory's stock and its received-items queue, answered by the
//! inventory node), `backorder_desk` (inventory's orders waiting for the
//! received items).

pub mod backorder_desk;
pub mod customer;
pub mod documents;
pub mod records;
pub mod replication;
pub mod stock;
