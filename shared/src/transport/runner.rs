//! The consume loop that runs a [`Stage`]: one connection per process, a
//! consume channel with a deliberate prefetch, a confirm-mode publish channel,
//! and a second consumer that hears in-flight changes from the fanout. Each
//! element is decoded, its pending changes are decided, it is handled, its
//! change records, audit events and forwarded element are published and
//! confirmed, and only then is it acknowledged. The loop reconnects with
//! backoff when the broker goes away; on shutdown it stops consuming and
//! finishes what it holds.

use super::connect::{connect_with_retry, Backoff};
use super::message::{
    self, audit_message, change_event_message, dead_letter_message, element_message, Outgoing,
};
use super::publisher::Publisher;
use crate::audit::{AuditEvent, Transition};
use crate::change::{cancel_outcome, Change, ChangeEvent, ChangeKind, ChangeRequest, Decision};
use crate::change_book::{ChangeBook, Received};
use crate::order::OrderElement;
use crate::routing::next_node;
use crate::settings::Settings;
use crate::stage::{Outcome, Stage, StageError};
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
    Channel, Connection, Consumer,
};
use std::{future::Future, sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use topology::Node;

/// What every delivery handler of a node needs to know.
pub struct NodeContext {
    pub node: &'static str,
    pub instance_id: String,
    pub queue: String,
    pub prefetch: u16,
    pub delay: Option<Duration>,
    pub max_message_bytes: usize,
    pub max_attempts: u32,
    /// The node's book of in-flight changes (workflow nodes only).
    pub book: Option<ChangeBook>,
    /// Held during the configured per-element delay: a slowed instance handles
    /// one element at a time, like a worker that is busy for that long.
    busy: tokio::sync::Mutex<()>,
}

impl NodeContext {
    pub fn new(
        settings: &Settings,
        node: &'static str,
        queue: String,
        prefetch: u16,
    ) -> anyhow::Result<NodeContext> {
        Ok(NodeContext {
            node,
            instance_id: settings.instance_id(node),
            queue,
            prefetch: prefetch.clamp(1, 2000),
            delay: settings.delay_for(node)?,
            max_message_bytes: settings.max_message_bytes,
            max_attempts: settings.max_attempts.max(1),
            book: None,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The context of a workflow node, with its change book opened.
    pub async fn for_node(settings: &Settings, node: Node, prefetch: u16) -> anyhow::Result<NodeContext> {
        let mut ctx = NodeContext::new(settings, node.name(), node.queue(), prefetch)?;
        ctx.book = Some(ChangeBook::open(settings, node.name()).await?);
        Ok(ctx)
    }

    fn workflow_node(&self) -> Option<Node> {
        self.book.as_ref().and_then(|_| Node::from_name(self.node))
    }

    fn change_event(
        &self,
        request: &ChangeRequest,
        kind: ChangeKind,
        detail: String,
        version: u32,
    ) -> Outgoing {
        change_event_message(&ChangeEvent::new(request, kind, self.node, &self.instance_id, detail, version))
    }
}

/// Keeps a session on the broker alive: connects (with backoff), runs
/// `session`, and when the session ends in error (connection lost, consumer
/// cancelled) connects again. Returns when `session` returns `Ok`, which it
/// does only on shutdown, or when shutdown interrupts a reconnection.
pub async fn supervise<F, Fut>(
    settings: &Settings,
    name: &str,
    shutdown: &CancellationToken,
    mut session: F,
) -> anyhow::Result<()>
where
    F: FnMut(Connection) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::default();
    loop {
        let Some(connection) = connect_with_retry(&settings.amqp_url, name, shutdown).await else {
            return Ok(());
        };
        tracing::info!(broker = settings.amqp_url_redacted(), "connected");
        let started = std::time::Instant::now();
        match session(connection).await {
            Ok(()) => return Ok(()),
            Err(error) => {
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

/// Checks the topology, (re)declares the node's own queues, hears the
/// changes already waiting, and opens a consumer on its workflow queue (and
/// one on its changes queue).
pub async fn open_consumer(
    connection: &Connection,
    ctx: &NodeContext,
    publisher: &Publisher,
) -> anyhow::Result<(Channel, Consumer, Option<Consumer>)> {
    let setup = connection.create_channel().await?;
    let mut own: Vec<topology::QueueSpec> =
        topology::queues().into_iter().filter(|q| q.name == ctx.queue).collect();
    if let Some(node) = ctx.workflow_node() {
        own.push(topology::changes_queue(node));
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
    let consumer = consume(ctx.queue.clone(), ctx.instance_id.clone()).await?;
    let changes = match ctx.workflow_node() {
        Some(node) => Some(consume(node.changes_queue(), format!("{}-changes", ctx.instance_id)).await?),
        None => None,
    };
    Ok((channel, consumer, changes))
}

/// The messages that record an outcome: one audit event per step, then the
/// element forwarded to its next node (if it has one).
pub fn outcome_messages(
    before: (u32, Option<crate::OrderState>),
    outcome: &Outcome,
    ctx: &NodeContext,
) -> (OrderElement, Vec<Outgoing>) {
    let (mut seq, mut from_state) = before;
    let mut element = outcome.element.clone();
    let mut messages = Vec::with_capacity(outcome.steps.len() + 1);
    for step in &outcome.steps {
        seq += 1;
        let transition = Transition {
            order_id: element.order_id,
            seq,
            version: element.version,
            from_state,
            to_state: step.state,
        };
        messages.push(audit_message(&AuditEvent::new(
            transition,
            ctx.node,
            &ctx.instance_id,
            step.detail.clone(),
        )));
        from_state = Some(step.state);
    }
    element.seq = seq;
    if let Some(state) = from_state {
        element.state = state;
    }
    if let Some(next) = next_node(&element) {
        messages.push(element_message(&element, next));
    }
    (element, messages)
}

/// Decides the element's pending changes. Returns the element as changed,
/// the change records to publish, and whether a cancel was just applied.
pub async fn resolve_changes(
    ctx: &NodeContext,
    element: OrderElement,
) -> Result<(OrderElement, Vec<Outgoing>, bool), StageError> {
    let Some(book) = &ctx.book else { return Ok((element, Vec::new(), false)) };
    let mut version = element.version;
    let (element, decisions) = book.resolve(element).await?;
    let mut messages = Vec::with_capacity(decisions.len());
    let mut cancelled = false;
    for (request, decision) in decisions {
        match decision {
            Decision::Apply => {
                version += 1;
                cancelled |= request.change == Change::Cancel;
                let detail = format!("{} (version {version})", request.change.describe());
                messages.push(ctx.change_event(&request, ChangeKind::ChangeApplied, detail, version));
            }
            Decision::Reject(reason) => {
                messages.push(ctx.change_event(&request, ChangeKind::ChangeRejected, reason, version));
            }
        }
    }
    Ok((element, messages, cancelled))
}

/// When the outcome ends the order here, closes it in the change book and
/// rejects the changes that arrived meanwhile.
pub async fn close_if_terminal(
    ctx: &NodeContext,
    element: &OrderElement,
) -> Result<Vec<Outgoing>, StageError> {
    let Some(book) = &ctx.book else { return Ok(Vec::new()) };
    if !element.state.is_terminal() {
        return Ok(Vec::new());
    }
    let late = book.close(element).await?;
    Ok(late
        .into_iter()
        .map(|(request, reason)| {
            ctx.change_event(&request, ChangeKind::ChangeRejected, reason, element.version)
        })
        .collect())
}

/// How long an acknowledgement may take before the connection is presumed dead.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Acknowledges one delivery; a stale tag (from before a reconnect) or a dead
/// connection only means the broker will deliver the message again.
pub async fn ack(delivery: &Delivery) {
    ack_with(delivery, BasicAckOptions::default()).await
}

/// Acknowledges with options (e.g. `multiple`), never waiting for ever.
pub async fn ack_with(delivery: &Delivery, options: BasicAckOptions) {
    match tokio::time::timeout(SETTLE_TIMEOUT, delivery.ack(options)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::debug!("stale delivery tag; the message will be redelivered"),
        Ok(Err(error)) => tracing::debug!(%error, "ack failed; the message will be redelivered"),
        Err(_) => tracing::warn!("ack not answered; the message will be redelivered"),
    }
}

/// Returns a delivery to its queue (counted toward the delivery limit).
pub async fn requeue(delivery: &Delivery) {
    match tokio::time::timeout(SETTLE_TIMEOUT, delivery.reject(BasicRejectOptions { requeue: true })).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::debug!(%error, "reject failed; the message will be redelivered"),
        Err(_) => tracing::warn!("reject not answered; the message will be redelivered"),
    }
}

/// Sends a delivery that can never succeed to the dead-letter exchange with
/// its reason, then acknowledges it; if that publish fails it is requeued.
pub async fn dead_letter(publisher: &Publisher, ctx: &NodeContext, delivery: &Delivery, reason: &str) {
    tracing::warn!(
        node = ctx.node,
        reason,
        routing_key = delivery.routing_key.as_str(),
        "dead-lettering a message"
    );
    match publisher.publish_all(&[dead_letter_message(delivery, ctx.node, reason)]).await {
        Ok(()) => ack(delivery).await,
        Err(error) => {
            tracing::warn!(%error, "could not dead-letter; requeueing");
            requeue(delivery).await;
        }
    }
}

/// Waits before a retry: 200 ms doubling with each earlier delivery, up to 10 s.
pub fn retry_delay(delivery_count: i64) -> Duration {
    let exponent = delivery_count.clamp(0, 6) as u32;
    Duration::from_millis(200 * 2u64.pow(exponent)).min(Duration::from_secs(10))
}

/// Settles a delivery after a failed attempt: dead-letter a permanent failure
/// at once; retry a transient one after a growing delay, and dead-letter it
/// with its reason once it has failed `max_attempts` times.
pub async fn settle_failure(
    publisher: &Publisher,
    ctx: &NodeContext,
    delivery: &Delivery,
    error: StageError,
) {
    match error {
        StageError::Permanent(reason) => dead_letter(publisher, ctx, delivery, &reason).await,
        StageError::Transient(error) => {
            let attempts = message::delivery_count(delivery) + 1;
            if attempts >= i64::from(ctx.max_attempts) {
                let reason = format!("gave up after {attempts} attempts: {error:#}");
                dead_letter(publisher, ctx, delivery, &reason).await;
                return;
            }
            let delay = retry_delay(attempts - 1);
            tracing::warn!(
                node = ctx.node,
                error = format!("{error:#}"),
                attempts,
                retry_in_ms = delay.as_millis() as u64,
                "transient failure; retrying"
            );
            tokio::time::sleep(delay).await;
            requeue(delivery).await;
        }
    }
}

/// Handles one change request heard on the fanout: the book keeps it for
/// the order, or rejects it when the order already ended at this node.
pub async fn handle_change(ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
    let result = async {
        let request: ChangeRequest =
            message::decode(&delivery.data, delivery.properties.headers().as_ref(), ctx.max_message_bytes)
                .map_err(|e| StageError::Permanent(e.to_string()))?;
        let Some(book) = &ctx.book else { return Ok(()) };
        if let Received::Reject(reason) = book.receive(&request).await? {
            let event = ctx.change_event(&request, ChangeKind::ChangeRejected, reason, 0);
            publisher.publish_all(&[event]).await.map_err(|e| StageError::Transient(e.into()))?;
        }
        Ok(())
    }
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
    let Some(node) = ctx.workflow_node() else { return Ok(()) };
    let channel = connection.create_channel().await?;
    let queue = node.changes_queue();
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

/// Runs `stage` until shutdown: the main loop of every per-element node.
pub async fn run_stage<S: Stage>(
    stage: S,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Arc::new(NodeContext::for_node(&settings, S::NODE, settings.prefetch).await?);
    let stage = Arc::new(stage);
    supervise(&settings, &ctx.instance_id.clone(), &shutdown, |connection| {
        serve(connection, ctx.clone(), stage.clone(), shutdown.clone())
    })
    .await
}

/// The next delivery of an optional consumer (pending for ever without one).
pub async fn next_change(changes: &mut Option<Consumer>) -> Option<lapin::Result<Delivery>> {
    match changes {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

async fn serve<S: Stage>(
    connection: Connection,
    ctx: Arc<NodeContext>,
    stage: Arc<S>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Publisher::open(&connection).await?;
    let (channel, mut consumer, mut changes) = open_consumer(&connection, &ctx, &publisher).await?;
    tracing::info!(node = ctx.node, queue = ctx.queue, prefetch = ctx.prefetch, "consuming");
    let tasks = TaskTracker::new();
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            next = next_change(&mut changes) => {
                if let Err(error) = dispatch_change(next, &ctx, &publisher, &tasks) {
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
        let _ = channel.basic_cancel(ctx.instance_id.as_str().into(), BasicCancelOptions::default()).await;
        let tag = format!("{}-changes", ctx.instance_id);
        let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
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

async fn handle_delivery<S: Stage>(ctx: &NodeContext, stage: &S, publisher: &Publisher, delivery: Delivery) {
    match process(ctx, stage, publisher, &delivery).await {
        Ok(()) => ack(&delivery).await,
        Err(error) => settle_failure(publisher, ctx, &delivery, error).await,
    }
}

async fn process<S: Stage>(
    ctx: &NodeContext,
    stage: &S,
    publisher: &Publisher,
    delivery: &Delivery,
) -> Result<(), StageError> {
    let element = message::decode_element(delivery, ctx.max_message_bytes)
        .map_err(|e| StageError::Permanent(e.to_string()))?;
    crate::routing::check_arrival(S::NODE, &element)?;
    if let Some(delay) = ctx.delay {
        let _busy = ctx.busy.lock().await;
        tokio::time::sleep(delay).await;
    }
    let before = (element.seq, Some(element.state));
    let order_id = element.order_id;
    let (element, mut messages, cancelled) = resolve_changes(ctx, element).await?;
    let outcome = if cancelled { cancel_outcome(element) } else { stage.handle(element).await? };
    let (element, outcome_messages) = outcome_messages(before, &outcome, ctx);
    messages.extend(outcome_messages);
    messages.extend(close_if_terminal(ctx, &element).await?);
    publisher.publish_all(&messages).await.map_err(|e| StageError::Transient(e.into()))?;
    tracing::debug!(node = ctx.node, %order_id, state = %element.state, "handled");
    Ok(())
}
