//! The workflow definition: one table of the states an order can be in, the
//! nodes with the states each produces, the routes (which node an element in
//! a state goes to) and the change cut-offs. Everything else about the
//! workflow's shape is derived from it: where an element goes next, which
//! states a node accepts, which routing keys a node's broker user may publish,
//! which change a state closes, and the node processes a stack runs.
//!
//! Nodes and states are named values (not enums) so that a test can build a
//! definition with a node of its own and watch the derivations follow.

use crate::reads::Reads;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A processing node of the workflow; each runs as its own binary, named
/// like the node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node(&'static str);

#[allow(non_upper_case_globals)]
impl Node {
    pub const Intake: Node = Node("intake");
    /// Screens accepted orders before they are charged (standard v2 on).
    pub const FraudCheck: Node = Node("fraud-check");
    pub const Payment: Node = Node("payment");
    pub const Inventory: Node = Node("inventory");
    pub const Picklist: Node = Node("picklist");
    pub const Rebin: Node = Node("rebin");
    pub const Shipping: Node = Node("shipping");
    /// Sends a drop-shipped order's purchase orders to the distributors, who
    /// ship it straight to the customer (the `drop-ship` workflow).
    pub const Purchasing: Node = Node("purchasing");
    pub const Exceptions: Node = Node("exceptions");

    /// A node of that name (lowercase, no dots): a row of a definition names it.
    pub const fn named(name: &'static str) -> Node {
        Node(name)
    }

    /// The node's name: its binary, its queue suffix, its routing-key word.
    pub const fn name(self) -> &'static str {
        self.0
    }

    /// The node of [`WORKFLOW`] with this name.
    pub fn from_name(name: &str) -> Option<Node> {
        WORKFLOW.nodes().find(|node| node.name() == name)
    }

    /// Every node of [`WORKFLOW`], in the order an order usually meets them.
    pub fn all() -> Vec<Node> {
        WORKFLOW.nodes().collect()
    }

    /// The queue the node consumes its workflow elements from.
    pub fn queue(self) -> String {
        format!("orderflow.{}", self.0)
    }

    /// The queue on which the node hears every in-flight change (fanout).
    pub fn changes_queue(self) -> String {
        format!("orderflow.changes.{}", self.0)
    }

    /// The routing key that delivers a workflow element to this node.
    pub fn routing_key(self) -> String {
        format!("order.{}", self.0)
    }

    /// A node's retry queue, and the routing key (on `orderflow.workflow`) that
    /// reaches it: a transiently failed element waits there out of its node's
    /// consumer until its per-message TTL (`expiration`) runs out, then the queue
    /// dead-letters it back to the node's queue (`order.<node>`). Nobody consumes it.
    pub fn retry_queue(self) -> String {
        format!("orderflow.retry.{}", self.name())
    }

    pub fn retry_routing_key(self) -> String {
        format!("retry.{}", self.name())
    }

    /// The queue on which the node answers service calls.
    pub fn service_queue(self) -> String {
        format!("orderflow.service.{}", self.name())
    }

    /// The routing key (on `orderflow.services`) that calls the node's service.
    pub fn service_routing_key(self) -> String {
        format!("service.{}", self.name())
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A state an order can be in, as recorded in its history (`snake_case` on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderState(&'static str);

#[allow(non_upper_case_globals)]
impl OrderState {
    pub const Placed: OrderState = OrderState("placed");
    pub const Accepted: OrderState = OrderState("accepted");
    /// The fraud check passed the order (standard v2): on its way to payment.
    pub const Screened: OrderState = OrderState("screened");
    pub const Rejected: OrderState = OrderState("rejected");
    pub const Charged: OrderState = OrderState("charged");
    pub const PaymentDeclined: OrderState = OrderState("payment_declined");
    /// The card was declined: the order waits at payment for another card
    /// (a `card` change) until its wait runs out (then `payment_declined`).
    pub const AwaitingPayment: OrderState = OrderState("awaiting_payment");
    pub const Reserved: OrderState = OrderState("reserved");
    /// Inventory could not reserve every item; the order is on its way to exceptions.
    pub const StockShort: OrderState = OrderState("stock_short");
    /// Stock was short but a distributor supplies it: the order waits at
    /// inventory for the received items (or its wait limit).
    pub const Backordered: OrderState = OrderState("backordered");
    /// The charge was captured (the order shipped and was settled) and is paid back.
    pub const Refunded: OrderState = OrderState("refunded");
    /// The amount payment authorized (held) was released before any capture.
    pub const Voided: OrderState = OrderState("voided");
    pub const OutOfStock: OrderState = OrderState("out_of_stock");
    pub const Picked: OrderState = OrderState("picked");
    pub const Rebinned: OrderState = OrderState("rebinned");
    pub const Shipped: OrderState = OrderState("shipped");
    /// A cancel was applied; the order is on its way through its compensations.
    pub const Cancelling: OrderState = OrderState("cancelling");
    /// Inventory put a cancelled order's reserved units back.
    pub const StockReleased: OrderState = OrderState("stock_released");
    pub const Cancelled: OrderState = OrderState("cancelled");

    /// A state of that name: a row of a definition names it.
    pub const fn named(name: &'static str) -> OrderState {
        OrderState(name)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// The state of [`WORKFLOW`] with this name.
    pub fn parse(name: &str) -> Option<OrderState> {
        WORKFLOW.states.iter().map(|def| def.state).find(|state| state.0 == name)
    }

    /// Every state of [`WORKFLOW`].
    pub fn all() -> Vec<OrderState> {
        WORKFLOW.states.iter().map(|def| def.state).collect()
    }
}

impl std::fmt::Debug for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for OrderState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for OrderState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OrderState, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        OrderState::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = WORKFLOW.states.iter().map(|def| def.state.0).collect();
            serde::de::Error::unknown_variant(&name, leak_names(known))
        })
    }
}

/// The state names as the `'static` slice serde's error wants (built once).
fn leak_names(names: Vec<&'static str>) -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| names).as_slice()
}

/// What a state means for the order's travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// On the way to shipping: routed to the next node of the happy path.
    Forward,
    /// On a failure or cancel path: routed to the node that compensates.
    Compensation,
    /// Recorded inside one node's outcome; an element never leaves a node in it.
    Record,
    /// The element waits inside the node that produced it (no route), which
    /// sends it on later in another of its states.
    Waiting,
    /// Ends the workflow: no route.
    Terminal,
}

#[derive(Clone, Copy, Debug)]
pub struct StateDef {
    pub state: OrderState,
    pub kind: StateKind,
}

/// A state a node may leave an element in, with what is known then of the
/// element's reservation (so that grants follow only the routes it can take).
#[derive(Clone, Copy, Debug)]
pub struct Emit {
    pub state: OrderState,
    pub holds_reservation: Option<bool>,
}

