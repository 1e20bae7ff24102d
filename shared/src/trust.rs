//! Who sent a message, as the broker vouches for it, and whether that sender
//! may say what the message says.
//!
//! Every process publishes with the `user_id` property set to its broker
//! user, and RabbitMQ refuses a message whose `user_id` is not the
//! connection's user (administrators included), so `user_id` is a sender no
//! one can forge. Each role has its own user per stack
//! ([`Role::user`]); a consumer maps the sender back to a role and checks it
//! against the workflow definition: a node takes an element only from a node
//! that forwards that state to it, the tracker takes an event for node N only
//! from N's user and only for a state N produces.
//!
//! A process that does not run as its role's own user (every process as
//! `guest`, `ORDERFLOW_NODE_USERS=0`) is in *shared* mode: all roles are that
//! one user, and the checks can only say a message came from it.
//!
//! Two senders relay messages on someone else's behalf: the process itself
//! (a retry goes round its retry queue) and the operator (`orderflow dlq
//! replay`). They carry the sender they saw in [`SENDER_HEADER`], which is
//! believed only on a message whose `user_id` is one of those two.

use crate::settings::Settings;
use lapin::{
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use topology::permissions::Role;
use topology::{Node, OrderState, WORKFLOW};

/// The verified sender of a relayed message (retried or replayed).
pub const SENDER_HEADER: &str = "x-orderflow-sender";

/// What this process trusts: its own user, the operator's, and how the
/// stack's users are named.
#[derive(Clone, Debug)]
pub struct Trust {
    own_user: String,
    operator: String,
    /// Every role's user, named once (messages are checked against them one
    /// by one); empty in shared mode, where every role is `own_user`.
    users: Vec<(Role, String)>,
}

/// Every role's user in the stack of `prefix` and `vhost`.
fn stack_users(prefix: &str, vhost: &str) -> Vec<(Role, String)> {
    Role::all().into_iter().map(|role| (role, role.user(prefix, vhost))).collect()
}

impl Trust {
    /// The trust of a process running as `role` with these settings.
    pub fn new(settings: &Settings, role: Role) -> anyhow::Result<Trust> {
        let (own_user, _, vhost) = topology::management::amqp_url_parts(&settings.amqp_url)?;
        let role_user = role.user(&settings.user_prefix, &vhost);
        let per_role = own_user == role_user;
        if !per_role {
            tracing::info!(
                user = own_user,
                role_user,
                "not running as the role's own user: every role is taken to be this one user"
            );
        }
        let users = if per_role { stack_users(&settings.user_prefix, &vhost) } else { Vec::new() };
        Ok(Trust { own_user, operator: settings.operator_user.clone(), users })
    }

    /// The role the command line plays: customer support when it runs as the
    /// stack's support user, else the publisher.
    pub fn cli_role(settings: &Settings) -> Role {
        let support = topology::management::amqp_url_parts(&settings.amqp_url)
            .is_ok_and(|(user, _, vhost)| user == Role::Support.user(&settings.user_prefix, &vhost));
        if support {
            Role::Support
        } else {
            Role::Publisher
        }
    }

    /// A stack whose roles each have their own user (for tests).
    pub fn per_role(own: Role, prefix: &str, vhost: &str, operator: &str) -> Trust {
        Trust {
            own_user: own.user(prefix, vhost),
            operator: operator.into(),
            users: stack_users(prefix, vhost),
        }
    }

    /// Every role played by one user (for tests).
    pub fn shared(user: &str) -> Trust {
        Trust { own_user: user.into(), operator: user.into(), users: Vec::new() }
    }

    pub fn own_user(&self) -> &str {
        &self.own_user
    }

    /// The administrator trusted to replay dead letters and to act for the
    /// publisher and support roles from the command line.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// True when each role has its own user, so senders are told apart.
    pub fn is_per_role(&self) -> bool {
        !self.users.is_empty()
    }

    /// The user that plays `role` in this stack.
    pub fn user_of(&self, role: Role) -> &str {
        self.users.iter().find(|(r, _)| *r == role).map_or(&self.own_user, |(_, user)| user)
    }

    fn is(&self, sender: Option<&str>, role: Role) -> bool {
        sender == Some(self.user_of(role))
    }

    /// The sender the broker vouches for: the `user_id` of the message, or,
    /// when this process or the operator relayed it, the sender recorded in
    /// [`SENDER_HEADER`]. `None` when the message names no sender.
    pub fn sender(&self, properties: &BasicProperties) -> Option<String> {
        let user = properties.user_id().as_ref()?.as_str();
        if user == self.own_user || user == self.operator {
            if let Some(recorded) = recorded_sender(properties.headers().as_ref()) {
                return Some(recorded);
            }
        }
        Some(user.to_string())
    }

    /// May `sender` send an element in `state` to `node`? Anyone the broker
    /// lets publish to intake may place an order; every later node takes an
    /// element only from a node the workflow says forwards that state to it.
    pub fn check_element(&self, node: Node, state: OrderState, sender: Option<&str>) -> Result<(), String> {
        if node == WORKFLOW.door() && state == OrderState::Placed {
            return Ok(());
        }
        let senders = senders(node, state);
        if senders.iter().any(|from| self.is(sender, Role::Node(*from))) {
            return Ok(());
        }
        let allowed: Vec<String> =
            senders.iter().map(|from| self.user_of(Role::Node(*from)).to_string()).collect();
        Err(format!(
            "{node} takes an element in state {state} only from {}; this one came from {}",
            or_nobody(&allowed),
            named(sender)
        ))
    }

    /// Is `sender` the user of `role` in this stack?
    pub fn is_role(&self, sender: Option<&str>, role: Role) -> bool {
        self.is(sender, role)
    }

    /// May `sender` call `node`'s service? Intake's is the public door:
    /// anyone the broker lets publish there. The later services take calls
    /// only from the coordinator and the operator: the element of such a
    /// call carries claims (a charge, a reservation) that only the nodes'
    /// own results, which the coordinator checks, can vouch for.
    pub fn check_call(&self, node: Node, sender: Option<&str>) -> Result<(), String> {
        if node == WORKFLOW.door()
            || self.is(sender, Role::Coordinator)
            || sender == Some(self.operator.as_str())
        {
            return Ok(());
        }
        Err(format!(
            "the {node} service takes calls only from {} or {}; this one came from {}",
            self.user_of(Role::Coordinator),
            self.operator,
            named(sender)
        ))
    }

    /// May `sender` send a result of `service` (`what`: how the receiver
    /// names it)? Only the user of the process answering for it: a node's,
    /// or a domain copy's (`customer@uk`; inventory's stock is the
    /// inventory node's).
    pub fn check_result(&self, what: &str, service: &str, sender: Option<&str>) -> Result<(), String> {
        let Some(role) = answering_role(service) else {
            return Err(format!("no service is named {:?}", crate::text::escaped(service)));
        };
        if self.is(sender, role) {
            return Ok(());
        }
        Err(format!(
            "{what} of {service} must come from {}; this one came from {}",
            self.user_of(role),
            named(sender)
        ))
    }

    /// May `sender` change a domain's data? The back office and the
    /// operator; customer support besides for the customer domain (a
    /// customer's address). No workflow node, not the public door, no
    /// unnamed sender: named by the message's broker-checked `user_id`.
    /// (Reads are open to whoever the broker lets publish to the domains
    /// exchange; what a read shows, the domain decides.)
    pub fn check_domain_write(&self, domain: &str, sender: Option<&str>) -> Result<(), String> {
        let support = domain == "customer" && self.is(sender, Role::Support);
        if self.is(sender, Role::BackOffice) || support || sender == Some(self.operator.as_str()) {
            return Ok(());
        }
        let mut may = vec![self.user_of(Role::BackOffice).to_string()];
        if domain == "customer" {
            may.push(self.user_of(Role::Support).to_string());
        }
        may.push(self.operator.clone());
        Err(format!(
            "only {} may change the {domain} domain; this request came from {}",
            may.join(", "),
            named(sender)
        ))
    }

    /// May `sender` publish received items (add stock)? The receiving
    /// station, the operator, and the simulated distributors' own user (what
    /// they ship arrives); not the public door.
    pub fn check_receipt_sender(&self, sender: Option<&str>) -> Result<(), String> {
        if self.is(sender, Role::Receiving)
            || self.is(sender, Role::DistributorSim)
            || sender == Some(self.operator.as_str())
        {
            return Ok(());
        }
        Err(format!(
            "only the receiving station ({}), the simulated distributors ({}) or {} may post received items; this one came from {}",
            self.user_of(Role::Receiving),
            self.user_of(Role::DistributorSim),
            self.operator,
            named(sender)
        ))
    }

    /// May `sender` send a capture to settlement? Only who ends orders
    /// shipped: the node that ships and the coordinator
    /// (`topology::permissions::sends_captures`); a capture moves money.
    pub fn check_capture_sender(&self, sender: Option<&str>) -> Result<(), String> {
        let senders: Vec<Role> =
            Role::all().into_iter().filter(|role| topology::permissions::sends_captures(*role)).collect();
        if senders.iter().any(|role| self.is(sender, *role)) {
            return Ok(());
        }
        let allowed: Vec<String> = senders.iter().map(|role| self.user_of(*role).to_string()).collect();
        Err(format!("only {} may send a capture; this one came from {}", or_nobody(&allowed), named(sender)))
    }

    /// May `sender` record that `node` (the event's `node` field) reached
    /// `state` (an order state or a change record's kind)?
    pub fn check_event(&self, node: &str, state: &str, sender: Option<&str>) -> Result<(), String> {
        let Some(role) = Role::from_name(node) else {
            return Err(format!("no orderflow process is named {node:?}"));
        };
        if !role_records(role, state) {
            return Err(format!("{node} never records {state:?}"));
        }
        // The operator (who runs the command line as the administrator) may
        // place and change orders like the publisher and support roles.
        let operator =
            matches!(role, Role::Publisher | Role::Support) && sender == Some(self.operator.as_str());
        if !self.is(sender, role) && !operator {
            return Err(format!(
                "an event of {node} must come from {}; this one came from {}",
                self.user_of(role),
                named(sender)
            ));
        }
        Ok(())
    }
}

/// The role whose user answers for `service`: a node, or a domain copy by
/// its label.
pub fn answering_role(service: &str) -> Option<Role> {
    if let Some(node) = Node::from_name(service) {
        return Some(Role::Node(node));
    }
    let copy = topology::DomainCopy::all().into_iter().find(|copy| copy.label() == service)?;
    match copy.def().served_by {
        Some(node) => Some(Role::Node(node)),
        None => Some(Role::Domain(copy)),
    }
}

/// `WORKFLOW.senders(node, state)`, worked out once for every node and
/// state rather than for every message.
fn senders(node: Node, state: OrderState) -> &'static [Node] {
    static SENDERS: std::sync::OnceLock<std::collections::HashMap<(Node, OrderState), Vec<Node>>> =
        std::sync::OnceLock::new();
    let all = SENDERS.get_or_init(|| {
        let pairs = WORKFLOW.nodes().flat_map(|n| OrderState::all().into_iter().map(move |s| (n, s)));
        pairs.map(|(n, s)| ((n, s), topology::workflow::senders_any(n, s))).collect()
    });
    all.get(&(node, state)).map_or(&[], Vec::as_slice)
}

