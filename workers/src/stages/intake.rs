//! intake: validates a placed order and accepts it, or rejects it (terminal)
//! with the first reason found. A card number typed anywhere but the card
//! field (an address line, the customer id) is masked before anything
//! records it: the full number travels only in the card field, to the vault.
//! A card token in the card field is accepted only as the card on file of
//! the order's customer, asked of the customer domain (`super::enrich`), or
//! as the processor's token issued for this very order (the coordinator
//! tokenizes a directed order's card before it keeps the order).
//! An accepted order's card number goes to the processor's vault and the
//! element carries the token from here on: no later node, store, record or
//! log sees the number.

use crate::catalog;
use crate::domain_reads::{DomainReader, DomainReads};
use crate::processor::Processor;
use shared::domains::check_text;
use shared::order::{FromDomains, Order};
use shared::{Node, OrderElement, OrderState, Outcome, Stage, StageError};
use topology::workflow::Deployed;

/// Longest accepted text field (the domains' limit too), and largest
/// accepted quantity of one item.
pub use shared::domains::MAX_TEXT_LEN;
pub use shared::order::SHIPPING_METHODS;
pub const MAX_QTY: i64 = 10_000;
pub const MAX_ITEMS: usize = 100;

/// A user-given text fit for a reason: at most 40 characters, no control characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(40).collect()
}

/// The intake rules; `Err` carries the first reason to reject the order.
pub fn validate(order: &Order) -> Result<(), String> {
    check_lines(order)?;
    check_address_and_card(order)
}

/// The rules an order placed by reference must pass before intake reads
/// the domains for it: everything but the address and the card (which the
/// domains supply).
pub fn validate_before_lookup(order: &Order) -> Result<(), String> {
    check_lines(order)?;
    check_method(order)
}

fn check_method(order: &Order) -> Result<(), String> {
    if !SHIPPING_METHODS.contains(&order.shipping_method.as_str()) {
        let method = printable(&order.shipping_method);
        return Err(format!("shipping method {method:?} is not one of standard, express, overnight"));
    }
    Ok(())
}

/// The workflow an order asks for (`standard` when it names none): one this
/// build runs, in the version deployed for new orders (`ORDERFLOW_WORKFLOWS`).
fn chosen_workflow(
    order: &Order,
    deployed: &Deployed,
) -> Result<&'static topology::workflow::Workflow, String> {
    let name = order.workflow.as_deref().unwrap_or(topology::WORKFLOW.name);
    deployed.to_start(name).ok_or_else(|| {
        format!(
            "workflow {:?} is not one this distribution center runs (it runs {})",
            printable(name),
            topology::workflow::known_workflows()
        )
    })
}

/// The workflow, the customer and the items.
fn check_lines(order: &Order) -> Result<(), String> {
    chosen_workflow(order, &Deployed::default())?;
    check_text("customer_id", &order.customer_id)?;
    if order.items.is_empty() {
        return Err("the order has no items".into());
    }
    if order.items.len() > MAX_ITEMS {
        return Err(format!("the order has more than {MAX_ITEMS} items"));
    }
    for item in &order.items {
        let sku = printable(&item.sku);
        if item.qty < 1 {
            return Err(format!("quantity {} of {sku:?} is below 1", item.qty));
        }
        if item.qty > MAX_QTY {
            return Err(format!("quantity {} of {sku:?} is above {MAX_QTY}", item.qty));
        }
        if !catalog::in_catalog(&item.sku) {
            return Err(format!("SKU {sku:?} is not in the catalog"));
        }
    }
    Ok(())
}

/// The ship-to address, the shipping method and the card, in that order.
fn check_address_and_card(order: &Order) -> Result<(), String> {
    let to = &order.ship_to;
    for (field, value) in [
        ("ship_to.name", &to.name),
        ("ship_to.line1", &to.line1),
        ("ship_to.city", &to.city),
        ("ship_to.postal_code", &to.postal_code),
        ("ship_to.country", &to.country),
    ] {
        check_text(field, value).map_err(|reason| format!("incomplete ship-to address: {reason}"))?;
    }
    check_method(order)?;
    if order.payment.expiry.chars().count() > shared::order::MAX_EXPIRY_CHARS {
        return Err(format!("card expiry is longer than {} characters", shared::order::MAX_EXPIRY_CHARS));
    }
    let card = &order.payment.card_number;
    if !shared::order::is_token(card) && !shared::order::is_card_number(card) {
        return Err("card number is not 13 to 19 digits".into());
    }
    Ok(())
}

