//! Building a self-contained element from the data domains: an order placed
//! *by reference* names only its customer (and perhaps one of the
//! customer's addresses) and SKUs with quantities; intake reads the
//! customer and each item's catalog entry once and copies into the element
//! what later nodes need (the ship-to name and address, the card on file
//! when the order brings none, each item's title, price and weight), so no
//! later node asks a domain.
//!
//! `by_reference` says which orders need it (an order that brings its full
//! address and card, as ever, does not); `lookup` reads the domains, where
//! an unreachable or slow domain is a transient failure, never a rejection;
//! `enrich` is the plain rule on what was read: an unknown customer,
//! address or SKU, or a withdrawn item, rejects the order with the reason.
//!
//! A card token (`tok_...`, a card on file) pays only for its own
//! customer's orders: an order that brings one in its card field, by
//! reference or with its full address, is accepted only when the token is
//! the card on file of the order's customer as the customer domain answers
//! it (`check_card_token`); the domain shows tokens to intake alone.

use crate::domain_reads::DomainReads;
use shared::domains::{CardOnFile, CatalogItem, Customer, CustomerRequest, RecordRequest};
use shared::order::{CatalogLine, FromDomains, Order, CARD_TOKEN_PREFIX};
use shared::stage::StageError;
use std::collections::BTreeMap;
use topology::DomainCopy;

/// Whether intake must read the domains for this order: it names an
/// address of the customer's, or brings no ship-to address at all (a
/// partial address is the customer's mistake, rejected as ever). Only such
/// an order may also leave out its card (the card on file is charged).
pub fn by_reference(order: &Order) -> bool {
    let to = &order.ship_to;
    let no_address =
        [&to.name, &to.line1, &to.city, &to.postal_code, &to.country].iter().all(|f| f.is_empty());
    order.address_id.is_some() || no_address
}

/// Whether an order's card field holds a processor token (a card on file)
/// rather than a card number.
pub fn is_card_token(card_number: &str) -> bool {
    card_number.starts_with(CARD_TOKEN_PREFIX)
}

/// A token in the order's card field must be the card on file of the
/// order's customer (`customer`: what the customer domain answered for
/// `order.customer_id`), and the order must ship to one of that customer's
/// addresses on file (a customer id is only what the order says; the
/// address keeps a leaked token and id from shipping to a stranger); `Ok`
/// gives that card. The reason names neither the token nor the address.
/// Only for an order whose card field is a token.
pub fn check_card_token<'a>(
    order: &Order,
    customer: Result<&'a Customer, &str>,
) -> Result<&'a CardOnFile, String> {
    let id = shared::text::escaped(&order.customer_id.chars().take(64).collect::<String>());
    if order.customer_id.trim().is_empty() {
        return Err(
            "a card token pays only for its customer's orders, and the order names no customer".into()
        );
    }
    let customer = customer.map_err(|reason| {
        format!("the card token does not belong to customer {id} (unknown customer: {reason})")
    })?;
    let card = customer
        .card
        .as_ref()
        .ok_or_else(|| format!("the card token does not belong to customer {id} (no card on file)"))?;
    if card.token.is_empty() {
        return Err(format!(
            "the customer domain did not show intake the card token of customer {id} (is intake running as its own user?)"
        ));
    }
    if !same_secret(&card.token, &order.payment.card_number) {
        return Err(format!("the card token does not belong to customer {id}"));
    }
    let to = &order.ship_to;
    let on_file = customer.addresses.iter().any(|a| {
        let same = |kept: &str, given: &str| kept.trim() == given.trim();
        same(&a.line1, &to.line1)
            && same(&a.city, &to.city)
            && same(&a.postal_code, &to.postal_code)
            && same(&a.country, &to.country)
    });
    if !on_file {
        return Err(format!(
            "a card on file pays only for delivery to its customer's addresses on file, and the ship-to address is not one of customer {id}'s"
        ));
    }
    Ok(card)
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// What the domains answered for one order: the customer (or why not), and
/// each distinct SKU's catalog entry (or why not).
#[derive(Debug, Default)]
pub struct Lookups {
    pub customer: Option<Result<Customer, String>>,
    pub items: BTreeMap<String, Result<CatalogItem, String>>,
}

