//! In-flight changes: a customer's request to change an order's address,
//! shipping method or card, or to cancel it, while the order travels. Requests fan out
//! to every node; the node that holds the order (or next receives it) decides
//! here, by plain rules, whether to apply or reject it.

use crate::order::{Failure, OrderElement, OrderState, ShipTo, SCHEMA_VERSION};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use topology::workflow::{ChangeType, StateKind};
use topology::WORKFLOW;
use uuid::Uuid;

/// Namespace of change event ids: one id per (change, outcome kind).
const CHANGE_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_7763_6861_6e67_0001);

/// What the customer asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    ShipTo {
        ship_to: ShipTo,
    },
    ShippingMethod {
        shipping_method: String,
    },
    Cancel,
    /// Pay with another card: the processor's token for it (issued for this
    /// order by payment's cards service), never the number; `masked` is
    /// the number as the service showed it (`************4242`).
    Card {
        token: String,
        #[serde(default)]
        masked: String,
    },
}

impl Change {
    /// The kind of change, as the workflow definition's cut-offs name it.
    pub fn change_type(&self) -> ChangeType {
        match self {
            Change::ShipTo { .. } => ChangeType::ShipTo,
            Change::ShippingMethod { .. } => ChangeType::ShippingMethod,
            Change::Cancel => ChangeType::Cancel,
            Change::Card { .. } => ChangeType::Card,
        }
    }

    /// The change as records and books may keep it: a card change whose
    /// token is not a token (a careless client's card number, 10 KB of
    /// digits) keeps only its masked form, shortened.
    pub fn shown(&self) -> Change {
        match self {
            Change::Card { token, masked } => Change::Card {
                token: if crate::order::is_token(token) {
                    token.clone()
                } else {
                    let stars = crate::order::mask_card(token);
                    stars.chars().skip(stars.chars().count().saturating_sub(19)).collect()
                },
                masked: if is_masked_card(masked) { masked.clone() } else { String::new() },
            },
            other => other.clone(),
        }
    }

    /// Why a change is refused on arrival, before any book keeps it: a card
    /// change that is not a processor's token and a masked number (the
    /// book would keep what a careless client put there, a number perhaps).
    pub fn refused_on_arrival(&self) -> Option<String> {
        match self {
            Change::Card { token, masked } => validate_card(token, masked).err(),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Change::ShipTo { ship_to } => format!(
                "ship to {}, {}, {} {}, {}",
                ship_to.name, ship_to.line1, ship_to.postal_code, ship_to.city, ship_to.country
            ),
            Change::ShippingMethod { shipping_method } => format!("shipping method {shipping_method}"),
            Change::Cancel => "cancel".to_string(),
            Change::Card { masked, .. } if is_masked_card(masked) => format!("pay with card {masked}"),
            Change::Card { .. } => "pay with another card".to_string(),
        }
    }
}

/// The request published on the changes exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub schema_version: u32,
    pub change_id: Uuid,
    pub order_id: Uuid,
    pub change: Change,
    #[serde(with = "crate::audit::rfc3339")]
    pub requested_at: DateTime<Utc>,
    /// Synchronous requests must be applied before this time or not at all.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// The broker user that sent the request, as the node that heard it
    /// verified it (its `user_id`); whatever the body says is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
}

impl ChangeRequest {
    pub fn new(order_id: Uuid, change: Change, deadline: Option<DateTime<Utc>>) -> ChangeRequest {
        ChangeRequest {
            schema_version: SCHEMA_VERSION,
            change_id: Uuid::new_v4(),
            order_id,
            change,
            requested_at: Utc::now(),
            deadline,
            requester: None,
        }
    }
}

/// The three records every change leaves: requested, then applied or rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    ChangeRequested,
    ChangeApplied,
    ChangeRejected,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::ChangeRequested => "change_requested",
            ChangeKind::ChangeApplied => "change_applied",
            ChangeKind::ChangeRejected => "change_rejected",
        }
    }
}