/// Masks card numbers in every free-text field of the order.
fn mask_free_text(order: &mut Order) {
    let to = &mut order.ship_to;
    let fields =
        [&mut order.customer_id, &mut order.shipping_method, &mut to.name, &mut to.line1, &mut to.city];
    let fields = fields.into_iter().chain([&mut to.postal_code, &mut to.country]);
    for field in fields.chain(order.items.iter_mut().map(|item| &mut item.sku)) {
        if field.bytes().filter(u8::is_ascii_digit).count() >= 13 {
            *field = shared::text::mask_card_numbers(field);
        }
    }
}

/// The intake node; with a reader of the domains it also takes orders
/// placed by reference (`super::enrich`).
#[derive(Default)]
pub struct Intake {
    domains: Option<std::sync::Arc<dyn DomainReads>>,
    /// The version of each workflow new orders take.
    deployed: Deployed,
    /// The card processor, which keeps the numbers; without it (the pure
    /// step's tests) an accepted element keeps the number it came with.
    processor: Option<Processor>,
}

impl Intake {
    /// Intake reading the domains of the stack of `settings`.
    pub fn with_domains(settings: &shared::settings::Settings) -> anyhow::Result<Intake> {
        let reading = Intake::reading(std::sync::Arc::new(DomainReader::new(settings, "intake-domains")?));
        Ok(Intake { deployed: settings.workflows.clone(), ..reading })
    }

    /// Intake reading the domains through `domains` (a fake, in tests).
    pub fn reading(domains: std::sync::Arc<dyn DomainReads>) -> Intake {
        Intake { domains: Some(domains), deployed: Deployed::default(), processor: None }
    }

    /// Intake that hands accepted cards to `processor` for tokens.
    pub fn tokenizing(self, processor: Processor) -> Intake {
        Intake { processor: Some(processor), ..self }
    }

    /// An accepted order's card number exchanged for the processor's token.
    async fn tokenize(&self, mut outcome: Outcome) -> Result<Outcome, StageError> {
        let Some(processor) = &self.processor else { return Ok(outcome) };
        let accepted = outcome.steps.last().is_some_and(|step| step.state == OrderState::Accepted);
        let element = &mut outcome.element;
        if !accepted || !shared::order::is_card_number(&element.order.payment.card_number) {
            return Ok(outcome);
        }
        match processor.tokenize(element.order_id, &element.order.payment).await? {
            Ok(token) => {
                element.order.payment.card_number = token;
                Ok(outcome)
            }
            Err(reason) => Ok(Intake::reject(outcome.element, reason)),
        }
    }

    /// A processor's token in the card field: taken when the vault issued
    /// it for this order (the coordinator's, for a directed order).
    async fn check_processor_token(&self, element: &OrderElement) -> Result<Result<(), String>, StageError> {
        let Some(processor) = &self.processor else {
            return Ok(
                Err("a processor's card token is taken only when intake can ask the processor".into()),
            );
        };
        let issued = processor.card(&element.order.payment.card_number).await?;
        Ok(match issued {
            Some(card) if card.order_id == element.order_id => Ok(()),
            Some(_) => Err("the card token was issued for another order".into()),
            None => Err("the card token is not one the processor issued".into()),
        })
    }

    /// A rejection, with the card number masked before anything records it.
    fn reject(mut element: OrderElement, reason: String) -> Outcome {
        element.order.payment.card_number = shared::order::mask_card(&element.order.payment.card_number);
        Outcome::new(element).step(OrderState::Rejected, reason)
    }

    /// The pure step: accept or reject. An accepted element follows the
    /// deployed version of the workflow it asked for from here on, to its end.
    pub fn decide(mut element: OrderElement, deployed: &Deployed) -> Outcome {
        mask_free_text(&mut element.order);
        match validate(&element.order).and_then(|()| chosen_workflow(&element.order, deployed)) {
            Ok(workflow) => {
                element.workflow = workflow.name.to_string();
                element.workflow_version = workflow.version;
                let mut detail = format!(
                    "{} item lines, {} units, {}",
                    element.order.items.len(),
                    element.total_units(),
                    element.order.shipping_method
                );
                if let Some(from) = &element.from_domains {
                    detail += &read_at_replicas(from);
                }
                Outcome::new(element).step(OrderState::Accepted, detail)
            }
            // The card number never leaves intake in a rejected order's record.
            Err(reason) => Intake::reject(element, reason),
        }
    }
}

