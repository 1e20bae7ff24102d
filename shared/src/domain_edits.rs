//! Domain edits reaching the orders that copied the old data (the
//! manifesto's "data may change while a workflow element is making its way"):
//! intake's `accepted` event of an order placed by reference says what the
//! order copied from the customer domain ([`Copied`]: the address it named
//! or the default, the copy and change number it read, the address's
//! fingerprint); the customer primary hears those events and its own change
//! stream, and for every change after an order's copy that moves the
//! address the order ships to, sends that order a `ship_to` change request
//! as its requester ([`moved_address`], [`edit_request`]).
//!
//! Pure decisions here, no AMQP: `workers::domains::edits` runs them.

use crate::change::{Change, ChangeRequest};
use crate::domains::{address_fingerprint, card_fingerprint, AsOf, CardOnFile, Customer};
use crate::order::{OrderElement, OrderState, ShipTo};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of the change ids of edits: one id per (order, change number).
const EDIT_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_7765_6469_7473_0001);

/// The state whose event says what an order copied (intake's `accepted`).
pub const COPIES_SAID_AT: OrderState = OrderState::Accepted;

/// What an order copied from the customer domain at intake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copied {
    pub customer_id: String,
    /// The address the order named; `None`: it took the customer's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_id: Option<String>,
    /// Which copy answered, as of which change.
    pub as_of: AsOf,
    /// The fingerprint of the address copied (empty: the order brought its own).
    pub fingerprint: String,
    /// The fingerprint of the card on file it pays with, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
}

impl Copied {
    /// What `element` copied, when it was accepted by reference with an
    /// address of the customer's (else `None`: nothing to follow); said by
    /// the event of its step to [`COPIES_SAID_AT`].
    pub fn of(element: &OrderElement) -> Option<Copied> {
        let from = element.from_domains.as_ref()?;
        let as_of = from.customer_as_of.clone()?;
        if from.address_fingerprint.is_empty() && from.card_fingerprint.is_empty() {
            return None;
        }
        Some(Copied {
            customer_id: element.order.customer_id.clone(),
            address_id: element.order.address_id.clone(),
            as_of,
            fingerprint: from.address_fingerprint.clone(),
            card: Some(from.card_fingerprint.clone()).filter(|card| !card.is_empty()),
        })
    }
}

/// Where an order that copied `copied` ships to after the customer became
/// `customer`: the new address when it moved, `None` when it did not (or
/// the address is gone, which leaves the order with what it copied).
pub fn moved_address(copied: &Copied, customer: &Customer) -> Option<(ShipTo, String)> {
    if copied.fingerprint.is_empty() {
        return None; // the order brought its own address
    }
    let (_, ship_to) = customer.ship_to(copied.address_id.as_deref())?;
    let fingerprint = address_fingerprint(&ship_to);
    (fingerprint != copied.fingerprint).then_some((ship_to, fingerprint))
}

/// The customer's new card on file when it is not the one the order pays
/// with (`None` when the order pays otherwise, or with the same card).
pub fn new_card<'a>(copied: &Copied, customer: &'a Customer) -> Option<(&'a CardOnFile, String)> {
    let paid_with = copied.card.as_ref()?;
    let card = customer.card.as_ref()?;
    let fingerprint = card_fingerprint(card);
    (fingerprint != *paid_with).then_some((card, fingerprint))
}

