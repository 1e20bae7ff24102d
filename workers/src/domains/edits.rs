//! The customer primary sends its edits to the orders that copied the old
//! data (the rules are `shared::domain_edits`'s). Its feed,
//! `orderflow.edits.customer` (a quorum queue, single active consumer),
//! hears two things in the order they came:
//!
//! - intake's audit messages: an `accepted` event of an order placed by
//!   reference says what it copied (which address, the card on file, as of
//!   which change); the order is kept in `domain_copies`;
//! - the primary's own change stream: change `n` of customer `C` is checked
//!   against every kept order of `C` that copied before `n`.
//!
//! Either may come first: an order heard after the edit that moved its
//! address is checked against the customer as the log has it now. An order
//! in flight whose address moved gets a `ship_to` change request; one
//! waiting for payment (`awaiting_payment`) on the card on file that was
//! replaced gets a `card` change with the processor's token for the new card
//! (payment's cards service keeps it for that order: no number, and no card
//! on file token, ever travels). Each has the customer domain as its
//! requester, an id made of (order, change number, kind), and a
//! `change_requested` record; the nodes' cut-offs decide it as any other.
//! The tracker says which orders ended or wait (an order it has not heard
//! of yet is in flight); an ended one is forgotten. The delivery is
//! acknowledged after the requests are confirmed and the kept orders
//! updated; a crash in between sends the same request again, which every
//! change book takes once.

use super::documents::{Change, Documents};
use super::replication::CHANGE_TYPE;
use lapin::message::Delivery;
use shared::change::{Change as OrderChange, ChangeEvent, ChangeKind, ChangeRequest};
use shared::domain_edits::{edit_request, moved_address, new_card, Copied, COPIES_SAID_AT};
use shared::domains::{AsOf, CardOnFile, CardsRequest, Customer, TokenizedCard};
use shared::order::ShipTo;
use shared::settings::Settings;
use shared::store::Store;
use shared::tracker_api::Statuses;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;
use topology::permissions::Role;
use topology::{DomainCopy, Node};
use transport::audit_batch::{unpack, AUDIT_BATCH_TYPE};
use transport::domain_client::DomainClient;
use transport::message::{change_event_message, change_request_message};
use transport::settle::{ack, dead_letter, requeue};
use transport::{NodeContext, Outgoing, Publisher};
use uuid::Uuid;

/// Kept orders forgotten once this old, ended or not (a week).
const KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// An order kept because it copied a customer's address.
#[derive(Clone, Debug, PartialEq)]
struct Kept {
    order_id: Uuid,
    copied: Copied,
}

