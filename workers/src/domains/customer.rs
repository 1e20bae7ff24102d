//! The customer domain: customers, their addresses (several, one the
//! default) and the card on file (masked). Its primary takes every write and
//! sends each change on its stream; its replicas (`uk`, `de`) answer the
//! same reads from stores of their own and refuse writes, naming the
//! primary (writes are not forwarded: a caller that writes should know it
//! talks to the one copy that decides).
//!
//! The card's processor token pays for its customer's orders, so it is
//! answered to intake's user alone (which reads a customer to charge the
//! card on file of that customer's order); every other caller reads the
//! masked number and the expiry (`shows_card_token`). The token travels on
//! the change stream and in snapshots, which only the domain's own
//! replicas take, so a replica can answer intake too.

use super::copy_store::CopyStore;
use super::edits::Edits;
use lapin::message::Delivery;
use shared::domains::{
    card_on_file, check_address, check_id, check_text, page_size, Address, AddressInput, CopyRequest,
    Customer, CustomerRequest,
};
use shared::settings::Settings;
use topology::permissions::Role;
use topology::DomainCopy;
use transport::domain::{parse, Access, DomainError, DomainService, Request};
use transport::{NodeContext, Publisher};

pub const DOMAIN: &str = "customer";

pub struct CustomerDomain {
    store: CopyStore,
}

impl CustomerDomain {
    /// The copy of the customer domain in `region` (`None`: the primary).
    pub async fn open(settings: &Settings, region: Option<&str>) -> anyhow::Result<CustomerDomain> {
        Ok(CustomerDomain { store: CopyStore::open(settings, DOMAIN, region).await? })
    }

    /// One customer, marked with the copy and change number it is as of.
    async fn get(&self, customer_id: &str, token_shown: bool) -> Result<serde_json::Value, DomainError> {
        check_id("customer_id", customer_id).map_err(DomainError::Refused)?;
        match self.store.get_marked(customer_id).await? {
            Some(customer) => Ok(as_shown(customer, token_shown)),
            None => {
                Err(DomainError::Refused(format!("no customer {customer_id} at {}", self.store.copy.label())))
            }
        }
    }

    /// A write at the primary: once per request, then sent on the stream.
    async fn write(
        &self,
        request: &Request<'_>,
        customer_id: &str,
        change: impl FnOnce(Option<Customer>) -> Result<Customer, String>,
    ) -> Result<serde_json::Value, DomainError> {
        self.store
            .write(request, customer_id, |current| {
                let current = current.and_then(|c| serde_json::from_value(c).ok());
                change(current).map(|customer| serde_json::to_value(customer).expect("a customer serializes"))
            })
            .await
    }
}

/// A new customer's id, made from the request that adds it: the same
/// request adds the same customer once.
fn new_customer_id(request_key: &str) -> String {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, request_key.as_bytes());
    format!("C-{}", &id.simple().to_string()[..12].to_uppercase())
}

fn new_address(input: &AddressInput, taken: &[Address]) -> Address {
    let address_id = input.address_id.clone().unwrap_or_else(|| {
        (1..)
            .map(|n| format!("A{n}"))
            .find(|id| !taken.iter().any(|a| &a.address_id == id))
            .expect("some id is free")
    });
    Address {
        address_id,
        line1: input.line1.clone(),
        city: input.city.clone(),
        postal_code: input.postal_code.clone(),
        country: input.country.clone(),
        default: input.default,
    }
}

/// Builds a new customer from an `add` request, or says what is wrong.
pub fn new_customer(
    customer_id: String,
    name: &str,
    email: &str,
    addresses: &[AddressInput],
    card: Option<&shared::domains::CardInput>,
) -> Result<Customer, String> {
    check_id("customer_id", &customer_id)?;
    check_text("name", name)?;
    check_text("email", email)?;
    if !email.contains('@') {
        return Err(format!("email {:?} has no @", shared::text::escaped(email)));
    }
    if addresses.is_empty() {
        return Err("a customer needs at least one address".into());
    }
    if addresses.len() > 20 {
        return Err("a customer may have at most 20 addresses".into());
    }
    let mut kept: Vec<Address> = Vec::new();
    for input in addresses {
        check_address(input)?;
        if input.address_id.as_ref().is_some_and(|id| kept.iter().any(|a| &a.address_id == id)) {
            return Err(format!(
                "address_id {:?} is given twice",
                input.address_id.as_deref().unwrap_or_default()
            ));
        }
        let address = new_address(input, &kept);
        kept.push(address);
    }
    make_one_default(&mut kept, None);
    let card = card.map(card_on_file).transpose()?;
    Ok(Customer { customer_id, name: name.into(), email: email.into(), addresses: kept, card, as_of: None })
}