impl Emit {
    pub const fn of(state: OrderState) -> Emit {
        Emit { state, holds_reservation: None }
    }
    pub const fn holding_reservation(self) -> Emit {
        Emit { holds_reservation: Some(true), ..self }
    }
    pub const fn without_reservation(self) -> Emit {
        Emit { holds_reservation: Some(false), ..self }
    }
}

/// A workflow node: its name, every state it produces (audit events and
/// the states elements leave it in), and what its process is: its help
/// text, the settings it reads besides a node's, whether it needs the card.
#[derive(Clone, Copy, Debug)]
pub struct NodeDef {
    pub node: Node,
    pub produces: &'static [Emit],
    /// Its binary's `--help`'s first paragraph.
    pub about: &'static str,
    /// Settings it reads besides every node's ([`Reads::Node`]).
    pub reads: &'static [Reads],
    /// An element arriving here must still carry the full card number (it
    /// is charged here or later): a dead letter whose card was masked cannot
    /// be replayed to it.
    pub needs_card: bool,
    /// The waiting states in which the coordinator may bring a directed
    /// order back to it with a call (payment: `awaiting_payment`, with a new
    /// card or when its wait ran out); its service must handle them.
    pub resumes: &'static [OrderState],
    /// It sends purchase orders to the distributors itself (drop-ship
    /// orders), besides the stock domain's node: its broker user may
    /// publish them, and the distributors take them from it.
    pub orders_from_distributors: bool,
}

impl NodeDef {
    /// A node that produces `produces`, reads a node's settings and never sees the card.
    pub const fn new(node: Node, about: &'static str, produces: &'static [Emit]) -> NodeDef {
        NodeDef {
            node,
            produces,
            about,
            reads: &[],
            needs_card: false,
            resumes: &[],
            orders_from_distributors: false,
        }
    }

    /// The same node reading more settings.
    pub const fn reading(self, reads: &'static [Reads]) -> NodeDef {
        NodeDef { reads, ..self }
    }

    /// The same node, taking calls for orders it keeps waiting in `states`.
    pub const fn resuming(self, states: &'static [OrderState]) -> NodeDef {
        NodeDef { resumes: states, ..self }
    }

    /// The same node, sending purchase orders to the distributors.
    pub const fn ordering_from_distributors(self) -> NodeDef {
        NodeDef { orders_from_distributors: true, ..self }
    }

    /// The same node, needing the card number.
    pub const fn needing_card(self) -> NodeDef {
        NodeDef { needs_card: true, ..self }
    }
}

/// A condition on the element that a route may require.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    Always,
    /// More than one unit in the order.
    MultiUnit,
    /// The element carries a stock reservation.
    HoldsReservation,
}

/// What a route's guard is evaluated on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts {
    pub units: i64,
    pub holds_reservation: bool,
}

impl Guard {
    fn holds(self, facts: &Facts) -> bool {
        match self {
            Guard::Always => true,
            Guard::MultiUnit => facts.units > 1,
            Guard::HoldsReservation => facts.holds_reservation,
        }
    }

    /// The guard under partial knowledge: `None` when it could go either way.
    fn holds_for(self, emit: &Emit) -> Option<bool> {
        match self {
            Guard::Always => Some(true),
            Guard::MultiUnit => None,
            Guard::HoldsReservation => emit.holds_reservation,
        }
    }
}

/// An element in `state` goes to `to` when `when` holds; the first matching
/// route of a state wins.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub state: OrderState,
    pub when: Guard,
    pub to: Node,
}

/// The kinds of in-flight change a customer can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    ShipTo,
    ShippingMethod,
    Cancel,
    /// Another card for the order (a processor's token only).
    Card,
}

impl ChangeType {
    /// What the change is about, as a reason names it.
    pub fn noun(self) -> &'static str {
        match self {
            ChangeType::ShipTo => "ship-to address",
            ChangeType::ShippingMethod => "shipping method",
            ChangeType::Cancel => "order",
            ChangeType::Card => "card",
        }
    }
}

/// From `from` on (that state and every state the happy path reaches from
/// it), a change of kind `change` is rejected. Terminal states and the
/// compensation paths close every change without a cut-off.
#[derive(Clone, Copy, Debug)]
pub struct CutOff {
    pub change: ChangeType,
    pub from: OrderState,
}

/// A whole workflow definition. [`WORKFLOW`] is orderflow's.
#[derive(Clone, Copy, Debug)]
pub struct Workflow {
    /// What orders name it by (`"workflow": "standard"`).
    pub name: &'static str,
    /// Its version: an element keeps the version it started on to its end.
    pub version: u32,
    pub states: &'static [StateDef],
    pub nodes: &'static [NodeDef],
    pub routes: &'static [Route],
    pub cut_offs: &'static [CutOff],
    /// The state that completes an order of this definition, shipped and
    /// charged both: reaching it makes the charge due for capture (the end
    /// of its happy path; a unit test holds each definition to it).
    pub completes_at: OrderState,
}

const fn state(state: OrderState, kind: StateKind) -> StateDef {
    StateDef { state, kind }
}

const fn route(state: OrderState, when: Guard, to: Node) -> Route {
    Route { state, when, to }
}

use Guard::{Always, HoldsReservation, MultiUnit};
use StateKind::{Compensation, Forward, Record, Terminal, Waiting};

/// Every state an order can be in, whichever workflow it follows: the
/// definitions are route tables over the same states and nodes. A state's
/// kind is the definition's: `shipped` ends a `standard` order but sends a
/// `ship-then-bill` order on to be charged ([`with_kind`]).
pub const STATES: &[StateDef] = &STATE_TABLE;

const STATE_TABLE: [StateDef; 19] = [
    state(OrderState::Placed, Forward),
    state(OrderState::Accepted, Forward),
    state(OrderState::Screened, Forward),
    state(OrderState::Charged, Forward),
    state(OrderState::AwaitingPayment, Waiting),
    state(OrderState::Reserved, Forward),
    state(OrderState::Backordered, Waiting),
    state(OrderState::Picked, Forward),
    state(OrderState::Rebinned, Forward),
    state(OrderState::StockShort, Compensation),
    state(OrderState::Cancelling, Compensation),
    state(OrderState::StockReleased, Compensation),
    state(OrderState::Refunded, Record),
    state(OrderState::Voided, Record),
    state(OrderState::Rejected, Terminal),
    state(OrderState::PaymentDeclined, Terminal),
    state(OrderState::OutOfStock, Terminal),
    state(OrderState::Shipped, Terminal),
    state(OrderState::Cancelled, Terminal),
];