/// Why a feed message was not taken.
enum NotTaken {
    /// Never: dead-lettered with the reason.
    Refused(String),
    /// Not now (the store, the broker or the tracker): tried again.
    Later(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for NotTaken {
    fn from(error: E) -> NotTaken {
        NotTaken::Later(error.into())
    }
}

pub struct Edits {
    settings: Settings,
    store: Store,
    docs: Arc<Documents>,
    tracker: shared::tracker_api::TrackerClient,
    domain: &'static str,
    /// The node whose events say what orders copied (intake).
    copied_at: Node,
    /// A client of payment's cards service, on a connection of its own
    /// (opened when first needed, again after it was lost).
    cards: tokio::sync::Mutex<Option<(lapin::Connection, DomainClient)>>,
}

/// How long the cards service has to keep a card on file for an order.
const CARDS_TIMEOUT: Duration = Duration::from_secs(10);

/// A kept order an edit reaches, and what it changes of it.
struct Reached {
    order_id: Uuid,
    ship_to: Option<(ShipTo, String)>,
    card: Option<(CardOnFile, String)>,
}

impl Edits {
    pub async fn open(
        settings: &Settings,
        domain: &'static str,
        docs: Arc<Documents>,
    ) -> anyhow::Result<Edits> {
        let store = Store::open(settings, &format!("{domain}_copies")).await?;
        store
            .migrate(&[
                "CREATE TABLE IF NOT EXISTS domain_copies (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, \
                 address_id TEXT, copy TEXT NOT NULL, seq BIGINT NOT NULL, fingerprint TEXT NOT NULL, \
                 at_ms BIGINT NOT NULL)",
                "CREATE INDEX IF NOT EXISTS domain_copies_customer ON domain_copies (customer_id)",
            ])
            .await?;
        // The fingerprint of the card on file the order pays with, if it does.
        store.add_column("domain_copies", "card TEXT").await?;
        let tracker = shared::tracker_api::TrackerClient::new(&settings.tracker_url());
        let copied_at = DomainCopy::primary(domain)
            .copied_at()
            .ok_or_else(|| anyhow::anyhow!("the {domain} domain does not forward its edits"))?;
        let cards = tokio::sync::Mutex::new(None);
        Ok(Edits { settings: settings.clone(), store, docs, tracker, domain, copied_at, cards })
    }

    /// Takes one message of the feed: acknowledged once its requests are
    /// confirmed, dead-lettered when it is not what it claims, else tried again.
    pub async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        match self.take(ctx, publisher, &delivery).await {
            Ok(()) => ack(&delivery).await,
            Err(NotTaken::Refused(reason)) => dead_letter(publisher, ctx, &delivery, &reason).await,
            Err(NotTaken::Later(error)) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not forward an edit yet; it will be tried again"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                requeue(&delivery).await
            }
        }
    }

    async fn take(
        &self,
        ctx: &NodeContext,
        publisher: &Publisher,
        delivery: &Delivery,
    ) -> Result<(), NotTaken> {
        let sender = ctx.trust.sender(&delivery.properties);
        let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
        let named = || shared::text::escaped(sender.as_deref().unwrap_or("an unnamed sender"));
        if kind == Some(CHANGE_TYPE) {
            // The primary's own stream: sent by this copy, or by a copy of
            // the domain that was the primary before it (the broker lets only
            // the primary of the moment publish there).
            let copies = DomainCopy::all().into_iter().filter(|copy| copy.domain == self.domain);
            if !copies.into_iter().any(|copy| ctx.trust.is_role(sender.as_deref(), Role::Domain(copy))) {
                return Err(NotTaken::Refused(format!(
                    "refused: a change of {} must come from its primary's user; this one came from {}",
                    self.domain,
                    named()
                )));
            }
            let change: Change = serde_json::from_slice(&delivery.data).map_err(|e| {
                NotTaken::Refused(format!(
                    "not a change of {}: {}",
                    self.domain,
                    shared::text::escaped(&e.to_string())
                ))
            })?;
            return self.forward_change(ctx, publisher, &change).await;
        }
        if !ctx.trust.is_role(sender.as_deref(), Role::Node(self.copied_at)) {
            return Err(NotTaken::Refused(format!(
                "refused: what an order copied is said by {}'s events only; this message came from {}",
                self.copied_at.name(),
                named()
            )));
        }
        let copies = copies_of(self.copied_at, kind, &delivery.data, ctx.max_message_bytes)
            .map_err(NotTaken::Refused)?;
        for kept in copies.into_iter().filter(|kept| kept.copied.customer_id.len() <= 200) {
            self.keep(ctx, publisher, kept).await?;
        }
        Ok(())
    }

