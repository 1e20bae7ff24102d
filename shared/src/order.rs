//! The workflow element: a customer order plus everything the nodes have
//! added to it (charge, reservation, picklist, tracking number). It is
//! self-contained, so a node never has to look anything up elsewhere.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The shipping methods the distribution center offers.
pub const SHIPPING_METHODS: [&str; 3] = ["standard", "express", "overnight"];

/// Version of the element's JSON schema, carried in every message's headers.
pub const SCHEMA_VERSION: u32 = 1;

/// The order as the customer placed it (the publish command's JSON).
/// Every field has a default so that an incomplete order still reaches intake
/// and is rejected there with a reason, instead of being lost in decoding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Order {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
    pub customer_id: String,
    /// Which of the customer's addresses to ship to (an order by reference:
    /// intake copies it from the customer domain; without it and without a
    /// ship-to address, the customer's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_id: Option<String>,
    pub items: Vec<Item>,
    pub shipping_method: String,
    pub ship_to: ShipTo,
    pub payment: PaymentCard,
    /// The workflow the order asks for by name (none: `standard`); intake
    /// rejects a name this distribution center does not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Item {
    pub sku: String,
    pub qty: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipTo {
    pub name: String,
    pub line1: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PaymentCard {
    /// The full number until payment has run; masked (`************1234`) after.
    pub card_number: String,
    /// `MM/YY`.
    pub expiry: String,
}

/// Every state an order can be in: named by the workflow definition.
pub use topology::OrderState;

/// The charge payment made, carried so that exceptions can refund it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub charge_id: Uuid,
    pub amount_cents: i64,
    pub card_last4: String,
}

/// The stock inventory reserved for the order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub reservation_id: Uuid,
}

/// Why an order left the happy path, and the terminal state exceptions gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub ends_as: OrderState,
    pub reason: String,
}

/// The prefix of a card-on-file token: intake puts the customer's token in
/// the card field of an order that brings no card; the processor charges the
/// card it stands for.
pub const CARD_TOKEN_PREFIX: &str = "tok_";

/// The prefix of a token the card processor issued for one order's card:
/// the door that took the order (intake, or the coordinator for a directed
/// order) hands the number to the processor and the element carries this
/// instead, bound to that order (`workers::processor`'s vault).
pub const PROCESSOR_TOKEN_PREFIX: &str = "ptok_";

