//! The data domains: persistent data with relationships (customers,
//! the catalog, distributors, stock), each owned by one service with its own
//! store and reachable only through that service's requests over RabbitMQ.
//! A domain may run replicas near their users (regions): separate
//! processes with stores of their own, fed in order by the primary's change
//! stream, answering reads with the same interface and refusing writes.
//!
//! This table is the one place that says which domains and copies exist;
//! their queues, the processes a stack runs and the broker users follow
//! from it.

use crate::Node;

/// A data domain and where it runs.
#[derive(Clone, Copy, Debug)]
pub struct DomainDef {
    pub name: &'static str,
    /// The regions of its read replicas, each its own process.
    pub replicas: &'static [&'static str],
    /// The workflow node that owns the data and answers for it, when the
    /// domain is not a process of its own (inventory's stock).
    pub served_by: Option<Node>,
    /// A queue the domain takes work from besides its requests (the stock
    /// domain's received items, the cards domain's captures to settle).
    pub receives: Option<Feed>,
}

/// A queue of work a domain takes, and how it is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feed {
    pub queue: &'static str,
    /// The exchange and routing key its senders publish to.
    pub exchange: &'static str,
    pub routing_key: &'static str,
    pub taken: Taken,
}

/// How a domain takes its feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// A true queue: one message at a time, in order of arrival.
    OneAtATime,
    /// An aggregation queue: held until a batch is full or has waited long
    /// enough (`ORDERFLOW_SETTLEMENT_BATCH`, `ORDERFLOW_SETTLEMENT_FLUSH_MS`),
    /// then settled together.
    InBatches,
    /// A primary's own change stream, heard in order together with the audit
    /// events of the node that copies its data into orders (`copied_at`):
    /// each edit goes to the orders in flight that copied the old data.
    EditsOfCopies { copied_at: Node },
}

/// orderflow's domains.
pub const DOMAINS: &[DomainDef] = &[
    // Its primary sends its address edits to the orders that copied them.
    DomainDef {
        name: "customer",
        replicas: &["uk", "de"],
        served_by: None,
        receives: Some(Feed {
            queue: CUSTOMER_EDITS_QUEUE,
            exchange: DOMAIN_CHANGES_EXCHANGE,
            routing_key: "customer",
            taken: Taken::EditsOfCopies { copied_at: Node::Intake },
        }),
    },
    // Every order by reference reads it: replicas keep intake placing them
    // while the primary is down.
    DomainDef { name: "catalog", replicas: &["uk", "de"], served_by: None, receives: None },
    DomainDef { name: "distributor", replicas: &[], served_by: None, receives: None },
    // Payment's cards service: a card for an order becomes the processor's
    // token; it also settles the shipped orders' captures, in batches.
    DomainDef {
        name: "cards",
        replicas: &[],
        served_by: Some(Node::Payment),
        receives: Some(Feed {
            queue: SETTLEMENT_QUEUE,
            exchange: SETTLEMENT_EXCHANGE,
            routing_key: CAPTURE_ROUTING_KEY,
            taken: Taken::InBatches,
        }),
    },
    DomainDef {
        name: "stock",
        replicas: &[],
        served_by: Some(Node::Inventory),
        receives: Some(Feed {
            queue: RECEIVED_ITEMS_QUEUE,
            exchange: RECEIVING_EXCHANGE,
            routing_key: RECEIVED_ROUTING_KEY,
            taken: Taken::OneAtATime,
        }),
    },
];

/// The customer primary's own feed: its change stream and intake's audit
/// events, in order (see `workers::domains::edits`).
pub const CUSTOMER_EDITS_QUEUE: &str = "orderflow.edits.customer";

/// The manifesto's true queue filled by receiving: items arriving from
/// distributors, taken one at a time in order of arrival by the stock
/// domain (the inventory node; single active consumer).
pub const RECEIVED_ITEMS_QUEUE: &str = "orderflow.received-items";
/// The exchange receiving stations publish arrived items to (routing key `received`).
pub const RECEIVING_EXCHANGE: &str = "orderflow.receiving";
pub const RECEIVED_ROUTING_KEY: &str = "received";