/// Exactly one default: `chosen` if given, else the first marked default, else the first.
fn make_one_default(addresses: &mut [Address], chosen: Option<&str>) {
    let default = chosen
        .map(String::from)
        .or_else(|| addresses.iter().find(|a| a.default).map(|a| a.address_id.clone()))
        .or_else(|| addresses.first().map(|a| a.address_id.clone()));
    for address in addresses {
        address.default = Some(&address.address_id) == default.as_ref();
    }
}

/// Adds an address or replaces the one with its id.
pub fn set_address(mut customer: Customer, input: &AddressInput) -> Result<Customer, String> {
    check_address(input)?;
    let address = new_address(input, &customer.addresses);
    let id = address.address_id.clone();
    let count = customer.addresses.len();
    match customer.addresses.iter_mut().find(|a| a.address_id == id) {
        Some(existing) => *existing = address,
        None if count >= 20 => return Err("a customer may have at most 20 addresses".into()),
        None => customer.addresses.push(address),
    }
    let chosen = input.default.then_some(id.as_str());
    make_one_default(&mut customer.addresses, chosen);
    Ok(customer)
}

/// Whether the caller is shown a card's token: intake's user alone.
pub fn shows_card_token(request: &Request<'_>) -> bool {
    request.is_from(Role::Node(topology::WORKFLOW.door()))
}

/// A customer record as a caller is shown it: without its card's token
/// unless `token_shown`.
pub fn as_shown(record: serde_json::Value, token_shown: bool) -> serde_json::Value {
    if token_shown {
        record
    } else {
        shared::domains::without_card_token(record)
    }
}

fn customer_key(record: &serde_json::Value) -> String {
    record["customer_id"].as_str().unwrap_or_default().to_string()
}

impl CustomerDomain {
    async fn answer_with(&self, request: Request<'_>) -> Result<serde_json::Value, DomainError> {
        let unavailable = |e: sqlx::Error| DomainError::Unavailable(e.into());
        let writes = |access: Access| {
            if self.store.is_replica() {
                return Err(self.store.refuse_write());
            }
            match access {
                Access::Write => Ok(()),
                Access::Read => Err(DomainError::Refused(format!(
                    "refused: {} may not change customers (only the back office, support or the operator may)",
                    shared::text::escaped(request.caller)
                ))),
            }
        };
        let token_shown = shows_card_token(&request);
        if let Ok(asked) = serde_json::from_slice::<CopyRequest>(request.body) {
            return self.store.answer(&request, asked, customer_key).await;
        }
        match parse::<CustomerRequest>(request.body)? {
            CustomerRequest::Get { customer_id } => self.get(&customer_id, token_shown).await,
            CustomerRequest::List { after, limit } => {
                // A page of customers is never for one order: no tokens, whoever asks.
                let page =
                    self.store.docs.list(after.as_deref(), page_size(limit)).await.map_err(unavailable)?;
                let page: Vec<serde_json::Value> =
                    page.into_iter().map(|customer| as_shown(customer, false)).collect();
                Ok(serde_json::json!({ "customers": page }))
            }
            CustomerRequest::Add { customer_id, name, email, addresses, card } => {
                writes(request.access)?;
                let customer_id = customer_id.unwrap_or_else(|| new_customer_id(&request.request_key));
                check_id("customer_id", &customer_id).map_err(DomainError::Refused)?;
                let id = customer_id.clone();
                self.write(&request, &id, |existing| {
                    if existing.is_some() {
                        return Err(format!("customer {customer_id} already exists"));
                    }
                    new_customer(customer_id.clone(), &name, &email, &addresses, card.as_ref())
                })
                .await
                .map(|written| as_shown(written, false))
            }
            CustomerRequest::SetAddress { customer_id, address } => {
                writes(request.access)?;
                check_id("customer_id", &customer_id).map_err(DomainError::Refused)?;
                let id = customer_id.clone();
                self.write(&request, &id, |existing| match existing {
                    Some(customer) => set_address(customer, &address),
                    None => Err(format!("no customer {customer_id}")),
                })
                .await
                .map(|written| as_shown(written, false))
            }
            CustomerRequest::SetCard { customer_id, card } => {
                writes(request.access)?;
                check_id("customer_id", &customer_id).map_err(DomainError::Refused)?;
                let on_file = card_on_file(&card).map_err(DomainError::Refused)?;
                let id = customer_id.clone();
                self.write(&request, &id, |existing| match existing {
                    Some(customer) => Ok(Customer { card: Some(on_file), ..customer }),
                    None => Err(format!("no customer {customer_id}")),
                })
                .await
                .map(|written| as_shown(written, false))
            }
        }
    }
}

