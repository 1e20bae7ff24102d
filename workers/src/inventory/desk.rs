//! The backorder desk: the part of inventory that looks after the orders
//! waiting for received items ([`super::backorders`]). Every round
//! (the stock domain's tick, and after each receipt) it
//!
//! 1. sends the purchase orders decided but not sent yet, to the
//!    distributor shipments queue (`po.<distributor_id>`);
//! 2. moves units on hand to waiting orders that still need them;
//! 3. ends the orders that waited past the limit (`ORDERFLOW_BACKORDER_WAIT_S`);
//! 4. decides the changes asked for a waiting order in inventory's change
//!    book (a new address is applied to the waiting element; a cancel ends it);
//! 5. sends each decided way out on, through the workflow: a covered order
//!    as `reserved` to picking, an expired one as `stock_short` (to
//!    exceptions: voided, `out_of_stock`), a cancelled one as
//!    `cancelling` (voided, `cancelled`).
//!
//! Everything it sends is sent after the decision is committed and marked
//! sent once confirmed: a crash in between sends it again, with the same
//! ids (purchase orders, audit sequence numbers), which the receivers take once.

use super::backorders::{Backorders, Exit, PurchaseOrder, Status};
use super::stage::reservation_lines;
use lapin::BasicProperties;
use shared::change::cancel_outcome;
use shared::order::{Failure, Reservation};
use shared::settings::Settings;
use shared::store::Store;
use shared::{Node, OrderState, Outcome};
use std::time::Duration;
use transport::step::{record_outcome, resolve_changes, ChangeRecords, Onward};
use transport::{NodeContext, Outgoing, Publisher};

pub struct BackorderDesk {
    backorders: Backorders,
    /// Inventory's context: its change book, its name on audit events.
    ctx: NodeContext,
    wait_limit: Duration,
}

impl BackorderDesk {
    /// The backorders it looks after.
    pub fn backorders(&self) -> &Backorders {
        &self.backorders
    }

    pub async fn open(settings: &Settings, store: Store) -> anyhow::Result<BackorderDesk> {
        Ok(BackorderDesk {
            backorders: Backorders { store },
            ctx: NodeContext::for_node(settings, Node::Inventory, 1).await?,
            wait_limit: settings.backorder_wait,
        })
    }

    /// One round; what fails is logged and tried again next round, each
    /// order on its own (one that fails does not hold the others up).
    pub async fn round(&self, publisher: &Publisher) {
        let warn = |what: &str, error: anyhow::Error| {
            tracing::warn!(error = format!("{error:#}"), "the backorder desk will try again: {what}");
        };
        match self.backorders.unordered().await {
            Ok(unordered) => {
                for (order_id, purchase_orders) in unordered {
                    if let Err(error) =
                        self.order_from_distributors(publisher, order_id, &purchase_orders).await
                    {
                        warn("sending purchase orders", error);
                    }
                }
            }
            Err(error) => warn("reading purchase orders", error.into()),
        }
        if let Err(error) = self.backorders.rebalance().await {
            warn("moving units on hand to waiting orders", error.into());
        }
        match self.backorders.waiting().await {
            Ok(waiting) => {
                for (element, since_ms) in waiting {
                    if let Err(error) = self.look_after(publisher, element, since_ms).await {
                        warn("a waiting order", error);
                    }
                }
            }
            Err(error) => warn("reading the waiting orders", error.into()),
        }
        match self.backorders.exits().await {
            Ok(exits) => {
                for exit in exits {
                    if let Err(error) = self.send_on(publisher, exit).await {
                        warn("sending an order on", error);
                    }
                }
            }
            Err(error) => warn("reading the orders to send on", error.into()),
        }
    }

    async fn order_from_distributors(
        &self,
        publisher: &Publisher,
        order_id: uuid::Uuid,
        purchase_orders: &[PurchaseOrder],
    ) -> anyhow::Result<()> {
        let messages: Vec<Outgoing> = purchase_orders.iter().map(purchase_order_message).collect();
        publisher.publish_all(&messages).await?;
        self.backorders.mark_ordered(order_id).await?;
        tracing::info!(%order_id, purchase_orders = messages.len(), "purchase orders sent");
        Ok(())
    }