/// A change record for the tracker (published on the audit exchange).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub schema_version: u32,
    pub event_id: Uuid,
    pub change_id: Uuid,
    pub order_id: Uuid,
    pub kind: ChangeKind,
    pub node: String,
    pub instance_id: String,
    #[serde(with = "crate::audit::rfc3339")]
    pub at: DateTime<Utc>,
    /// The attributes asked for (requested), what was done (applied), or why not (rejected).
    pub detail: String,
    /// The element's version after the change (applied), or when it was decided.
    pub version: u32,
    pub change: Change,
    /// The trace the record's message carried (its `traceparent` header):
    /// filled in by the tracker.
    #[serde(skip)]
    pub trace_id: Option<String>,
}

impl ChangeEvent {
    pub fn new(
        request: &ChangeRequest,
        kind: ChangeKind,
        node: &str,
        instance_id: &str,
        detail: String,
        version: u32,
    ) -> ChangeEvent {
        let name = format!("{}/{}", request.change_id, kind.as_str());
        ChangeEvent {
            schema_version: SCHEMA_VERSION,
            // Applied and rejected share an id: a change has one outcome, whoever records it.
            event_id: Uuid::new_v5(
                &CHANGE_NAMESPACE,
                if kind == ChangeKind::ChangeRequested {
                    name.as_bytes()
                } else {
                    request.change_id.as_bytes()
                },
            ),
            change_id: request.change_id,
            order_id: request.order_id,
            kind,
            node: node.to_string(),
            instance_id: instance_id.to_string(),
            at: Utc::now(),
            detail,
            version,
            change: request.change.shown(),
            trace_id: None,
        }
    }
}

/// A node's decision on one change for the element it holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Apply,
    Reject(String),
}

/// The rules: a change is rejected once its cut-off in the workflow
/// definition has passed (the shipping method closes at picking), and for
/// terminal orders, orders being cancelled, invalid attributes and
/// synchronous requests past their deadline. Otherwise it applies: an address
/// can change and an order be cancelled until it is shipped.
/// Who may change an order: the user that placed it (`placed_by`, verified
/// by intake), customer support, or the operator. Everyone else's requests
/// are rejected with the reason, and recorded like any other decision.
#[derive(Clone, Debug)]
pub struct ChangeAuthority {
    /// The stack's customer-support user.
    pub support: String,
    /// The administrator (see `Settings::operator_user`).
    pub operator: String,
    /// The domains that send their edits to the orders that copied them
    /// (the customer primary's user): each may change the address of an
    /// order placed by reference, nothing else.
    pub domains: Vec<String>,
}

impl ChangeAuthority {
    pub fn check(&self, element: &OrderElement, request: &ChangeRequest) -> Result<(), String> {
        let Some(requester) = request.requester.as_deref() else {
            return Err("the request names no requester (no user_id): only the user that placed the order \
                        or customer support may change it"
                .into());
        };
        if [self.support.as_str(), self.operator.as_str()].contains(&requester)
            || Some(requester) == element.placed_by.as_deref()
        {
            return Ok(());
        }
        if self.domains.iter().any(|domain| domain == requester) {
            let from = element.from_domains.as_ref();
            let copied_address = from.is_some_and(|from| !from.address_id.is_empty());
            let pays_on_file = from.is_some_and(|from| from.card_on_file.is_some());
            return match &request.change {
                Change::ShipTo { .. } if copied_address => Ok(()),
                Change::Card { .. } if pays_on_file => Ok(()),
                _ => Err(format!(
                    "{} may change only the address or the card on file an order copied from it",
                    crate::text::escaped(requester)
                )),
            };
        }
        let placer = element.placed_by.as_deref().map(crate::text::escaped);
        Err(format!(
            "{} may not change this order: only {} or customer support ({}) may",
            crate::text::escaped(requester),
            placer
                .map(|p| format!("{p}, who placed it,"))
                .unwrap_or_else(|| "the user that placed it".into()),
            self.support
        ))
    }
}

