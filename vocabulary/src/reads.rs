//! The groups of settings a process reads, named in each process's row
//! (`shared::help` lists each group's environment variables).

/// A group of settings a process reads besides the broker's and the logs'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// What every workflow node reads: its store, prefetch, limits, delays, metrics.
    Node,
    /// Intake's reads of the domains (and, with the primary down, its replicas).
    Intake,
    Picklist,
    /// Inventory's backorders and its questions to the distributor domain.
    Inventory,
    /// Payment's wait for another card.
    Payment,
    Tracker,
    Coordinator,
    /// What a domain's process reads (its region included).
    Domain,
    DistributorSim,
}
