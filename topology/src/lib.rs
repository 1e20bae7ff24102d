//! The one place that names and declares orderflow's RabbitMQ topology:
//! exchanges, queues, bindings, queue arguments and the definitions export.
//!
//! Nothing else in the workspace declares an exchange or a queue; workers call
//! [`ensure_for`] to check their own queues exist, the setup scripts call [`declare_all`].
//! The words it declares them for (nodes, states, routes, domains,
//! processes) are the `vocabulary` crate's, re-exported here.

pub mod definitions;
pub mod management;
pub mod permissions;
pub mod promotion;

use vocabulary::domains::{Feed, Taken};
pub use vocabulary::{domains, processes, reads, workflow, Process, Reads, ServiceKind};

pub use domains::{
    DomainCopy, DISTRIBUTOR_SHIPMENTS_QUEUE, DISTRIBUTOR_SIM, DOMAINS_EXCHANGE, DOMAIN_CHANGES_EXCHANGE,
    PURCHASE_ORDERS_EXCHANGE, RECEIVED_ITEMS_QUEUE, RECEIVING_EXCHANGE, SETTLEMENT_EXCHANGE,
    SETTLEMENT_QUEUE,
};
pub use workflow::{Node, OrderState, WORKFLOW};

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
    Channel, ExchangeKind,
};

/// Topic exchange carrying workflow elements between nodes, by routing key.
pub const WORKFLOW_EXCHANGE: &str = "orderflow.workflow";
/// Topic exchange carrying every node's state-change events (routing key `audit.<node>.<state>`).
pub const AUDIT_EXCHANGE: &str = "orderflow.audit";
/// Fanout exchange carrying in-flight change requests to every node that can apply them.
pub const CHANGES_EXCHANGE: &str = "orderflow.changes";
/// Topic exchange receiving what could not be processed, with its reason in the headers.
pub const DEAD_LETTER_EXCHANGE: &str = "orderflow.dead-letter";
/// The queue holding dead-lettered messages for inspection and replay.
pub const DEAD_LETTER_QUEUE: &str = "orderflow.dead-letter";
/// The tracker's queue of audit events.
pub const TRACKER_QUEUE: &str = "orderflow.audit.tracker";
/// Topic exchange of service requests: `service.<node>` reaches the node's
/// service queue. A request for a service nobody offers goes to
/// [`UNROUTED_SERVICES_EXCHANGE`], its alternate exchange.
pub const SERVICES_EXCHANGE: &str = "orderflow.services";
/// The services exchange's alternate exchange (fanout): requests no service
/// queue took, answered by the coordinator with "no such service".
pub const UNROUTED_SERVICES_EXCHANGE: &str = "orderflow.services.unrouted";
/// The queue of requests for unknown services.
pub const UNKNOWN_SERVICE_QUEUE: &str = "orderflow.service.unknown";
/// Topic exchange of service results sent to no caller's queue:
/// `callback.<key>` for a caller who named a callback key, `poll.<service>`
/// for results kept for polling (by the tracker).
pub const RESULTS_EXCHANGE: &str = "orderflow.results";
/// The tracker's queue of results kept for polling.
pub const POLL_RESULTS_QUEUE: &str = "orderflow.results.tracker";
/// The coordinator's queue of orders placed in directed mode (routing key
/// [`COORDINATOR_ROUTING_KEY`] on the workflow exchange).
pub const COORDINATOR_QUEUE: &str = "orderflow.coordinator";
pub const COORDINATOR_ROUTING_KEY: &str = "order.coordinator";
/// The coordinator's queue of service replies (named in its calls' `reply_to`).
pub const COORDINATOR_REPLIES_QUEUE: &str = "orderflow.coordinator.replies";
/// The coordinator's subscription to the changes fanout.
pub const COORDINATOR_CHANGES_QUEUE: &str = "orderflow.changes.coordinator";
/// After this many deliveries a message is dead-lettered by the broker itself:
/// the last guard against a message that crashes its consumer every time.
pub const DELIVERY_LIMIT: i64 = 10;

/// The dead-letter queue's explicit delivery limit. Listing and replaying
/// read with basic.get and return what they keep, and each return counts as
/// a delivery; RabbitMQ 4.0 gives quorum queues a default limit of 20 and
/// drops a message past it when there is no dead-letter exchange (the DLQ
/// has none, so nothing loops). RabbitMQ 3.10 accepts any non-negative
/// integer here (it has no default limit); a billion listings is "never".
/// Queue arguments are immutable: a DLQ declared before this was set fails
/// redeclaration with PRECONDITION_FAILED (see README, "Dead letters").
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// The routing key (on [`RESULTS_EXCHANGE`]) of a result for callback key `key`.
pub fn callback_routing_key(key: &str) -> String {
    format!("callback.{key}")
}

