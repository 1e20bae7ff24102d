//! The data domains' records and requests, as data: customers with their
//! addresses and card on file, catalog items, distributors, and the JSON
//! requests each domain answers (`{"op": "get", ...}`). Their checks are
//! plain functions, so the services, the CLI and the tests share them.
//! No AMQP here: `transport::domain` answers requests, `domain_client`
//! makes them.

use serde::{Deserialize, Serialize};

/// Longest text field of a domain record.
pub const MAX_TEXT_LEN: usize = 200;
/// Most records one `list` or `snapshot` page returns.
pub const MAX_PAGE: usize = 200;

/// A customer of the customer domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub customer_id: String,
    pub name: String,
    pub email: String,
    /// Several addresses; exactly one is the default.
    pub addresses: Vec<Address>,
    /// The payment instrument on file, stored masked (never the number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardOnFile>,
    /// Which copy answered this record and as of which change: set on a
    /// read's answer only, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOf>,
}

pub use crate::order::AsOf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Address {
    pub address_id: String,
    pub line1: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
    #[serde(default)]
    pub default: bool,
}

/// A card on file: its masked number, its expiry, and the processor's
/// token for it (what intake puts in an order that brings no card); never
/// the number. The token pays for its customer's orders only: the domain
/// keeps it and sends it on its change stream, but a read answers it to
/// intake alone ([`without_card_token`]); everyone else sees the masked
/// number and the expiry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CardOnFile {
    /// `************1111`.
    pub masked: String,
    /// `MM/YY`.
    pub expiry: String,
    /// `tok_<32 hex digits>`; empty in what a read answers anyone but intake.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

/// A short fingerprint of a ship-to address (16 hex digits of its SHA-256):
/// what an order's copy records, so that an edit can tell whether the
/// address an order ships to changed without the record carrying the address.
pub fn address_fingerprint(ship_to: &crate::order::ShipTo) -> String {
    fingerprint(&serde_json::to_string(ship_to).expect("an address serializes"))
}

/// A short fingerprint of a card on file (of its token): what an order's
/// copy records of the card it pays with, never the token itself.
pub fn card_fingerprint(card: &CardOnFile) -> String {
    fingerprint(&card.token)
}

fn fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A customer record (as JSON) with its card's token taken out: what a read
/// answers a caller that may not charge the card. Anything else is kept.
pub fn without_card_token(mut record: serde_json::Value) -> serde_json::Value {
    if let Some(card) = record.get_mut("card").and_then(serde_json::Value::as_object_mut) {
        card.remove("token");
    }
    record
}

impl Customer {
    /// Where an order of this customer ships when it names `address_id` (or,
    /// with `None`, takes the default): the customer's name at that address.
    pub fn ship_to(&self, address_id: Option<&str>) -> Option<(&Address, crate::order::ShipTo)> {
        let address = self.address(address_id)?;
        let ship_to = crate::order::ShipTo {
            name: self.name.clone(),
            line1: address.line1.clone(),
            city: address.city.clone(),
            postal_code: address.postal_code.clone(),
            country: address.country.clone(),
        };
        Some((address, ship_to))
    }

    /// The address `address_id`, or the default one.
    pub fn address(&self, address_id: Option<&str>) -> Option<&Address> {
        match address_id {
            Some(id) => self.addresses.iter().find(|a| a.address_id == id),
            None => self.addresses.iter().find(|a| a.default).or(self.addresses.first()),
        }
    }
}

/// An address as a request gives it (its id is optional on a new one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AddressInput {
    pub address_id: Option<String>,
    pub line1: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
    pub default: bool,
}

/// A card as a request gives it: the number is masked before anything keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CardInput {
    pub number: String,
    pub expiry: String,
}

/// The customer domain's requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CustomerRequest {
    Get {
        customer_id: String,
    },
    List {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// A new customer (its id given, as seed files do, or made from the request).
    Add {
        #[serde(default)]
        customer_id: Option<String>,
        name: String,
        email: String,
        addresses: Vec<AddressInput>,
        #[serde(default)]
        card: Option<CardInput>,
    },
    /// Adds an address, or replaces the one with `address_id`.
    SetAddress {
        customer_id: String,
        #[serde(flatten)]
        address: AddressInput,
    },
    /// Puts a new card on file (only its masked number and expiry are kept).
    SetCard {
        customer_id: String,
        card: CardInput,
    },
}

impl CustomerRequest {
    /// The request as it travels (`{"op": ..., ...}`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a request always serializes")
    }
}

