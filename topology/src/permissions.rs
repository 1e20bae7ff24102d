//! Least privilege: who connects to the broker (each node, the tracker, the
//! publisher, customer support, the receiving station, the back office) and
//! exactly what each may configure, write and read, down to the routing keys
//! it may publish with (topic permissions); and the broker user of each role
//! in each stack.
//!
//! A role is one job. The public door (publisher) places orders and changes
//! its own; the receiving station posts receipts; the back office writes
//! catalog, distributor and customer records; support acts on any order and
//! on customers' addresses. Only a role that answers calls through RabbitMQ's
//! direct reply-to (the nodes' services, the domains, the coordinator's
//! answer for unknown services) may write to the default exchange: RabbitMQ
//! (3.10, measured by `tests/pipeline/service_trust.rs`) checks that write
//! even for a direct reply, and cannot narrow it by routing key, so every
//! receiver behind the default exchange checks its sender itself.

use crate::{
    DomainCopy, Node, AUDIT_EXCHANGE, CHANGES_EXCHANGE, COORDINATOR_CHANGES_QUEUE, COORDINATOR_QUEUE,
    COORDINATOR_REPLIES_QUEUE, COORDINATOR_ROUTING_KEY, DEAD_LETTER_EXCHANGE, DOMAINS_EXCHANGE,
    DOMAIN_CHANGES_EXCHANGE, POLL_RESULTS_QUEUE, PURCHASE_ORDERS_EXCHANGE, RECEIVING_EXCHANGE,
    RESULTS_EXCHANGE, SERVICES_EXCHANGE, SETTLEMENT_EXCHANGE, TRACKER_QUEUE, UNKNOWN_SERVICE_QUEUE,
    WORKFLOW_EXCHANGE,
};

/// Whether `role` sends the captures of the orders it completes (the state
/// of a definition that makes the charge due, `Workflow::completes_at`):
/// the node that ships, payment for `ship-then-bill` (autonomous orders),
/// and the coordinator (directed ones).
pub fn sends_captures(role: Role) -> bool {
    match role {
        Role::Node(node) => crate::workflow::WORKFLOWS
            .iter()
            .any(|w| w.uses(node) && w.produces(node).contains(&w.completes_at)),
        Role::Coordinator => true,
        _ => false,
    }
}

/// The node that settles captures: the one answering for the domain whose
/// feed is the settlement queue (payment, for the cards domain).
pub fn settling_node() -> Node {
    DomainCopy::all()
        .into_iter()
        .find(|copy| copy.feed_queue().as_deref() == Some(crate::SETTLEMENT_QUEUE))
        .and_then(|copy| copy.served_by())
        .expect("a domain served by a node takes the settlement queue")
}

/// The settlement exchange's topic permission for `role`: the capture key
/// for a role that sends captures, nothing for any other.
fn settlement_topic(role: Role) -> TopicGrant {
    let keys = if sends_captures(role) { exact(&[crate::domains::CAPTURE_ROUTING_KEY]) } else { exact(&[]) };
    topic(SETTLEMENT_EXCHANGE, keys, exact(&[]))
}

/// The default exchange as permissions name it: replies to RabbitMQ's direct
/// reply-to (and the coordinator's replies queue) are published there.
pub const DEFAULT_EXCHANGE_RESOURCE: &str = "amq.default";

/// A kind of process that connects to the broker with its own user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Node(Node),
    Tracker,
    /// Drives directed orders through the nodes' services.
    Coordinator,
    /// The public door for orders (`orderflow publish`): writes to intake
    /// (or the coordinator) and records `placed`; may change or cancel the
    /// orders it placed, and call intake's service. Nothing else.
    Publisher,
    /// Customer support: may change or cancel any order, look customers up
    /// and change their addresses, and nothing else.
    Support,
    /// The receiving station: posts the items that arrived from the
    /// distributors (`orderflow receive`), and nothing else.
    Receiving,
    /// The back office (merchandising): writes catalog, distributor and
    /// customer records, and nothing else.
    BackOffice,
    /// A data domain's own process: its primary or one of its replicas.
    Domain(DomainCopy),
    /// The simulated distributors: take purchase orders from the
    /// distributor shipments queue and ship them as received items.
    DistributorSim,
}

