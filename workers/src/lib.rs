//! orderflow's worker nodes: each stage's logic (plain functions from a
//! workflow element to an outcome), the data each node owns, and the tracker.
//! The binaries in `src/bin/` only wire a stage to the transport.

pub mod catalog;
pub mod coordinator;
pub mod distributor_sim;
pub mod domain_reads;
pub mod domains;
pub mod inventory;
pub mod metrics;
pub mod process;
pub mod processor;
pub mod stages;
pub mod tracker;

pub use process::{node_main, Process};
