//! The consume loop that runs a [`BatchStage`] (the picklist): deliveries are
//! held, unacknowledged, in a [`Batcher`] until their group is released. At
//! release, pending in-flight changes are decided for every held element
//! first: a cancelled element leaves the batch on its cancel path, one whose
//! shipping method changed moves to its new group, the rest are recorded and
//! forwarded, and only when all of that is confirmed are the batch's
//! deliveries acknowledged. Every held delivery is settled exactly once: an
//! element the stage returned no outcome for, or whose order could not be
//! closed, is settled as a failure before anything of it is published. A
//! crash loses nothing: unacknowledged deliveries return to the queue.

use super::arrival::receive_element;
use super::change_consumer::dispatch_change;
use super::context::NodeContext;
use super::publisher::{publish_failure, Publisher};
use super::service::{dispatch_call, BatchService};
use super::session::{finish, next_of, open_consumer, supervise, Consumers};
use super::settle::{ack, attempt_of, requeue, settle, settle_failure, Settle};
use super::step::{record_outcome, replay_changes, resolve_changes, ChangeRecords, Handled, Onward};
use futures::StreamExt;
use lapin::{message::Delivery, Connection};
use shared::batcher::Batcher;
use shared::change::cancel_outcome;
use shared::order::{OrderElement, OrderState};
use shared::settings::Settings;
use shared::stage::{BatchStage, Outcome, StageError};
use std::{sync::Arc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// An element waiting in a batch, with its delivery and what it was on arrival.
struct Held {
    element: OrderElement,
    delivery: Delivery,
    before: (u32, Option<OrderState>),
    /// Change decisions to publish (and report) with its outcome.
    changes: ChangeRecords,
    /// Counted in hand, and timed, until settled (dropped).
    _in_hand: shared::metrics::InHand,
    /// The element's trace, continued on what is sent for it.
    trace: shared::trace::TraceContext,
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
    supervise(&settings, &ctx, &shutdown, |connection| {
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
    let connection = Arc::new(connection);
    let publisher = Publisher::reopening(connection.clone(), ctx.trust.own_user()).await?;
    let Consumers { channel, elements: mut consumer, mut changes, mut calls } =
        open_consumer(&connection, &ctx, &publisher).await?;
    let service = Arc::new(BatchService(stage.clone()));
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
            next = next_of(&mut changes) => {
                if let Err(error) = dispatch_change(next, &ctx, &publisher, &tasks) {
                    break Err(error);
                }
            }
            next = next_of(&mut calls) => {
                if let Err(error) = dispatch_call(next, &ctx, &service, &publisher, &tasks) {
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
                        let _in_hand = shared::metrics::InHand::start();
                        let trace = shared::trace::of_message(&delivery.properties);
                        let changes = ChangeRecords::default();
                        let held = Held { element, delivery, before, changes, _in_hand, trace };
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

/// Decodes a delivery and checks the element may arrive here (from its
/// sender, in its state); an element that cannot is refused at once (a
/// permanent failure) and never joins a batch.
fn arrive<S: BatchStage>(ctx: &NodeContext, delivery: &Delivery) -> Result<OrderElement, StageError> {
    receive_element(ctx, S::NODE, delivery)
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
            // A delivery after the first decides only what its first did (see `step`).
            let decided = if attempt_of(&held.delivery) > 1 {
                replay_changes(ctx, element).await
            } else {
                resolve_changes(ctx, element).await
            };
            match decided {
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
        let paired = pair_by_order(emit_now, |held| held.element.order_id, outcomes);
        for extra in &paired.extra {
            let order_id = extra.element.order_id;
            tracing::warn!(node = ctx.node, %order_id, "the stage returned an outcome for no held order; dropped");
        }
        for held in paired.unmatched {
            let (ctx, publisher) = (ctx.clone(), publisher.clone());
            let error = StageError::Transient(anyhow::anyhow!(
                "the batch stage returned no outcome for order {}",
                held.element.order_id
            ));
            tasks.spawn(async move { settle_failure(&publisher, &ctx, &held.delivery, error).await });
        }
        let (ctx, publisher) = (ctx.clone(), publisher.clone());
        tasks.spawn(async move { settle_released(&ctx, &publisher, paired.matched).await });
    }
}

/// Held elements paired with the batch stage's outcomes, by order id.
struct Paired<T> {
    matched: Vec<(T, Outcome)>,
    /// Held elements the stage returned no outcome for.
    unmatched: Vec<T>,
    /// Outcomes for no held element.
    extra: Vec<Outcome>,
}

/// Pairs each held element with the outcome for its order (a stage may
/// return them in any order); nothing is dropped silently.
fn pair_by_order<T>(held: Vec<T>, order_of: impl Fn(&T) -> uuid::Uuid, outcomes: Vec<Outcome>) -> Paired<T> {
    let mut extra = outcomes;
    let mut matched = Vec::with_capacity(held.len());
    let mut unmatched = Vec::new();
    for item in held {
        match extra.iter().position(|o| o.element.order_id == order_of(&item)) {
            Some(i) => matched.push((item, extra.remove(i))),
            None => unmatched.push(item),
        }
    }
    Paired { matched, unmatched, extra }
}

/// Records every released element's outcome (closing an order that ends
/// here) before anything is published, so an element whose record fails is
/// settled as a failure with none of its messages sent; then publishes the
/// rest as one group and acknowledges them. When the group is not
/// confirmed, each element is published and settled on its own, so one
/// refused message is dead-lettered alone and the others go on.
async fn settle_released(ctx: &NodeContext, publisher: &Publisher, released: Vec<(Held, Outcome)>) {
    let mut messages = Vec::new();
    let mut settled: Vec<(Delivery, Handled)> = Vec::with_capacity(released.len());
    for (held, outcome) in released {
        // Each element's step in a span of its own, in its order's trace.
        let span = shared::trace::span(ctx.node, &held.delivery.properties, Some(&held.trace));
        let recorded = tracing::Instrument::instrument(
            record_outcome(ctx, held.before, held.changes, &outcome, Onward::NextNode),
            span.clone(),
        )
        .await;
        match recorded {
            Ok(mut handled) => {
                span.in_scope(|| crate::message::stamp_trace(&mut handled.messages, &held.trace));
                messages.extend(handled.messages.iter().cloned());
                settled.push((held.delivery, handled));
            }
            Err(error) => {
                tracing::warn!(%error, "could not record the order's outcome; nothing of it was sent");
                settle_failure(publisher, ctx, &held.delivery, error).await;
            }
        }
    }
    if messages.is_empty() && settled.is_empty() {
        return;
    }
    match publisher.publish_all_patiently(&messages, super::publisher::BROKER_PATIENCE).await {
        Ok(()) => {
            tracing::debug!(node = ctx.node, size = settled.len(), "batch released");
            for (delivery, handled) in &settled {
                ack(delivery).await;
                handled.emit(ctx.node);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "batch not confirmed; settling its orders one by one");
            for (delivery, handled) in &settled {
                match publisher.publish_all(&handled.messages).await {
                    Ok(()) => {
                        ack(delivery).await;
                        handled.emit(ctx.node);
                    }
                    Err(error) => {
                        let decision = Settle::after_failure(
                            publish_failure(error),
                            attempt_of(delivery),
                            ctx.max_attempts,
                        );
                        settle(publisher, ctx, delivery, decision).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::order::Order;

    fn outcome(order_id: uuid::Uuid) -> Outcome {
        let mut element = OrderElement::placed(Order::default());
        element.order_id = order_id;
        Outcome::new(element)
    }

    #[test]
    fn outcomes_pair_with_their_orders_and_nothing_is_dropped() {
        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::new_v4()).collect();
        let stray = uuid::Uuid::new_v4();
        // The stage answers out of order, forgets ids[1] and invents an order.
        let outcomes = vec![outcome(ids[3]), outcome(stray), outcome(ids[0]), outcome(ids[2])];
        let paired = pair_by_order(ids.clone(), |id| *id, outcomes);
        let matched: Vec<(uuid::Uuid, uuid::Uuid)> =
            paired.matched.iter().map(|(id, o)| (*id, o.element.order_id)).collect();
        assert_eq!(matched, [(ids[0], ids[0]), (ids[2], ids[2]), (ids[3], ids[3])]);
        assert_eq!(paired.unmatched, [ids[1]]);
        assert_eq!(paired.extra.len(), 1);
        assert_eq!(paired.extra[0].element.order_id, stray);
    }

    #[test]
    fn a_full_answer_pairs_everything() {
        let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
        let paired = pair_by_order(ids.clone(), |id| *id, ids.iter().rev().map(|id| outcome(*id)).collect());
        assert_eq!(paired.matched.len(), 3);
        assert!(paired.unmatched.is_empty() && paired.extra.is_empty());
    }
}