/// Whether a card field holds a token of either kind (`prefix` and 32 hex
/// digits), not a card number.
pub fn is_token(card: &str) -> bool {
    [CARD_TOKEN_PREFIX, PROCESSOR_TOKEN_PREFIX].iter().any(|prefix| {
        card.strip_prefix(prefix)
            .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// The longest card expiry intake takes (`MM/YY` with room for a careless
/// client's spaces; payment declines what is not a month).
pub const MAX_EXPIRY_CHARS: usize = 16;

/// Whether a card field holds a card number as intake takes one: 13 to 19 digits.
pub fn is_card_number(card: &str) -> bool {
    (13..=19).contains(&card.len()) && card.bytes().all(|b| b.is_ascii_digit())
}

/// Which copy of a domain answered a read, and the number of the last
/// change that copy held when it read (its log's head at the primary, its
/// position at a replica): the record is at least that recent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsOf {
    /// The copy's label: `customer`, `customer@uk`.
    pub copy: String,
    pub seq: i64,
    /// A replica's answer: how far behind its primary it may be, in ms
    /// (since the last moment it knew it held every change); `None` at the
    /// primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_ms: Option<i64>,
}

/// What intake copied from the domains into an element.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FromDomains {
    /// The address the order ships to (its id at the customer).
    pub address_id: String,
    /// Each item's catalog entry, in the order's item order.
    pub items: Vec<CatalogLine>,
    /// The masked number of the card on file, when the order is charged to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_on_file: Option<String>,
    /// Which copy of the customer domain answered, as of which change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_as_of: Option<AsOf>,
    /// The fingerprint of the address copied (`domains::address_fingerprint`),
    /// so that a later edit of it can tell this order ships to the old one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address_fingerprint: String,
    /// The fingerprint of the card on file it pays with
    /// (`domains::card_fingerprint`), when it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub card_fingerprint: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogLine {
    pub sku: String,
    pub title: String,
    pub price_cents: i64,
    pub weight_grams: i64,
    /// Which copy of the catalog answered, as of which change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOf>,
}

/// The self-contained workflow element that travels between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderElement {
    pub schema_version: u32,
    pub order_id: Uuid,
    /// Increases with every applied in-flight change.
    pub version: u32,
    /// Number of state changes so far; orders the history and keys audit events.
    pub seq: u32,
    pub state: OrderState,
    pub placed_at: DateTime<Utc>,
    pub order: Order,
    #[serde(default)]
    pub charge: Option<Charge>,
    #[serde(default)]
    pub reservation: Option<Reservation>,
    #[serde(default)]
    pub picklist_id: Option<Uuid>,
    #[serde(default)]
    pub failure: Option<Failure>,
    #[serde(default)]
    pub tracking_number: Option<String>,
    /// In-flight changes already applied or rejected for this element.
    #[serde(default)]
    pub resolved_changes: Vec<Uuid>,
    /// What intake read from the data domains for an order placed by
    /// reference (the customer's name and address, each item's catalog
    /// entry, the card on file), so that no later node asks a domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_domains: Option<FromDomains>,
    /// The broker user that placed the order, as intake verified it (set by
    /// intake from the message's `user_id`, whatever the body says; `None`
    /// when the order came without one). Decides who may change the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_by: Option<String>,
    /// Where the order's outcome goes when it ends, as its placer named it
    /// on the placing message (`crate::answer`; set at the door, never from a body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_to: Option<crate::answer::AnswerTo>,
    /// The workflow definition the element follows, by name and version:
    /// intake sets them, and every node checks them against the
    /// definitions it knows (an element from before workflows had names is
    /// `standard` v1).
    #[serde(default = "standard_workflow")]
    pub workflow: String,
    #[serde(default = "first_version")]
    pub workflow_version: u32,
}

fn standard_workflow() -> String {
    topology::WORKFLOW.name.to_string()
}

fn first_version() -> u32 {
    1
}

impl OrderElement {
    /// A freshly placed order; the order id is taken from the order or generated.
    pub fn placed(mut order: Order) -> OrderElement {
        let order_id = order.order_id.take().unwrap_or_else(Uuid::new_v4);
        OrderElement {
            schema_version: SCHEMA_VERSION,
            order_id,
            version: 0,
            seq: 0,
            state: OrderState::Placed,
            placed_at: Utc::now(),
            order,
            charge: None,
            reservation: None,
            picklist_id: None,
            failure: None,
            tracking_number: None,
            resolved_changes: Vec::new(),
            from_domains: None,
            placed_by: None,
            answer_to: None,
            workflow: standard_workflow(),
            workflow_version: topology::WORKFLOW.version,
        }
    }

    /// Units over all items (negative quantities count as zero).
    pub fn total_units(&self) -> i64 {
        self.order.items.iter().map(|i| i.qty.max(0)).sum()
    }
}

/// Masks a card number to its last four digits: `************1234`.
pub fn mask_card(card_number: &str) -> String {
    let digits: Vec<char> = card_number.chars().filter(|c| c.is_ascii_digit()).collect();
    let last4: String = digits.iter().skip(digits.len().saturating_sub(4)).collect();
    format!("{}{last4}", "*".repeat(digits.len().saturating_sub(4)))
}

/// The last four digits of a card number.
pub fn card_last4(card_number: &str) -> String {
    mask_card(card_number).trim_start_matches('*').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_only_last_four_digits() {
        assert_eq!(mask_card("4111111111111111"), "************1111");
        assert_eq!(card_last4("4111 1111 1111 1234"), "1234");
        assert_eq!(mask_card("12"), "12");
    }

    #[test]
    fn incomplete_order_json_still_decodes() {
        let order: Order = serde_json::from_str(r#"{"customer_id":"c1"}"#).unwrap();
        assert!(order.items.is_empty());
        assert_eq!(order.ship_to.city, "");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in OrderState::all() {
            assert_eq!(OrderState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }
}