impl Role {
    /// Every role: each process's (the process table), then the people's.
    pub fn all() -> Vec<Role> {
        let processes = crate::Process::all().into_iter().map(Role::of);
        processes.chain([Role::Publisher, Role::Support, Role::Receiving, Role::BackOffice]).collect()
    }

    /// The role a process of the stack connects as.
    pub fn of(process: crate::Process) -> Role {
        use crate::{Process, ServiceKind};
        match process {
            Process::Node(def) => Role::Node(def.node),
            Process::Service(_, Some(copy)) => Role::Domain(copy),
            Process::Service(def, None) => match def.kind {
                ServiceKind::Tracker => Role::Tracker,
                ServiceKind::Coordinator => Role::Coordinator,
                ServiceKind::DistributorSim => Role::DistributorSim,
                ServiceKind::Domain => Role::Domain(DomainCopy::primary(def.binary)),
            },
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::all().into_iter().find(|role| role.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Node(node) => node.name(),
            Role::Tracker => "tracker",
            Role::Coordinator => "coordinator",
            Role::Publisher => "publisher",
            Role::Support => "support",
            Role::Receiving => "receiving",
            Role::BackOffice => "backoffice",
            Role::Domain(copy) => copy.process_name(),
            Role::DistributorSim => crate::DISTRIBUTOR_SIM,
        }
    }

    /// The broker user of this role in the stack on `vhost`: `<prefix><role>`
    /// on the default vhost `/` (`orderflow-payment`), else
    /// `<prefix><vhost>.<role>` (`orderflow-shop.payment`). Broker users are
    /// global, so two stacks never share a user or a password; role names
    /// have no dot, so a user name says which stack and role it is.
    pub fn user(self, prefix: &str, vhost: &str) -> String {
        stack_prefix(prefix, vhost) + self.name()
    }

    /// The role whose user in this stack is `user`, if any.
    pub fn of_user(user: &str, prefix: &str, vhost: &str) -> Option<Role> {
        Role::from_name(user.strip_prefix(&stack_prefix(prefix, vhost))?)
    }
}

/// What every user name of the stack on `vhost` starts with.
fn stack_prefix(prefix: &str, vhost: &str) -> String {
    if vhost == "/" {
        prefix.to_string()
    } else {
        format!("{prefix}{vhost}.")
    }
}

/// The nodes a node may forward elements to: derived from the workflow
/// definitions (the routes of the states the node produces, in any version).
pub fn forwards_to(node: Node) -> Vec<Node> {
    crate::workflow::forwards_to_any(node)
}

/// A user's rights on the vhost: configure/write/read patterns, and per
/// topic exchange the routing keys it may publish with (write) and bind with (read).
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub configure: String,
    pub write: String,
    pub read: String,
    pub topic: Vec<TopicGrant>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicGrant {
    pub exchange: &'static str,
    pub write: String,
    pub read: String,
}

fn topic(exchange: &'static str, write: String, read: String) -> TopicGrant {
    TopicGrant { exchange, write, read }
}

fn exact(names: &[&str]) -> String {
    if names.is_empty() {
        return "^$".to_string();
    }
    let escaped: Vec<String> = names.iter().map(|n| n.replace('.', "\\.")).collect();
    format!("^({})$", escaped.join("|"))
}

pub fn grant(role: Role) -> Grant {
    match role {
        Role::Node(node) => node_grant(node),
        Role::Coordinator => coordinator_grant(),
        // Records the audit events and keeps polled results; sends an
        // order's outcome where its placer asked (a callback, or its
        // direct reply-to through the default exchange).
        Role::Tracker => Grant {
            configure: exact(&[]),
            write: exact(&[DEAD_LETTER_EXCHANGE, RESULTS_EXCHANGE, DEFAULT_EXCHANGE_RESOURCE]),
            read: exact(&[TRACKER_QUEUE, POLL_RESULTS_QUEUE]),
            topic: vec![
                topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[])),
                topic(AUDIT_EXCHANGE, exact(&[]), "^#$".to_string()),
                topic(DEAD_LETTER_EXCHANGE, "^tracker\\.".to_string(), exact(&[])),
                topic(RESULTS_EXCHANGE, "^callback\\..+$".to_string(), exact(&[])),
            ],
        },
        // Places orders (at intake, or directed through the coordinator) and
        // calls intake's service, the public door; the later services take
        // calls only from the coordinator and the operator. It reads no
        // domain, posts no receipt and writes no record; of the domains it
        // may call only payment's cards service (a new card for its order).
        Role::Publisher => Grant {
            configure: exact(&[]),
            write: exact(&[
                WORKFLOW_EXCHANGE,
                AUDIT_EXCHANGE,
                CHANGES_EXCHANGE,
                SERVICES_EXCHANGE,
                DOMAINS_EXCHANGE,
            ]),
            read: exact(&[]),
            topic: vec![
                topic(
                    WORKFLOW_EXCHANGE,
                    exact(&[&crate::WORKFLOW.door().routing_key(), COORDINATOR_ROUTING_KEY]),
                    exact(&[]),
                ),
                topic(SERVICES_EXCHANGE, exact(&[&crate::WORKFLOW.door().service_routing_key()]), exact(&[])),
                // Payment's cards service: a new card for its order becomes a token.
                topic(DOMAINS_EXCHANGE, exact(&[&DomainCopy::primary("cards").routing_key()]), exact(&[])),
                topic(
                    AUDIT_EXCHANGE,
                    "^audit\\.publisher\\.(placed|change_requested)$".to_string(),
                    exact(&[]),
                ),
                topic(DEAD_LETTER_EXCHANGE, exact(&[]), exact(&[])),
            ],
        },
        Role::Support => Grant {
            configure: exact(&[]),
            write: exact(&[AUDIT_EXCHANGE, CHANGES_EXCHANGE, DOMAINS_EXCHANGE]),
            read: exact(&[]),
            topic: vec![
                topic(DOMAINS_EXCHANGE, DOMAIN_CALLS.to_string(), exact(&[])),
                topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[])),
                topic(AUDIT_EXCHANGE, "^audit\\.support\\.change_requested$".to_string(), exact(&[])),
                topic(DEAD_LETTER_EXCHANGE, exact(&[]), exact(&[])),
            ],
        },
        // Posts receipts, and asks the stock domain what arrived.
        Role::Receiving => Grant {
            configure: exact(&[]),
            write: exact(&[RECEIVING_EXCHANGE, DOMAINS_EXCHANGE]),
            read: exact(&[]),
            topic: vec![
                topic(RECEIVING_EXCHANGE, exact(&[crate::domains::RECEIVED_ROUTING_KEY]), exact(&[])),
                topic(DOMAINS_EXCHANGE, exact(&[&DomainCopy::primary("stock").routing_key()]), exact(&[])),
                topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[])),
                topic(DEAD_LETTER_EXCHANGE, exact(&[]), exact(&[])),
            ],
        },
        // Reads and writes the domains' records (which writes a domain takes
        // from it, the domain decides from the caller's verified user).
        Role::BackOffice => Grant {
            configure: exact(&[]),
            write: exact(&[DOMAINS_EXCHANGE]),
            read: exact(&[]),
            topic: vec![
                topic(DOMAINS_EXCHANGE, DOMAIN_CALLS.to_string(), exact(&[])),
                topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[])),
                topic(DEAD_LETTER_EXCHANGE, exact(&[]), exact(&[])),
            ],
        },
        Role::Domain(copy) => domain_grant(copy),
        Role::DistributorSim => Grant {
            configure: exact(&[]),
            write: exact(&[RECEIVING_EXCHANGE, DEAD_LETTER_EXCHANGE]),
            read: exact(&[crate::DISTRIBUTOR_SHIPMENTS_QUEUE]),
            topic: vec![
                topic(RECEIVING_EXCHANGE, exact(&[crate::domains::RECEIVED_ROUTING_KEY]), exact(&[])),
                topic(DEAD_LETTER_EXCHANGE, format!("^{}\\.", crate::DISTRIBUTOR_SIM), exact(&[])),
                topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[])),
                topic(PURCHASE_ORDERS_EXCHANGE, exact(&[]), exact(&[])),
            ],
        },
    }
}