/// The manifesto's aggregation queue for payment processing: a shipped
/// order's capture, sent by shipping (or, for a directed order, the
/// coordinator) and settled with the processor in batches by the cards
/// domain (the payment process).
pub const SETTLEMENT_QUEUE: &str = "orderflow.settlement";
/// The exchange captures are published to (routing key `capture`).
pub const SETTLEMENT_EXCHANGE: &str = "orderflow.settlement";
pub const CAPTURE_ROUTING_KEY: &str = "capture";

/// The manifesto's distributor shipments: a true queue of purchase orders.
/// Inventory sends one per backordered line, on [`PURCHASE_ORDERS_EXCHANGE`]
/// with routing key `po.<distributor_id>` (one queue, routed by key, so a
/// distributor added to the domain needs no new queue); the distributors
/// (in a demo or test stack, the [`DISTRIBUTOR_SIM`] process) take them and
/// ship, and what they ship comes back through receiving.
pub const DISTRIBUTOR_SHIPMENTS_QUEUE: &str = "orderflow.distributor-shipments";
pub const PURCHASE_ORDERS_EXCHANGE: &str = "orderflow.purchase-orders";
/// The process that plays the distributors: ships each purchase order after
/// a delay, as received items.
pub const DISTRIBUTOR_SIM: &str = "distributor-sim";

/// The routing key of a purchase order to `distributor_id`.
pub fn purchase_order_routing_key(distributor_id: &str) -> String {
    format!("po.{distributor_id}")
}

/// One copy of a domain: its primary (`region: None`) or a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DomainCopy {
    pub domain: &'static str,
    pub region: Option<&'static str>,
}

impl DomainCopy {
    pub const fn primary(domain: &'static str) -> DomainCopy {
        DomainCopy { domain, region: None }
    }

    /// Every copy of every domain, primaries first within a domain.
    pub fn all() -> Vec<DomainCopy> {
        DOMAINS
            .iter()
            .flat_map(|def| {
                std::iter::once(DomainCopy::primary(def.name)).chain(
                    def.replicas.iter().map(|region| DomainCopy { domain: def.name, region: Some(region) }),
                )
            })
            .collect()
    }

    /// The copy of `domain` in `region` (`None` or `primary`: the primary).
    pub fn find(domain: &str, region: Option<&str>) -> Option<DomainCopy> {
        let region = region.filter(|r| *r != "primary");
        DomainCopy::all().into_iter().find(|copy| copy.domain == domain && copy.region == region)
    }

    /// The copy run by the process (or answered for by the node) named `name`.
    pub fn from_process(name: &str) -> Option<DomainCopy> {
        DomainCopy::all().into_iter().find(|copy| copy.process() == name)
    }