/// `states` with `state` of another `kind` (a definition's own kinds).
const fn with_kind<const N: usize>(
    mut states: [StateDef; N],
    state: OrderState,
    kind: StateKind,
) -> [StateDef; N] {
    let mut i = 0;
    while i < N {
        if same_name(states[i].state.0, state.0) {
            states[i].kind = kind;
        }
        i += 1;
    }
    states
}

const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Every workflow node, whichever workflow uses it. Adding a node: one row
/// here, its states in [`STATES`], the routes that lead to it in the
/// definitions that use it (see ARCHITECTURE.md, "Adding a node").
pub const NODES: &[NodeDef] = &[
    NodeDef::new(
        Node::Intake,
        "The intake node of orderflow: validates placed orders (items, quantities, SKUs, address, card) and accepts or rejects them; an order placed by reference (a customer id, perhaps an address id, SKUs) is first filled in from the customer and catalog domains.",
        &[
            Emit::of(OrderState::Accepted),
            Emit::of(OrderState::Rejected),
            Emit::of(OrderState::Cancelled),
        ],
    ).reading(&[Reads::Intake]).needing_card(),
    NodeDef::new(
        Node::FraudCheck,
        "The fraud-check node of orderflow (standard v2 on): screens each accepted order before it is charged; an order worth more than a new order may be without review is rejected with the reason, nothing charged or reserved.",
        &[Emit::of(OrderState::Screened), Emit::of(OrderState::Rejected), Emit::of(OrderState::Cancelled)],
    )
    .needing_card(),
    NodeDef::new(
        Node::Payment,
        "The payment node of orderflow: charges each accepted order's card once through the simulated card processor (an authorization: the amount is held, and captured in batches once the order shipped, from the orderflow.settlement aggregation queue); keeps an order whose card was declined waiting for another card (a card change) until its wait runs out; answers the cards service (a card for an order becomes the processor's token).",
        &[
            Emit::of(OrderState::Charged),
            // Waits here; released later as charged (a new card paid),
            // payment_declined (its wait ran out) or cancelled.
            Emit::of(OrderState::AwaitingPayment),
            Emit::of(OrderState::PaymentDeclined),
            Emit::of(OrderState::Cancelled),
        ],
    ).reading(&[Reads::Payment]).needing_card().resuming(&[OrderState::AwaitingPayment]),
    NodeDef::new(
        Node::Inventory,
        "The inventory node of orderflow: reserves each charged order's items from the stock it alone owns, or backorders them (purchase orders to the distributors) when a distributor supplies what is short; answers the stock domain's requests and takes the received items, one at a time in order of arrival, releasing the backorders they cover, oldest first.",
        &[
            Emit::of(OrderState::Reserved),
            Emit::of(OrderState::StockShort),
            // Waits here; released later as reserved, stock_short (its
            // wait ran out) or cancelling (cancelled while it waited).
            Emit::of(OrderState::Backordered),
            Emit::of(OrderState::StockReleased),
            // A cancel applied here comes before any reservation.
            Emit::of(OrderState::Cancelling).without_reservation(),
        ],
    ).reading(&[Reads::Inventory]),
    NodeDef::new(
        Node::Picklist,
        "The picklist node of orderflow: batches reserved shipments into picklists per shipping method.",
        &[Emit::of(OrderState::Picked), Emit::of(OrderState::Cancelling).holding_reservation()],
    ).reading(&[Reads::Picklist]),
    NodeDef::new(
        Node::Rebin,
        "The rebin node of orderflow: consolidates picked shipments of more than one unit.",
        &[
            Emit::of(OrderState::Rebinned),
            Emit::of(OrderState::Cancelling).holding_reservation(),
        ],
    ),
    NodeDef::new(
        Node::Shipping,
        "The shipping node of orderflow: ships each order once, with a tracking number.",
        &[
            Emit::of(OrderState::Shipped),
            Emit::of(OrderState::Cancelling).holding_reservation(),
        ],
    ),
    NodeDef::new(
        Node::Purchasing,
        "The purchasing node of orderflow (the drop-ship workflow): sends each charged order's purchase orders, with the customer's address, to the distributors that supply its items, who ship them straight to the customer; nothing is picked and no stock moves; an item no distributor supplies sends the order to exceptions (its authorization voided, out_of_stock).",
        &[
            Emit::of(OrderState::Shipped),
            Emit::of(OrderState::StockShort),
            // A cancel applied here comes before any purchase order.
            Emit::of(OrderState::Cancelling).without_reservation(),
        ],
    )
    .ordering_from_distributors(),
    NodeDef::new(
        Node::Exceptions,
        "The exceptions node of orderflow: compensates failed and cancelled orders (voids the authorization payment holds, or refunds a captured charge) and ends them.",
        &[
            Emit::of(OrderState::Voided),
            Emit::of(OrderState::Refunded),
            Emit::of(OrderState::OutOfStock),
            Emit::of(OrderState::Cancelled),
        ],
    ),

];

/// orderflow's workflow, `standard` version 1: an order is charged, then
/// picked; multi-unit shipments are consolidated at rebin.
pub const WORKFLOW: Workflow = Workflow {
    name: "standard",
    version: 1,
    states: STATES,
    nodes: NODES,
    routes: &[
        route(OrderState::Placed, Always, Node::Intake),
        route(OrderState::Accepted, Always, Node::Payment),
        route(OrderState::Charged, Always, Node::Inventory),
        route(OrderState::Reserved, Always, Node::Picklist),
        // Multi-unit shipments are consolidated at rebin; single units ship directly.
        route(OrderState::Picked, MultiUnit, Node::Rebin),
        route(OrderState::Picked, Always, Node::Shipping),
        route(OrderState::Rebinned, Always, Node::Shipping),
        route(OrderState::StockShort, Always, Node::Exceptions),
        // A cancelled order gives its stock back first, then its money.
        route(OrderState::Cancelling, HoldsReservation, Node::Inventory),
        route(OrderState::Cancelling, Always, Node::Exceptions),
        route(OrderState::StockReleased, Always, Node::Exceptions),
    ],
    cut_offs: &[
        CutOff { change: ChangeType::ShippingMethod, from: OrderState::Picked },
        // Once charged, the card the order was paid with stays.
        CutOff { change: ChangeType::Card, from: OrderState::Charged },
    ],
    completes_at: OrderState::Shipped,
};