pub fn decide(element: &OrderElement, request: &ChangeRequest, now: DateTime<Utc>) -> Decision {
    if let Some(deadline) = request.deadline {
        if now > deadline {
            return Decision::Reject(
                "the synchronous request's deadline passed before a node could apply it".into(),
            );
        }
    }
    let state = element.state;
    // The order's own definition: its version's cut-offs, whatever is deployed now.
    let definition = crate::routing::definition(element).unwrap_or(&WORKFLOW);
    if definition.is_terminal(state) {
        return Decision::Reject(format!("the order is already {state}"));
    }
    if definition.kind(state) == Some(StateKind::Compensation) || element.failure.is_some() {
        return Decision::Reject("the order is being cancelled or compensated".into());
    }
    let change_type = request.change.change_type();
    if let (ChangeType::Card, Some(charge)) = (change_type, &element.charge) {
        return Decision::Reject(format!("already charged on card ending {}", charge.card_last4));
    }
    if let Some(cut_off) = definition.closed_by(change_type, state) {
        return Decision::Reject(format!(
            "the {} cannot change: the order was already {cut_off}",
            change_type.noun()
        ));
    }
    match &request.change {
        Change::ShipTo { ship_to } => match validate_ship_to(ship_to) {
            Ok(()) => Decision::Apply,
            Err(reason) => Decision::Reject(reason),
        },
        Change::ShippingMethod { shipping_method } => {
            if !crate::order::SHIPPING_METHODS.contains(&shipping_method.as_str()) {
                return Decision::Reject(format!(
                    "{shipping_method:?} is not one of standard, express, overnight"
                ));
            }
            Decision::Apply
        }
        Change::Cancel => Decision::Apply,
        Change::Card { token, masked } => match validate_card(token, masked) {
            Ok(()) => Decision::Apply,
            Err(reason) => Decision::Reject(reason),
        },
    }
}