/// The routing key (on [`RESULTS_EXCHANGE`]) of a result kept for polling.
pub fn poll_routing_key(service: &str) -> String {
    format!("poll.{service}")
}

/// Routing key of an audit event: `audit.<node>.<state>`.
pub fn audit_routing_key(node: &str, state: &str) -> String {
    format!("audit.{node}.{state}")
}

/// An exchange of the topology.
pub struct ExchangeSpec {
    pub name: &'static str,
    pub kind: ExchangeKind,
    /// Where messages no binding takes go (`alternate-exchange`).
    pub alternate: Option<&'static str>,
}

/// A queue of the topology with its bindings (exchange, binding key).
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<(&'static str, String)>,
}

pub fn exchanges() -> Vec<ExchangeSpec> {
    vec![
        ExchangeSpec { name: WORKFLOW_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        ExchangeSpec { name: AUDIT_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        ExchangeSpec { name: CHANGES_EXCHANGE, kind: ExchangeKind::Fanout, alternate: None },
        ExchangeSpec { name: DEAD_LETTER_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        // Declared before the exchange that names it as its alternate.
        ExchangeSpec { name: UNROUTED_SERVICES_EXCHANGE, kind: ExchangeKind::Fanout, alternate: None },
        ExchangeSpec {
            name: SERVICES_EXCHANGE,
            kind: ExchangeKind::Topic,
            alternate: Some(UNROUTED_SERVICES_EXCHANGE),
        },
        ExchangeSpec { name: RESULTS_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        ExchangeSpec { name: DOMAINS_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        ExchangeSpec { name: DOMAIN_CHANGES_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        ExchangeSpec { name: RECEIVING_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        ExchangeSpec { name: PURCHASE_ORDERS_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
        ExchangeSpec { name: SETTLEMENT_EXCHANGE, kind: ExchangeKind::Topic, alternate: None },
    ]
}

/// Every queue of the topology.
pub fn queues() -> Vec<QueueSpec> {
    let mut queues: Vec<QueueSpec> = Node::all().into_iter().map(node_queue).collect();
    queues.extend(Node::all().into_iter().map(changes_queue));
    queues.extend(Node::all().into_iter().map(retry_queue));
    queues.extend(Node::all().into_iter().map(service_queue));
    queues.push(tracker_queue());
    queues.push(dead_letter_queue());
    queues.push(poll_results_queue());
    queues.extend(coordinator_queues());
    queues.extend(DomainCopy::all().into_iter().flat_map(domain_queues));
    queues.push(distributor_shipments_queue());
    queues
}

/// The distributors' queue of purchase orders, every distributor's key.
pub fn distributor_shipments_queue() -> QueueSpec {
    QueueSpec {
        name: DISTRIBUTOR_SHIPMENTS_QUEUE.to_string(),
        bindings: vec![(PURCHASE_ORDERS_EXCHANGE, "po.*".to_string())],
    }
}

/// Every long-running process of a stack, in start order: the tracker and
/// the coordinator, the nodes, the domains' copies, the simulated
/// distributors (`topology processes`; [`vocabulary::processes`]).
pub fn all_processes() -> Vec<String> {
    vocabulary::processes::names().into_iter().map(String::from).collect()
}

/// The queues `process` consumes, its main one (the one a health check
/// watches for a consumer) first.
pub fn consumed_queues(process: Process) -> Vec<String> {
    use vocabulary::ServiceKind;
    let names = |specs: Vec<QueueSpec>| specs.into_iter().map(|q| q.name).collect();
    match process {
        Process::Node(def) => vec![def.node.queue(), def.node.changes_queue(), def.node.service_queue()],
        Process::Service(_, Some(copy)) => names(domain_queues(copy)),
        Process::Service(def, None) => match def.kind {
            ServiceKind::Tracker => vec![TRACKER_QUEUE.to_string(), POLL_RESULTS_QUEUE.to_string()],
            ServiceKind::Coordinator => names(coordinator_queues()),
            ServiceKind::DistributorSim => vec![DISTRIBUTOR_SHIPMENTS_QUEUE.to_string()],
            ServiceKind::Domain => names(domain_queues(DomainCopy::primary(def.binary))),
        },
    }
}

/// A domain copy's queues: its requests, and a replica's change feed (bound
/// to its primary's stream).
pub fn domain_queues(copy: DomainCopy) -> Vec<QueueSpec> {
    let mut queues =
        vec![QueueSpec { name: copy.queue(), bindings: vec![(DOMAINS_EXCHANGE, copy.routing_key())] }];
    if let Some(feed) = copy.feed_queue() {
        let bindings = match (copy.region, copy.def().receives) {
            (Some(_), _) => vec![(DOMAIN_CHANGES_EXCHANGE, copy.domain.to_string())],
            // Its own changes, and the events of the node that copies its
            // data that can say what an order copied: its `accepted` events,
            // alone or in the batches that carry its events together.
            (None, Some(fed @ Feed { taken: Taken::EditsOfCopies { copied_at }, .. })) => vec![
                (fed.exchange, fed.routing_key.to_string()),
                (AUDIT_EXCHANGE, audit_routing_key(copied_at.name(), OrderState::Accepted.as_str())),
                (AUDIT_EXCHANGE, audit_routing_key(copied_at.name(), "batch")),
            ],
            (None, Some(fed)) => vec![(fed.exchange, fed.routing_key.to_string())],
            (None, None) => unreachable!("a primary's feed is its domain's `receives`"),
        };
        queues.push(QueueSpec { name: feed, bindings });
    }
    queues
}

/// Whether one consumer at a time takes the queue (RabbitMQ's single active
/// consumer; the others wait as standbys): a domain primary's requests (its
/// writes are numbered in the order they are made) and a replica's feed (its
/// changes are applied in order).
fn single_active(queue: &str) -> bool {
    DomainCopy::all().into_iter().any(|copy| {
        (copy.region.is_none() && copy.own_process() && copy.queue() == queue)
            || copy.feed_queue().as_deref() == Some(queue)
    })
}

/// The node's service queue (see [`Node::service_queue`]).
pub fn service_queue(node: Node) -> QueueSpec {
    QueueSpec { name: node.service_queue(), bindings: vec![(SERVICES_EXCHANGE, node.service_routing_key())] }
}

/// The tracker's queue of results kept for polling.
pub fn poll_results_queue() -> QueueSpec {
    QueueSpec {
        name: POLL_RESULTS_QUEUE.to_string(),
        bindings: vec![(RESULTS_EXCHANGE, "poll.#".to_string())],
    }
}

/// The coordinator's queues: directed orders, service replies (reached
/// through the default exchange, by name), changes, unknown-service requests.
pub fn coordinator_queues() -> Vec<QueueSpec> {
    vec![
        QueueSpec {
            name: COORDINATOR_QUEUE.to_string(),
            bindings: vec![(WORKFLOW_EXCHANGE, COORDINATOR_ROUTING_KEY.to_string())],
        },
        QueueSpec { name: COORDINATOR_REPLIES_QUEUE.to_string(), bindings: vec![] },
        QueueSpec {
            name: COORDINATOR_CHANGES_QUEUE.to_string(),
            bindings: vec![(CHANGES_EXCHANGE, String::new())],
        },
        QueueSpec {
            name: UNKNOWN_SERVICE_QUEUE.to_string(),
            bindings: vec![(UNROUTED_SERVICES_EXCHANGE, String::new())],
        },
    ]
}

pub fn node_queue(node: Node) -> QueueSpec {
    QueueSpec { name: node.queue(), bindings: vec![(WORKFLOW_EXCHANGE, node.routing_key())] }
}

/// The node's subscription to the changes fanout.
pub fn changes_queue(node: Node) -> QueueSpec {
    QueueSpec { name: node.changes_queue(), bindings: vec![(CHANGES_EXCHANGE, String::new())] }
}

/// The node's retry queue (see [`Node::retry_queue`]).
pub fn retry_queue(node: Node) -> QueueSpec {
    QueueSpec { name: node.retry_queue(), bindings: vec![(WORKFLOW_EXCHANGE, node.retry_routing_key())] }
}

pub fn tracker_queue() -> QueueSpec {
    QueueSpec { name: TRACKER_QUEUE.to_string(), bindings: vec![(AUDIT_EXCHANGE, "#".to_string())] }
}

pub fn dead_letter_queue() -> QueueSpec {
    QueueSpec { name: DEAD_LETTER_QUEUE.to_string(), bindings: vec![(DEAD_LETTER_EXCHANGE, "#".to_string())] }
}

/// Arguments of every queue: durable quorum queues that dead-letter to
/// [`DEAD_LETTER_EXCHANGE`] after [`DELIVERY_LIMIT`] deliveries. The
/// dead-letter queue itself has no dead-letter exchange, so nothing loops, and
/// an explicit, huge delivery limit ([`DEAD_LETTER_DELIVERY_LIMIT`]) so that
/// reading it never drops anything.
///
/// A retry queue is a durable *classic* queue, named so explicitly (a
/// broker whose default queue type is quorum must not make it one): what it
/// relies on is per-message TTL (the `expiration` property) with
/// dead-lettering on expiry, which classic queues support on RabbitMQ 3.10
/// and 4.x alike (checked on this machine's 3.10.8, where a quorum queue did
/// it too; quorum message TTL is recent, and classic queues keep the retry
/// queues out of the quorum delivery-limit policy). Expiry happens at the head of the queue,
/// so a short delay behind a longer one waits for it: delays are minimums.
/// Classic dead-lettering is at-most-once; the broker has the message durably
/// (persistent, confirmed) before the node acknowledges the original.
pub fn queue_arguments(queue: &str) -> Vec<(&'static str, serde_json::Value)> {
    queue_arguments_sized(queue, None)
}

/// [`queue_arguments`], with quorum queues of `quorum_size` members
/// (`x-quorum-initial-group-size`) on a cluster: three replicas survive the
/// loss of one node. Without it a quorum queue gets RabbitMQ's default (every
/// node, up to its limit). Queue arguments are immutable: choose it before
/// the first `topology apply` (`--quorum-size`, `ORDERFLOW_QUORUM_SIZE`).
pub fn queue_arguments_sized(
    queue: &str,
    quorum_size: Option<u32>,
) -> Vec<(&'static str, serde_json::Value)> {
    if let Some(node) = Node::all().into_iter().find(|n| n.retry_queue() == queue) {
        return vec![
            ("x-queue-type", serde_json::json!("classic")),
            ("x-dead-letter-exchange", serde_json::json!(WORKFLOW_EXCHANGE)),
            ("x-dead-letter-routing-key", serde_json::json!(node.routing_key())),
        ];
    }
    let mut args = vec![("x-queue-type", serde_json::json!("quorum"))];
    if let Some(size) = quorum_size {
        args.push(("x-quorum-initial-group-size", serde_json::json!(size)));
    }
    if single_active(queue) {
        args.push(("x-single-active-consumer", serde_json::json!(true)));
    }
    if queue == DEAD_LETTER_QUEUE {
        args.push(("x-delivery-limit", serde_json::json!(DEAD_LETTER_DELIVERY_LIMIT)));
    } else {
        args.push(("x-dead-letter-exchange", serde_json::json!(DEAD_LETTER_EXCHANGE)));
        args.push(("x-delivery-limit", serde_json::json!(DELIVERY_LIMIT)));
    }
    args
}

fn field_table(queue: &str, quorum_size: Option<u32>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in queue_arguments_sized(queue, quorum_size) {
        let value = match value {
            serde_json::Value::String(s) => AMQPValue::LongString(s.into()),
            serde_json::Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
            serde_json::Value::Bool(b) => AMQPValue::Boolean(b),
            other => AMQPValue::LongString(other.to_string().into()),
        };
        table.insert(ShortString::from(key), value);
    }
    table
}

async fn declare_exchange(channel: &Channel, spec: &ExchangeSpec) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let mut arguments = FieldTable::default();
    if let Some(alternate) = spec.alternate {
        arguments.insert("alternate-exchange".into(), AMQPValue::LongString(alternate.into()));
    }
    channel.exchange_declare(spec.name.into(), spec.kind.clone(), options, arguments).await
}

async fn declare_queue(channel: &Channel, spec: &QueueSpec, quorum_size: Option<u32>) -> lapin::Result<()> {
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(spec.name.as_str().into(), options, field_table(&spec.name, quorum_size)).await?;
    for (exchange, key) in &spec.bindings {
        channel
            .queue_bind(
                spec.name.as_str().into(),
                (*exchange).into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares every exchange (idempotent: a redeclare with the same arguments is a no-op).
pub async fn declare_exchanges(channel: &Channel) -> lapin::Result<()> {
    for spec in exchanges() {
        declare_exchange(channel, &spec).await?;
    }
    Ok(())
}

/// Declares the whole topology: what `scripts/up.sh` applies.
pub async fn declare_all(channel: &Channel) -> lapin::Result<()> {
    declare_all_sized(channel, None).await
}

/// [`declare_all`] with quorum queues of `quorum_size` members (see [`queue_arguments_sized`]).
pub async fn declare_all_sized(channel: &Channel, quorum_size: Option<u32>) -> lapin::Result<()> {
    declare_exchanges(channel).await?;
    for spec in queues() {
        declare_queue(channel, &spec, quorum_size).await?;
    }
    Ok(())
}

/// What a process with restricted rights needs before it consumes: the
/// exchanges and its own queues must exist. Both are checked passively:
/// setup (`topology apply`, [`declare_all`]) creates them, and a node's user
/// has no configure right, so it can neither declare nor delete a queue.
pub async fn ensure_for(channel: &Channel, own_queues: &[QueueSpec]) -> lapin::Result<()> {
    for spec in exchanges() {
        let options = ExchangeDeclareOptions { passive: true, durable: true, ..Default::default() };
        channel.exchange_declare(spec.name.into(), spec.kind.clone(), options, FieldTable::default()).await?;
    }
    for queue in own_queues {
        let options = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        channel.queue_declare(queue.name.as_str().into(), options, FieldTable::default()).await?;
    }
    Ok(())
}