    pub fn def(self) -> &'static DomainDef {
        DOMAINS.iter().find(|def| def.name == self.domain).expect("a copy names a domain of DOMAINS")
    }

    /// The process answering for this copy: `customer`, `customer-uk`; a
    /// domain served by a node is answered by that node's process.
    pub fn process(self) -> String {
        match (self.def().served_by, self.region) {
            (Some(node), _) => node.name().to_string(),
            (None, None) => self.domain.to_string(),
            (None, Some(region)) => format!("{}-{region}", self.domain),
        }
    }

    /// [`DomainCopy::process`] as a `'static` name (a role's name).
    pub fn process_name(self) -> &'static str {
        static NAMES: std::sync::OnceLock<Vec<(DomainCopy, &'static str)>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| {
            DomainCopy::all().into_iter().map(|copy| (copy, &*copy.process().leak())).collect()
        });
        names.iter().find(|(copy, _)| *copy == self).map_or(self.domain, |(_, name)| name)
    }

    /// The node that answers for this copy, when it is no process of its own
    /// (the stock domain: inventory, which also sends its purchase orders).
    pub fn served_by(self) -> Option<Node> {
        self.def().served_by
    }

    /// Whether this copy is a process of its own (not answered by a node).
    pub fn own_process(self) -> bool {
        self.def().served_by.is_none()
    }

    /// The queue on which the copy answers requests.
    pub fn queue(self) -> String {
        match self.region {
            None => format!("orderflow.domain.{}", self.domain),
            Some(region) => format!("orderflow.domain.{}.{region}", self.domain),
        }
    }

    /// The routing key (on [`DOMAINS_EXCHANGE`]) that reaches the copy.
    pub fn routing_key(self) -> String {
        match self.region {
            None => format!("domain.{}", self.domain),
            Some(region) => format!("domain.{}.{region}", self.domain),
        }
    }

    /// The queue the copy takes changes or work from: a replica's queue on
    /// its primary's change stream, or the domain's feed (`DomainDef::receives`).
    pub fn feed_queue(self) -> Option<String> {
        match self.region {
            Some(region) => Some(format!("orderflow.replica.{}.{region}", self.domain)),
            None => self.def().receives.map(|feed| feed.queue.to_string()),
        }
    }

    /// Whether this copy sends its edits to the orders that copied them (a
    /// primary whose feed is `Taken::EditsOfCopies`): it may request
    /// address changes of orders placed by reference.
    pub fn forwards_edits(self) -> bool {
        self.copied_at().is_some()
    }

    /// Whether this copy forwards its domain's edits while it is the
    /// primary: any copy of a domain whose primary forwards them (a replica
    /// may be promoted). The broker's grants say which copy is the primary
    /// now (`topology::promotion`).
    pub fn may_forward_edits(self) -> bool {
        DomainCopy::primary(self.domain).forwards_edits()
    }

    /// The node whose events say what orders copied from this copy, when it
    /// forwards its edits to them.
    pub fn copied_at(self) -> Option<Node> {
        match (self.region, self.def().receives) {
            (None, Some(Feed { taken: Taken::EditsOfCopies { copied_at }, .. })) => Some(copied_at),
            _ => None,
        }
    }

    /// How the copy names itself in results and status: `customer`,
    /// `customer@uk`.
    pub fn label(self) -> String {
        match self.region {
            None => self.domain.to_string(),
            Some(region) => format!("{}@{region}", self.domain),
        }
    }
}

/// Topic exchange of domain requests: `domain.<domain>` reaches a domain's
/// primary, `domain.<domain>.<region>` one of its replicas.
pub const DOMAINS_EXCHANGE: &str = "orderflow.domains";
/// Topic exchange of the primaries' change streams (routing key: the
/// domain); each replica has a durable queue of its own on it.
pub const DOMAIN_CHANGES_EXCHANGE: &str = "orderflow.domain-changes";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_name_their_queues_and_processes() {
        let uk = DomainCopy::find("customer", Some("uk")).unwrap();
        assert_eq!(uk.queue(), "orderflow.domain.customer.uk");
        assert_eq!(uk.routing_key(), "domain.customer.uk");
        assert_eq!(uk.feed_queue().as_deref(), Some("orderflow.replica.customer.uk"));
        assert_eq!(uk.process(), "customer-uk");
        assert_eq!(DomainCopy::find("customer", Some("primary")), Some(DomainCopy::primary("customer")));
        assert_eq!(DomainCopy::find("catalog", Some("uk")).map(|c| c.process()), Some("catalog-uk".into()));
        assert_eq!(DomainCopy::find("distributor", Some("uk")), None);
        assert_eq!(DomainCopy::find("catalog", Some("fr")), None);
        // The stock domain is answered by the inventory node, which takes the received items.
        let stock = DomainCopy::primary("stock");
        assert_eq!(stock.process(), "inventory");
        assert_eq!(stock.feed_queue().as_deref(), Some(RECEIVED_ITEMS_QUEUE));
        // The cards domain is answered by payment, which settles the captures.
        let cards = DomainCopy::primary("cards");
        assert_eq!(cards.process(), "payment");
        assert_eq!(cards.feed_queue().as_deref(), Some(SETTLEMENT_QUEUE));
    }
}