/// A node: its own queues, the routing keys the definition lets it
/// forward with, its audit events, its service's answers, the domains.
fn node_grant(node: Node) -> Grant {
    let queue = node.queue();
    let changes = node.changes_queue();
    // No configure right at all: `topology apply` declares every
    // queue, a node only checks its own exist (a passive declare),
    // and so it can never delete one. The retry queue is published
    // to by key (topic write) and never consumed.
    let retry_key = node.retry_routing_key();
    let keys: Vec<String> = forwards_to(node).iter().map(|n| n.routing_key()).collect();
    let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    keys.push(&retry_key);
    // As a service it replies to its callers' queues (the default
    // exchange) and sends results for callbacks and polling.
    let results = format!("^(callback\\..+|poll\\.{})$", node.name());
    // It may ask the domains, and answers for a domain whose data it
    // owns (`DomainDef::served_by`).
    let mut read = vec![queue.clone(), changes.clone(), node.service_queue()];
    read.extend(served_domains(node).flat_map(|copy| crate::domain_queues(copy).into_iter().map(|q| q.name)));
    let read: Vec<&str> = read.iter().map(String::as_str).collect();
    let mut write = vec![
        WORKFLOW_EXCHANGE,
        AUDIT_EXCHANGE,
        DEAD_LETTER_EXCHANGE,
        RESULTS_EXCHANGE,
        DEFAULT_EXCHANGE_RESOURCE,
        DOMAINS_EXCHANGE,
    ];
    // The stock domain's node (inventory) sends the purchase orders of its
    // backorders; a node that drop-ships sends its own.
    let orders = DomainCopy::primary("stock").served_by() == Some(node)
        || crate::workflow::orders_from_distributors(node);
    let purchase_orders = if orders {
        write.push(PURCHASE_ORDERS_EXCHANGE);
        PURCHASE_ORDER_KEYS.to_string()
    } else {
        exact(&[])
    };
    // The node that ships sends each shipped order's capture to settlement.
    if sends_captures(Role::Node(node)) {
        write.push(SETTLEMENT_EXCHANGE);
    }
    Grant {
        configure: exact(&[]),
        write: exact(&write),
        read: exact(&read),
        topic: vec![
            settlement_topic(Role::Node(node)),
            topic(PURCHASE_ORDERS_EXCHANGE, purchase_orders, exact(&[])),
            topic(DOMAINS_EXCHANGE, DOMAIN_CALLS.to_string(), exact(&[])),
            topic(WORKFLOW_EXCHANGE, exact(&keys), exact(&[&node.routing_key(), &retry_key])),
            topic(AUDIT_EXCHANGE, format!("^audit\\.{}\\.[a-z_]+$", node.name()), exact(&[])),
            topic(DEAD_LETTER_EXCHANGE, format!("^{}\\.", node.name()), exact(&[])),
            topic(RESULTS_EXCHANGE, results, exact(&[])),
        ],
    }
}