/// `standard` version 2: accepted orders are screened by the fraud check
/// before they are charged (a node added: it takes version 2 orders only);
/// the picklist's totes are packed where they are picked, so no shipment
/// goes to rebin (a node dropped: it serves the version 1 orders still in
/// flight); the shipping method closes once the stock is reserved (a
/// cut-off moved: the carrier is booked then).
/// New orders take it only where it is deployed (`ORDERFLOW_WORKFLOWS=standard:2`
/// at intake); see the README's "Changing the workflow while it runs".
pub const STANDARD_V2: Workflow = Workflow {
    name: "standard",
    version: 2,
    states: STATES,
    nodes: NODES,
    routes: &[
        route(OrderState::Placed, Always, Node::Intake),
        route(OrderState::Accepted, Always, Node::FraudCheck),
        route(OrderState::Screened, Always, Node::Payment),
        route(OrderState::Charged, Always, Node::Inventory),
        route(OrderState::Reserved, Always, Node::Picklist),
        route(OrderState::Picked, Always, Node::Shipping),
        route(OrderState::StockShort, Always, Node::Exceptions),
        route(OrderState::Cancelling, HoldsReservation, Node::Inventory),
        route(OrderState::Cancelling, Always, Node::Exceptions),
        route(OrderState::StockReleased, Always, Node::Exceptions),
    ],
    cut_offs: &[
        CutOff { change: ChangeType::ShippingMethod, from: OrderState::Reserved },
        CutOff { change: ChangeType::Card, from: OrderState::Charged },
    ],
    completes_at: OrderState::Shipped,
};

/// `ship-then-bill` (business customers on invoice): the order is reserved,
/// picked and shipped first, then charged; `shipped` sends it on to payment
/// and `charged` ends it (its capture is due then). Once shipped, neither
/// the address nor a cancel can change it; a card declined after shipping
/// waits for another card like any other, then ends `payment_declined` (the
/// goods are gone: a collections case, not a compensation).
pub const SHIP_THEN_BILL: Workflow = Workflow {
    name: "ship-then-bill",
    version: 1,
    states: &SHIP_THEN_BILL_STATES,
    nodes: NODES,
    routes: &[
        route(OrderState::Placed, Always, Node::Intake),
        route(OrderState::Accepted, Always, Node::Inventory),
        route(OrderState::Reserved, Always, Node::Picklist),
        route(OrderState::Picked, MultiUnit, Node::Rebin),
        route(OrderState::Picked, Always, Node::Shipping),
        route(OrderState::Rebinned, Always, Node::Shipping),
        route(OrderState::Shipped, Always, Node::Payment),
        route(OrderState::StockShort, Always, Node::Exceptions),
        route(OrderState::Cancelling, HoldsReservation, Node::Inventory),
        route(OrderState::Cancelling, Always, Node::Exceptions),
        route(OrderState::StockReleased, Always, Node::Exceptions),
    ],
    cut_offs: &[
        CutOff { change: ChangeType::ShippingMethod, from: OrderState::Picked },
        CutOff { change: ChangeType::ShipTo, from: OrderState::Shipped },
        CutOff { change: ChangeType::Cancel, from: OrderState::Shipped },
    ],
    completes_at: OrderState::Charged,
};

const SHIP_THEN_BILL_STATES: [StateDef; 19] =
    with_kind(with_kind(STATE_TABLE, OrderState::Shipped, Forward), OrderState::Charged, Terminal);

/// `drop-ship`: the order is charged, then the purchasing node sends its
/// purchase orders, with the customer's address, to the distributors, who
/// ship it straight to the customer: no stock is reserved, nothing picked.
/// An item no distributor supplies ends it `out_of_stock` (authorization voided).
pub const DROP_SHIP: Workflow = Workflow {
    name: "drop-ship",
    version: 1,
    states: STATES,
    nodes: NODES,
    routes: &[
        route(OrderState::Placed, Always, Node::Intake),
        route(OrderState::Accepted, Always, Node::Payment),
        route(OrderState::Charged, Always, Node::Purchasing),
        route(OrderState::StockShort, Always, Node::Exceptions),
        route(OrderState::Cancelling, Always, Node::Exceptions),
    ],
    cut_offs: &[CutOff { change: ChangeType::Card, from: OrderState::Charged }],
    completes_at: OrderState::Shipped,
};

/// Every workflow definition the nodes know, each version of each name: an
/// element keeps the version it started on to its end, so a build keeps
/// every version that may still be in flight.
pub const WORKFLOWS: &[&Workflow] = &[&WORKFLOW, &STANDARD_V2, &SHIP_THEN_BILL, &DROP_SHIP];

/// The version of each workflow that new orders take, where it is not
/// version 1 (`ORDERFLOW_WORKFLOWS`, read where orders enter: intake).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deployed(Vec<(&'static str, u32)>);

impl Deployed {
    /// Reads `standard:2,other:3` (names and versions this build knows;
    /// empty: version 1 of each), naming what is wrong.
    pub fn parse(text: &str) -> Result<Deployed, String> {
        let mut chosen: Vec<(&'static str, u32)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (name, version) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not NAME:VERSION (for example standard:2)"))?;
            let version: u32 = version
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the version must be a whole number"))?;
            let found = workflow(name.trim(), version)
                .ok_or_else(|| format!("{part:?}: this build knows {}", known_workflows()))?;
            if chosen.iter().any(|(known, _)| *known == found.name) {
                return Err(format!("{:?} is named twice", found.name));
            }
            chosen.push((found.name, found.version));
        }
        Ok(Deployed(chosen))
    }

    /// The definition a new order of `name` takes, if this build knows the name.
    pub fn to_start(&self, name: &str) -> Option<&'static Workflow> {
        let version = self.0.iter().find(|(known, _)| *known == name).map_or(1, |(_, version)| *version);
        workflow(name, version)
    }
}

/// The definition an element names, if this build knows it.
pub fn workflow(name: &str, version: u32) -> Option<&'static Workflow> {
    WORKFLOWS.iter().copied().find(|w| w.name == name && w.version == version)
}

/// The nodes `node` may forward elements to in any definition this build
/// runs: its broker user may publish exactly these routing keys.
pub fn forwards_to_any(node: Node) -> Vec<Node> {
    let mut all: Vec<Node> = Vec::new();
    for next in WORKFLOWS.iter().flat_map(|w| w.forwards_to(node)) {
        if !all.contains(&next) {
            all.push(next);
        }
    }
    all
}

/// The nodes that may forward an element in `state` to `node` in any definition.
pub fn senders_any(node: Node, state: OrderState) -> Vec<Node> {
    let mut all: Vec<Node> = Vec::new();
    for sender in WORKFLOWS.iter().flat_map(|w| w.senders(node, state)) {
        if !all.contains(&sender) {
            all.push(sender);
        }
    }
    all
}

/// Whether `node` sends purchase orders to the distributors itself.
pub fn orders_from_distributors(node: Node) -> bool {
    NODES.iter().any(|def| def.node == node && def.orders_from_distributors)
}

/// The workflows this build knows, as an error names them (`standard v1`).
pub fn known_workflows() -> String {
    let known: Vec<String> = WORKFLOWS.iter().map(|w| format!("{} v{}", w.name, w.version)).collect();
    known.join(", ")
}

