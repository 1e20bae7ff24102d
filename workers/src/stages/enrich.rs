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

use shared::domain_client::{ClientError, DomainClient};
use shared::domains::{CatalogItem, Customer};
use shared::order::{CatalogLine, FromDomains, Order, ShipTo};
use shared::settings::Settings;
use shared::stage::StageError;
use std::collections::BTreeMap;
use std::time::Duration;
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
    let address_id = match address {
        Some(address) => {
            order.ship_to = ShipTo {
                name: customer.name.clone(),
                line1: address.line1.clone(),
                city: address.city.clone(),
                postal_code: address.postal_code.clone(),
                country: address.country.clone(),
            };
            address.address_id.clone()
        }
        None => String::new(),
    };
    let mut card_on_file = None;
    if order.payment.card_number.is_empty() {
        let card = customer.card.as_ref().ok_or_else(|| {
            format!("the order brings no card and customer {} has none on file", customer.customer_id)
        })?;
        order.payment.card_number = card.token.clone();
        order.payment.expiry = card.expiry.clone();
        card_on_file = Some(card.masked.clone());
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
            }),
            Some(Err(reason)) => return Err(format!("SKU not in the catalog: {reason}")),
            None => return Err(format!("SKU {:?} was not looked up", shared::text::escaped(&item.sku))),
        }
    }
    Ok((order, FromDomains { address_id, items, card_on_file }))
}

/// A node's reader of the domains (intake's lookups, inventory's
/// suppliers): a client on a connection of its own, opened when first
/// needed and again after it was lost.
pub struct DomainReader {
    settings: Settings,
    /// The connection's name in the management UI.
    connection_name: &'static str,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<(lapin::Connection, std::sync::Arc<DomainClient>)>>,
}

impl DomainReader {
    pub fn new(settings: &Settings, connection_name: &'static str) -> anyhow::Result<DomainReader> {
        let ms: u64 = match std::env::var("ORDERFLOW_DOMAIN_TIMEOUT_MS") {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("ORDERFLOW_DOMAIN_TIMEOUT_MS must be milliseconds"))?,
            Err(_) => 3000,
        };
        Ok(DomainReader {
            settings: settings.clone(),
            connection_name,
            timeout: Duration::from_millis(ms.clamp(1, 600_000)),
            client: tokio::sync::Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<std::sync::Arc<DomainClient>, StageError> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|(_, c)| c.is_broken()) {
            let transient = |e: lapin::Error| {
                StageError::Transient(anyhow::Error::from(e).context("reaching the domains"))
            };
            let connection = shared::transport::connect(&self.settings.amqp_url, self.connection_name)
                .await
                .map_err(transient)?;
            let opened =
                DomainClient::open(&connection, &self.settings.broker_user()).await.map_err(transient)?;
            *client = Some((connection, std::sync::Arc::new(opened)));
        }
        Ok(client.as_ref().expect("opened above").1.clone())
    }

    /// Asks `copy`: its answer, or its refusal's reason; a copy that does
    /// not answer in time is a transient failure.
    pub async fn ask(
        &self,
        copy: DomainCopy,
        request: serde_json::Value,
    ) -> Result<Result<serde_json::Value, String>, StageError> {
        let client = self.client().await?;
        match client.call(copy, &request, None, self.timeout).await {
            Ok(data) => Ok(Ok(data)),
            Err(ClientError::Refused(reason)) => Ok(Err(reason)),
            Err(ClientError::Unavailable(reason)) => {
                Err(StageError::Transient(anyhow::anyhow!("{} did not answer: {reason}", copy.label())))
            }
        }
    }

    /// Reads the customer and every distinct SKU of `order`, concurrently.
    pub async fn lookup(&self, order: &Order) -> Result<Lookups, StageError> {
        let ask = |copy: DomainCopy, request: serde_json::Value| self.ask(copy, request);
        let customer = ask(
            DomainCopy::primary("customer"),
            serde_json::json!({"op": "get", "customer_id": order.customer_id}),
        );
        let skus: std::collections::BTreeSet<&str> = order.items.iter().map(|i| i.sku.as_str()).collect();
        let items = futures::future::join_all(skus.into_iter().map(|sku| {
            let answer = ask(DomainCopy::primary("catalog"), serde_json::json!({"op": "get", "id": sku}));
            async move { (sku.to_string(), answer.await) }
        }));
        let (customer, items) = futures::join!(customer, items);
        let customer = customer?
            .and_then(|data| serde_json::from_value(data).map_err(|e| format!("not a customer: {e}")));
        let mut lookups = Lookups { customer: Some(customer), items: BTreeMap::new() };
        for (sku, answer) in items {
            let entry = answer?.and_then(|data| {
                serde_json::from_value(data).map_err(|e| format!("not a catalog item: {e}"))
            });
            lookups.items.insert(sku, entry);
        }
        Ok(lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domains::{Address, CardOnFile};
    use shared::order::{Item, PaymentCard};

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
                token: "tok_x".into(),
            }),
        }
    }

    fn item(sku: &str, status: &str) -> CatalogItem {
        CatalogItem {
            sku: sku.into(),
            title: "Widget".into(),
            price_cents: 599,
            weight_grams: 250,
            status: status.into(),
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
        assert_eq!(order.payment, PaymentCard { card_number: "tok_x".into(), expiry: "12/30".into() });
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
    fn an_order_with_its_address_and_card_needs_no_domain() {
        let mut order = crate::stages::intake::tests::valid_order();
        assert!(!by_reference(&order));
        // A partial address, or no card, with an address is not by reference: it is rejected as ever.
        order.ship_to.city.clear();
        order.payment.card_number.clear();
        assert!(!by_reference(&order));
    }
}