/// The coordinator: calls the services, its audit events, the answers
/// for unknown services.
fn coordinator_grant() -> Grant {
    Grant {
        configure: exact(&[]),
        write: exact(&[
            SERVICES_EXCHANGE,
            AUDIT_EXCHANGE,
            DEAD_LETTER_EXCHANGE,
            DEFAULT_EXCHANGE_RESOURCE,
            SETTLEMENT_EXCHANGE,
        ]),
        read: exact(&[
            COORDINATOR_QUEUE,
            COORDINATOR_REPLIES_QUEUE,
            COORDINATOR_CHANGES_QUEUE,
            UNKNOWN_SERVICE_QUEUE,
        ]),
        topic: vec![
            // A directed order shipped: its capture, to settlement.
            settlement_topic(Role::Coordinator),
            topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[COORDINATOR_ROUTING_KEY])),
            // Any node's service (node names are lowercase letters and dashes).
            topic(SERVICES_EXCHANGE, "^service\\.[a-z_-]+$".to_string(), exact(&[])),
            topic(AUDIT_EXCHANGE, "^audit\\.coordinator\\.[a-z_]+$".to_string(), exact(&[])),
            topic(DEAD_LETTER_EXCHANGE, "^coordinator\\.".to_string(), exact(&[])),
            // Errors for requests to unknown services, to callback keys.
            topic(RESULTS_EXCHANGE, "^callback\\..+$".to_string(), exact(&[])),
        ],
    }
}