/// The order filled in from what was read, and the record of it; `Err` is
/// the reason to reject the order.
pub fn enrich(mut order: Order, lookups: &Lookups) -> Result<(Order, FromDomains), String> {
    let customer = match &lookups.customer {
        Some(Ok(customer)) => customer,
        Some(Err(reason)) => return Err(format!("unknown customer: {reason}")),
        None => return Err("the customer was not looked up".into()),
    };
    let given_address = !order.ship_to.line1.is_empty();
    let address = match (&order.address_id, given_address) {
        (Some(id), _) => Some(
            customer
                .address(Some(id))
                .ok_or_else(|| format!("customer {} has no address {id:?}", customer.customer_id))?,
        ),
        (None, false) => Some(
            customer
                .address(None)
                .ok_or_else(|| format!("customer {} has no address", customer.customer_id))?,
        ),
        (None, true) => None,
    };
    let (address_id, address_fingerprint) = match address {
        Some(address) => {
            let (_, ship_to) =
                customer.ship_to(Some(&address.address_id)).expect("the address was found above");
            let fingerprint = shared::domains::address_fingerprint(&ship_to);
            order.ship_to = ship_to;
            (address.address_id.clone(), fingerprint)
        }
        None => (String::new(), String::new()),
    };
    let (mut card_on_file, mut card_fingerprint) = (None, String::new());
    if order.payment.card_number.is_empty() {
        let card = customer.card.as_ref().ok_or_else(|| {
            format!("the order brings no card and customer {} has none on file", customer.customer_id)
        })?;
        if card.token.is_empty() {
            return Err(format!(
                "the customer domain did not show intake the card token of customer {} (is intake running as its own user?)",
                customer.customer_id
            ));
        }
        order.payment.card_number = card.token.clone();
        order.payment.expiry = card.expiry.clone();
        card_on_file = Some(card.masked.clone());
        card_fingerprint = shared::domains::card_fingerprint(card);
    } else if is_card_token(&order.payment.card_number) {
        // A token the order brings: its customer's card on file, or nothing.
        let card = check_card_token(&order, Ok(customer))?;
        order.payment.expiry = card.expiry.clone();
        card_on_file = Some(card.masked.clone());
        card_fingerprint = shared::domains::card_fingerprint(card);
    }
    let mut items = Vec::new();
    for item in &order.items {
        match lookups.items.get(&item.sku) {
            Some(Ok(entry)) if entry.status == "withdrawn" => {
                return Err(format!("SKU {:?} is withdrawn from the catalog", entry.sku))
            }
            Some(Ok(entry)) => items.push(CatalogLine {
                sku: entry.sku.clone(),
                title: entry.title.clone(),
                price_cents: entry.price_cents,
                weight_grams: entry.weight_grams,
                as_of: entry.as_of.clone(),
            }),
            Some(Err(reason)) => return Err(format!("SKU not in the catalog: {reason}")),
            None => return Err(format!("SKU {:?} was not looked up", shared::text::escaped(&item.sku))),
        }
    }
    let customer_as_of = customer.as_of.clone();
    let from = FromDomains {
        address_id,
        items,
        card_on_file,
        customer_as_of,
        address_fingerprint,
        card_fingerprint,
    };
    Ok((order, from))
}

/// Reads the customer `customer_id` at the primary: the customer, or
/// why not (an unknown id); a domain that does not answer is transient.
pub async fn customer(
    reads: &dyn DomainReads,
    customer_id: &str,
) -> Result<Result<Customer, String>, StageError> {
    let answer = reads
        .ask(
            DomainCopy::primary("customer"),
            CustomerRequest::Get { customer_id: customer_id.to_string() }.to_json(),
        )
        .await?;
    Ok(answer.and_then(|data| serde_json::from_value(data).map_err(|e| format!("not a customer: {e}"))))
}

