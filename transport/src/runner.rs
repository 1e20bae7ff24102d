//! The consume loop that runs a [`Stage`], one element at a time per task:
//! each delivery is decoded and put through the [`step`], what the step
//! returns is published and confirmed, and only then is the delivery
//! acknowledged (or else retried or dead-lettered). Changes heard meanwhile
//! go to the change consumer; the session reconnects and shuts down.

use super::arrival::{receive, Arrival};
use super::change_consumer::dispatch_change;
use super::context::NodeContext;
use super::publisher::{publish_failure, Publisher};
use super::service::{dispatch_call, StageService};
use super::session::{finish, next_of, open_consumer, supervise, Consumers};
use super::settle::{ack, attempt_of, settle, settle_failure, Settle};
use super::step::{step, Handled, StepOutcome};
use futures::StreamExt;
use lapin::{message::Delivery, Connection};
use shared::settings::Settings;
use shared::stage::Stage;
use std::sync::Arc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// Runs `stage` until shutdown: the main loop of every per-element node.
pub async fn run_stage<S: Stage>(
    stage: S,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Arc::new(NodeContext::for_node(&settings, S::NODE, settings.prefetch).await?);
    if let (Some(book), Some(vetter)) = (&ctx.book, stage.change_vetter()) {
        book.vet_with(vetter);
    }
    let stage = Arc::new(stage);
    supervise(&settings, &ctx, &shutdown, |connection| {
        serve(connection, ctx.clone(), stage.clone(), shutdown.clone())
    })
    .await
}

async fn serve<S: Stage>(
    connection: Connection,
    ctx: Arc<NodeContext>,
    stage: Arc<S>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let connection = Arc::new(connection);
    let publisher = Publisher::reopening(connection.clone(), ctx.trust.own_user()).await?;
    let Consumers { channel, elements: mut consumer, mut changes, mut calls } =
        open_consumer(&connection, &ctx, &publisher).await?;
    let service = Arc::new(StageService(stage.clone()));
    tracing::info!(node = ctx.node, queue = ctx.queue, prefetch = ctx.prefetch, "consuming");
    let tasks = TaskTracker::new();
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
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
                Some(Ok(delivery)) => {
                    let (ctx, stage, publisher) = (ctx.clone(), stage.clone(), publisher.clone());
                    tasks.spawn(async move { handle_delivery(&ctx, &*stage, &publisher, delivery).await });
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        }
    };
    finish(&connection, &channel, &ctx, tasks, result).await
}

/// Decodes a delivery, runs the step, publishes what it returned and settles
/// the delivery, inside the span of the element's trace.
async fn handle_delivery<S: Stage>(ctx: &NodeContext, stage: &S, publisher: &Publisher, delivery: Delivery) {
    let trace = shared::trace::known(&delivery.properties);
    let span = shared::trace::span(ctx.node, &delivery.properties, trace.as_ref());
    handle_traced(ctx, stage, publisher, delivery, trace).instrument(span).await
}

async fn handle_traced<S: Stage>(
    ctx: &NodeContext,
    stage: &S,
    publisher: &Publisher,
    delivery: Delivery,
    trace: Option<shared::trace::TraceContext>,
) {
    let _in_hand = shared::metrics::InHand::start();
    let Arrival { element, placed } = match receive(ctx, S::NODE, &delivery) {
        Ok(arrival) => arrival,
        Err(error) => return settle_failure(publisher, ctx, &delivery, error).await,
    };
    let trace = shared::trace::decoded(&delivery.properties, element.order_id, trace);
    ctx.simulate_busy().await;
    let attempts = attempt_of(&delivery);
    match step(ctx, stage, element, attempts).await {
        StepOutcome::Handled(mut handled) => {
            // A plain order's `placed` record goes first, before what it led to.
            handled.messages.splice(0..0, placed);
            crate::message::stamp_trace(&mut handled.messages, &trace);
            settle_handled(ctx, publisher, &delivery, &handled, attempts).await
        }
        StepOutcome::Failed(decision) => settle(publisher, ctx, &delivery, decision).await,
    }
}

use super::publisher::BROKER_PATIENCE;

/// Publishes a handled element's messages, then acknowledges it (or settles the failure).
async fn settle_handled(
    ctx: &NodeContext,
    publisher: &Publisher,
    delivery: &Delivery,
    handled: &Handled,
    attempts: i64,
) {
    match publisher.publish_all_patiently(&handled.messages, BROKER_PATIENCE).await {
        Ok(()) => {
            ack(delivery).await;
            handled.emit(ctx.node);
        }
        Err(error) => {
            let failure = publish_failure(error);
            settle(publisher, ctx, delivery, Settle::after_failure(failure, attempts, ctx.max_attempts)).await
        }
    }
}
