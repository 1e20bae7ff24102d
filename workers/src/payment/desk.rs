//! The payment desk: the part of payment that looks after the orders
//! waiting for another card ([`super::waiting`]). Every round (the cards
//! service's tick) it decides, for each waiting order, the changes asked
//! for it in payment's change book, and then
//!
//! - a card change applied: charges the new card (`charged`, on to
//!   inventory), or, declined too, keeps the order waiting with the new
//!   reason (another `awaiting_payment` in its history), its wait started
//!   again;
//! - a cancel applied: ends it `cancelled` (nothing was charged);
//! - its wait run out (`ORDERFLOW_PAYMENT_WAIT_S`): ends it
//!   `payment_declined`, with the last decline's reason;
//! - another change applied (a new address): keeps it in the waiting element.
//!
//! Each step is safe to redo after a crash: the book keeps its decisions,
//! the processor charges an order once (a second charge, with whatever
//! card, returns the first), and the audit events and the forwarded
//! element carry the same sequence numbers, which their receivers take
//! once. The row is updated (or ended) only after everything is published
//! and confirmed; a round that finds the order charged but its row not
//! ended (the last one stopped in between) sends the charged order on
//! again with the decisions that led to it, and decides nothing new.

use super::stage::{charged, still_waiting, Paid, Payment};
use super::waiting::{Waiting, WaitingOrder};
use shared::change::cancel_outcome;
use shared::settings::Settings;
use shared::{Node, OrderElement, OrderState, Outcome};
use std::time::Duration;
use transport::step::{record_outcome, replay_changes, resolve_changes, Onward};
use transport::{NodeContext, Publisher};

pub struct PaymentDesk {
    waiting: Waiting,
    /// Payment's stage, to charge a new card as an arriving order's.
    payment: std::sync::Arc<Payment>,
    /// Payment's context: its change book, its name on audit events.
    ctx: NodeContext,
    wait_limit: Duration,
}

impl PaymentDesk {
    pub async fn open(
        settings: &Settings,
        waiting: Waiting,
        payment: std::sync::Arc<Payment>,
    ) -> anyhow::Result<PaymentDesk> {
        let ctx = NodeContext::for_node(settings, Node::Payment, 1).await?;
        if let (Some(book), Some(vetter)) = (&ctx.book, shared::Stage::change_vetter(payment.as_ref())) {
            book.vet_with(vetter);
        }
        Ok(PaymentDesk { waiting, payment, ctx, wait_limit: settings.payment_wait })
    }

    /// How many orders wait for a card now.
    pub async fn waiting_count(&self) -> sqlx::Result<i64> {
        self.waiting.count().await
    }

    /// One round; what fails is logged and tried again next round, each
    /// order on its own.
    pub async fn round(&self, publisher: &Publisher) {
        let waiting = match self.waiting.waiting().await {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(error = %error, "the payment desk will try again: reading the waiting orders");
                return;
            }
        };
        for order in waiting {
            let order_id = order.element.order_id;
            if let Err(error) = self.look_after(publisher, order).await {
                tracing::warn!(%order_id, error = format!("{error:#}"), "the payment desk will try again");
            }
        }
    }

    /// One waiting order: its changes decided, and what they (or its wait) lead to.
    async fn look_after(&self, publisher: &Publisher, order: WaitingOrder) -> anyhow::Result<()> {
        let WaitingOrder { element: waits, reason, since_ms } = order;
        let expired = chrono::Utc::now().timestamp_millis() - since_ms > self.wait_limit.as_millis() as i64;
        let heard = match &self.ctx.book {
            Some(book) => book.may_have_changes(waits.order_id).await?,
            None => false,
        };
        if !heard && !expired {
            // Nothing asked for it (known without the store): it waits on.
            return Ok(());
        }
        // A round that charged the order and stopped before it ended the
        // row: the same outcome again, with the decisions that led to it;
        // a change heard since is left to the node the order went on to
        // (inventory rejects a new card: "already charged").
        let charged_before = self.payment.charge_for(waits.order_id).await?;
        let resolved = match charged_before {
            Some(_) => replay_changes(&self.ctx, waits.clone()).await?,
            None => resolve_changes(&self.ctx, waits.clone()).await?,
        };
        if charged_before.is_none() && resolved.changes.messages.is_empty() && !expired {
            return Ok(());
        }
        let new_card = resolved.element.order.payment.card_number != waits.order.payment.card_number;
        let (outcome, waits_on) = if let Some(charge) = charged_before {
            let masked = format!("************{}", charge.card_last4);
            (charged(resolved.element, charge, masked), None)
        } else if resolved.cancelled {
            (cancel_outcome(resolved.element), None)
        } else if new_card {
            match self.payment.pay(resolved.element).await? {
                Paid::Charged(outcome) => (outcome, None),
                // A card declined in turn: its wait starts again.
                Paid::Declined { element, reason } => (still_waiting(element, &reason), Some((reason, true))),
            }
        } else if expired {
            (self.wait_ran_out(resolved.element, &reason), None)
        } else {
            // A change that keeps it waiting (a new address): no step.
            (Outcome::new(resolved.element), Some((reason, false)))
        };
        let before = (waits.seq, Some(waits.state));
        let handled = record_outcome(&self.ctx, before, resolved.changes, &outcome, Onward::NextNode).await?;
        publisher.publish_all(&handled.messages).await?;
        handled.emit(self.ctx.node);
        let order_id = waits.order_id;
        match waits_on {
            Some((reason, restart)) => self.waiting.update(&as_it_waits(&outcome), &reason, restart).await?,
            None => {
                let state = outcome.steps.last().map_or(OrderState::Cancelled, |step| step.state);
                tracing::info!(%order_id, %state, "a waiting order left payment");
                self.waiting.end(order_id, state).await?
            }
        }
        Ok(())
    }

    /// The order waited for a card longer than the limit: it ends declined.
    fn wait_ran_out(&self, element: OrderElement, reason: &str) -> Outcome {
        let detail = format!(
            "{reason}; no card paid within the {} s wait for another card",
            self.wait_limit.as_secs()
        );
        Outcome::new(element).step(OrderState::PaymentDeclined, detail)
    }
}

/// The element as it waits after `outcome` (its steps taken).
fn as_it_waits(outcome: &Outcome) -> OrderElement {
    let mut element = outcome.element.clone();
    for step in &outcome.steps {
        element.seq += 1;
        element.state = step.state;
    }
    element
}