/// The states and change records a role may put in an order's history.
fn role_records(role: Role, state: &str) -> bool {
    match role {
        Role::Node(node) => {
            matches!(state, "change_applied" | "change_rejected")
                || OrderState::parse(state).is_some_and(|s| WORKFLOW.produces(node).contains(&s))
                // The node placed orders go to records a plain order's `placed` (it saw it first).
                || (state == "placed" && WORKFLOW.accepts_state(node, OrderState::Placed))
        }
        Role::Publisher => matches!(state, "placed" | "change_requested"),
        Role::Support => state == "change_requested",
        // It places directed orders, decides their changes (a cancel's
        // first state, or the end of an order that holds nothing yet).
        Role::Coordinator => {
            matches!(state, "placed" | "change_applied" | "change_rejected" | "cancelling" | "cancelled")
        }
        // A primary that forwards its edits requests the changes they make
        // (any copy of its domain: the broker lets only the primary of the
        // moment publish changes and records).
        Role::Domain(copy) => copy.may_forward_edits() && state == "change_requested",
        Role::Tracker | Role::Receiving | Role::BackOffice | Role::DistributorSim => false,
    }
}

fn named(sender: Option<&str>) -> String {
    match sender {
        Some(user) => crate::text::escaped(user),
        None => "an unnamed sender (no user_id)".into(),
    }
}

