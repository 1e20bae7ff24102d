//! Payment's settlement: the consumer of the `orderflow.settlement`
//! aggregation queue, run by the cards domain (the payment process) as its
//! feed. A capture (a shipped order's authorization, sent by shipping or,
//! for a directed order, the coordinator) is held, unacknowledged, until
//! its batch is full (`ORDERFLOW_SETTLEMENT_BATCH`) or its oldest capture
//! has waited `ORDERFLOW_SETTLEMENT_FLUSH_MS`; then the batch is captured
//! in one transaction of the processor's ledger, its record sent to the
//! tracker (confirmed), and only then are its deliveries acknowledged, in
//! one `basic.ack` with `multiple`.
//!
//! Exactly once: a crash before the ledger's commit leaves the captures in
//! the queue (redelivered, another batch); a crash after it and before the
//! acknowledgement redelivers captures the ledger already made, which it
//! does not make again, and their batch's record is sent again (the tracker
//! keeps a batch once). A capture from a sender that may not send one, one
//! that is not a capture, or one the ledger refuses (no such
//! authorization, another amount, already voided) is dead-lettered with
//! the reason; the rest of its batch goes on.

use crate::processor::Processor;
use lapin::message::Delivery;
use shared::settlement::{Capture, SettledBatch};
use std::time::{Duration, Instant};
use transport::message::{decode, settled_batch_message};
use transport::settle::{ack_with, dead_letter};
use transport::{NodeContext, Publisher};

/// A capture held in the batch, with its delivery.
struct Held {
    capture: Capture,
    delivery: Delivery,
    arrived: Instant,
}

pub struct Settlement {
    processor: Processor,
    batch_size: usize,
    flush_after: Duration,
    held: tokio::sync::Mutex<Vec<Held>>,
}

impl Settlement {
    pub fn new(processor: Processor, settings: &shared::settings::Settings) -> Settlement {
        Settlement {
            processor,
            batch_size: settings.settlement_batch.max(1),
            flush_after: settings.settlement_flush,
            held: tokio::sync::Mutex::default(),
        }
    }

    /// A new session: what was held came on the last one's channel and
    /// returns to the queue by itself.
    pub async fn forget_held(&self) {
        self.held.lock().await.clear();
    }

    /// Takes one delivery of the queue: held in the batch (settled at once
    /// when that fills it), or dead-lettered with the reason.
    pub async fn take(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        let capture = match receive(ctx, &delivery) {
            Ok(capture) => capture,
            Err(reason) => return dead_letter(publisher, ctx, &delivery, &reason).await,
        };
        let mut held = self.held.lock().await;
        held.push(Held { capture, delivery, arrived: Instant::now() });
        if held.len() >= self.batch_size {
            self.settle(ctx, publisher, &mut held).await;
        }
    }

    /// Settles the batch when its oldest capture has waited long enough.
    pub async fn settle_if_due(&self, ctx: &NodeContext, publisher: &Publisher) {
        let mut held = self.held.lock().await;
        if held.first().is_some_and(|oldest| oldest.arrived.elapsed() >= self.flush_after) {
            self.settle(ctx, publisher, &mut held).await;
        }
    }

    /// Captures what is held in one transaction, reports the batch, and
    /// acknowledges; on a failure keeps it all for the next try.
    async fn settle(&self, ctx: &NodeContext, publisher: &Publisher, held: &mut Vec<Held>) {
        let captures: Vec<Capture> = held.iter().map(|h| h.capture.clone()).collect();
        let now = chrono::Utc::now();
        let oldest_wait_ms =
            captures.iter().map(|c| (now - c.shipped_at).num_milliseconds().max(0)).max().unwrap_or(0);
        let settled = match self.processor.capture_batch(&captures, oldest_wait_ms).await {
            Ok(settled) => settled,
            Err(error) => {
                return tracing::warn!(error = %error, held = held.len(), "could not settle a batch; trying again");
            }
        };
        // Refused captures leave the batch as dead letters (highest index first).
        for (index, reason) in settled.refused.iter().rev() {
            let refused = held.remove(*index);
            shared::events::Refused { node: ctx.node, what: "a capture", reason }.emit();
            dead_letter(publisher, ctx, &refused.delivery, &format!("refused: {reason}")).await;
        }
        let batches: Vec<&SettledBatch> = settled.batch.iter().chain(&settled.earlier).collect();
        let records: Vec<_> = batches.iter().map(|batch| settled_batch_message(ctx.node, batch)).collect();
        if let Err(error) = publisher.publish_all(&records).await {
            // Captured: a next try finds them made and sends the records again.
            return tracing::warn!(%error, "a settled batch's record was not confirmed; trying again");
        }
        if let Some(batch) = &settled.batch {
            tracing::info!(
                batch_id = %batch.batch_id,
                captures = batch.captures,
                amount_cents = batch.amount_cents,
                oldest_wait_ms = batch.oldest_wait_ms,
                "settled a batch"
            );
        }
        if let Some(last) = held.last() {
            ack_with(&last.delivery, lapin::options::BasicAckOptions { multiple: true }).await;
        }
        held.clear();
    }
}

/// A delivery of the queue as a capture: sent by who may send one, and a
/// capture; otherwise the reason to dead-letter it with.
fn receive(ctx: &NodeContext, delivery: &Delivery) -> Result<Capture, String> {
    let sender = ctx.trust.sender(&delivery.properties);
    if let Err(reason) = ctx.trust.check_capture_sender(sender.as_deref()) {
        shared::events::Refused { node: ctx.node, what: "a capture", reason: &reason }.emit();
        return Err(format!("refused: {reason}"));
    }
    let headers = delivery.properties.headers().as_ref();
    decode::<Capture>(&delivery.data, headers, ctx.max_message_bytes)
        .map_err(|e| format!("not a capture: {e}"))
}