    /// Keeps an order that copied an address, then checks it against the
    /// customer as the log has it now (an edit may have come first).
    async fn keep(&self, ctx: &NodeContext, publisher: &Publisher, kept: Kept) -> Result<(), NotTaken> {
        let copied = &kept.copied;
        sqlx::query(
            "INSERT INTO domain_copies (order_id, customer_id, address_id, copy, seq, fingerprint, at_ms, card) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(kept.order_id.to_string())
        .bind(&copied.customer_id)
        .bind(copied.address_id.clone())
        .bind(&copied.as_of.copy)
        .bind(copied.as_of.seq)
        .bind(&copied.fingerprint)
        .bind(chrono::Utc::now().timestamp_millis())
        .bind(copied.card.clone())
        .execute(&self.store.pool)
        .await?;
        // Only an edit after what it copied can have moved it (an earlier
        // one was forwarded, to the orders that copied before it, when it came).
        match self.docs.last_change_of(&copied.customer_id).await? {
            Some(change) if change.seq > copied.as_of.seq => {
                // Made in this copy's epoch if after its start, else in the one before.
                let term = self.docs.epoch().await?;
                let epoch =
                    term.map_or(1, |t| if change.seq > t.from_seq { t.epoch } else { (t.epoch - 1).max(1) });
                self.forward_change(ctx, publisher, &Change { epoch, ..change }).await
            }
            _ => Ok(()),
        }
    }

    /// Sends change `change` of a customer to every kept order of that
    /// customer that copied before it: the new address to the orders in
    /// flight whose address it moved, the new card on file to those waiting
    /// for payment on the old one.
    async fn forward_change(
        &self,
        ctx: &NodeContext,
        publisher: &Publisher,
        change: &Change,
    ) -> Result<(), NotTaken> {
        let Ok(customer) = serde_json::from_value::<Customer>(change.record.clone()) else {
            return Ok(()); // not a customer record: nothing copies it
        };
        let rows = sqlx::query(
            "SELECT order_id, address_id, copy, seq, fingerprint, card FROM domain_copies \
             WHERE customer_id = $1 AND seq < $2",
        )
        .bind(&change.key)
        .bind(change.seq)
        .fetch_all(&self.store.pool)
        .await?;
        let mut reached = Vec::new();
        let mut unmoved = Vec::new();
        for row in rows {
            let order_id = shared::store::stored_uuid(&row.get::<String, _>(0), "order_id")?;
            let copied = Copied {
                customer_id: change.key.clone(),
                address_id: row.get(1),
                as_of: AsOf { copy: row.get(2), seq: row.get(3), stale_ms: None },
                fingerprint: row.get(4),
                card: row.get(5),
            };
            let ship_to = moved_address(&copied, &customer);
            let card = new_card(&copied, &customer).map(|(card, fingerprint)| (card.clone(), fingerprint));
            match (ship_to, card) {
                (None, None) => unmoved.push(order_id),
                (ship_to, card) => reached.push(Reached { order_id, ship_to, card }),
            }
        }
        let states = self.states(reached.iter().map(|r| r.order_id)).await?;
        let state = |order_id: &Uuid| states.get(&order_id.to_string());
        let ended = |order_id: &Uuid| state(order_id).is_some_and(|s| s.terminal);
        let waits_for_payment =
            |order_id: &Uuid| state(order_id).is_some_and(|s| s.state == "awaiting_payment");
        let mut messages: Vec<Outgoing> = Vec::new();
        for reach in reached.iter().filter(|r| !ended(&r.order_id)) {
            if let Some((ship_to, _)) = &reach.ship_to {
                let to = OrderChange::ShipTo { ship_to: ship_to.clone() };
                messages.extend(self.request_messages(
                    ctx,
                    &edit_request(reach.order_id, change.epoch, change.seq, to),
                    "address",
                ));
            }
            if let Some((card, _)) = reach.card.as_ref().filter(|_| waits_for_payment(&reach.order_id)) {
                let pay_with = self.card_for(reach.order_id, card).await?;
                let request = edit_request(reach.order_id, change.epoch, change.seq, pay_with);
                messages.extend(self.request_messages(ctx, &request, "card on file"));
            }
            shared::events::EditForwarded { domain: self.domain, order_id: reach.order_id, seq: change.seq }
                .emit();
        }
        publisher.publish_all(&messages).await?;
        let mut tx = self.store.pool.begin().await?;
        for reach in &reached {
            let id = reach.order_id.to_string();
            if ended(&reach.order_id) {
                sqlx::query("DELETE FROM domain_copies WHERE order_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            // A card not sent (the order did not wait for payment) stays the old one.
            let card =
                reach.card.as_ref().filter(|_| waits_for_payment(&reach.order_id)).map(|(_, fp)| fp.clone());
            sqlx::query(
                "UPDATE domain_copies SET seq = $1, fingerprint = COALESCE($2, fingerprint), \
                 card = COALESCE($3, card) WHERE order_id = $4",
            )
            .bind(change.seq)
            .bind(reach.ship_to.as_ref().map(|(_, fp)| fp.clone()))
            .bind(card)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        for order_id in unmoved {
            sqlx::query("UPDATE domain_copies SET seq = $1 WHERE order_id = $2 AND seq < $1")
                .bind(change.seq)
                .bind(order_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The card change that makes `order_id` pay with the card on file
    /// `card`: payment's cards service keeps it for that order and answers
    /// the processor's token (the same one when asked again).
    async fn card_for(&self, order_id: Uuid, card: &CardOnFile) -> anyhow::Result<OrderChange> {
        let mut client = self.cards.lock().await;
        if client.as_ref().is_none_or(|(_, c)| c.is_broken()) {
            let name = format!("{}-to-cards", self.domain);
            let connection = transport::connect(&self.settings.amqp_url, &name).await?;
            let opened = DomainClient::open(&connection, &self.settings.broker_user()).await?;
            *client = Some((connection, opened));
        }
        let (_, cards) = client.as_ref().expect("opened above");
        let request = CardsRequest::TokenizeOnFile { order_id, card: card.clone() }.to_json();
        let answer = cards.call(DomainCopy::primary("cards"), &request, None, CARDS_TIMEOUT).await?;
        let kept: TokenizedCard = serde_json::from_value(answer)?;
        Ok(OrderChange::Card { token: kept.token, masked: kept.masked })
    }

    /// The change request with its `change_requested` record, as the customer domain sends them.
    fn request_messages(&self, ctx: &NodeContext, request: &ChangeRequest, what: &str) -> [Outgoing; 2] {
        let detail = format!("{} (the {} domain's {what} changed)", request.change.describe(), self.domain);
        let requested =
            ChangeEvent::new(request, ChangeKind::ChangeRequested, ctx.node, &ctx.instance_id, detail, 0);
        [change_event_message(&requested), change_request_message(request)]
    }

    /// The latest state of each of `orders` the tracker knows (one it has
    /// not heard of yet is in flight).
    async fn states(&self, orders: impl Iterator<Item = Uuid>) -> anyhow::Result<Statuses> {
        let orders: Vec<Uuid> = orders.collect();
        if orders.is_empty() {
            return Ok(Statuses::new());
        }
        let statuses = self.tracker.statuses(&orders).await;
        statuses.map_err(|e| anyhow::anyhow!("asking the tracker which orders ended: {e}"))
    }

    /// Forgets the kept orders that ended (asking the tracker, a page at a
    /// time) and any older than a week.
    pub async fn forget_ended(&self) -> anyhow::Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        sqlx::query("DELETE FROM domain_copies WHERE at_ms < $1")
            .bind(now - KEEP_MS)
            .execute(&self.store.pool)
            .await?;
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT order_id FROM domain_copies WHERE at_ms < $1 LIMIT 1000")
                .bind(now - 60_000)
                .fetch_all(&self.store.pool)
                .await?;
        let states = self.states(ids.iter().filter_map(|id| id.parse().ok())).await?;
        for (id, _) in states.iter().filter(|(_, status)| status.terminal) {
            sqlx::query("DELETE FROM domain_copies WHERE order_id = $1")
                .bind(id)
                .execute(&self.store.pool)
                .await?;
        }
        Ok(())
    }
}

/// What the orders of an audit message (one event, or a batch of them)
/// copied: intake's `accepted` events that say so; anything else is skipped.
fn copies_of(
    copied_at: Node,
    kind: Option<&str>,
    body: &[u8],
    max_bytes: usize,
) -> Result<Vec<Kept>, String> {
    let bodies: Vec<Vec<u8>> = if kind == Some(AUDIT_BATCH_TYPE) {
        let messages = unpack(body)?;
        messages
            .into_iter()
            .filter(|m| m.kind.as_deref().is_none_or(|k| k == "audit"))
            .map(|m| m.body.get().as_bytes().to_vec())
            .collect()
    } else if kind.is_none_or(|k| k == "audit") {
        vec![body.to_vec()]
    } else {
        Vec::new()
    };
    let mut kept = Vec::new();
    for body in bodies {
        if body.len() > max_bytes {
            return Err(format!("an event of {} bytes is over the {max_bytes} allowed", body.len()));
        }
        let event: shared::audit::AuditEvent = serde_json::from_slice(&body)
            .map_err(|e| format!("not an audit event: {}", shared::text::escaped(&e.to_string())))?;
        if event.node != copied_at.name() || event.to_state != COPIES_SAID_AT {
            continue;
        }
        if let Some(copied) = event.copied {
            kept.push(Kept { order_id: event.order_id, copied });
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::audit::AuditEvent;
    use shared::order::{FromDomains, Order, OrderElement};

    fn accepted_by_reference() -> OrderElement {
        let order: Order = serde_json::from_str(r#"{"customer_id": "C-1", "address_id": "A2"}"#).unwrap();
        let mut element = OrderElement::placed(order);
        element.state = COPIES_SAID_AT;
        element.from_domains = Some(FromDomains {
            address_id: "A2".into(),
            customer_as_of: Some(AsOf { copy: "customer@uk".into(), seq: 41, stale_ms: None }),
            address_fingerprint: "00ff00ff00ff00ff".into(),
            ..FromDomains::default()
        });
        element
    }

    fn event(element: &OrderElement, node: &str) -> Vec<u8> {
        serde_json::to_vec(&AuditEvent::for_transition(element, None, node, "x-1", String::new())).unwrap()
    }

    #[test]
    fn intakes_accepted_events_say_what_orders_copied_alone_or_in_a_batch() {
        let element = accepted_by_reference();
        let kept = copies_of(Node::Intake, Some("audit"), &event(&element, "intake"), 1 << 20).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].order_id, element.order_id);
        assert_eq!(kept[0].copied.address_id.as_deref(), Some("A2"));
        assert_eq!(kept[0].copied.as_of, AsOf { copy: "customer@uk".into(), seq: 41, stale_ms: None });

        // In a batch, with another node's event and a state that copies nothing.
        let mut charged = element.clone();
        charged.state = shared::order::OrderState::Charged;
        let bodies = [event(&element, "intake"), event(&element, "payment"), event(&charged, "intake")];
        let messages: Vec<String> = bodies
            .iter()
            .map(|b| format!(r#"{{"type": "audit", "body": {}}}"#, String::from_utf8_lossy(b)))
            .collect();
        let batch = format!(r#"{{"messages": [{}]}}"#, messages.join(","));
        let kept = copies_of(Node::Intake, Some(AUDIT_BATCH_TYPE), batch.as_bytes(), 1 << 20).unwrap();
        assert_eq!(kept.len(), 1, "only intake's accepted event says what was copied");

        // An order with its own address copied nothing; junk is refused with the reason.
        let mut own_address = element.clone();
        own_address.from_domains = None;
        assert!(copies_of(Node::Intake, None, &event(&own_address, "intake"), 1 << 20).unwrap().is_empty());
        assert!(copies_of(Node::Intake, None, b"{\"x\": NaN}", 1 << 20)
            .unwrap_err()
            .contains("not an audit event"));
        assert!(copies_of(Node::Intake, None, &event(&element, "intake"), 10).unwrap_err().contains("bytes"));
    }
}