/// The routing keys of purchase orders: `po.<distributor_id>`.
const PURCHASE_ORDER_KEYS: &str = "^po\\.[A-Za-z0-9_-]+$";

/// The routing keys on the domains exchange a caller may use: any copy of
/// any domain. Which requests it may make (reads, writes) the domain
/// service decides from the caller's verified user.
const DOMAIN_CALLS: &str = "^domain\\.[a-z]+(\\.[a-z]+)?$";

/// The domain copies whose requests `node` answers (it owns their data).
pub fn served_domains(node: Node) -> impl Iterator<Item = DomainCopy> {
    DomainCopy::all().into_iter().filter(move |copy| copy.def().served_by == Some(node))
}

/// A domain process: it reads its request queue (and its feed), replies to
/// its callers, publishes its changes (a primary with replicas or that
/// forwards its edits) or asks its primary for a snapshot (a replica); a
/// primary that forwards edits requests changes of the orders that copied.
fn domain_grant(copy: DomainCopy) -> Grant {
    acting_grant(copy, DomainCopy::primary(copy.domain))
}

/// A domain copy's rights while `primary` is its domain's primary (the
/// first primary, or the replica an operator promoted: `crate::promotion`).
pub fn acting_grant(copy: DomainCopy, primary: DomainCopy) -> Grant {
    let acts = copy == primary;
    let mut write = vec![DEFAULT_EXCHANGE_RESOURCE, RESULTS_EXCHANGE, DEAD_LETTER_EXCHANGE];
    let mut read = vec![copy.queue()];
    let mut topics = vec![
        topic(RESULTS_EXCHANGE, format!("^(callback\\..+|poll\\.{})$", copy.label()), exact(&[])),
        topic(DEAD_LETTER_EXCHANGE, format!("^{}\\.", copy.process()), exact(&[])),
        topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[])),
    ];
    // A replica's feed (empty while it is the primary); the primary's own
    // work (its edits, received items, captures), whichever copy it is.
    if copy.region.is_some() {
        read.extend(copy.feed_queue());
    }
    if acts {
        read.extend(copy.def().receives.map(|feed| feed.queue.to_string()));
    }
    let replicated = !copy.def().replicas.is_empty();
    let mut calls: Vec<String> = Vec::new();
    if !acts {
        // A replica asks its primary (whichever copy the domain's key reaches) for snapshots.
        calls.push(DomainCopy::primary(copy.domain).routing_key());
    }
    if replicated {
        // A copy that starts as the primary asks the other copies their epochs.
        let others = DomainCopy::all().into_iter().filter(|c| c.domain == copy.domain && *c != copy);
        calls.extend(others.filter(|c| c.region.is_some()).map(|c| c.routing_key()));
    }
    let edits = acts && copy.may_forward_edits();
    if edits {
        // A primary that forwards edits has payment's cards service keep a
        // new card on file for each order waiting on the old one.
        calls.push(DomainCopy::primary("cards").routing_key());
    }
    if !calls.is_empty() {
        write.push(DOMAINS_EXCHANGE);
    }
    let calls: Vec<&str> = calls.iter().map(String::as_str).collect();
    topics.push(topic(DOMAINS_EXCHANGE, exact(&calls), exact(&[])));
    if acts && (replicated || edits) {
        write.push(DOMAIN_CHANGES_EXCHANGE);
        topics.push(topic(DOMAIN_CHANGES_EXCHANGE, exact(&[copy.domain]), exact(&[])));
    }
    // Its edits, as change requests (with their records) to the orders that copied the old data.
    if edits {
        write.extend([CHANGES_EXCHANGE, AUDIT_EXCHANGE]);
        // Several records at once go as one audit batch.
        let keys =
            ["change_requested", "batch"].map(|kind| crate::audit_routing_key(copy.process_name(), kind));
        topics.push(topic(AUDIT_EXCHANGE, exact(&keys.each_ref().map(String::as_str)), exact(&[])));
    } else {
        topics.push(topic(AUDIT_EXCHANGE, exact(&[]), exact(&[])));
    }
    let read: Vec<&str> = read.iter().map(String::as_str).collect();
    Grant { configure: exact(&[]), write: exact(&write), read: exact(&read), topic: topics }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_grants_name_only_their_own_queue() {
        let g = grant(Role::Node(Node::Payment));
        assert_eq!(g.configure, "^$", "a node may not declare, and so not delete, any queue");
        assert_eq!(
            g.read,
            "^(orderflow\\.payment|orderflow\\.changes\\.payment|orderflow\\.service\\.payment|orderflow\\.domain\\.cards|orderflow\\.settlement)$",
            "its own queues, the cards service it answers and the captures it settles"
        );
        // Payment settles captures, and sends those of the ship-then-bill
        // orders it completes; shipping those of the standard orders, and
        // purchasing those of the drop-shipped ones.
        assert!(g.write.contains("orderflow\\.settlement"), "payment completes ship-then-bill orders");
        let shipping = grant(Role::Node(Node::Shipping));
        assert!(shipping.write.contains("orderflow\\.settlement"), "shipping sends the captures");
        let purchasing = grant(Role::Node(Node::Purchasing));
        assert!(
            purchasing.write.contains("orderflow\\.settlement"),
            "purchasing completes drop-shipped orders"
        );
        let on_orders =
            |g: &Grant| g.topic.iter().find(|t| t.exchange == PURCHASE_ORDERS_EXCHANGE).cloned().unwrap();
        assert_eq!(
            on_orders(&purchasing).write,
            PURCHASE_ORDER_KEYS,
            "purchasing orders from the distributors"
        );
        assert_eq!(on_orders(&shipping).write, "^$");
        let on_settlement =
            |g: &Grant| g.topic.iter().find(|t| t.exchange == SETTLEMENT_EXCHANGE).cloned().unwrap();
        assert_eq!(on_settlement(&shipping).write, "^(capture)$");
        assert_eq!(on_settlement(&grant(Role::Coordinator)).write, "^(capture)$");
        for role in [Role::Node(Node::Inventory), Role::Publisher, Role::Support, Role::Tracker] {
            assert!(!grant(role).write.contains("settlement"), "{role:?} sends no capture");
        }
        assert_eq!(settling_node(), Node::Payment);
        let on =
            |g: &Grant, exchange: &str| g.topic.iter().find(|t| t.exchange == exchange).cloned().unwrap();
        assert_eq!(
            on(&g, WORKFLOW_EXCHANGE).write,
            "^(order\\.inventory|order\\.purchasing|retry\\.payment)$"
        );
        assert_eq!(on(&g, WORKFLOW_EXCHANGE).read, "^(order\\.payment|retry\\.payment)$");
        let exceptions = grant(Role::Node(Node::Exceptions));
        assert_eq!(on(&exceptions, WORKFLOW_EXCHANGE).write, "^(retry\\.exceptions)$");
    }

    #[test]
    fn domain_copies_get_only_what_their_part_needs() {
        let primary = grant(Role::Domain(DomainCopy::primary("customer")));
        assert_eq!(primary.read, "^(orderflow\\.domain\\.customer|orderflow\\.edits\\.customer)$");
        assert!(primary.write.contains("orderflow\\.domain-changes"), "the primary sends the stream");
        // It sends its edits as change requests, recorded under its own name only.
        assert!(primary.write.contains("orderflow\\.changes") && primary.write.contains("orderflow\\.audit"));
        let audit = primary.topic.iter().find(|t| t.exchange == AUDIT_EXCHANGE).unwrap();
        assert_eq!(audit.write, "^(audit\\.customer\\.change_requested|audit\\.customer\\.batch)$");
        // Its feed hears its own changes and the intake events that can say what an order copied.
        let queues = crate::domain_queues(DomainCopy::primary("customer"));
        let feed = queues.iter().find(|q| q.name == "orderflow.edits.customer").expect("the edits feed");
        let bindings: Vec<(&str, &str)> = feed.bindings.iter().map(|(e, k)| (*e, k.as_str())).collect();
        assert_eq!(
            bindings,
            [
                ("orderflow.domain-changes", "customer"),
                (AUDIT_EXCHANGE, "audit.intake.accepted"),
                (AUDIT_EXCHANGE, "audit.intake.batch")
            ]
        );
        for copy in DomainCopy::all().into_iter().filter(|copy| *copy != DomainCopy::primary("customer")) {
            let g = grant(Role::Domain(copy));
            assert!(!g.write.contains("orderflow\\.changes"), "{copy:?} changes no order: {}", g.write);
        }
        let uk = grant(Role::Domain(DomainCopy::find("customer", Some("uk")).unwrap()));
        assert_eq!(uk.read, "^(orderflow\\.domain\\.customer\\.uk|orderflow\\.replica\\.customer\\.uk)$");
        assert!(!uk.write.contains("domain-changes"), "a replica never writes the stream: {}", uk.write);
        let catalog = grant(Role::Domain(DomainCopy::primary("catalog")));
        assert!(
            catalog.write.contains("domain-changes"),
            "its replicas follow its stream: {}",
            catalog.write
        );
        let catalog_de = grant(Role::Domain(DomainCopy::find("catalog", Some("de")).unwrap()));
        assert_eq!(
            catalog_de.read,
            "^(orderflow\\.domain\\.catalog\\.de|orderflow\\.replica\\.catalog\\.de)$"
        );
        let distributor = grant(Role::Domain(DomainCopy::primary("distributor")));
        assert!(
            !distributor.write.contains("domain-changes"),
            "no replicas, no stream: {}",
            distributor.write
        );
        let inventory = grant(Role::Node(Node::Inventory));
        assert!(
            inventory.read.contains("orderflow\\.domain\\.stock")
                && inventory.read.contains("received-items")
        );
        assert!(!grant(Role::Node(Node::Payment)).read.contains("received-items"));
        assert!(inventory.write.contains("purchase-orders"), "inventory sends the purchase orders");
        assert!(!grant(Role::Node(Node::Payment)).write.contains("purchase-orders"));
        let sim = grant(Role::DistributorSim);
        assert_eq!(sim.read, "^(orderflow\\.distributor-shipments)$");
        assert_eq!(sim.write, "^(orderflow\\.receiving|orderflow\\.dead-letter)$");
        for role in [Role::Tracker, Role::Coordinator] {
            assert!(!grant(role).write.contains("orderflow\\.domains"), "{role:?} calls no domain");
        }
    }

    #[test]
    fn every_role_has_a_distinct_user() {
        let users: std::collections::HashSet<String> =
            Role::all().iter().map(|r| r.user("of-", "shop")).collect();
        assert_eq!(users.len(), Role::all().len());
    }

    #[test]
    fn stacks_never_share_a_user_and_a_user_names_its_role() {
        assert_eq!(Role::Node(Node::Payment).user("orderflow-", "/"), "orderflow-payment");
        assert_eq!(Role::Node(Node::Payment).user("orderflow-", "shop"), "orderflow-shop.payment");
        let mut seen = std::collections::HashSet::new();
        for vhost in ["/", "shop", "shop.eu", "a/b"] {
            for role in Role::all() {
                let user = role.user("orderflow-", vhost);
                assert!(seen.insert(user.clone()), "{user} named twice");
                assert_eq!(Role::of_user(&user, "orderflow-", vhost), Some(role));
            }
        }
        assert_eq!(Role::of_user("orderflow-shop.payment", "orderflow-", "/"), None);
        assert_eq!(Role::of_user("guest", "orderflow-", "shop"), None);
    }
}