    /// A waiting order: past its limit it ends; a change asked for it is
    /// decided here (a new address kept in the waiting element, a cancel
    /// ends it).
    async fn look_after(
        &self,
        publisher: &Publisher,
        element: shared::OrderElement,
        since_ms: i64,
    ) -> anyhow::Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        if now - since_ms > self.wait_limit.as_millis() as i64 {
            self.backorders.end(element.order_id, Status::Expired).await?;
            return Ok(());
        }
        let order_id = element.order_id;
        let resolved = resolve_changes(&self.ctx, element).await?;
        if resolved.changes.messages.is_empty() {
            return Ok(());
        }
        if resolved.cancelled {
            // Its way out decides the changes again (the book gives the
            // same decisions) and sends their records with it.
            self.backorders.end(order_id, Status::Cancelled).await?;
        } else {
            // Records first: a crash before the element is stored decides
            // the same again (the book keeps its decisions) and resends them.
            publisher.publish_all(&resolved.changes.messages).await?;
            resolved.changes.emit();
            self.backorders.update_waiting(&resolved.element).await?;
        }
        Ok(())
    }

    /// Sends a decided backorder on through the workflow, then marks it sent.
    async fn send_on(&self, publisher: &Publisher, exit: Exit) -> anyhow::Result<()> {
        let order_id = exit.element.order_id;
        let before = (exit.element.seq, Some(exit.element.state));
        let (changes, outcome) = self.way_out(exit).await?;
        let handled = record_outcome(&self.ctx, before, changes, &outcome, Onward::NextNode).await?;
        publisher.publish_all(&handled.messages).await?;
        handled.emit(self.ctx.node);
        self.backorders.mark_sent(order_id).await?;
        Ok(())
    }

    /// What a decided backorder leaves inventory as. The changes asked for
    /// it meanwhile are decided first (the book gives a decision made
    /// before again): a cancel wins, whatever else was decided.
    async fn way_out(&self, exit: Exit) -> anyhow::Result<(ChangeRecords, Outcome)> {
        let Exit { element, status, waited_ms } = exit;
        let resolved = resolve_changes(&self.ctx, element).await?;
        let (changes, mut element) = (resolved.changes, resolved.element);
        let waited = format!("{:.1} s", waited_ms as f64 / 1000.0);
        if resolved.cancelled || status == Status::Cancelled {
            if status == Status::Covered {
                // Cancelled once covered: its units go to the next in line here.
                let units = self.backorders.release_reservation(element.order_id).await?;
                tracing::info!(order_id = %element.order_id, units, "a covered backorder was cancelled");
            }
            element.reservation = None;
            return Ok((changes, cancel_outcome(element)));
        }
        Ok(match status {
            Status::Covered => {
                let reservation_id = self.backorders.reservation_id(element.order_id).await?;
                let units: i64 = reservation_lines(&element.order).iter().map(|(_, qty)| qty).sum();
                element.reservation = Some(Reservation { reservation_id });
                let detail = format!(
                    "reserved {units} units from the received items after {waited} backordered (reservation {reservation_id})"
                );
                (changes, Outcome::new(element).step(OrderState::Reserved, detail))
            }
            Status::Expired | Status::Waiting | Status::Cancelled => {
                let skus: Vec<String> =
                    reservation_lines(&element.order).into_iter().map(|(sku, _)| sku).collect();
                let reason = format!(
                    "out of stock: {} not received within the {} s backorder limit",
                    skus.join(", "),
                    self.wait_limit.as_secs_f64()
                );
                element.failure = Some(Failure { ends_as: OrderState::OutOfStock, reason: reason.clone() });
                (changes, Outcome::new(element).step(OrderState::StockShort, reason))
            }
        })
    }
}

/// A purchase order as the distributors take it: its id is the message id.
pub fn purchase_order_message(po: &PurchaseOrder) -> Outgoing {
    let body = serde_json::to_vec(po).expect("a purchase order serializes");
    to_distributor(po.po_id, &po.distributor_id, "purchase_order", body)
}

/// A message to `distributor_id` on the purchase orders exchange: of type
/// `kind`, its id `po_id` (a backorder's purchase order, or purchasing's
/// drop-ship order).
pub fn to_distributor(po_id: uuid::Uuid, distributor_id: &str, kind: &str, body: Vec<u8>) -> Outgoing {
    Outgoing {
        exchange: topology::PURCHASE_ORDERS_EXCHANGE,
        routing_key: topology::domains::purchase_order_routing_key(distributor_id),
        body,
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(po_id.to_string().into())
            .with_type(kind.into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64),
    }
}