/// A catalog item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogItem {
    pub sku: String,
    pub title: String,
    pub price_cents: i64,
    pub weight_grams: i64,
    /// `active` or `withdrawn`.
    pub status: String,
    /// In an answer: which copy answered, as of which change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<crate::order::AsOf>,
}

/// A distributor and the SKUs it supplies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Distributor {
    pub distributor_id: String,
    pub name: String,
    pub supplies: Vec<Supply>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Supply {
    pub sku: String,
    pub lead_time_days: i64,
}

/// The requests of a domain of plain records (catalog, distributor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RecordRequest {
    /// One record by its key (`sku`, `distributor_id`).
    Get { id: String },
    List {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Adds or replaces a record (seeding, maintenance).
    Put { record: serde_json::Value },
}

impl RecordRequest {
    /// The request as it travels (`{"op": ..., ...}`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a request always serializes")
    }
}

/// Payment's cards service (the `cards` domain, answered by the payment
/// node): a card for an order becomes the card processor's token, which a
/// card change carries instead of the number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CardsRequest {
    /// The processor's token for `card`, bound to `order_id` (it pays for
    /// that order only); the same card for the same order gets the same token.
    Tokenize {
        order_id: uuid::Uuid,
        card: crate::order::PaymentCard,
    },
    /// The processor's token for a customer's card on file, bound to
    /// `order_id`: asked by the customer domain alone, for an order waiting
    /// for payment on the card that was replaced.
    TokenizeOnFile {
        order_id: uuid::Uuid,
        card: CardOnFile,
    },
    Status {},
}

impl CardsRequest {
    /// The request as it travels (`{"op": ..., ...}`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a request always serializes")
    }
}

/// The cards service's answer to `tokenize`: the token and the number as anyone may see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizedCard {
    pub token: String,
    pub masked: String,
}

/// The stock domain's requests (answered by the node that serves it, inventory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StockRequest {
    /// One SKU's bin: on hand, reserved, received, backordered.
    Stock {
        sku: String,
    },
    /// The receipts counted, a page at a time.
    Receipts {
        #[serde(default)]
        sku: Option<String>,
        #[serde(default)]
        after: Option<i64>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Status {},
}

impl StockRequest {
    /// The request as it travels (`{"op": ..., ...}`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a request always serializes")
    }
}

/// The requests every copy of a replicated domain answers the same way,
/// whichever the domain (`workers::domains::copy_store`): where it stands,
/// and what the copies of one domain ask each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CopyRequest {
    /// The copy's position in the change stream, its epoch and the primary
    /// it knows (and, given `after_seq`, when the change after it was made
    /// and which changes follow it).
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_seq: Option<i64>,
    },
    /// A page of every record, for another copy of the domain (the primary only).
    Snapshot {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// The changes of the log after `after`, for another copy of the domain
    /// that follows the primary without a feed of its own (a primary that
    /// came back after a promotion).
    Changes {
        after: i64,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Makes this copy the domain's primary at `epoch` (from the operator,
    /// through `orderflow domains promote`, which also moves the routes).
    Promote { epoch: i64 },
}

impl CopyRequest {
    /// The request as it travels (`{"op": ..., ...}`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a request always serializes")
    }
}

/// One change of a primary's log, by number and key (what a copy that
/// lacks it would lose).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRef {
    pub seq: i64,
    pub key: String,
}

/// At most this many changes a primary names in a status (`CopyStatus::ahead`).
pub const AHEAD_NAMED: usize = 50;

/// What a copy reports about itself (`status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// `customer`, `customer@uk`.
    pub copy: String,
    /// `primary` or `replica`.
    pub role: String,
    pub records: i64,
    /// The last change made (primary) or applied (replica).
    pub seq: i64,
    /// When that change was made at the primary (Unix ms; 0: none yet).
    pub seq_at_ms: i64,
    /// Primary: when the change after `after_seq` was made, if asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at_ms: Option<i64>,
    /// Replica: what it last learned of its primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<Lag>,
    /// The primary's term: 1 until a replica is promoted, one more at each
    /// promotion. A copy refuses changes of an older epoch than its own.
    #[serde(default = "first_epoch")]
    pub epoch: i64,
    /// The copy this one takes for the primary (its own label at the primary).
    #[serde(default)]
    pub primary: String,
    /// The change the epoch began after (its primary's position when promoted).
    #[serde(default)]
    pub epoch_from_seq: i64,
    /// Primary, asked with `after_seq`: the changes after it, by number and
    /// key (at most [`AHEAD_NAMED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<ChangeRef>,
}

