//! Every long-running process of a stack as data. A workflow node's row is
//! its row in [`WORKFLOW`]'s `nodes` (help text, settings, flags); every
//! other process (the tracker, the coordinator, the domains and their
//! replicas, the simulated distributors) is a row of [`SERVICES`]. The
//! scripts (`topology processes`), the harness, the broker users and grants,
//! compose's test, each binary's `--help` and the transport's special cases
//! are derived from these rows; nothing else lists processes.

use crate::domains::{DomainCopy, DISTRIBUTOR_SIM};
use crate::reads::Reads;
use crate::workflow::{Node, NodeDef, Workflow, WORKFLOW};

/// What a process that is not a workflow node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// Records every audit event; serves the orders' histories over HTTP.
    Tracker,
    /// Drives directed orders through the nodes' services.
    Coordinator,
    /// A data domain's primary, and a process per replica of it.
    Domain,
    /// Plays the distributors: ships purchase orders as received items.
    DistributorSim,
}

/// One process that is not a workflow node: a binary of that name.
#[derive(Clone, Copy, Debug)]
pub struct ServiceDef {
    pub binary: &'static str,
    pub kind: ServiceKind,
    pub reads: Reads,
    /// Its `--help`'s first paragraph.
    pub about: &'static str,
}

/// orderflow's processes besides the nodes, in the order a stack starts them
/// (the tracker and the coordinator before the nodes, the rest after).
pub const SERVICES: &[ServiceDef] = &[
    ServiceDef {
        binary: "tracker",
        kind: ServiceKind::Tracker,
        reads: Reads::Tracker,
        about: "The tracker of orderflow: records every audit event into the tracking store and serves each \
                order's state and history over HTTP (GET /orders/ID, /stats, /health on ORDERFLOW_HTTP_ADDR).",
    },
    ServiceDef {
        binary: "coordinator",
        kind: ServiceKind::Coordinator,
        reads: Reads::Coordinator,
        about: "The coordinator of orderflow (directed mode): takes the orders placed with routing key \
                order.coordinator, calls the nodes' services in the order the workflow definition gives, \
                decides in-flight changes on its copy of each order, and records every step in its own store.",
    },
    ServiceDef {
        binary: "customer",
        kind: ServiceKind::Domain,
        reads: Reads::Domain,
        about: "The customer domain of orderflow: customers, their addresses and cards on file (masked), behind \
                request/reply over RabbitMQ. The primary takes writes and sends each change on its stream; \
                ORDERFLOW_REGION=uk or de runs that replica, which follows the stream and answers reads.",
    },
    ServiceDef {
        binary: "catalog",
        kind: ServiceKind::Domain,
        reads: Reads::Domain,
        about: "The catalog domain of orderflow: items (SKU, title, price, weight, active or withdrawn), behind \
                request/reply over RabbitMQ. The primary takes writes and sends each change on its stream; \
                ORDERFLOW_REGION=uk or de runs that replica, which follows the stream and answers reads.",
    },
    ServiceDef {
        binary: "distributor",
        kind: ServiceKind::Domain,
        reads: Reads::Domain,
        about: "The distributor domain of orderflow: distributors, the SKUs each supplies and their lead times, \
                behind request/reply over RabbitMQ.",
    },
    ServiceDef {
        binary: DISTRIBUTOR_SIM,
        kind: ServiceKind::DistributorSim,
        reads: Reads::DistributorSim,
        about: "The simulated distributors of orderflow: take the purchase orders inventory sends for its \
                backorders (the distributor shipments queue) and ship each after ORDERFLOW_DISTRIBUTOR_DELAY_MS, \
                as received items.",
    },
];

/// One long-running process of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    Node(NodeDef),
    /// A service; a domain's process is the copy it runs (primary or replica).
    Service(ServiceDef, Option<DomainCopy>),
}

impl PartialEq for NodeDef {
    fn eq(&self, other: &NodeDef) -> bool {
        self.node == other.node
    }
}
impl Eq for NodeDef {}

impl PartialEq for ServiceDef {
    fn eq(&self, other: &ServiceDef) -> bool {
        self.binary == other.binary
    }
}
impl Eq for ServiceDef {}

impl Process {
    /// Every process of orderflow's stack, in start order.
    pub fn all() -> Vec<Process> {
        Process::of(&WORKFLOW)
    }

    /// Every process of a stack running `workflow`: the tracker and the
    /// coordinator, the nodes, each domain's copies, the simulated distributors.
    pub fn of(workflow: &Workflow) -> Vec<Process> {
        let services = |kinds: &[ServiceKind]| -> Vec<Process> {
            let mut processes = Vec::new();
            for def in SERVICES.iter().filter(|def| kinds.contains(&def.kind)) {
                if def.kind != ServiceKind::Domain {
                    processes.push(Process::Service(*def, None));
                    continue;
                }
                let copies =
                    DomainCopy::all().into_iter().filter(|c| c.domain == def.binary && c.own_process());
                processes.extend(copies.map(|copy| Process::Service(*def, Some(copy))));
            }
            processes
        };
        let mut all = services(&[ServiceKind::Tracker, ServiceKind::Coordinator]);
        all.extend(workflow.nodes.iter().map(|def| Process::Node(*def)));
        all.extend(services(&[ServiceKind::Domain, ServiceKind::DistributorSim]));
        all
    }