/// The change request an edit (change number `seq` of the customer domain,
/// made by the primary of `epoch`) makes for `order_id`: always the same id
/// for the same order, edit and kind of change, so an edit forwarded twice
/// (after a crash) is one change at the nodes. After a promotion a number
/// may be made again (the old primary's last changes were lost): the epoch
/// tells the two apart.
pub fn edit_request(order_id: Uuid, epoch: i64, seq: i64, change: Change) -> ChangeRequest {
    let noun = change.change_type().noun();
    let name = match epoch {
        ..=1 => format!("{order_id}:{seq}:{noun}"),
        _ => format!("{order_id}:{epoch}.{seq}:{noun}"),
    };
    let mut request = ChangeRequest::new(order_id, change, None);
    request.change_id = Uuid::new_v5(&EDIT_NAMESPACE, name.as_bytes());
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::Address;

    fn address(id: &str, line1: &str, default: bool) -> Address {
        Address {
            address_id: id.into(),
            line1: line1.into(),
            city: "Leeds".into(),
            postal_code: "LS1".into(),
            country: "GB".into(),
            default,
        }
    }

    fn customer(addresses: Vec<Address>) -> Customer {
        Customer {
            customer_id: "C-1".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            addresses,
            card: None,
            as_of: None,
        }
    }

    fn copied(customer: &Customer, address_id: Option<&str>) -> Copied {
        let (_, ship_to) = customer.ship_to(address_id).unwrap();
        Copied {
            customer_id: customer.customer_id.clone(),
            address_id: address_id.map(String::from),
            as_of: AsOf { copy: "customer".into(), seq: 3, stale_ms: None },
            fingerprint: address_fingerprint(&ship_to),
            card: customer.card.as_ref().map(card_fingerprint),
        }
    }

    #[test]
    fn a_new_default_moves_the_orders_that_took_the_default_and_no_other() {
        let before = customer(vec![address("A1", "1 Old St", true), address("A2", "2 Side St", false)]);
        let took_default = copied(&before, None);
        let named_a1 = copied(&before, Some("A1"));
        let named_a2 = copied(&before, Some("A2"));
        let after = customer(vec![address("A1", "1 Old St", false), address("A2", "2 Side St", true)]);
        let (to, fingerprint) = moved_address(&took_default, &after).expect("the default moved");
        assert_eq!(to.line1, "2 Side St");
        assert_ne!(fingerprint, took_default.fingerprint);
        assert_eq!(moved_address(&named_a1, &after), None, "A1 itself did not change");
        assert_eq!(moved_address(&named_a2, &after), None);
    }

    #[test]
    fn an_edited_address_moves_the_orders_that_named_it() {
        let before = customer(vec![address("A1", "1 Old St", true), address("A2", "2 Side St", false)]);
        let named_a2 = copied(&before, Some("A2"));
        let after = customer(vec![address("A1", "1 Old St", true), address("A2", "9 New Rd", false)]);
        assert_eq!(moved_address(&named_a2, &after).unwrap().0.line1, "9 New Rd");
        assert_eq!(moved_address(&copied(&before, None), &after), None, "the default is still A1");
        // The same edit forwarded twice is the same change.
        let id = Uuid::new_v4();
        let to = Change::ShipTo { ship_to: after.ship_to(Some("A2")).unwrap().1 };
        assert_eq!(
            edit_request(id, 1, 7, to.clone()).change_id,
            edit_request(id, 1, 7, to.clone()).change_id
        );
        assert_ne!(
            edit_request(id, 1, 7, to.clone()).change_id,
            edit_request(id, 1, 8, to.clone()).change_id
        );
        // Change 7 made again by a promoted primary is another edit.
        assert_ne!(
            edit_request(id, 1, 7, to.clone()).change_id,
            edit_request(id, 2, 7, to.clone()).change_id
        );
        let card = Change::Card { token: String::new(), masked: String::new() };
        assert_ne!(edit_request(id, 1, 7, to).change_id, edit_request(id, 1, 7, card).change_id);
    }

    #[test]
    fn a_new_card_on_file_reaches_the_orders_that_pay_with_the_old_one() {
        let card = |token: &str| CardOnFile {
            masked: "************1111".into(),
            expiry: "12/30".into(),
            token: token.into(),
        };
        let mut before = customer(vec![address("A1", "1 Old St", true)]);
        before.card = Some(card("tok_0123456789abcdef0123456789abcdef"));
        let paying = copied(&before, None);
        let mut own_card = paying.clone();
        own_card.card = None;
        let mut after = before.clone();
        after.card = Some(card("tok_fedcba9876543210fedcba9876543210"));
        assert_eq!(new_card(&paying, &after).unwrap().0.token, "tok_fedcba9876543210fedcba9876543210");
        assert_eq!(new_card(&paying, &before), None, "the same card");
        assert_eq!(new_card(&own_card, &after), None, "an order that brought its card");
        assert_eq!(moved_address(&paying, &after), None, "the address did not move");
    }
}