impl Workflow {
    /// The workflow nodes, in table order.
    pub fn nodes(&self) -> impl Iterator<Item = Node> + '_ {
        self.nodes.iter().map(|def| def.node)
    }

    /// The node placed orders go to: the public door (it takes plain orders
    /// and records who placed them).
    pub fn door(&self) -> Node {
        self.routes
            .iter()
            .find(|route| route.state == OrderState::Placed)
            .map(|route| route.to)
            .expect("a workflow routes placed orders")
    }

    /// Whether an element arriving at `node` must still carry the full card
    /// number (it is charged there or later): a dead letter whose card was
    /// masked cannot be replayed to it.
    pub fn needs_card(&self, node: Node) -> bool {
        self.nodes.iter().any(|def| def.node == node && def.needs_card)
    }

    /// Whether some route of this definition leads to `node`.
    pub fn uses(&self, node: Node) -> bool {
        self.routes.iter().any(|route| route.to == node)
    }

    /// Whether `state` ends an order of this definition.
    pub fn is_terminal(&self, state: OrderState) -> bool {
        self.kind(state) == Some(StateKind::Terminal)
    }

    /// Whether an order of this definition, on its happy path, has reached
    /// `state` before it arrives at `node` (shipping asks whether the order
    /// must already carry its charge).
    pub fn reached_before(&self, node: Node, state: OrderState) -> bool {
        let path = self.happy_path(&Facts { units: 2, holds_reservation: false });
        path.iter().take_while(|(at, _)| *at != node).any(|(_, left_in)| *left_in == state)
    }

    pub fn kind(&self, state: OrderState) -> Option<StateKind> {
        self.states.iter().find(|def| def.state == state).map(|def| def.kind)
    }

    fn node_def(&self, node: Node) -> Option<&NodeDef> {
        self.nodes.iter().find(|def| def.node == node)
    }

    /// The node an element in `state` goes to next; `None` ends its travel.
    pub fn next_node(&self, state: OrderState, facts: &Facts) -> Option<Node> {
        self.routes.iter().find(|r| r.state == state && r.when.holds(facts)).map(|r| r.to)
    }

    /// The states in which an element may arrive at `node`: those routed to it.
    pub fn accepts(&self, node: Node) -> Vec<OrderState> {
        let mut states: Vec<OrderState> = Vec::new();
        for route in self.routes.iter().filter(|r| r.to == node) {
            if !states.contains(&route.state) {
                states.push(route.state);
            }
        }
        states
    }

    /// Whether an element may arrive at `node` in `state` (checked per
    /// message: no allocation).
    pub fn accepts_state(&self, node: Node, state: OrderState) -> bool {
        self.routes.iter().any(|r| r.to == node && r.state == state)
    }

    /// The states of an order that is at `node`: on its way there (routed to
    /// it) or waiting in it (a waiting state it keeps: `backordered` at
    /// inventory, `awaiting_payment` at payment).
    pub fn held_at(&self, node: Node) -> Vec<OrderState> {
        let mut states = self.accepts(node);
        let waiting = self.produces(node).into_iter().filter(|s| self.kind(*s) == Some(StateKind::Waiting));
        states.extend(waiting);
        states
    }

    /// Whether the coordinator may bring an element in `state` back to
    /// `node` with a call: a waiting state the node itself leaves elements
    /// in (a directed order declined at payment is kept by the coordinator,
    /// which calls payment again with the new card, or when its wait ran
    /// out). No route takes a waiting state: the workflow's queues never do.
    pub fn resumes(&self, node: Node, state: OrderState) -> bool {
        self.kind(state) == Some(StateKind::Waiting)
            && self.node_def(node).is_some_and(|def| {
                def.resumes.contains(&state) && def.produces.iter().any(|e| e.state == state)
            })
    }

    /// The states `node` produces.
    pub fn produces(&self, node: Node) -> Vec<OrderState> {
        self.node_def(node).map(|def| def.produces.iter().map(|e| e.state).collect()).unwrap_or_default()
    }

    /// The nodes that may produce `state` (for `placed`: none; the publisher does).
    pub fn producers(&self, state: OrderState) -> Vec<Node> {
        self.nodes
            .iter()
            .filter(|def| def.produces.iter().any(|e| e.state == state))
            .map(|d| d.node)
            .collect()
    }

    /// The nodes an element leaving `emit` may be routed to: first-match
    /// routing evaluated with what is known when it leaves.
    fn destinations(&self, emit: &Emit) -> Vec<Node> {
        let mut to = Vec::new();
        for route in self.routes.iter().filter(|r| r.state == emit.state) {
            match route.when.holds_for(emit) {
                Some(true) => {
                    to.push(route.to);
                    break;
                }
                None => to.push(route.to),
                Some(false) => {}
            }
        }
        to
    }

    /// The nodes `node` may forward elements to: the routes of the states it
    /// produces. The node's broker user may publish exactly these routing keys.
    pub fn forwards_to(&self, node: Node) -> Vec<Node> {
        let mut all = Vec::new();
        if !self.uses(node) {
            return all; // it sends nothing in a definition that never sends it anything
        }
        for emit in self.node_def(node).map(|def| def.produces).unwrap_or_default() {
            for next in self.destinations(emit) {
                if !all.contains(&next) {
                    all.push(next);
                }
            }
        }
        all
    }

    /// The nodes that may forward an element in `state` to `node`.
    pub fn senders(&self, node: Node, state: OrderState) -> Vec<Node> {
        self.nodes
            .iter()
            .filter(|def| {
                self.uses(def.node)
                    && def.produces.iter().any(|e| e.state == state && self.destinations(e).contains(&node))
            })
            .map(|def| def.node)
            .collect()
    }

    /// The happy path of an element with these `facts`: each node it meets
    /// from `placed` on and the state it leaves that node in (the node's
    /// forward product, else its first terminal one: shipping's `shipped`).
    /// A multi-unit order's is the longest; its length is the relay's hops.
    pub fn happy_path(&self, facts: &Facts) -> Vec<(Node, OrderState)> {
        let mut path = Vec::new();
        let mut state = OrderState::Placed;
        while let Some(node) = self.next_node(state, facts) {
            let produced = self.produces(node);
            let forward = produced.iter().find(|s| self.kind(**s) == Some(Forward));
            let Some(next) = forward.or_else(|| produced.iter().find(|s| self.kind(**s) == Some(Terminal)))
            else {
                break;
            };
            if path.iter().any(|(n, _)| *n == node) {
                break;
            }
            path.push((node, *next));
            state = *next;
        }
        path
    }

    /// The cut-off state that closes `change` for an order in `state`, if any:
    /// `state` is the cut-off's state or one the happy path reaches from it.
    pub fn closed_by(&self, change: ChangeType, state: OrderState) -> Option<OrderState> {
        self.cut_offs
            .iter()
            .filter(|cut| cut.change == change)
            .find(|cut| self.forward_closure(cut.from).contains(&state))
            .map(|cut| cut.from)
    }

    /// `from` and every state reachable from it through forward routes and
    /// the nodes' forward, waiting (a backordered order was charged) or
    /// terminal products.
    fn forward_closure(&self, from: OrderState) -> Vec<OrderState> {
        let mut seen = vec![from];
        let mut next = 0;
        while next < seen.len() {
            let state = seen[next];
            next += 1;
            for route in self.routes.iter().filter(|r| r.state == state) {
                for produced in self.produces(route.to) {
                    let onward = matches!(self.kind(produced), Some(Forward | Waiting | Terminal));
                    if onward && !seen.contains(&produced) {
                        seen.push(produced);
                    }
                }
            }
        }
        seen
    }

    /// Checks the definition is whole: every name unique, every route leads
    /// to a node, every state a node leaves an element in has a route (or is
    /// terminal), records and terminal states have none.
    pub fn validate(&self) -> Result<(), String> {
        let names: Vec<&str> = self.nodes().map(Node::name).collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(format!("node {name} is defined twice"));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                return Err(format!("node name {name:?} must be lowercase letters and dashes"));
            }
        }
        for route in self.routes {
            if self.node_def(route.to).is_none() {
                return Err(format!("a route of {} leads to {}, which is not a node", route.state, route.to));
            }
            match self.kind(route.state) {
                None => return Err(format!("route for unknown state {}", route.state)),
                Some(Record | Terminal | Waiting) => {
                    return Err(format!(
                        "{} is a record, waiting or terminal state but has a route",
                        route.state
                    ))
                }
                _ => {}
            }
        }
        // A node no route of this definition leads to is not used by it (it
        // serves another version or workflow): what it produces is not checked here.
        for def in self.nodes.iter().filter(|def| self.uses(def.node)) {
            for emit in def.produces {
                match self.kind(emit.state) {
                    None => return Err(format!("{} produces unknown state {}", def.node, emit.state)),
                    Some(Forward | Compensation) if self.destinations(emit).is_empty() => {
                        return Err(format!(
                            "{} leaves elements in {} but no route takes them",
                            def.node, emit.state
                        ))
                    }
                    _ => {}
                }
            }
        }
        for cut in self.cut_offs {
            if self.kind(cut.from) != Some(Forward) {
                return Err(format!("the cut-off state {} is not a forward state", cut.from));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_happy_path_of_a_multi_unit_order_passes_every_forward_node() {
        let multi = WORKFLOW.happy_path(&Facts { units: 2, holds_reservation: false });
        let states: Vec<&str> = multi.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(states, ["accepted", "charged", "reserved", "picked", "rebinned", "shipped"]);
        let single = WORKFLOW.happy_path(&Facts { units: 1, holds_reservation: false });
        assert_eq!(single.len(), multi.len() - 1, "one unit skips rebin");
    }

    use super::*;

    #[test]
    fn a_workflow_is_known_by_name_and_version() {
        assert_eq!(workflow("standard", 1).map(|w| w.version), Some(1));
        assert_eq!(workflow("standard", 2).map(|w| w.version), Some(2));
        assert!(workflow("standard", 3).is_none() && workflow("ship-then-bill", 2).is_none());
        assert!(workflow("Standard", 1).is_none(), "names are exact");
        assert_eq!(known_workflows(), "standard v1, standard v2, ship-then-bill v1, drop-ship v1");
        let mut names: Vec<(&str, u32)> = WORKFLOWS.iter().map(|w| (w.name, w.version)).collect();
        names.dedup();
        assert_eq!(names.len(), WORKFLOWS.len(), "each version of each name once");
    }

    #[test]
    fn orderflows_definition_is_whole() {
        for definition in WORKFLOWS {
            assert_eq!(definition.validate(), Ok(()), "{} v{}", definition.name, definition.version);
        }
    }

    #[test]
    fn version_2_adds_the_fraud_check_drops_rebin_and_closes_the_shipping_method_at_reserved() {
        let multi = Facts { units: 2, holds_reservation: false };
        let path =
            |w: &Workflow| -> Vec<&str> { w.happy_path(&multi).iter().map(|(n, _)| n.name()).collect() };
        assert_eq!(path(&WORKFLOW), ["intake", "payment", "inventory", "picklist", "rebin", "shipping"]);
        assert_eq!(
            path(&STANDARD_V2),
            ["intake", "fraud-check", "payment", "inventory", "picklist", "shipping"]
        );
        assert!(WORKFLOW.uses(Node::Rebin) && !STANDARD_V2.uses(Node::Rebin));
        assert!(!WORKFLOW.uses(Node::FraudCheck) && STANDARD_V2.uses(Node::FraudCheck));
        assert_eq!(forwards_to_any(Node::Intake), [Node::Payment, Node::FraudCheck, Node::Inventory]);
        assert_eq!(senders_any(Node::Payment, OrderState::Screened), [Node::FraudCheck]);
        assert!(!STANDARD_V2.accepts_state(Node::Rebin, OrderState::Picked), "rebin takes no v2 order");
        let method = ChangeType::ShippingMethod;
        assert_eq!(WORKFLOW.closed_by(method, OrderState::Reserved), None);
        assert_eq!(STANDARD_V2.closed_by(method, OrderState::Reserved), Some(OrderState::Reserved));
        assert_eq!(WORKFLOW.closed_by(method, OrderState::Picked), Some(OrderState::Picked));
    }

    /// `ship-then-bill` uses the same nodes in another order, and its own
    /// kinds: `shipped` sends the order on to payment, `charged` ends it and
    /// completes it (its capture due then); once shipped, neither a cancel
    /// nor the address can change.
    #[test]
    fn ship_then_bill_ships_first_and_charges_last() {
        let multi = Facts { units: 2, holds_reservation: false };
        let path: Vec<String> =
            SHIP_THEN_BILL.happy_path(&multi).iter().map(|(n, s)| format!("{n} {s}")).collect();
        assert_eq!(
            path,
            [
                "intake accepted",
                "inventory reserved",
                "picklist picked",
                "rebin rebinned",
                "shipping shipped",
                "payment charged"
            ]
        );
        let (standard, billed) = (&WORKFLOW, &SHIP_THEN_BILL);
        assert!(standard.is_terminal(OrderState::Shipped) && !standard.is_terminal(OrderState::Charged));
        assert!(billed.is_terminal(OrderState::Charged) && !billed.is_terminal(OrderState::Shipped));
        assert_eq!(billed.kind(OrderState::Shipped), Some(StateKind::Forward));
        assert_eq!((standard.completes_at, billed.completes_at), (OrderState::Shipped, OrderState::Charged));
        assert!(billed.reached_before(Node::Payment, OrderState::Shipped));
        assert!(!billed.reached_before(Node::Shipping, OrderState::Charged), "shipped uncharged");
        assert!(standard.reached_before(Node::Shipping, OrderState::Charged));
        for change in [ChangeType::Cancel, ChangeType::ShipTo] {
            assert_eq!(billed.closed_by(change, OrderState::Picked), None, "{change:?}");
            assert_eq!(billed.closed_by(change, OrderState::Shipped), Some(OrderState::Shipped));
            assert_eq!(billed.closed_by(change, OrderState::AwaitingPayment), Some(OrderState::Shipped));
        }
        assert_eq!(billed.closed_by(ChangeType::Card, OrderState::AwaitingPayment), None);
        assert_eq!(billed.accepts(Node::Inventory), [OrderState::Accepted, OrderState::Cancelling]);
        assert_eq!(billed.accepts(Node::Payment), [OrderState::Shipped]);
        assert_eq!(senders_any(Node::Payment, OrderState::Shipped), [Node::Shipping]);
        assert!(forwards_to_any(Node::Shipping).contains(&Node::Payment));
        assert!(forwards_to_any(Node::Intake).contains(&Node::Inventory));
        // The two tables agree on every state but the two it changes.
        let differ: Vec<OrderState> = STATES
            .iter()
            .zip(billed.states)
            .filter(|(a, b)| a.state != b.state || a.kind != b.kind)
            .map(|(a, _)| a.state)
            .collect();
        assert_eq!(differ, [OrderState::Charged, OrderState::Shipped]);
    }

    /// `drop-ship`: charged, then purchasing sends the purchase orders the
    /// distributors ship straight to the customer; no inventory, no picking.
    #[test]
    fn drop_ship_charges_then_orders_from_the_distributors() {
        let multi = Facts { units: 2, holds_reservation: false };
        let nodes: Vec<&str> = DROP_SHIP.happy_path(&multi).iter().map(|(n, _)| n.name()).collect();
        assert_eq!(nodes, ["intake", "payment", "purchasing"]);
        assert_eq!(DROP_SHIP.happy_path(&multi).last().map(|(_, s)| *s), Some(OrderState::Shipped));
        for unused in [Node::Inventory, Node::Picklist, Node::Rebin, Node::Shipping, Node::FraudCheck] {
            assert!(!DROP_SHIP.uses(unused), "{unused}");
        }
        assert!(!WORKFLOW.uses(Node::Purchasing) && !SHIP_THEN_BILL.uses(Node::Purchasing));
        assert_eq!(DROP_SHIP.forwards_to(Node::Purchasing), [Node::Exceptions]);
        assert!(orders_from_distributors(Node::Purchasing) && !orders_from_distributors(Node::Shipping));
        assert_eq!(DROP_SHIP.closed_by(ChangeType::Card, OrderState::Charged), Some(OrderState::Charged));
        // Every definition completes at the end of its happy path.
        for definition in WORKFLOWS {
            let end = definition.happy_path(&multi).last().map(|(_, s)| *s);
            assert_eq!(end, Some(definition.completes_at), "{} v{}", definition.name, definition.version);
        }
    }

    #[test]
    fn the_deployed_versions_are_read_with_their_errors_named() {
        assert_eq!(Deployed::parse("").unwrap().to_start("standard").map(|w| w.version), Some(1));
        let v2 = Deployed::parse(" standard:2 ").unwrap();
        assert_eq!(v2.to_start("standard").map(|w| w.version), Some(2));
        assert!(v2.to_start("same-day").is_none());
        assert_eq!(v2.to_start("drop-ship").map(|w| w.name), Some("drop-ship"), "version 1 of the others");
        for (bad, reason) in [
            ("standard", "NAME:VERSION"),
            ("standard:two", "whole number"),
            ("standard:-1", "whole number"),
            ("standard:9", "this build knows standard v1, standard v2, ship-then-bill v1, drop-ship v1"),
            ("nope:1", "this build knows"),
            ("standard:1,standard:2", "named twice"),
        ] {
            assert!(Deployed::parse(bad).unwrap_err().contains(reason), "{bad}: {:?}", Deployed::parse(bad));
        }
    }

    #[test]
    fn accepted_states_are_the_routes_into_a_node() {
        use OrderState as S;
        assert_eq!(WORKFLOW.accepts(Node::Intake), [S::Placed]);
        assert_eq!(WORKFLOW.accepts(Node::Inventory), [S::Charged, S::Cancelling]);
        assert_eq!(WORKFLOW.accepts(Node::Shipping), [S::Picked, S::Rebinned]);
        assert_eq!(WORKFLOW.accepts(Node::Exceptions), [S::StockShort, S::Cancelling, S::StockReleased]);
        for node in WORKFLOW.nodes() {
            for state in OrderState::all() {
                assert_eq!(WORKFLOW.accepts_state(node, state), WORKFLOW.accepts(node).contains(&state));
            }
        }
    }

    #[test]
    fn grants_follow_only_routes_an_element_can_take() {
        use Node as N;
        assert_eq!(WORKFLOW.forwards_to(N::Intake), [N::Payment]);
        assert_eq!(WORKFLOW.forwards_to(N::Inventory), [N::Picklist, N::Exceptions]);
        assert_eq!(WORKFLOW.forwards_to(N::Picklist), [N::Rebin, N::Shipping, N::Inventory]);
        assert_eq!(WORKFLOW.forwards_to(N::Shipping), [N::Inventory]);
        assert!(WORKFLOW.forwards_to(N::Exceptions).is_empty());
        assert_eq!(WORKFLOW.senders(N::Shipping, OrderState::Rebinned), [N::Rebin]);
        assert_eq!(
            WORKFLOW.senders(N::Inventory, OrderState::Cancelling),
            [N::Picklist, N::Rebin, N::Shipping]
        );
    }

    /// A backordered order waits in inventory: no route takes it, it is not
    /// the end, no cut-off closes a change for it, and a definition that
    /// routes a waiting state is refused.
    #[test]
    fn a_waiting_state_stays_in_its_node() {
        let waiting = OrderState::Backordered;
        assert_eq!(WORKFLOW.kind(waiting), Some(StateKind::Waiting));
        assert!(!WORKFLOW.is_terminal(waiting));
        assert_eq!(WORKFLOW.next_node(waiting, &Facts { units: 1, holds_reservation: false }), None);
        assert_eq!(WORKFLOW.producers(waiting), [Node::Inventory]);
        assert_eq!(WORKFLOW.closed_by(ChangeType::ShippingMethod, waiting), None);
        let mut routes = WORKFLOW.routes.to_vec();
        routes.push(route(waiting, Always, Node::Picklist));
        let routes: &'static [Route] = Box::leak(routes.into_boxed_slice());
        let routed = Workflow { routes, ..WORKFLOW };
        assert!(routed
            .validate()
            .unwrap_err()
            .contains("backordered is a record, waiting or terminal state"));
    }

    #[test]
    fn the_shipping_method_closes_at_picking_and_after() {
        let closed = |s| WORKFLOW.closed_by(ChangeType::ShippingMethod, s);
        assert_eq!(closed(OrderState::Reserved), None);
        assert_eq!(closed(OrderState::Picked), Some(OrderState::Picked));
        assert_eq!(closed(OrderState::Rebinned), Some(OrderState::Picked));
        assert_eq!(WORKFLOW.closed_by(ChangeType::ShipTo, OrderState::Rebinned), None);
    }

    /// A card may change until the order is charged: while it waits for a
    /// card at payment, not once it waits for stock at inventory.
    #[test]
    fn the_card_closes_once_charged() {
        let closed = |s| WORKFLOW.closed_by(ChangeType::Card, s);
        assert_eq!(closed(OrderState::Placed), None);
        assert_eq!(closed(OrderState::Accepted), None);
        assert_eq!(closed(OrderState::AwaitingPayment), None);
        assert_eq!(closed(OrderState::Charged), Some(OrderState::Charged));
        assert_eq!(closed(OrderState::Backordered), Some(OrderState::Charged));
        assert_eq!(closed(OrderState::Picked), Some(OrderState::Charged));
        assert_eq!(WORKFLOW.producers(OrderState::AwaitingPayment), [Node::Payment]);
        assert_eq!(WORKFLOW.kind(OrderState::AwaitingPayment), Some(StateKind::Waiting));
        assert!(WORKFLOW.resumes(Node::Payment, OrderState::AwaitingPayment));
        assert!(!WORKFLOW.accepts_state(Node::Payment, OrderState::AwaitingPayment), "no route takes it");
        assert!(!WORKFLOW.resumes(Node::Inventory, OrderState::AwaitingPayment));
        assert!(!WORKFLOW.resumes(Node::Payment, OrderState::Accepted), "not a waiting state");
        assert!(
            !WORKFLOW.resumes(Node::Inventory, OrderState::Backordered),
            "inventory's service takes no backordered order (its desk keeps those)"
        );
        assert_eq!(WORKFLOW.held_at(Node::Inventory).last(), Some(&OrderState::Backordered));
        assert_eq!(WORKFLOW.held_at(Node::Payment), [OrderState::Accepted, OrderState::AwaitingPayment]);
    }

    #[test]
    fn states_round_trip_through_json_and_unknown_ones_are_refused() {
        let json = serde_json::to_string(&OrderState::PaymentDeclined).unwrap();
        assert_eq!(json, "\"payment_declined\"");
        assert_eq!(serde_json::from_str::<OrderState>(&json).unwrap(), OrderState::PaymentDeclined);
        let error = serde_json::from_str::<OrderState>("\"teleported\"").unwrap_err().to_string();
        assert!(error.contains("unknown variant `teleported`"), "{error}");
    }

    /// A definition with one more node: `pack` sits between rebin (and
    /// single-unit picking) and shipping, producing `packed`.
    #[test]
    fn an_extra_node_changes_routing_grants_accepted_states_and_cut_offs() {
        const PACK: Node = Node::named("pack");
        const PACKED: OrderState = OrderState::named("packed");
        const PACK_EMITS: &[Emit] =
            &[Emit::of(PACKED), Emit::of(OrderState::Cancelling).holding_reservation()];
        static STATES: std::sync::LazyLock<Vec<StateDef>> = std::sync::LazyLock::new(|| {
            let mut states = WORKFLOW.states.to_vec();
            states.insert(6, state(PACKED, Forward));
            states
        });
        static NODES: std::sync::LazyLock<Vec<NodeDef>> = std::sync::LazyLock::new(|| {
            let mut nodes = WORKFLOW.nodes.to_vec();
            nodes.insert(5, NodeDef::new(PACK, "The pack node.", PACK_EMITS));
            nodes
        });
        static ROUTES: std::sync::LazyLock<Vec<Route>> = std::sync::LazyLock::new(|| {
            let mut routes: Vec<Route> = WORKFLOW.routes.to_vec();
            for r in routes.iter_mut() {
                if r.to == Node::Shipping {
                    r.to = PACK;
                }
            }
            routes.push(route(PACKED, Always, Node::Shipping));
            routes
        });
        let with_pack = Workflow { states: &STATES, nodes: &NODES, routes: &ROUTES, ..WORKFLOW };
        assert_eq!(with_pack.validate(), Ok(()));
        // Routing: rebinned and single-unit picked orders go to pack, then shipping.
        let one = Facts { units: 1, holds_reservation: true };
        assert_eq!(with_pack.next_node(OrderState::Rebinned, &one), Some(PACK));
        assert_eq!(with_pack.next_node(OrderState::Picked, &one), Some(PACK));
        assert_eq!(with_pack.next_node(PACKED, &one), Some(Node::Shipping));
        // Accepted states: pack takes what shipping took; shipping takes packed only.
        assert_eq!(with_pack.accepts(PACK), [OrderState::Picked, OrderState::Rebinned]);
        assert_eq!(with_pack.accepts(Node::Shipping), [PACKED]);
        // Grants: rebin now publishes to pack, pack to shipping (and inventory on cancel).
        assert_eq!(with_pack.forwards_to(Node::Rebin), [PACK, Node::Inventory]);
        assert_eq!(with_pack.forwards_to(PACK), [Node::Shipping, Node::Inventory]);
        assert_eq!(with_pack.senders(Node::Shipping, PACKED), [PACK]);
        // Cut-offs: packed lies after picking, so the shipping method is closed there too.
        assert_eq!(with_pack.closed_by(ChangeType::ShippingMethod, PACKED), Some(OrderState::Picked));
        assert_eq!(with_pack.closed_by(ChangeType::ShippingMethod, OrderState::Reserved), None);
        // Processes: the new binary is started with the rest, after rebin.
        let processes: Vec<&str> =
            crate::Process::of(&with_pack).into_iter().map(crate::Process::name).collect();
        assert_eq!(processes.iter().position(|p| *p == "pack"), Some(7), "{processes:?}");
        // And a definition that forgets the route out of pack is refused.
        let dead_end = Workflow { routes: &ROUTES[..ROUTES.len() - 1], ..with_pack };
        assert!(dead_end.validate().unwrap_err().contains("pack leaves elements in packed"));
    }
}