    /// The process named `name` (`payment`, `customer-uk`).
    pub fn find(name: &str) -> Option<Process> {
        Process::all().into_iter().find(|process| process.name() == name)
    }

    /// The process of `kind` (its first, for a domain: the primary).
    pub fn service(kind: ServiceKind) -> Option<Process> {
        Process::all().into_iter().find(|process| process.service_kind() == Some(kind))
    }

    /// Its name: the node's, the binary's, or `<domain>-<region>` for a replica.
    pub fn name(self) -> &'static str {
        match self {
            Process::Node(def) => def.node.name(),
            Process::Service(_, Some(copy)) => copy.process_name(),
            Process::Service(def, None) => def.binary,
        }
    }

    /// The binary it runs (`customer-uk` runs `customer`).
    pub fn binary(self) -> &'static str {
        match self {
            Process::Node(def) => def.node.name(),
            Process::Service(def, _) => def.binary,
        }
    }

    /// The region it is told (`ORDERFLOW_REGION`), for a domain's replica.
    pub fn region(self) -> Option<&'static str> {
        match self {
            Process::Service(_, Some(copy)) => copy.region,
            _ => None,
        }
    }

    pub fn node(self) -> Option<Node> {
        match self {
            Process::Node(def) => Some(def.node),
            Process::Service(..) => None,
        }
    }

    pub fn service_kind(self) -> Option<ServiceKind> {
        match self {
            Process::Service(def, _) => Some(def.kind),
            Process::Node(_) => None,
        }
    }

    /// The domain copy it runs, for a domain's process.
    pub fn domain_copy(self) -> Option<DomainCopy> {
        match self {
            Process::Service(_, copy) => copy,
            Process::Node(_) => None,
        }
    }

    /// Its `--help`'s first paragraph.
    pub fn about(self) -> &'static str {
        match self {
            Process::Node(def) => def.about,
            Process::Service(def, _) => def.about,
        }
    }

    /// The groups of settings it reads besides the connection's.
    pub fn reads(self) -> Vec<Reads> {
        match self {
            Process::Node(def) => std::iter::once(Reads::Node).chain(def.reads.iter().copied()).collect(),
            Process::Service(def, _) => vec![def.reads],
        }
    }

    /// Whether it hears every in-flight change (a queue of its own on the
    /// changes fanout): the nodes and the coordinator.
    pub fn hears_changes(self) -> bool {
        matches!(
            self,
            Process::Node(_) | Process::Service(ServiceDef { kind: ServiceKind::Coordinator, .. }, _)
        )
    }
}

/// Every process's name, in start order (`topology processes`).
pub fn names() -> Vec<&'static str> {
    Process::all().into_iter().map(Process::name).collect()
}

/// The binary the process `name` runs and the region it is told
/// (`customer-uk` is the `customer` binary in region `uk`); a name of no
/// process is its own binary.
pub fn binary_of(name: &str) -> (&str, Option<&'static str>) {
    match Process::find(name) {
        Some(process) => (process.binary(), process.region()),
        None => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::DOMAINS;

    #[test]
    fn a_stack_runs_the_services_around_the_nodes() {
        let nodes = WORKFLOW.nodes().map(Node::name);
        let domains =
            ["customer", "customer-uk", "customer-de", "catalog", "catalog-uk", "catalog-de", "distributor"];
        let expected: Vec<&str> = ["tracker", "coordinator"]
            .into_iter()
            .chain(nodes)
            .chain(domains)
            .chain([DISTRIBUTOR_SIM])
            .collect();
        assert_eq!(names(), expected);
        assert_eq!(binary_of("customer-uk"), ("customer", Some("uk")));
        assert_eq!(binary_of("payment"), ("payment", None));
        assert_eq!(Process::find("shipping").unwrap().reads(), [Reads::Node]);
        assert_eq!(Process::find("payment").unwrap().reads(), [Reads::Node, Reads::Payment]);
        assert_eq!(Process::find("picklist").unwrap().reads(), [Reads::Node, Reads::Picklist]);
        let hearers: Vec<&str> =
            Process::all().into_iter().filter(|p| p.hears_changes()).map(Process::name).collect();
        assert_eq!(hearers.len(), WORKFLOW.nodes.len() + 1);
        assert!(hearers.contains(&"coordinator") && !hearers.contains(&"tracker"));
    }

    /// Each domain that is a process of its own has a row; every row of a
    /// domain names a domain of the domains' table.
    #[test]
    fn every_domain_process_has_its_row() {
        for def in DOMAINS.iter().filter(|def| def.served_by.is_none()) {
            assert!(
                SERVICES.iter().any(|row| row.kind == ServiceKind::Domain && row.binary == def.name),
                "{} has no row in SERVICES",
                def.name
            );
        }
        for row in SERVICES.iter().filter(|row| row.kind == ServiceKind::Domain) {
            assert!(
                DOMAINS.iter().any(|def| def.name == row.binary && def.served_by.is_none()),
                "{}",
                row.binary
            );
        }
    }

    #[test]
    fn the_door_takes_placed_orders_and_the_card_is_needed_until_charged() {
        assert_eq!(WORKFLOW.door(), Node::Intake);
        let needing: Vec<Node> = WORKFLOW.nodes().filter(|node| WORKFLOW.needs_card(*node)).collect();
        assert_eq!(needing, [Node::Intake, Node::FraudCheck, Node::Payment]);
    }
}