/// Whether `masked` is a card number as a service shows it: stars, then its
/// last four digits (13 to 19 characters in all).
pub fn is_masked_card(masked: &str) -> bool {
    let digits = masked.trim_start_matches('*');
    (13..=19).contains(&masked.len()) && digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A card change carries a processor's token (whose order the paying node
/// checks in the vault) and perhaps its masked number: never a number.
fn validate_card(token: &str, masked: &str) -> Result<(), String> {
    if crate::order::is_card_number(token) || crate::order::is_card_number(&token.replace([' ', '-'], "")) {
        return Err("a card change carries the processor's token for the card, never its number: \
                    `orderflow change ID --card-file` has payment's cards service tokenize it"
            .into());
    }
    if !(token.starts_with(crate::order::PROCESSOR_TOKEN_PREFIX) && crate::order::is_token(token)) {
        return Err(
            "the card change carries no token the card processor issues (ptok_ and 32 hex digits)".into()
        );
    }
    if !masked.is_empty() && !is_masked_card(masked) {
        return Err("the card change's masked number is not stars and four digits".into());
    }
    Ok(())
}

fn validate_ship_to(to: &ShipTo) -> Result<(), String> {
    for (field, value) in [
        ("name", &to.name),
        ("line1", &to.line1),
        ("city", &to.city),
        ("postal_code", &to.postal_code),
        ("country", &to.country),
    ] {
        if value.trim().is_empty() {
            return Err(format!("incomplete ship-to address: {field} is missing"));
        }
        if value.chars().count() > 200 || value.chars().any(char::is_control) {
            return Err(format!("invalid ship-to address: {field} is too long or has control characters"));
        }
    }
    Ok(())
}

/// Applies an accepted change to the element: its version goes up by one. A
/// cancel marks the element to end `cancelled` after its compensations.
pub fn apply(element: &mut OrderElement, request: &ChangeRequest) {
    match &request.change {
        Change::ShipTo { ship_to } => element.order.ship_to = ship_to.clone(),
        Change::ShippingMethod { shipping_method } => element.order.shipping_method = shipping_method.clone(),
        Change::Card { token, .. } => {
            // The vault keeps the card's expiry with its number.
            element.order.payment =
                crate::order::PaymentCard { card_number: token.clone(), expiry: String::new() };
        }
        Change::Cancel => {
            element.failure = Some(Failure {
                ends_as: OrderState::Cancelled,
                reason: format!("cancelled by the customer (change {})", request.change_id),
            });
        }
    }
    element.version += 1;
    element.resolved_changes.push(request.change_id);
}

/// What a node does instead of its own work when it has just applied a
/// cancel: an order with money or stock to give back starts its
/// compensations (`cancelling`); one without ends `cancelled` at once.
pub fn cancel_outcome(element: OrderElement) -> crate::stage::Outcome {
    let reason = element.failure.as_ref().map(|f| f.reason.clone()).unwrap_or_else(|| "cancelled".into());
    let outcome = crate::stage::Outcome::new(element.clone());
    if element.charge.is_some() || element.reservation.is_some() {
        outcome.step(OrderState::Cancelling, format!("{reason}; compensating"))
    } else {
        outcome.step(OrderState::Cancelled, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Order;

    fn at(state: OrderState) -> OrderElement {
        OrderElement { state, ..OrderElement::placed(Order::default()) }
    }

    fn request(change: Change) -> ChangeRequest {
        ChangeRequest::new(Uuid::new_v4(), change, None)
    }

    fn address() -> ShipTo {
        ShipTo {
            name: "A".into(),
            line1: "1 B St".into(),
            city: "C".into(),
            postal_code: "1".into(),
            country: "DE".into(),
        }
    }

    #[test]
    fn only_the_placer_or_support_may_change_an_order() {
        let authority = ChangeAuthority {
            support: "of-shop.support".into(),
            operator: "admin".into(),
            domains: vec!["of-shop.customer".into()],
        };
        let mut element = at(OrderState::Accepted);
        element.placed_by = Some("of-shop.publisher".into());
        let mut cancel = request(Change::Cancel);
        assert!(authority.check(&element, &cancel).unwrap_err().contains("no requester"));
        cancel.requester = Some("of-shop.publisher".into());
        assert!(authority.check(&element, &cancel).is_ok());
        cancel.requester = Some("of-shop.support".into());
        assert!(authority.check(&element, &cancel).is_ok());
        cancel.requester = Some("mallory".into());
        let refused = authority.check(&element, &cancel).unwrap_err();
        assert!(
            refused.contains("mallory may not change") && refused.contains("of-shop.publisher"),
            "{refused}"
        );
        element.placed_by = None;
        cancel.requester = Some("of-shop.publisher".into());
        assert!(
            authority.check(&element, &cancel).is_err(),
            "an order placed anonymously is support's alone"
        );
        // The customer domain may move the address of an order that copied one, and nothing else.
        cancel.requester = Some("of-shop.customer".into());
        assert!(authority
            .check(&element, &cancel)
            .unwrap_err()
            .contains("only the address or the card on file"));
        let mut move_it = request(Change::ShipTo { ship_to: ShipTo::default() });
        move_it.requester = Some("of-shop.customer".into());
        assert!(
            authority.check(&element, &move_it).is_err(),
            "an order with its own address is not the domain's"
        );
        element.from_domains =
            Some(crate::order::FromDomains { address_id: "A1".into(), ..Default::default() });
        assert!(authority.check(&element, &move_it).is_ok());
    }

    #[test]
    fn cut_off_points() {
        let method = request(Change::ShippingMethod { shipping_method: "express".into() });
        assert_eq!(decide(&at(OrderState::Reserved), &method, Utc::now()), Decision::Apply);
        assert!(
            matches!(decide(&at(OrderState::Picked), &method, Utc::now()), Decision::Reject(r) if r.contains("picked"))
        );
        let address = request(Change::ShipTo { ship_to: address() });
        assert_eq!(decide(&at(OrderState::Rebinned), &address, Utc::now()), Decision::Apply);
        assert!(
            matches!(decide(&at(OrderState::Shipped), &address, Utc::now()), Decision::Reject(r) if r.contains("already shipped"))
        );
        let cancel = request(Change::Cancel);
        assert_eq!(decide(&at(OrderState::Picked), &cancel, Utc::now()), Decision::Apply);
        assert!(matches!(decide(&at(OrderState::Cancelling), &cancel, Utc::now()), Decision::Reject(_)));
    }

    #[test]
    fn an_order_keeps_the_cut_offs_of_the_version_it_started_on() {
        let method = request(Change::ShippingMethod { shipping_method: "express".into() });
        let on = |version: u32| OrderElement { workflow_version: version, ..at(OrderState::Reserved) };
        assert_eq!(decide(&on(1), &method, Utc::now()), Decision::Apply, "version 1 closes it at picked");
        assert!(
            matches!(decide(&on(2), &method, Utc::now()), Decision::Reject(r) if r.contains("already reserved")),
            "version 2 closes it at reserved"
        );
    }

    #[test]
    fn bad_attributes_and_late_sync_requests_are_rejected() {
        let mut incomplete = address();
        incomplete.city.clear();
        let r = request(Change::ShipTo { ship_to: incomplete });
        assert!(
            matches!(decide(&at(OrderState::Accepted), &r, Utc::now()), Decision::Reject(m) if m.contains("city"))
        );
        let mut late = request(Change::Cancel);
        late.deadline = Some(Utc::now() - chrono::Duration::seconds(1));
        assert!(
            matches!(decide(&at(OrderState::Accepted), &late, Utc::now()), Decision::Reject(m) if m.contains("deadline"))
        );
    }

    #[test]
    fn a_card_change_carries_a_token_until_the_order_is_charged() {
        let token = format!("ptok_{}", Uuid::new_v4().simple());
        let card =
            |token: &str, masked: &str| request(Change::Card { token: token.into(), masked: masked.into() });
        let good = card(&token, "************4242");
        assert_eq!(decide(&at(OrderState::Accepted), &good, Utc::now()), Decision::Apply);
        assert_eq!(decide(&at(OrderState::AwaitingPayment), &good, Utc::now()), Decision::Apply);
        assert_eq!(good.change.describe(), "pay with card ************4242");
        let mut charged = at(OrderState::Charged);
        charged.charge = Some(crate::order::Charge {
            charge_id: Uuid::new_v4(),
            amount_cents: 100,
            card_last4: "1111".into(),
        });
        let reject = |element: &OrderElement, r: &ChangeRequest| match decide(element, r, Utc::now()) {
            Decision::Reject(reason) => reason,
            Decision::Apply => panic!("applied {:?}", r.change),
        };
        assert_eq!(reject(&charged, &good), "already charged on card ending 1111");
        assert!(reject(&at(OrderState::Backordered), &good).contains("already charged"));
        for (token, masked, why) in [
            ("4111111111111111", "", "never its number"),
            ("4111 1111 1111 1111", "", "never its number"),
            ("tok_0123456789abcdef0123456789abcdef", "", "no token the card processor issues"),
            ("ptok_xyz", "", "no token the card processor issues"),
            (&"9".repeat(10_000), "", "no token"),
            ("", "", "no token"),
            (token.as_str(), "4111111111111111", "masked number"),
            (token.as_str(), "\u{7}***4242", "masked number"),
        ] {
            let reason = reject(&at(OrderState::Accepted), &card(token, masked));
            assert!(reason.contains(why), "{reason}");
            assert!(!reason.contains("4111111111111111"), "the reason echoes no number: {reason}");
        }
        // A careless client's number is refused before any book keeps it, and no record shows it.
        let careless = card("4111111111111111", "4111111111111111");
        assert!(careless.change.refused_on_arrival().unwrap().contains("never its number"));
        assert!(!format!("{:?}", careless.change.shown()).contains("4111111111111111"));
        let record =
            ChangeEvent::new(&careless, ChangeKind::ChangeRejected, "payment", "p-1", String::new(), 0);
        assert!(!serde_json::to_string(&record).unwrap().contains("4111111111111111"));
        assert_eq!(good.change.refused_on_arrival(), None);
        assert_eq!(good.change.shown(), good.change);
        let mut element = at(OrderState::AwaitingPayment);
        apply(&mut element, &good);
        assert_eq!(element.order.payment.card_number, token);
    }

    #[test]
    fn applying_bumps_the_version_and_records_the_change() {
        let mut element = at(OrderState::Charged);
        let r = request(Change::ShippingMethod { shipping_method: "overnight".into() });
        apply(&mut element, &r);
        assert_eq!(element.version, 1);
        assert_eq!(element.order.shipping_method, "overnight");
        assert_eq!(element.resolved_changes, vec![r.change_id]);
    }

    #[test]
    fn outcome_records_of_one_change_share_an_id() {
        let r = request(Change::Cancel);
        let applied = ChangeEvent::new(&r, ChangeKind::ChangeApplied, "payment", "p-1", String::new(), 1);
        let rejected = ChangeEvent::new(&r, ChangeKind::ChangeRejected, "tracker", "t-1", String::new(), 0);
        let requested = ChangeEvent::new(&r, ChangeKind::ChangeRequested, "publisher", "c", String::new(), 0);
        assert_eq!(applied.event_id, rejected.event_id);
        assert_ne!(applied.event_id, requested.event_id);
    }
}