/// Which replicas answered for the order (a primary did not), and how far
/// behind each may have been: `; the customer read at customer@uk (change
/// 12, at most 40 ms behind its primary)`, then the catalog's, once per copy.
fn read_at_replicas(from: &shared::order::FromDomains) -> String {
    let customer = from.customer_as_of.iter().map(|as_of| ("customer", as_of));
    let catalog = from.items.iter().filter_map(|line| line.as_of.as_ref()).map(|as_of| ("catalog", as_of));
    let mut told: Vec<&str> = Vec::new();
    let mut text = String::new();
    for (domain, as_of) in customer.chain(catalog) {
        let Some(ms) = as_of.stale_ms else { continue };
        if told.contains(&as_of.copy.as_str()) {
            continue;
        }
        told.push(&as_of.copy);
        text += &format!(
            "; the {domain} read at {} (change {}, at most {ms} ms behind its primary)",
            shared::text::escaped(&as_of.copy),
            as_of.seq
        );
    }
    text
}

impl Stage for Intake {
    const NODE: Node = Node::Intake;

    /// A card change decided here (it came before its order) needs a token
    /// the vault issued for that order, as at payment.
    fn change_vetter(&self) -> Option<std::sync::Arc<dyn shared::change_book::VetChange>> {
        self.processor.clone().map(|processor| std::sync::Arc::new(processor) as _)
    }