fn or_nobody(users: &[String]) -> String {
    if users.is_empty() {
        "no one".into()
    } else {
        users.join(" or ")
    }
}

fn recorded_sender(headers: Option<&FieldTable>) -> Option<String> {
    crate::headers::header_text(headers, SENDER_HEADER)
}

/// Headers for a message this process relays: `headers` with the verified
/// `sender` recorded (or any recorded sender removed when there is none).
pub fn with_sender(headers: FieldTable, sender: Option<&str>) -> FieldTable {
    let mut inner = headers.inner().clone();
    inner.remove(&ShortString::from(SENDER_HEADER));
    let mut headers = FieldTable::from(inner);
    if let Some(sender) = sender {
        headers.insert(SENDER_HEADER.into(), AMQPValue::LongString(sender.into()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(own: Role) -> Trust {
        Trust::per_role(own, "of-", "shop", "admin")
    }

    fn from(user: &str) -> BasicProperties {
        BasicProperties::default().with_user_id(user.into())
    }

    #[test]
    fn a_node_takes_a_state_only_from_the_node_that_forwards_it() {
        let inventory = stack(Role::Node(Node::Inventory));
        assert!(inventory
            .check_element(Node::Inventory, OrderState::Charged, Some("of-shop.payment"))
            .is_ok());
        let forged = inventory.check_element(Node::Inventory, OrderState::Charged, Some("of-shop.intake"));
        assert!(forged.unwrap_err().contains("only from of-shop.payment"));
        assert!(inventory.check_element(Node::Inventory, OrderState::Charged, None).is_err());
        assert!(inventory.check_element(Node::Inventory, OrderState::Charged, Some("admin")).is_err());
        // Any permitted client may place an order.
        assert!(inventory.check_element(Node::Intake, OrderState::Placed, None).is_ok());
        // Picked goes to shipping from picklist (one unit) and nothing else does.
        let shipping = stack(Role::Node(Node::Shipping));
        assert!(shipping.check_element(Node::Shipping, OrderState::Picked, Some("of-shop.picklist")).is_ok());
        assert!(shipping.check_element(Node::Shipping, OrderState::Picked, Some("of-shop.rebin")).is_err());
    }

    #[test]
    fn an_event_for_a_node_comes_only_from_that_node_and_for_its_states() {
        let tracker = stack(Role::Tracker);
        assert!(tracker.check_event("shipping", "shipped", Some("of-shop.shipping")).is_ok());
        assert!(tracker.check_event("shipping", "cancelled", Some("of-shop.publisher")).is_err());
        assert!(tracker.check_event("shipping", "cancelled", Some("of-shop.shipping")).is_err());
        assert!(tracker.check_event("publisher", "placed", Some("of-shop.publisher")).is_ok());
        assert!(tracker.check_event("publisher", "shipped", Some("of-shop.publisher")).is_err());
        assert!(tracker.check_event("publisher", "placed", Some("admin")).is_ok(), "the operator's CLI");
        assert!(tracker.check_event("shipping", "shipped", Some("admin")).is_err());
        assert!(tracker.check_event("support", "change_requested", Some("of-shop.support")).is_ok());
        assert!(tracker.check_event("payment", "change_applied", Some("of-shop.payment")).is_ok());
        assert!(tracker.check_event("intake", "placed", Some("of-shop.intake")).is_ok(), "a plain order");
        assert!(tracker.check_event("payment", "placed", Some("of-shop.payment")).is_err());
        assert!(tracker.check_event("nobody", "placed", Some("of-shop.payment")).is_err());
    }

    #[test]
    fn a_recorded_sender_is_believed_only_from_the_process_itself_or_the_operator() {
        let payment = stack(Role::Node(Node::Payment));
        let headers = with_sender(FieldTable::default(), Some("of-shop.intake"));
        let retried = from("of-shop.payment").with_headers(headers.clone());
        assert_eq!(payment.sender(&retried).as_deref(), Some("of-shop.intake"));
        let replayed = from("admin").with_headers(headers.clone());
        assert_eq!(payment.sender(&replayed).as_deref(), Some("of-shop.intake"));
        let forged = from("of-shop.exceptions").with_headers(headers);
        assert_eq!(payment.sender(&forged).as_deref(), Some("of-shop.exceptions"));
        assert_eq!(payment.sender(&BasicProperties::default()), None);
        let cleared = with_sender(with_sender(FieldTable::default(), Some("x")), None);
        assert!(cleared.inner().is_empty());
    }

    #[test]
    fn each_role_writes_only_what_its_job_needs() {
        let domain = stack(Role::Domain(topology::DomainCopy::primary("catalog")));
        for (domain_name, sender, allowed) in [
            ("catalog", "of-shop.backoffice", true),
            ("catalog", "admin", true),
            ("catalog", "of-shop.publisher", false),
            ("catalog", "of-shop.support", false),
            ("customer", "of-shop.support", true),
            ("customer", "of-shop.publisher", false),
            ("distributor", "of-shop.receiving", false),
            ("customer", "of-shop.intake", false),
        ] {
            let result = domain.check_domain_write(domain_name, Some(sender));
            assert_eq!(result.is_ok(), allowed, "{sender} writing {domain_name}: {result:?}");
        }
        let inventory = stack(Role::Node(Node::Inventory));
        for (sender, allowed) in [
            ("of-shop.receiving", true),
            ("of-shop.distributor-sim", true),
            ("admin", true),
            ("of-shop.publisher", false),
            ("of-shop.backoffice", false),
        ] {
            assert_eq!(inventory.check_receipt_sender(Some(sender)).is_ok(), allowed, "{sender}");
        }
        assert!(inventory.check_receipt_sender(None).is_err());
    }

    #[test]
    fn in_shared_mode_every_role_is_the_one_user() {
        let shared = Trust::shared("guest");
        assert!(!shared.is_per_role());
        assert!(shared.check_element(Node::Shipping, OrderState::Rebinned, Some("guest")).is_ok());
        assert!(shared.check_element(Node::Shipping, OrderState::Rebinned, Some("mallory")).is_err());
        assert!(shared.check_event("shipping", "shipped", Some("guest")).is_ok());
    }
}