fn first_epoch() -> i64 {
    1
}

/// How far a replica is behind its primary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    pub primary_seq: i64,
    /// Changes made at the primary and not applied here.
    pub changes: i64,
    /// How long the oldest change not applied here has waited (0 when caught up).
    pub ms: i64,
    /// When the primary was last asked (Unix ms).
    pub checked_at_ms: i64,
    /// Whether the primary answered that time.
    pub primary_reachable: bool,
    /// The last moment the replica is known to have held every change the
    /// primary had made (Unix ms): its staleness is now minus this.
    #[serde(default)]
    pub fresh_at_ms: i64,
    /// The changes made at the primary and not applied here, as the primary
    /// last named them (what promoting this copy now would lose).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<ChangeRef>,
}

/// Lag from the primary's position and the replica's: `next_at_ms` is when
/// the first change not applied here was made.
pub fn lag(primary_seq: i64, applied_seq: i64, next_at_ms: Option<i64>, now_ms: i64) -> Lag {
    let changes = (primary_seq - applied_seq).max(0);
    let ms = if changes == 0 { 0 } else { next_at_ms.map_or(0, |at| (now_ms - at).max(0)) };
    Lag {
        primary_seq,
        changes,
        ms,
        checked_at_ms: now_ms,
        primary_reachable: true,
        fresh_at_ms: now_ms - ms,
        missing: Vec::new(),
    }
}

/// A text field of a record: present, at most [`MAX_TEXT_LEN`] characters,
/// no control characters.
pub fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} is missing"));
    }
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(format!("{field} is longer than {MAX_TEXT_LEN} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

/// An id: 1 to 64 letters, digits, `-` or `_`.
pub fn check_id(field: &str, value: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if value.is_empty() || value.len() > 64 || !value.chars().all(fine) {
        return Err(format!(
            "{field} {:?} must be 1 to 64 letters, digits, '-' or '_'",
            crate::text::escaped(&value.chars().take(65).collect::<String>())
        ));
    }
    Ok(())
}

/// Checks an address as given.
pub fn check_address(address: &AddressInput) -> Result<(), String> {
    if let Some(id) = &address.address_id {
        check_id("address_id", id)?;
    }
    for (field, value) in [
        ("line1", &address.line1),
        ("city", &address.city),
        ("postal_code", &address.postal_code),
        ("country", &address.country),
    ] {
        check_text(field, value)?;
    }
    Ok(())
}

/// Checks a card as given and masks it: 13 to 19 digits, expiry `MM/YY`.
pub fn card_on_file(card: &CardInput) -> Result<CardOnFile, String> {
    let number = &card.number;
    if !(13..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the card number is not 13 to 19 digits".into());
    }
    let expiry_fine = card.expiry.len() == 5
        && card.expiry.as_bytes()[2] == b'/'
        && card.expiry[..2].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m))
        && card.expiry[3..].bytes().all(|b| b.is_ascii_digit());
    if !expiry_fine {
        return Err(format!("the card expiry {:?} is not MM/YY", crate::text::escaped(&card.expiry)));
    }
    let token = format!("{}{}", crate::order::CARD_TOKEN_PREFIX, uuid::Uuid::new_v4().simple());
    Ok(CardOnFile { masked: crate::order::mask_card(number), expiry: card.expiry.clone(), token })
}

/// Checks a catalog item.
pub fn check_item(item: &CatalogItem) -> Result<(), String> {
    check_id("sku", &item.sku)?;
    check_text("title", &item.title)?;
    if !(0..=100_000_000).contains(&item.price_cents) {
        return Err(format!("price_cents {} is not between 0 and 100000000", item.price_cents));
    }
    if !(0..=10_000_000).contains(&item.weight_grams) {
        return Err(format!("weight_grams {} is not between 0 and 10000000", item.weight_grams));
    }
    if !matches!(item.status.as_str(), "active" | "withdrawn") {
        return Err(format!("status {:?} is not active or withdrawn", crate::text::escaped(&item.status)));
    }
    Ok(())
}

/// Checks a distributor.
pub fn check_distributor(distributor: &Distributor) -> Result<(), String> {
    check_id("distributor_id", &distributor.distributor_id)?;
    check_text("name", &distributor.name)?;
    for supply in &distributor.supplies {
        check_id("sku", &supply.sku)?;
        if !(0..=365).contains(&supply.lead_time_days) {
            return Err(format!(
                "lead_time_days {} of {} is not 0 to 365",
                supply.lead_time_days, supply.sku
            ));
        }
    }
    Ok(())
}

