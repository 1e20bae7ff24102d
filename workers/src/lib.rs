//! orderflow's worker nodes: each stage's logic (plain functions from a
//! workflow element to an outcome), the data each node owns, and the tracker.
//! The binaries in `src/bin/` are one line each: `workers::main` with the
//! process's name and its `run` (a function of this crate).

pub mod catalog;
pub mod coordinator;
pub mod distributor_sim;
pub mod domain_reads;
pub mod domains;
pub mod inventory;
pub mod memory;
pub mod metrics;
pub mod payment;
pub mod process;
pub mod processor;
pub mod stages;
pub mod tracker;

pub use process::{main, Run};
