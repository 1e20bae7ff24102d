//! The one harness that starts whole orderflows, shared by the integration
//! tests (`tests`) and the benchmark (`bench`): a vhost of its own on the real
//! broker (created and deleted through the management API), the tracker and
//! every node as real processes of the built binaries, stopped with SIGTERM or
//! killed, waits on conditions (polling with a deadline, never a fixed sleep)
//! and the tracker's typed client.
//!
//! It is a crate of its own, not the `tests` crate's library, so that the
//! bench (a binary) depends on a small library rather than on a crate of
//! tests; what only the tests need (order builders, the CLI wrappers, the
//! stores' checks, PostgreSQL databases) stays in `tests/lib.rs`, what only
//! the bench needs (its publisher, its measurements) in `bench/`.

pub mod broker;
pub mod log_scan;
pub mod stack;
pub mod wait;

pub use broker::{Broker, Vhost};
pub use shared::tracker_api::{OrderStatus, OrderView, Stats, Statuses, TrackerClient};
pub use stack::{Process, Stack, StackConfig};
pub use topology::workflow::processes;
pub use wait::{until, Check};

/// What a stack runs besides [`processes`] for backorders: the distributor
/// domain and the simulated distributors.
pub const SUPPLY_PROCESSES: [&str; 2] = ["distributor", topology::DISTRIBUTOR_SIM];

/// The workflow's nodes.
pub fn nodes() -> Vec<&'static str> {
    topology::Node::all().into_iter().map(topology::Node::name).collect()
}

/// Every process that hears in-flight changes (a queue of its own on the
/// changes fanout): the nodes and the coordinator, every process but the tracker.
pub fn change_hearers() -> Vec<&'static str> {
    processes().into_iter().filter(|p| *p != "tracker").collect()
}