/// The customer domain as a service; its primary also forwards its edits.
pub struct CustomerService {
    pub domain: CustomerDomain,
    settings: Settings,
    /// The primary's forwarding of its edits to the orders that copied them
    /// (opened when the copy first serves as the primary).
    edits: tokio::sync::OnceCell<Edits>,
    /// When the kept orders that ended were last forgotten.
    forgot_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often the primary forgets the orders that ended.
const FORGET_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl CustomerService {
    /// The service of `domain`; whichever copy is the primary also
    /// forwards the edits (their store, which orders copied what, is the
    /// domain's: `customer_copies`, which a promoted copy takes over).
    pub async fn open(domain: CustomerDomain, settings: &Settings) -> anyhow::Result<CustomerService> {
        Ok(CustomerService {
            domain,
            settings: settings.clone(),
            edits: tokio::sync::OnceCell::new(),
            forgot_at: std::sync::Mutex::new(None),
        })
    }

    /// Whether the kept orders are due to be checked for having ended.
    fn forget_due(&self) -> bool {
        let mut at = self.forgot_at.lock().expect("not poisoned");
        let due = at.is_none_or(|at| at.elapsed() >= FORGET_EVERY);
        if due {
            *at = Some(std::time::Instant::now());
        }
        due
    }
}

impl DomainService for CustomerService {
    fn copy(&self) -> DomainCopy {
        self.domain.store.copy
    }

    async fn answer(&self, request: Request<'_>) -> Result<serde_json::Value, DomainError> {
        self.domain.answer_with(request).await
    }

    async fn prepare(&self, publisher: &Publisher) -> anyhow::Result<()> {
        let store = &self.domain.store;
        store.prepare(publisher).await?;
        if store.copy.may_forward_edits() && !store.is_replica() {
            let open = || Edits::open(&self.settings, DOMAIN, store.docs.clone());
            self.edits.get_or_try_init(open).await?;
        }
        Ok(())
    }

    /// A replica's feed is its primary's stream; the primary's, its edits.
    async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        match self.forwarding() {
            Some(edits) => edits.apply(ctx, publisher, delivery).await,
            None => self.domain.store.apply(ctx, publisher, delivery).await,
        }
    }

    async fn tick(&self, _ctx: &NodeContext, publisher: &Publisher) {
        self.domain.store.tick(publisher).await;
        if let Some(edits) = self.forwarding().filter(|_| self.forget_due()) {
            if let Err(error) = edits.forget_ended().await {
                tracing::debug!(error = format!("{error:#}"), "could not forget the orders that ended yet");
            }
        }
    }

    fn feed_queue(&self) -> Option<String> {
        self.domain.store.feed_queue()
    }

    fn part_changed(&self) -> bool {
        self.domain.store.part_changed()
    }
}

impl CustomerService {
    /// The edits' forwarding, while this copy is the primary.
    fn forwarding(&self) -> Option<&Edits> {
        self.edits.get().filter(|_| !self.domain.store.is_replica())
    }
}

