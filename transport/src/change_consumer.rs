//! The change consumer: every change request fanned out to the node goes into
//! its change book (or is rejected at once when the order already ended
//! here), with its requester as the broker verified it. Changes waiting at
//! start are heard before any element is taken.

use super::context::NodeContext;
use super::message;
use super::publisher::Publisher;
use super::settle::{ack, settle_failure};
use lapin::{message::Delivery, Connection};
use shared::change::{ChangeKind, ChangeRequest};
use shared::change_book::Received;
use shared::events::ChangeRejected;
use shared::stage::StageError;
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Handles one change request heard on the fanout: the book keeps it for
/// the order, or rejects it when the order already ended at this node.
pub async fn handle_change(ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
    let trace = shared::trace::of_message(&delivery.properties);
    let span = shared::trace::span(ctx.node, &delivery.properties, Some(&trace));
    let result = async {
        let mut request: ChangeRequest =
            message::decode(&delivery.data, delivery.properties.headers().as_ref(), ctx.max_message_bytes)
                .map_err(|e| StageError::Permanent(e.to_string()))?;
        request.requester = ctx.trust.sender(&delivery.properties);
        let Some(book) = &ctx.book else { return Ok(()) };
        if let Received::Reject(reason) = book.receive(&request).await? {
            let mut event = [ctx.change_event(&request, ChangeKind::ChangeRejected, reason.clone(), 0)];
            crate::message::stamp_trace(&mut event, &trace);
            publisher.publish_all(&event).await.map_err(|e| StageError::Transient(e.into()))?;
            let (order_id, change_id) = (request.order_id, request.change_id);
            ChangeRejected { node: ctx.node, order_id, change_id, reason }.emit();
        }
        Ok(())
    }
    .instrument(span)
    .await;
    match result {
        Ok(()) => ack(&delivery).await,
        Err(error) => settle_failure(publisher, ctx, &delivery, error).await,
    }
}

/// Hears every change already waiting for this node before it takes any
/// element, so an order queued at a stopped node meets the changes
/// requested meanwhile as soon as the node is back.
pub async fn drain_changes(
    connection: &Connection,
    ctx: &NodeContext,
    publisher: &Publisher,
) -> anyhow::Result<()> {
    let Some(queue) = &ctx.changes_queue else { return Ok(()) };
    let channel = connection.create_channel().await?;
    let options = lapin::options::BasicGetOptions { no_ack: false };
    while let Some(message) = channel.basic_get(queue.as_str().into(), options).await? {
        handle_change(ctx, publisher, message.delivery).await;
    }
    let _ = channel.close(200, "drained".into()).await;
    Ok(())
}

/// Hands a change heard on the fanout to a task; an error when the change
/// consumer failed or was cancelled (the session must be rebuilt).
pub fn dispatch_change(
    next: Option<lapin::Result<Delivery>>,
    ctx: &Arc<NodeContext>,
    publisher: &Publisher,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    match next {
        Some(Ok(delivery)) => {
            let (ctx, publisher) = (ctx.clone(), publisher.clone());
            tasks.spawn(async move { handle_change(&ctx, &publisher, delivery).await });
            Ok(())
        }
        Some(Err(error)) => Err(anyhow::Error::from(error).context("change consumer failed")),
        None => Err(anyhow::anyhow!("the broker cancelled the change consumer")),
    }
}
