//! Consumes audit events in batches: whatever has arrived (up to 500) is
//! written in one transaction, and only after the commit is the batch
//! acknowledged (one `multiple` ack). Undecodable events are dead-lettered.

use super::store::{Record, TrackerStore};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use shared::settings::Settings;
use shared::transport::message::{decode, decode_audit, CHANGE_EVENT_TYPE};
use shared::transport::session::{finish, open_consumer, supervise};
use shared::transport::settle::{ack_with, dead_letter, retry_delay, SETTLE_TIMEOUT};
use shared::transport::{NodeContext, Publisher};
use std::sync::Arc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const PREFETCH: u16 = 1000;
const BATCH: usize = 500;

pub async fn run(store: TrackerStore, settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ctx =
        Arc::new(NodeContext::new(&settings, "tracker", topology::TRACKER_QUEUE.to_string(), PREFETCH)?);
    supervise(&settings, &ctx.instance_id.clone(), &shutdown, |connection| {
        serve(connection, ctx.clone(), store.clone(), shutdown.clone())
    })
    .await
}

async fn serve(
    connection: lapin::Connection,
    ctx: Arc<NodeContext>,
    store: TrackerStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Publisher::open(&connection).await?;
    let (channel, consumer, _) = open_consumer(&connection, &ctx, &publisher).await?;
    let mut batches = consumer.ready_chunks(BATCH);
    let mut failures = 0i64;
    let result = loop {
        let chunk = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            chunk = batches.next() => match chunk {
                Some(chunk) => chunk,
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        };
        let mut deliveries = Vec::with_capacity(chunk.len());
        let mut broken = None;
        for item in chunk {
            match item {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => broken = Some(error),
            }
        }
        let mut events = Vec::with_capacity(deliveries.len());
        // The last decoded delivery: a `multiple` ack on it settles every good
        // one; the undecodable ones are settled one by one when dead-lettered.
        let mut last = None;
        for delivery in &deliveries {
            let decoded =
                if delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(CHANGE_EVENT_TYPE) {
                    decode(&delivery.data, delivery.properties.headers().as_ref(), ctx.max_message_bytes)
                        .map(Record::Change)
                } else {
                    decode_audit(delivery, ctx.max_message_bytes).map(Record::State)
                };
            match decoded {
                Ok(record) => {
                    events.push(record);
                    last = Some(delivery);
                }
                Err(error) => dead_letter(&publisher, &ctx, delivery, &error.to_string()).await,
            }
        }
        let Some(last) = last else {
            if let Some(error) = broken {
                break Err(anyhow::Error::from(error).context("consumer failed"));
            }
            continue;
        };
        match store.record(&events).await {
            Ok(new) => {
                failures = 0;
                tracing::debug!(received = events.len(), new, "audit events recorded");
                ack_with(last, BasicAckOptions { multiple: true }).await;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "tracking store write failed; the events will be retried");
                tokio::time::sleep(retry_delay(failures)).await;
                let nack = last.nack(BasicNackOptions { multiple: true, requeue: true });
                let _ = tokio::time::timeout(SETTLE_TIMEOUT, nack).await;
            }
        }
        if let Some(error) = broken {
            break Err(anyhow::Error::from(error).context("consumer failed"));
        }
    };
    finish(&connection, &channel, &ctx, TaskTracker::new(), result).await
}