/// The customer process: the primary, or with `ORDERFLOW_REGION` one of
/// its replicas, on the broker until `shutdown` (its binary's run, boxed in
/// this crate: see `workers::process`).
pub fn run(
    settings: Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let domain = CustomerDomain::open(&settings, settings.region.as_deref()).await?;
        let service = std::sync::Arc::new(CustomerService::open(domain, &settings).await?);
        transport::domain::run_domain(settings, service, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use super::super::copy_store::takes_snapshots;
    use super::*;

    fn address(line1: &str) -> AddressInput {
        AddressInput {
            line1: line1.into(),
            city: "Leeds".into(),
            postal_code: "LS1".into(),
            country: "GB".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_customer_has_exactly_one_default_address() {
        let customer = new_customer(
            "C-1".into(),
            "Ada",
            "ada@example.com",
            &[address("1 A St"), address("2 B St")],
            None,
        )
        .unwrap();
        assert_eq!(customer.addresses.iter().filter(|a| a.default).count(), 1);
        assert_eq!(customer.address(None).unwrap().line1, "1 A St");
        let mut moved = address("3 C St");
        moved.default = true;
        let customer = set_address(customer, &moved).unwrap();
        assert_eq!(customer.address(None).unwrap().line1, "3 C St");
        assert_eq!(customer.addresses.iter().filter(|a| a.default).count(), 1);
        assert_eq!(customer.address(Some("A1")).unwrap().line1, "1 A St");
        let mut replaced = address("1b A St");
        replaced.address_id = Some("A1".into());
        let customer = set_address(customer, &replaced).unwrap();
        assert_eq!(customer.addresses.len(), 3);
        assert_eq!(customer.address(Some("A1")).unwrap().line1, "1b A St");
    }

    #[test]
    fn careless_customers_are_refused_with_the_reason() {
        let card = shared::domains::CardInput { number: "4111111111111111".into(), expiry: "12/30".into() };
        let kept =
            new_customer("C-2".into(), "Bo", "bo@example.com", &[address("1 A St")], Some(&card)).unwrap();
        assert_eq!(kept.card.unwrap().masked, "************1111");
        assert!(new_customer("C-3".into(), "Bo", "bo-example.com", &[address("x")], None)
            .unwrap_err()
            .contains("@"));
        assert!(new_customer("C-3".into(), "Bo", "b@e", &[], None).unwrap_err().contains("at least one"));
        assert!(new_customer("C 3".into(), "Bo", "b@e", &[address("x")], None).is_err());
        assert!(new_customer("C-3".into(), "\u{1b}[31m", "b@e", &[address("x")], None)
            .unwrap_err()
            .contains("control"));
    }

    fn request_from<'a>(trust: &'a shared::trust::Trust, caller: &'a str) -> Request<'a> {
        Request { body: b"{}", caller, access: Access::Read, request_key: String::new(), trust }
    }

    #[test]
    fn a_card_token_is_shown_to_intake_alone_and_snapshots_go_to_replicas_alone() {
        let primary = Role::Domain(DomainCopy::primary(DOMAIN));
        let trust = shared::trust::Trust::per_role(primary, "of-", "shop", "admin");
        let card = shared::domains::CardInput { number: "4111111111111111".into(), expiry: "12/30".into() };
        let customer =
            new_customer("C-1".into(), "Ada", "ada@example.com", &[address("1 A St")], Some(&card)).unwrap();
        let record = serde_json::to_value(customer).unwrap();
        let intake = trust.user_of(Role::Node(topology::Node::Intake)).to_string();
        let uk = trust.user_of(Role::Domain(DomainCopy::find(DOMAIN, Some("uk")).unwrap())).to_string();
        let shown = |caller: &str| as_shown(record.clone(), shows_card_token(&request_from(&trust, caller)));
        assert!(shown(&intake).to_string().contains("tok_"));
        let others = ["of-shop.publisher", "of-shop.support", "of-shop.payment", "admin", "", uk.as_str()];
        for caller in others {
            let seen = shown(caller);
            assert!(!seen.to_string().contains("tok_"), "{caller}: {seen}");
            assert_eq!(seen["card"]["masked"], "************1111");
            assert_eq!(seen["card"]["expiry"], "12/30");
        }
        assert!(takes_snapshots(DOMAIN, &request_from(&trust, &uk)));
        assert!(!takes_snapshots("catalog", &request_from(&trust, &uk)), "a replica of another domain");
        assert!(
            takes_snapshots(DOMAIN, &request_from(&trust, "of-shop.customer")),
            "a primary that came back"
        );
        for caller in [intake.as_str(), "of-shop.publisher", "of-shop.catalog-uk", "admin", ""] {
            assert!(!takes_snapshots(DOMAIN, &request_from(&trust, caller)), "{caller}");
        }
    }

    #[test]
    fn the_same_request_makes_the_same_customer_id() {
        assert_eq!(new_customer_id("publisher\u{1f}r-1"), new_customer_id("publisher\u{1f}r-1"));
        assert_ne!(new_customer_id("publisher\u{1f}r-1"), new_customer_id("publisher\u{1f}r-2"));
    }
}