/// The page size a request asks for, within 1..=[`MAX_PAGE`] (default 50).
pub fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(50).clamp(1, MAX_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_is_kept_masked_and_bad_ones_say_why() {
        let card =
            card_on_file(&CardInput { number: "4111111111111111".into(), expiry: "12/30".into() }).unwrap();
        assert_eq!(card.masked, "************1111");
        assert!(card.token.starts_with("tok_") && card.token.len() == 36, "{}", card.token);
        assert!(card_on_file(&CardInput { number: "4111".into(), expiry: "12/30".into() }).is_err());
        assert!(card_on_file(&CardInput { number: "4111111111111111".into(), expiry: "13/30".into() })
            .unwrap_err()
            .contains("MM/YY"));
        assert!(
            card_on_file(&CardInput { number: "4111111111111111".into(), expiry: "1/300".into() }).is_err()
        );
    }

    #[test]
    fn a_record_without_its_token_keeps_the_masked_card_and_everything_else() {
        let card =
            card_on_file(&CardInput { number: "4111111111111111".into(), expiry: "12/30".into() }).unwrap();
        let customer = Customer {
            customer_id: "C-1".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            addresses: Vec::new(),
            card: Some(card),
            as_of: None,
        };
        let full = serde_json::to_value(&customer).unwrap();
        assert!(full.to_string().contains("tok_"), "{full}");
        let shown = without_card_token(full.clone());
        assert!(!shown.to_string().contains("tok_"), "{shown}");
        assert_eq!(shown["card"], serde_json::json!({"masked": "************1111", "expiry": "12/30"}));
        assert_eq!(shown["name"], "Ada");
        // It still reads as a customer: the token is empty, and stays out when written again.
        let read: Customer = serde_json::from_value(shown.clone()).unwrap();
        assert_eq!(read.card.as_ref().map(|c| c.token.as_str()), Some(""));
        assert_eq!(serde_json::to_value(&read).unwrap(), shown);
        // No card, or not a customer at all: unchanged.
        let no_card = serde_json::json!({"customer_id": "C-2"});
        assert_eq!(without_card_token(no_card.clone()), no_card);
        assert_eq!(without_card_token(serde_json::json!([1])), serde_json::json!([1]));
    }

    #[test]
    fn careless_values_are_refused_with_their_field() {
        let mut address = AddressInput {
            line1: "1 Main St".into(),
            city: "Leeds".into(),
            postal_code: "LS1".into(),
            country: "GB".into(),
            ..Default::default()
        };
        assert!(check_address(&address).is_ok());
        address.city = "Le\u{7}eds".into();
        assert!(check_address(&address).unwrap_err().contains("city contains control"));
        address.city = "x".repeat(201);
        assert!(check_address(&address).unwrap_err().contains("longer than"));
        address.city = "  ".into();
        assert!(check_address(&address).unwrap_err().contains("city is missing"));
        assert!(check_id("customer_id", "C-1 ; DROP").is_err());
        let item = CatalogItem {
            sku: "SKU-0001".into(),
            title: "Widget".into(),
            price_cents: -1,
            weight_grams: 10,
            status: "active".into(),
            as_of: None,
        };
        assert!(check_item(&item).unwrap_err().contains("price_cents"));
    }

    #[test]
    fn requests_read_from_json_and_unknown_ones_are_refused() {
        let get: CustomerRequest = serde_json::from_str(r#"{"op":"get","customer_id":"C-1"}"#).unwrap();
        assert_eq!(get, CustomerRequest::Get { customer_id: "C-1".into() });
        let set: CustomerRequest = serde_json::from_str(
            r#"{"op":"set_address","customer_id":"C-1","line1":"2 High St","city":"York","postal_code":"Y1","country":"GB"}"#,
        )
        .unwrap();
        assert!(matches!(set, CustomerRequest::SetAddress { .. }));
        assert!(serde_json::from_str::<CustomerRequest>(r#"{"op":"drop_table"}"#).is_err());
        assert!(serde_json::from_str::<CustomerRequest>(r#"{"op":"get","customer_id":NaN}"#).is_err());
    }

    #[test]
    fn lag_counts_changes_and_the_wait_of_the_oldest_one() {
        assert_eq!(lag(10, 10, None, 5_000).ms, 0);
        let behind = lag(12, 10, Some(4_000), 5_000);
        assert_eq!((behind.changes, behind.ms), (2, 1_000));
        assert_eq!(lag(10, 11, None, 1).changes, 0);
    }
}
