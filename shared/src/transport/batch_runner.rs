//! The consume loop that runs a [`BatchStage`] (the picklist): deliveries are
//! held, unacknowledged, in a [`Batcher`] until their group is released. At
//! release, pending in-flight changes are decided for every held element
//! first: a cancelled element leaves the batch on its cancel path, one whose
//! shipping method changed moves to its new group, the rest are recorded and
//! forwarded, and only when all of that is confirmed are the batch's
//! deliveries acknowledged. A crash loses nothing: unacknowledged deliveries
//! return to the queue.

use super::change_consumer::{dispatch_change, next_change};
use super::context::NodeContext;
use super::message::decode_element;
use super::publisher::Publisher;
use super::session::{finish, open_consumer, supervise};
use super::settle::{ack, requeue, settle_failure};
use super::step::{record_outcome, resolve_changes, ChangeRecords, Handled};
use crate::batcher::Batcher;
use crate::change::cancel_outcome;
use crate::order::{OrderElement, OrderState};
use crate::routing::check_arrival;
use crate::settings::Settings;
use crate::stage::{BatchStage, Outcome, StageError};
use futures::StreamExt;
use lapin::{message::Delivery, Connection};
use std::{sync::Arc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// An element waiting in a batch, with its delivery and what it was on arrival.
struct Held {
    element: OrderElement,
    delivery: Delivery,
    before: (u32, Option<OrderState>),
    /// Change decisions to publish (and report) with its outcome.
    changes: ChangeRecords,
}

/// Runs `stage` until shutdown. The prefetch covers a full batch of every
/// group (three shipping methods) with room to spare, so a batch can fill.
pub async fn run_batch_stage<S: BatchStage>(
    stage: S,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let prefetch = u16::try_from(settings.picklist_batch.saturating_mul(4)).unwrap_or(2000);
    let ctx = Arc::new(NodeContext::for_node(&settings, S::NODE, prefetch).await?);
    let stage = Arc::new(stage);
    supervise(&settings, &ctx.instance_id.clone(), &shutdown, |connection| {
        serve(connection, ctx.clone(), stage.clone(), settings.clone(), shutdown.clone())
    })
    .await
}

async fn serve<S: BatchStage>(
    connection: Connection,
    ctx: Arc<NodeContext>,
    stage: Arc<S>,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Publisher::open(&connection).await?;
    let (channel, mut consumer, mut changes) = open_consumer(&connection, &ctx, &publisher).await?;
    let mut batcher: Batcher<Held> = Batcher::new(settings.picklist_batch, settings.picklist_flush);
    let tasks = TaskTracker::new();
    let result = loop {
        let deadline = batcher.next_deadline();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = sleep_until(deadline) => {
                let due = batcher.take_due(Instant::now());
                release(&ctx, &stage, &publisher, &tasks, &mut batcher, due).await;
            }
            next = next_change(&mut changes) => {
                if let Err(error) = dispatch_change(next, &ctx, &publisher, &tasks) {
                    break Err(error);
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => match arrive::<S>(&ctx, &delivery) {
                    Ok(element) => {
                        if let Some(delay) = ctx.delay {
                            tokio::time::sleep(delay).await;
                        }
                        let key = stage.group_key(&element);
                        let before = (element.seq, Some(element.state));
                        let held = Held { element, delivery, before, changes: ChangeRecords::default() };
                        if let Some(batch) = batcher.push(&key, held, Instant::now()) {
                            release(&ctx, &stage, &publisher, &tasks, &mut batcher, vec![(key, batch)]).await;
                        }
                    }
                    Err(error) => {
                        let (ctx, publisher) = (ctx.clone(), publisher.clone());
                        tasks.spawn(async move { settle_failure(&publisher, &ctx, &delivery, error).await });
                    }
                },
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        }
    };
    if result.is_ok() {
        // Finish what is in hand: release every waiting group now.
        let all = batcher.drain();
        release(&ctx, &stage, &publisher, &tasks, &mut batcher, all).await;
        let rest = batcher.drain();
        release(&ctx, &stage, &publisher, &tasks, &mut batcher, rest).await;
    }
    // On a lost connection the held deliveries return to the queue by themselves.
    finish(&connection, &channel, &ctx, tasks, result).await
}

/// Decodes a delivery and checks the element may arrive here; an element that
/// cannot is refused at once (a permanent failure) and never joins a batch.
fn arrive<S: BatchStage>(ctx: &NodeContext, delivery: &Delivery) -> Result<OrderElement, StageError> {
    let element =
        decode_element(delivery, ctx.max_message_bytes).map_err(|e| StageError::Permanent(e.to_string()))?;
    check_arrival(S::NODE, &element)?;
    Ok(element)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Releases groups: decides each element's pending changes, sends cancelled
/// elements on their way, regroups those whose method changed (they wait
/// again in their new group), and emits the rest as one picklist per group.
async fn release<S: BatchStage>(
    ctx: &Arc<NodeContext>,
    stage: &Arc<S>,
    publisher: &Publisher,
    tasks: &TaskTracker,
    batcher: &mut Batcher<Held>,
    groups: Vec<(String, Vec<Held>)>,
) {
    let mut groups = groups;
    while let Some((key, batch)) = groups.pop() {
        let mut emit_now = Vec::with_capacity(batch.len());
        for mut held in batch {
            let element = held.element.clone();
            match resolve_changes(ctx, element).await {
                Err(error) => {
                    tracing::warn!(%error, "could not decide pending changes; requeueing the order");
                    tasks.spawn(async move { requeue(&held.delivery).await });
                }
                Ok(resolved) => {
                    held.changes.extend(resolved.changes);
                    let element = resolved.element;
                    if resolved.cancelled {
                        let outcome = cancel_outcome(element);
                        let (ctx, publisher) = (ctx.clone(), publisher.clone());
                        tasks.spawn(
                            async move { settle_released(&ctx, &publisher, vec![(held, outcome)]).await },
                        );
                        continue;
                    }
                    held.element = element;
                    let new_key = stage.group_key(&held.element);
                    if new_key != key {
                        if let Some(full) = batcher.push(&new_key, held, Instant::now()) {
                            groups.push((new_key, full));
                        }
                        continue;
                    }
                    emit_now.push(held);
                }
            }
        }
        if emit_now.is_empty() {
            continue;
        }
        let elements: Vec<OrderElement> = emit_now.iter().map(|h| h.element.clone()).collect();
        let outcomes = stage.emit(&key, elements);
        let (ctx, publisher) = (ctx.clone(), publisher.clone());
        tasks.spawn(async move {
            settle_released(&ctx, &publisher, emit_now.into_iter().zip(outcomes).collect()).await
        });
    }
}

/// Publishes the records and forwards of released elements, then
/// acknowledges them and reports what was handled.
async fn settle_released(ctx: &NodeContext, publisher: &Publisher, released: Vec<(Held, Outcome)>) {
    let mut messages = Vec::new();
    let mut settled: Vec<(Delivery, Handled)> = Vec::with_capacity(released.len());
    for (held, outcome) in released {
        match record_outcome(ctx, held.before, held.changes, &outcome).await {
            Ok(mut handled) => {
                messages.append(&mut handled.messages);
                settled.push((held.delivery, handled));
            }
            Err(error) => {
                tracing::warn!(%error, "could not close the order; requeueing it");
                requeue(&held.delivery).await;
            }
        }
    }
    match publisher.publish_all(&messages).await {
        Ok(()) => {
            tracing::debug!(node = ctx.node, size = settled.len(), "batch released");
            for (delivery, handled) in &settled {
                ack(delivery).await;
                handled.emit(ctx.node);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "batch not confirmed; requeueing its orders");
            for (delivery, _) in &settled {
                requeue(delivery).await;
            }
        }
    }
}