/// Reads the customer and every distinct SKU of `order`, concurrently.
pub async fn lookup(reads: &dyn DomainReads, order: &Order) -> Result<Lookups, StageError> {
    let ask = |copy: DomainCopy, request: serde_json::Value| reads.ask(copy, request);
    let customer = customer(reads, &order.customer_id);
    let skus: std::collections::BTreeSet<&str> = order.items.iter().map(|i| i.sku.as_str()).collect();
    let items = futures::future::join_all(skus.into_iter().map(|sku| {
        let answer =
            ask(DomainCopy::primary("catalog"), RecordRequest::Get { id: sku.to_string() }.to_json());
        async move { (sku.to_string(), answer.await) }
    }));
    let (customer, items) = futures::join!(customer, items);
    let mut lookups = Lookups { customer: Some(customer?), items: BTreeMap::new() };
    for (sku, answer) in items {
        let entry = answer?
            .and_then(|data| serde_json::from_value(data).map_err(|e| format!("not a catalog item: {e}")));
        lookups.items.insert(sku, entry);
    }
    Ok(lookups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domains::{Address, CardOnFile};
    use shared::order::{Item, PaymentCard, ShipTo};

    const TOKEN: &str = "tok_0123456789abcdef0123456789abcdef";
    const OTHER_TOKEN: &str = "tok_fedcba9876543210fedcba9876543210";

    fn customer() -> Customer {
        let address = |id: &str, line1: &str, default: bool| Address {
            address_id: id.into(),
            line1: line1.into(),
            city: "Leeds".into(),
            postal_code: "LS1".into(),
            country: "GB".into(),
            default,
        };
        Customer {
            customer_id: "C-1".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            addresses: vec![address("A1", "1 Old St", false), address("A2", "2 New St", true)],
            card: Some(CardOnFile {
                masked: "************1111".into(),
                expiry: "12/30".into(),
                token: TOKEN.into(),
            }),
            as_of: None,
        }
    }

    fn item(sku: &str, status: &str) -> CatalogItem {
        CatalogItem {
            sku: sku.into(),
            title: "Widget".into(),
            price_cents: 599,
            weight_grams: 250,
            status: status.into(),
            as_of: None,
        }
    }

    fn by_ref(skus: &[&str]) -> Order {
        Order {
            customer_id: "C-1".into(),
            items: skus.iter().map(|sku| Item { sku: sku.to_string(), qty: 2 }).collect(),
            shipping_method: "standard".into(),
            ..Order::default()
        }
    }

    fn lookups(items: &[CatalogItem]) -> Lookups {
        Lookups {
            customer: Some(Ok(customer())),
            items: items.iter().map(|i| (i.sku.clone(), Ok(i.clone()))).collect(),
        }
    }

    #[test]
    fn an_order_by_reference_gets_the_default_address_the_card_on_file_and_the_catalog() {
        let order = by_ref(&["SKU-0001"]);
        assert!(by_reference(&order));
        let (order, from) = enrich(order, &lookups(&[item("SKU-0001", "active")])).unwrap();
        assert_eq!((order.ship_to.name.as_str(), order.ship_to.line1.as_str()), ("Ada", "2 New St"));
        assert_eq!(order.payment, PaymentCard { card_number: TOKEN.into(), expiry: "12/30".into() });
        assert_eq!(from.address_id, "A2");
        assert_eq!(from.card_on_file.as_deref(), Some("************1111"));
        assert_eq!(from.items[0].price_cents, 599);
    }

    #[test]
    fn a_named_address_is_used_and_a_given_card_is_kept() {
        let mut order = by_ref(&["SKU-0001"]);
        order.address_id = Some("A1".into());
        order.payment = PaymentCard { card_number: "4111111111111111".into(), expiry: "01/31".into() };
        let (order, from) = enrich(order, &lookups(&[item("SKU-0001", "active")])).unwrap();
        assert_eq!(order.ship_to.line1, "1 Old St");
        assert_eq!(order.payment.card_number, "4111111111111111");
        assert_eq!(from.card_on_file, None);
    }

    #[test]
    fn unknown_or_withdrawn_things_reject_with_the_reason() {
        let mut unknown_address = by_ref(&["SKU-0001"]);
        unknown_address.address_id = Some("A9".into());
        let reason = enrich(unknown_address, &lookups(&[item("SKU-0001", "active")])).unwrap_err();
        assert!(reason.contains("no address \"A9\""), "{reason}");
        let withdrawn =
            enrich(by_ref(&["SKU-0002"]), &lookups(&[item("SKU-0002", "withdrawn")])).unwrap_err();
        assert!(withdrawn.contains("withdrawn"), "{withdrawn}");
        let mut unknown = lookups(&[]);
        unknown.items.insert("SKU-7777".into(), Err("no catalog record SKU-7777".into()));
        assert!(enrich(by_ref(&["SKU-7777"]), &unknown).unwrap_err().contains("not in the catalog"));
        let nobody = Lookups { customer: Some(Err("no customer C-9".into())), items: BTreeMap::new() };
        assert!(enrich(by_ref(&["SKU-0001"]), &nobody).unwrap_err().contains("unknown customer"));
        let mut no_card = lookups(&[item("SKU-0001", "active")]);
        if let Some(Ok(customer)) = &mut no_card.customer {
            customer.card = None;
        }
        assert!(enrich(by_ref(&["SKU-0001"]), &no_card).unwrap_err().contains("none on file"));
    }

    #[test]
    fn a_token_pays_only_for_the_customer_it_belongs_to() {
        // By reference, the customer's own token: its card on file, its expiry.
        let mut own = by_ref(&["SKU-0001"]);
        own.payment = PaymentCard { card_number: TOKEN.into(), expiry: "01/99".into() };
        let (order, from) = enrich(own, &lookups(&[item("SKU-0001", "active")])).unwrap();
        assert_eq!(order.payment, PaymentCard { card_number: TOKEN.into(), expiry: "12/30".into() });
        assert_eq!(from.card_on_file.as_deref(), Some("************1111"));
        // Someone else's token, by reference or with a stranger's address: rejected, the token unnamed.
        let mut stolen = by_ref(&["SKU-0001"]);
        stolen.payment = PaymentCard { card_number: OTHER_TOKEN.into(), expiry: "12/30".into() };
        let reason = enrich(stolen, &lookups(&[item("SKU-0001", "active")])).unwrap_err();
        assert_eq!(reason, "the card token does not belong to customer C-1");
        let mut stranger = crate::stages::intake::tests::valid_order();
        stranger.customer_id = "C-1".into();
        stranger.payment.card_number = OTHER_TOKEN.into();
        let ada = customer();
        assert!(check_card_token(&stranger, Ok(&ada))
            .unwrap_err()
            .contains("does not belong to customer C-1"));
        // The owner's id and token, but a stranger's address: a leaked id and token ship nothing.
        stranger.payment.card_number = TOKEN.into();
        let elsewhere = check_card_token(&stranger, Ok(&ada)).unwrap_err();
        assert!(elsewhere.contains("not one of customer C-1's"), "{elsewhere}");
        assert!(!elsewhere.contains("Main St") && !elsewhere.contains("Seattle"), "{elsewhere}");
        let mut own_address = stranger.clone();
        own_address.ship_to = ShipTo {
            name: "Ada L.".into(),
            line1: "1 Old St".into(),
            city: "Leeds".into(),
            postal_code: "LS1 ".into(),
            country: "GB".into(),
        };
        assert_eq!(check_card_token(&own_address, Ok(&ada)).unwrap().masked, "************1111");
        // A token for an unknown customer, a customer with no card, an order with no customer.
        let unknown = check_card_token(&stranger, Err("no customer C-1 at customer")).unwrap_err();
        assert!(unknown.contains("does not belong to customer C-1 (unknown customer"), "{unknown}");
        let carless = Customer { card: None, ..customer() };
        assert!(check_card_token(&stranger, Ok(&carless)).unwrap_err().contains("no card on file"));
        let mut nobody = stranger.clone();
        nobody.customer_id.clear();
        assert!(check_card_token(&nobody, Ok(&ada)).unwrap_err().contains("names no customer"));
        // A domain that withheld the token (intake not recognised): no match, said so.
        let mut withheld = customer();
        withheld.card.as_mut().unwrap().token.clear();
        let reason = check_card_token(&stranger, Ok(&withheld)).unwrap_err();
        assert!(reason.contains("did not show intake"), "{reason}");
        let mut no_card_given = lookups(&[item("SKU-0001", "active")]);
        no_card_given.customer = Some(Ok(withheld));
        assert!(enrich(by_ref(&["SKU-0001"]), &no_card_given).unwrap_err().contains("did not show intake"));
        for reason in [unknown, reason, elsewhere] {
            assert!(!reason.contains("tok_"), "{reason}");
        }
        assert!(is_card_token(TOKEN) && !is_card_token("4111111111111111") && !is_card_token(""));
        assert!(same_secret(TOKEN, TOKEN) && !same_secret(TOKEN, OTHER_TOKEN) && !same_secret(TOKEN, "tok_"));
    }

    #[test]
    fn an_order_with_its_address_and_card_needs_no_domain() {
        let mut order = crate::stages::intake::tests::valid_order();
        assert!(!by_reference(&order));
        // A partial address, or no card, with an address is not by reference: it is rejected as ever.
        order.ship_to.city.clear();
        order.payment.card_number.clear();
        assert!(!by_reference(&order));
    }
}