    async fn handle(&self, mut element: OrderElement) -> Result<Outcome, StageError> {
        if let Some(domains) = self.domains.as_ref().filter(|_| super::enrich::by_reference(&element.order)) {
            // What intake can decide alone is decided before any domain is asked.
            mask_free_text(&mut element.order);
            if let Err(reason) = validate_before_lookup(&element.order) {
                return Ok(Intake::reject(element, reason));
            }
            // A card change applied before intake brought the processor's token: it pays, not the card on file.
            let brought = element.order.payment.clone();
            let lookups = super::enrich::lookup(domains.as_ref(), &element.order).await?;
            match super::enrich::enrich(element.order.clone(), &lookups) {
                Ok((order, from)) => {
                    element.order = order;
                    element.from_domains = Some(from);
                }
                Err(reason) => return Ok(Intake::reject(element, reason)),
            }
            if brought.card_number.starts_with(shared::order::PROCESSOR_TOKEN_PREFIX) {
                element.order.payment = brought;
                if let Err(reason) = self.check_processor_token(&element).await? {
                    return Ok(Intake::reject(element, reason));
                }
            }
        } else if element.order.payment.card_number.starts_with(shared::order::PROCESSOR_TOKEN_PREFIX) {
            if let Err(reason) = self.check_processor_token(&element).await? {
                mask_free_text(&mut element.order);
                return Ok(Intake::reject(element, reason));
            }
        } else if super::enrich::is_card_token(&element.order.payment.card_number) {
            // A token with the order's own address: whose card is it?
            mask_free_text(&mut element.order);
            if let Err(reason) = validate(&element.order) {
                return Ok(Intake::reject(element, reason));
            }
            let Some(domains) = &self.domains else {
                let reason = "a card token is taken only when intake can ask the customer domain whose it is";
                return Ok(Intake::reject(element, reason.into()));
            };
            let customer = super::enrich::customer(domains.as_ref(), &element.order.customer_id).await?;
            let checked =
                super::enrich::check_card_token(&element.order, customer.as_ref().map_err(String::as_str));
            match checked {
                Ok(card) => {
                    element.order.payment.expiry = card.expiry.clone();
                    let from =
                        FromDomains { card_on_file: Some(card.masked.clone()), ..FromDomains::default() };
                    element.from_domains = Some(from);
                }
                Err(reason) => return Ok(Intake::reject(element, reason)),
            }
        }
        self.tokenize(Intake::decide(element, &self.deployed)).await
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let intake = Intake::with_domains(&settings)?.tokenizing(Processor::open(&settings).await?);
        transport::runner::run_stage(intake, settings, shutdown).await
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::domain_reads::{Answer, FakeDomains};
    use serde_json::{json, Value};
    use shared::order::{Item, PaymentCard, ShipTo};

    const TOKEN: &str = "tok_0123456789abcdef0123456789abcdef";

    /// Customer C-1 (default address "2 New St", a card on file as intake
    /// sees it) and SKU-0001 at 250 cents; anything else is refused; the
    /// customer domain does not answer when `customer_down`.
    fn domains(customer_down: bool) -> std::sync::Arc<dyn DomainReads> {
        let customer = json!({"customer_id": "C-1", "name": "Ada", "email": "ada@example.com",
            "addresses": [
                {"address_id": "A1", "line1": "1 Old St", "city": "Leeds", "postal_code": "LS1", "country": "GB", "default": false},
                {"address_id": "A2", "line1": "2 New St", "city": "Leeds", "postal_code": "LS2", "country": "GB", "default": true}],
            "card": {"masked": "************1111", "expiry": "12/30", "token": TOKEN}});
        let item = json!({"sku": "SKU-0001", "title": "Gadget", "price_cents": 250, "weight_grams": 300, "status": "active"});
        std::sync::Arc::new(FakeDomains(
            move |copy: &topology::DomainCopy, request: &Value| -> Option<Answer> {
                match (copy.domain, request["op"].as_str()) {
                    ("customer", _) if customer_down => None,
                    ("customer", Some("get")) if request["customer_id"] == "C-1" => {
                        Some(Ok(customer.clone()))
                    }
                    ("customer", _) => Some(Err("no customer".into())),
                    ("catalog", Some("get")) if request["id"] == "SKU-0001" => Some(Ok(item.clone())),
                    _ => Some(Err("no such record".into())),
                }
            },
        ))
    }

    fn placed(order: Value) -> OrderElement {
        OrderElement::placed(serde_json::from_value(order).unwrap())
    }

    fn last_step(outcome: &Outcome) -> (OrderState, &str) {
        let step = outcome.steps.last().expect("a step");
        (step.state, step.detail.as_str())
    }

    #[tokio::test]
    async fn an_order_by_reference_is_built_from_the_domains_without_a_broker() {
        let intake = Intake::reading(domains(false));
        let order = json!({"customer_id": "C-1", "items": [{"sku": "SKU-0001", "qty": 2}], "shipping_method": "standard"});
        let outcome = intake.handle(placed(order)).await.unwrap();
        assert_eq!(last_step(&outcome).0, OrderState::Accepted, "{:?}", outcome.steps);
        let built = &outcome.element;
        assert_eq!(built.order.ship_to.line1, "2 New St", "the default address");
        assert_eq!(built.order.payment.card_number, TOKEN, "the card on file pays");
        let from = built.from_domains.as_ref().unwrap();
        assert_eq!(from.items[0].price_cents, 250);
        assert_eq!(from.card_on_file.as_deref(), Some("************1111"));
    }

    #[tokio::test]
    async fn a_token_pays_only_for_its_customer_and_a_silent_domain_is_passing() {
        let intake = Intake::reading(domains(false));
        let stolen = json!({"customer_id": "C-2", "items": [{"sku": "SKU-0001", "qty": 1}], "shipping_method": "standard",
            "ship_to": {"name": "Mallory", "line1": "9 Far Rd", "city": "York", "postal_code": "YO1", "country": "GB"},
            "payment": {"card_number": TOKEN, "expiry": "12/30"}});
        let outcome = intake.handle(placed(stolen)).await.unwrap();
        let (state, reason) = last_step(&outcome);
        assert_eq!(state, OrderState::Rejected);
        assert!(reason.contains("does not belong to customer"), "{reason}");
        let by_reference = json!({"customer_id": "C-1", "items": [{"sku": "SKU-0001", "qty": 1}], "shipping_method": "standard"});
        let down = Intake::reading(domains(true)).handle(placed(by_reference)).await;
        assert!(matches!(down, Err(StageError::Transient(_))), "a domain that does not answer never rejects");
    }

    #[test]
    fn a_card_number_outside_the_card_field_is_masked_before_anything_records_it() {
        let mut order = valid_order();
        order.ship_to.line1 = "4111 1111 1111 1111 Main St".into();
        order.customer_id = "c-4111111111111111".into();
        let outcome = Intake::decide(OrderElement::placed(order), &Deployed::default());
        let kept = serde_json::to_string(&outcome.element.order.ship_to).unwrap()
            + &outcome.element.order.customer_id;
        assert!(!kept.contains("4111111111111111") && !kept.contains("4111 1111 1111 1111"), "{kept}");
        assert_eq!(outcome.element.order.ship_to.line1, "****1111 Main St");
    }

    pub fn valid_order() -> Order {
        Order {
            order_id: None,
            address_id: None,
            customer_id: "c-1".into(),
            items: vec![Item { sku: "SKU-0001".into(), qty: 1 }],
            shipping_method: "standard".into(),
            ship_to: ShipTo {
                name: "Ada".into(),
                line1: "1 Main St".into(),
                city: "Seattle".into(),
                postal_code: "98101".into(),
                country: "US".into(),
            },
            payment: PaymentCard { card_number: "4111111111111111".into(), expiry: "12/30".into() },
            workflow: None,
        }
    }

    #[tokio::test]
    async fn a_card_token_is_rejected_when_no_domain_can_say_whose_it_is() {
        let mut order = valid_order();
        order.payment.card_number = "tok_0123456789abcdef0123456789abcdef".into();
        let outcome = Intake::default().handle(OrderElement::placed(order.clone())).await.unwrap();
        assert_eq!(outcome.steps[0].state, OrderState::Rejected);
        assert!(outcome.steps[0].detail.contains("customer domain"), "{}", outcome.steps[0].detail);
        assert!(!serde_json::to_string(&outcome.element).unwrap().contains("tok_"));
        // Decided before any domain is asked: a token order with no customer.
        order.customer_id.clear();
        let outcome = Intake::default().handle(OrderElement::placed(order)).await.unwrap();
        assert!(outcome.steps[0].detail.contains("customer_id is missing"), "{}", outcome.steps[0].detail);
        // A plain card number needs no domain, as ever.
        let outcome = Intake::default().handle(OrderElement::placed(valid_order())).await.unwrap();
        assert_eq!(outcome.steps[0].state, OrderState::Accepted);
    }

    /// An accepted order's card goes to the processor's vault and the
    /// element carries the token; a redelivered order gets the same token.
    /// A processor's token in an order from outside is taken only when the
    /// vault issued it for that very order (a directed order's, from the
    /// coordinator), never for another order or when the vault never did.
    #[tokio::test]
    async fn the_card_number_goes_to_the_vault_and_the_element_carries_its_token() {
        let scratch = shared::settings::ScratchRun::new("intake");
        let processor = Processor::open(&scratch.settings()).await.unwrap();
        let intake = Intake::default().tokenizing(processor.clone());
        let element = OrderElement::placed(valid_order());
        let outcome = intake.handle(element.clone()).await.unwrap();
        assert_eq!(outcome.steps[0].state, OrderState::Accepted, "{:?}", outcome.steps);
        let token = outcome.element.order.payment.card_number.clone();
        assert!(token.starts_with(shared::order::PROCESSOR_TOKEN_PREFIX), "{token}");
        assert!(!serde_json::to_string(&outcome.element).unwrap().contains("4111111111111111"));
        let kept = processor.card(&token).await.unwrap().expect("the vault keeps the card");
        assert_eq!((kept.order_id, kept.card.card_number.as_str()), (element.order_id, "4111111111111111"));
        let again = intake.handle(element.clone()).await.unwrap();
        assert_eq!(again.element.order.payment.card_number, token, "a redelivered order, the same element");

        // The directed order's token, as the coordinator hands it on.
        let mut directed = element.clone();
        directed.order.payment.card_number = token.clone();
        let outcome = intake.handle(directed).await.unwrap();
        assert_eq!(outcome.steps[0].state, OrderState::Accepted, "{:?}", outcome.steps);
        assert_eq!(outcome.element.order.payment.card_number, token);

        let mut stranger = OrderElement::placed(valid_order());
        stranger.order.payment.card_number = token.clone();
        let guessed = format!("{}{}", shared::order::PROCESSOR_TOKEN_PREFIX, uuid::Uuid::new_v4().simple());
        for (card, reason) in [(token, "issued for another order"), (guessed, "not one the processor issued")]
        {
            stranger.order.payment.card_number = card;
            let outcome = intake.handle(stranger.clone()).await.unwrap();
            assert_eq!(outcome.steps[0].state, OrderState::Rejected);
            assert!(outcome.steps[0].detail.contains(reason), "{}", outcome.steps[0].detail);
        }
    }

    #[test]
    fn valid_order_is_accepted() {
        let outcome = Intake::decide(OrderElement::placed(valid_order()), &Deployed::default());
        assert_eq!(outcome.steps[0].state, OrderState::Accepted);
        let named = Order { workflow: Some("standard".into()), ..valid_order() };
        let outcome = Intake::decide(OrderElement::placed(named.clone()), &Deployed::default());
        assert_eq!(outcome.steps[0].state, OrderState::Accepted);
        let element = &outcome.element;
        assert_eq!((element.workflow.as_str(), element.workflow_version), ("standard", 1));
        // Where version 2 is deployed, new orders take it, named or not.
        let v2 = Deployed::parse("standard:2").unwrap();
        for order in [named, valid_order()] {
            let element = Intake::decide(OrderElement::placed(order), &v2).element;
            assert_eq!((element.workflow.as_str(), element.workflow_version), ("standard", 2));
        }
    }

    #[test]
    fn each_rule_rejects_with_its_reason() {
        type Breaker = fn(&mut Order);
        let cases: Vec<(Breaker, &str)> = vec![
            (|o| o.items.clear(), "no items"),
            (|o| o.items[0].qty = 0, "below 1"),
            (|o| o.items[0].qty = -5, "below 1"),
            (|o| o.items[0].qty = 1_000_000_000, "above"),
            (|o| o.items[0].sku = "SKU-7777".into(), "not in the catalog"),
            (|o| o.ship_to.city.clear(), "incomplete ship-to address"),
            (|o| o.ship_to.name = "a\u{0}b".into(), "control characters"),
            (|o| o.ship_to.line1 = "x".repeat(500), "longer than"),
            (|o| o.shipping_method = "teleport".into(), "shipping method"),
            (|o| o.payment.card_number = "4111".into(), "13 to 19 digits"),
            (|o| o.payment.card_number = "4111-1111-1111-1111".into(), "13 to 19 digits"),
            (|o| o.payment.card_number = "4".repeat(10_000), "13 to 19 digits"),
            (|o| o.payment.card_number = "41111111111a1111".into(), "13 to 19 digits"),
            (|o| o.payment.expiry = "1".repeat(10_000), "expiry is longer than 16"),
            (|o| o.customer_id.clear(), "customer_id is missing"),
            (|o| o.workflow = Some("same-day".into()), "is not one this distribution center runs"),
            (|o| o.workflow = Some("Ship-Then-Bill".into()), "is not one this distribution center runs"),
            (
                |o| o.workflow = Some("bell\u{7}".repeat(1000)),
                "(it runs standard v1, standard v2, ship-then-bill v1, drop-ship v1)",
            ),
            (|o| o.workflow = Some(String::new()), "workflow \"\" is not one"),
        ];
        for (break_it, reason) in cases {
            let mut order = valid_order();
            break_it(&mut order);
            let outcome = Intake::decide(OrderElement::placed(order), &Deployed::default());
            assert_eq!(outcome.steps[0].state, OrderState::Rejected);
            assert!(outcome.steps[0].detail.contains(reason), "{} lacks {reason}", outcome.steps[0].detail);
            assert!(!outcome.element.order.payment.card_number.contains("4111111111111111"));
        }
    }

    #[test]
    fn the_accepted_step_names_each_replica_that_answered_once() {
        use shared::order::{AsOf, CatalogLine, FromDomains};
        let at = |copy: &str, seq, stale_ms| Some(AsOf { copy: copy.into(), seq, stale_ms });
        let line = |sku: &str, as_of| CatalogLine { sku: sku.into(), as_of, ..CatalogLine::default() };
        let from = FromDomains {
            customer_as_of: at("customer@uk", 12, Some(40)),
            items: vec![
                line("SKU-0001", at("catalog@de", 7, Some(15))),
                line("SKU-0002", at("catalog@de", 7, Some(15))),
                line("SKU-0003", at("catalog", 9, None)),
            ],
            ..FromDomains::default()
        };
        assert_eq!(
            read_at_replicas(&from),
            "; the customer read at customer@uk (change 12, at most 40 ms behind its primary)\
             ; the catalog read at catalog@de (change 7, at most 15 ms behind its primary)"
        );
        let at_primaries = FromDomains { customer_as_of: at("customer", 3, None), ..FromDomains::default() };
        assert_eq!(read_at_replicas(&at_primaries), "", "a primary's answer is not told");
    }
}
