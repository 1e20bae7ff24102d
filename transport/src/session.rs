//! A node's session on the broker: connect (and reconnect with backoff when
//! the session ends in error), open the node's consumers after checking the
//! topology and hearing the changes already waiting, and on shutdown stop
//! consuming, let the work in hand finish and close the connection.

use super::change_consumer::drain_changes;
use super::connect::{connect_with_retry, Backoff};
use super::context::NodeContext;
use super::publisher::Publisher;
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
    Channel, Connection, Consumer,
};
use shared::events::Reconnected;
use shared::settings::Settings;
use std::{future::Future, time::Duration, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Keeps a session on the broker alive: connects (with backoff), runs
/// `session`, and when the session ends in error (connection lost, consumer
/// cancelled) connects again. Returns when `session` returns `Ok`, which it
/// does only on shutdown, or when shutdown interrupts a reconnection. Logs
/// the process's start line first.
pub async fn supervise<F, Fut>(
    settings: &Settings,
    ctx: &NodeContext,
    shutdown: &CancellationToken,
    mut session: F,
) -> anyhow::Result<()>
where
    F: FnMut(Connection) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = ctx.instance_id.as_str();
    shared::telemetry::started(ctx.node, name, &settings.amqp_url_redacted(), ctx.prefetch);
    let mut backoff = Backoff::default();
    let mut lost_at: Option<Instant> = None;
    loop {
        let Some(connection) = connect_with_retry(&settings.amqp_url, name, shutdown).await else {
            return Ok(());
        };
        let broker = settings.amqp_url_redacted();
        match lost_at.take() {
            Some(lost) => Reconnected { name, broker: &broker, down_for: lost.elapsed() }.emit(),
            None => tracing::info!(broker, "connected"),
        }
        let started = Instant::now();
        match session(connection).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                lost_at = Some(Instant::now());
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "session ended; reconnecting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A session's consumers, on one channel.
pub struct Consumers {
    pub channel: Channel,
    /// The node's own queue (workflow elements).
    pub elements: Consumer,
    /// Its changes queue, when it hears changes.
    pub changes: Option<Consumer>,
    /// Its service queue, when it answers calls.
    pub calls: Option<Consumer>,
}

/// Checks the topology and the node's own queues, hears the changes
/// already waiting, and opens a consumer on its workflow queue (and on its
/// changes and service queues).
pub async fn open_consumer(
    connection: &Connection,
    ctx: &NodeContext,
    publisher: &Publisher,
) -> anyhow::Result<Consumers> {
    let setup = connection.create_channel().await?;
    let mut own: Vec<topology::QueueSpec> =
        topology::queues().into_iter().filter(|q| q.name == ctx.queue).collect();
    if let Some(node) = ctx.workflow_node() {
        own.push(topology::changes_queue(node));
        own.push(topology::retry_queue(node));
        own.push(topology::service_queue(node));
    }
    topology::ensure_for(&setup, &own).await.map_err(|e| {
        let hint = if e.to_string().contains("NOT_FOUND") {
            ": the topology is not applied (scripts/up.sh or `topology apply` create it)"
        } else {
            ""
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let _ = setup.close(200, "declared".into()).await;
    drain_changes(connection, ctx, publisher).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(ctx.prefetch, BasicQosOptions { global: false }).await?;
    let consume = |queue: String, tag: String| {
        let channel = channel.clone();
        async move {
            channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
    };
    let [element_tag, changes_tag, calls_tag] = ctx.consumer_tags();
    let elements = consume(ctx.queue.clone(), element_tag).await?;
    let changes = match &ctx.changes_queue {
        Some(queue) => Some(consume(queue.clone(), changes_tag).await?),
        None => None,
    };
    let calls = match &ctx.calls {
        Some((queue, _)) => Some(consume(queue.clone(), calls_tag).await?),
        None => None,
    };
    Ok(Consumers { channel, elements, changes, calls })
}

/// The next delivery of an optional consumer (pending for ever without one).
pub async fn next_of(consumer: &mut Option<Consumer>) -> Option<lapin::Result<Delivery>> {
    match consumer {
        Some(consumer) => futures::StreamExt::next(consumer).await,
        None => std::future::pending().await,
    }
}

/// Ends a session: on shutdown, cancels the consumers, lets every task in
/// hand finish, and closes the connection.
pub async fn finish(
    connection: &Connection,
    channel: &Channel,
    ctx: &NodeContext,
    tasks: TaskTracker,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    if result.is_ok() {
        for tag in ctx.consumer_tags() {
            let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
        }
    }
    tasks.close();
    // On shutdown, finish what is in hand; after a lost connection, do not
    // wait for tasks stuck on it (their deliveries return to the queue).
    let patience = if result.is_ok() { Duration::from_secs(60) } else { Duration::from_secs(3) };
    if tokio::time::timeout(patience, tasks.wait()).await.is_err() {
        tracing::warn!(node = ctx.node, "tasks in hand did not finish; leaving them to redelivery");
    }
    if result.is_ok() {
        let _ = connection.close(200, "shutdown".into()).await;
        tracing::info!(node = ctx.node, "stopped cleanly");
    }
    result
}
