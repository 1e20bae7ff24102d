//! The consume loop that runs a [`BatchStage`] (the picklist): deliveries are
//! held, unacknowledged, in a [`Batcher`] until their group is released; then
//! every element of the batch is recorded and forwarded, and only when all of
//! that is confirmed are the batch's deliveries acknowledged. A crash loses
//! nothing: unacknowledged deliveries return to the queue.

use super::message::decode_element;
use super::publisher::Publisher;
use super::runner::{
    ack, dead_letter, finish, open_consumer, outcome_messages, requeue, supervise, NodeContext,
};
use crate::batcher::Batcher;
use crate::order::OrderElement;
use crate::settings::Settings;
use crate::stage::BatchStage;
use futures::StreamExt;
use lapin::{message::Delivery, Connection};
use std::{sync::Arc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

type Held = (OrderElement, Delivery);

/// Runs `stage` until shutdown. The prefetch covers a full batch of every
/// group (three shipping methods) with room to spare, so a batch can fill.
pub async fn run_batch_stage<S: BatchStage>(
    stage: S,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let prefetch = u16::try_from(settings.picklist_batch.saturating_mul(4)).unwrap_or(2000);
    let ctx = Arc::new(NodeContext::new(&settings, S::NODE.name(), S::NODE.queue(), prefetch)?);
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
    let (channel, mut consumer) = open_consumer(&connection, &ctx).await?;
    let mut batcher: Batcher<Held> = Batcher::new(settings.picklist_batch, settings.picklist_flush);
    let tasks = TaskTracker::new();
    let release = |key: String, batch: Vec<Held>| {
        let (ctx, stage, publisher) = (ctx.clone(), stage.clone(), publisher.clone());
        tasks.spawn(async move { emit(&ctx, &*stage, &publisher, key, batch).await });
    };
    let result = loop {
        let deadline = batcher.next_deadline();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = sleep_until(deadline) => {
                for (key, batch) in batcher.take_due(Instant::now()) {
                    release(key, batch);
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => match decode_element(&delivery, ctx.max_message_bytes) {
                    Ok(element) => {
                        if let Some(delay) = ctx.delay {
                            tokio::time::sleep(delay).await;
                        }
                        let key = stage.group_key(&element);
                        if let Some(batch) = batcher.push(&key, (element, delivery), Instant::now()) {
                            release(key, batch);
                        }
                    }
                    Err(error) => {
                        let (ctx, publisher) = (ctx.clone(), publisher.clone());
                        tasks.spawn(async move { dead_letter(&publisher, &ctx, &delivery, &error.to_string()).await });
                    }
                },
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        }
    };
    if result.is_ok() {
        // Finish what is in hand: release every waiting group now.
        for (key, batch) in batcher.drain() {
            release(key, batch);
        }
    }
    // On a lost connection the held deliveries return to the queue by themselves.
    finish(&connection, &channel, &ctx, tasks, result).await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn emit<S: BatchStage>(
    ctx: &NodeContext,
    stage: &S,
    publisher: &Publisher,
    key: String,
    batch: Vec<Held>,
) {
    let befores: Vec<_> = batch.iter().map(|(e, _)| (e.seq, Some(e.state))).collect();
    let (elements, deliveries): (Vec<OrderElement>, Vec<Delivery>) = batch.into_iter().unzip();
    let outcomes = stage.emit(&key, elements);
    let messages: Vec<_> = outcomes
        .iter()
        .zip(befores)
        .flat_map(|(outcome, before)| outcome_messages(before, outcome, ctx).1)
        .collect();
    match publisher.publish_all(&messages).await {
        Ok(()) => {
            tracing::debug!(node = ctx.node, group = key, size = deliveries.len(), "batch released");
            for delivery in &deliveries {
                ack(delivery).await;
            }
        }
        Err(error) => {
            tracing::warn!(%error, group = key, "batch not confirmed; requeueing its orders");
            for delivery in &deliveries {
                requeue(delivery).await;
            }
        }
    }
}
