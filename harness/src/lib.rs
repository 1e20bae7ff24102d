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
pub use wait::{until, Check};

use topology::{Process as ProcessDef, ServiceKind};

/// The processes of a workflow stack, in start order: the tracker, the
/// coordinator and the nodes (what most tests and the bench start).
pub fn processes() -> Vec<&'static str> {
    let workflow = |p: &ProcessDef| {
        p.node().is_some()
            || matches!(p.service_kind(), Some(ServiceKind::Tracker | ServiceKind::Coordinator))
    };
    ProcessDef::all().into_iter().filter(workflow).map(ProcessDef::name).collect()
}

/// What a stack runs besides [`processes`] for backorders: the distributor
/// domain (inventory asks it who supplies a short item) and the simulated
/// distributors.
pub fn supply_processes() -> Vec<&'static str> {
    let supply = |p: &ProcessDef| {
        p.domain_copy().is_some_and(|copy| copy.domain == "distributor")
            || p.service_kind() == Some(ServiceKind::DistributorSim)
    };
    ProcessDef::all().into_iter().filter(supply).map(ProcessDef::name).collect()
}

/// The workflow's nodes.
pub fn nodes() -> Vec<&'static str> {
    topology::Node::all().into_iter().map(topology::Node::name).collect()
}

/// Every process that hears in-flight changes (a queue of its own on the
/// changes fanout): the nodes and the coordinator.
pub fn change_hearers() -> Vec<&'static str> {
    ProcessDef::all().into_iter().filter(|p| p.hears_changes()).map(ProcessDef::name).collect()
}
