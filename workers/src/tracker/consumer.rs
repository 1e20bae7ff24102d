//! Consumes audit events in batches: whatever has arrived (up to 500
//! events, single or in the nodes' `audit_batch` messages) is written in
//! one transaction, and only after the commit is it acknowledged (one
//! `multiple` ack). Undecodable events, and events whose sender may not say
//! them (`shared::trust`: an event for node N only from N's user, for a
//! state N produces), are dead-lettered; one such event in a batch
//! dead-letters the whole batch (an honest node never sends one).
//! When the store refuses a write, consumption pauses: the batch stays in
//! hand (unacknowledged, spending no delivery attempts) and is written again
//! with growing delays until the store recovers, while `/health` says so.

use super::store::{Record, TrackerStore};
use super::Health;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use shared::incident::INCIDENT_TYPE;
use shared::settings::Settings;
use shared::settlement::SETTLEMENT_TYPE;
use std::sync::Arc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use transport::audit_batch::{unpack, AUDIT_BATCH_TYPE};
use transport::message::{decode, CHANGE_EVENT_TYPE, MAX_SEQ};
use transport::session::{finish, open_consumer, supervise, Consumers};
use transport::settle::{ack_with, dead_letter, retry_delay};
use transport::{NodeContext, Publisher};

/// Messages in hand at most (a batch message holds up to 64 events): under
/// load most are batches, so 32 of them hold about what a transaction
/// takes, and a backlog on the queue costs the tracker little memory (250
/// held up to 6 MiB of batches when the nodes ran ahead of it; 64 peaked at
/// 21.5 MiB and 32 at 20.4 in the same A/B, CPU within the noise).
const PREFETCH: u16 = 32;
/// Events written in one transaction at most.
const BATCH_EVENTS: usize = 500;
/// How often ended orders are moved to the warehouse.
const MOVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often the moves also look for late records of moved orders.
const LATE_EVERY: std::time::Duration = std::time::Duration::from_secs(20);
/// At most this many move batches per tick (1,000 orders a second at most).
const MOVES_PER_TICK: usize = 4;

pub async fn run(
    store: TrackerStore,
    settings: Settings,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx =
        Arc::new(NodeContext::new(&settings, "tracker", topology::TRACKER_QUEUE.to_string(), PREFETCH)?);
    let retention = super::results::Retention::from_settings(&settings)?;
    let quiet = settings.warehouse_after;
    let result = supervise(&settings, &ctx, &shutdown, |connection| {
        let health = health.clone();
        let session =
            serve(connection, ctx.clone(), store.clone(), health.clone(), retention, quiet, shutdown.clone());
        async move {
            let result = session.await;
            health.set_consuming(false);
            result
        }
    })
    .await;
    health.set_consuming(false);
    result
}

/// Reads how many audit events wait in the tracker's queue (a passive
/// declare), for the `orderflow_tracker_lag_events` gauge.
async fn measure_lag(channel: &lapin::Channel) {
    let options = lapin::options::QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    let queue = topology::TRACKER_QUEUE;
    if let Ok(queue) = channel.queue_declare(queue.into(), options, Default::default()).await {
        shared::metrics::measured().tracker_lag.set(u64::from(queue.message_count()));
    }
}

/// Moves what has ended (and stayed quiet) to the warehouse, a batch at a
/// time, for at most [`MOVES_PER_TICK`] batches; a store error leaves it
/// for the next tick. It runs between batches of audit events, so the
/// tracker's own writes never wait for each other.
async fn move_to_warehouse(store: &TrackerStore, quiet: std::time::Duration, late_too: bool) {
    for pass in 0..MOVES_PER_TICK {
        match store.move_ended(quiet, late_too && pass == 0).await {
            Ok(moved) => {
                if moved.orders + moved.late_events > 0 {
                    // A move's pages and sorts are freed: back to the system.
                    crate::memory::give_back_freed();
                    shared::events::OrdersMoved {
                        orders: moved.orders,
                        events: moved.events,
                        late_events: moved.late_events,
                    }
                    .emit();
                }
                if moved.orders < super::warehouse::MOVE_BATCH as u64 {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not move ended orders to the warehouse; trying again later");
                return;
            }
        }
    }
}

/// The record with the trace id its message carried (`traceparent`).
fn with_trace(record: Record, trace_id: Option<String>) -> Record {
    match record {
        Record::State(mut event) => {
            event.trace_id = trace_id;
            Record::State(event)
        }
        Record::Change(mut event) => {
            event.trace_id = trace_id;
            Record::Change(event)
        }
        other => other,
    }
}

/// The records a delivery carries (one, or each of a batch's), decoded and
/// checked against the delivery's verified sender; any bad one refuses the
/// delivery as a whole, with the reason.
fn records_of(ctx: &NodeContext, delivery: &lapin::message::Delivery) -> Result<Vec<Record>, String> {
    let sender = ctx.trust.sender(&delivery.properties);
    let headers = delivery.properties.headers().as_ref();
    let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
    if kind == Some(AUDIT_BATCH_TYPE) {
        let messages = unpack(&delivery.data)?;
        return messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                let trace_id = message
                    .traceparent
                    .as_deref()
                    .and_then(shared::trace::TraceContext::parse)
                    .map(|t| t.trace_id());
                let body = message.body.get().as_bytes();
                record_of(ctx, message.kind.as_deref(), body, None, sender.as_deref(), trace_id).map_err(
                    |reason| format!("message {} of {} in the batch: {reason}", i + 1, messages.len()),
                )
            })
            .collect();
    }
    let trace_id = shared::trace::from_headers(headers).map(|t| t.trace_id());
    Ok(vec![record_of(ctx, kind, &delivery.data, headers, sender.as_deref(), trace_id)?])
}

/// One record: its body decoded by its `type`, its sender checked.
fn record_of(
    ctx: &NodeContext,
    kind: Option<&str>,
    body: &[u8],
    headers: Option<&lapin::types::FieldTable>,
    sender: Option<&str>,
    trace_id: Option<String>,
) -> Result<Record, String> {
    let decoded = match kind {
        Some(CHANGE_EVENT_TYPE) => decode(body, headers, ctx.max_message_bytes).map(Record::Change),
        Some(INCIDENT_TYPE) => decode(body, headers, ctx.max_message_bytes).map(Record::Incident),
        Some(SETTLEMENT_TYPE) => decode(body, headers, ctx.max_message_bytes).map(Record::Settlement),
        _ => decode(body, headers, ctx.max_message_bytes).map(Record::State),
    };
    let record = verify(ctx, sender, decoded.map_err(|e| e.to_string())?)?;
    Ok(with_trace(record, trace_id))
}

/// A consumer of the results kept for polling (on a channel of its own).
async fn consume_results(connection: &lapin::Connection) -> anyhow::Result<lapin::Consumer> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(100, lapin::options::BasicQosOptions { global: false }).await?;
    let queue = topology::POLL_RESULTS_QUEUE;
    let consumer = channel
        .basic_consume(queue.into(), "tracker-results".into(), Default::default(), Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot consume {queue}: {e} (is the topology applied?)"))?;
    Ok(consumer)
}

/// Checks that the event's sender may say it: the node it names is the
/// sender's role, the state one that role records, the step within an
/// order's possible length (`placed` is always step 0). Whether an event is
/// terminal comes from its state, not from what the body claims.
fn verify(ctx: &NodeContext, sender: Option<&str>, record: Record) -> Result<Record, String> {
    let (node, state, order_id) = match &record {
        Record::State(e) => (e.node.clone(), e.to_state.as_str(), e.order_id),
        Record::Change(e) => (e.node.clone(), e.kind.as_str(), e.order_id),
        Record::Incident(incident) => {
            // Any orderflow process may report its own incidents, only its own.
            let role = topology::permissions::Role::from_name(&incident.node);
            if role.is_some_and(|role| ctx.trust.is_role(sender, role)) {
                return Ok(record);
            }
            let node = shared::text::escaped(&incident.node);
            let reason = format!("an incident of {node} must come from its own user");
            shared::events::Refused { node: "tracker", what: "an incident", reason: &reason }.emit();
            return Err(format!("refused: {reason}"));
        }
        Record::Settlement(_) => {
            // Only the node that settles reports settled batches.
            let settler = topology::permissions::Role::Node(topology::permissions::settling_node());
            if ctx.trust.is_role(sender, settler) {
                return Ok(record);
            }
            let reason = "a settled batch must come from the settling node's user";
            shared::events::Refused { node: "tracker", what: "a settled batch", reason }.emit();
            return Err(format!("refused: {reason}"));
        }
    };
    let refused = |reason: String| {
        tracing::debug!(%order_id, state, "an audit event from a sender that may not send it");
        shared::events::Refused { node: "tracker", what: "an audit event", reason: &reason }.emit();
        format!("refused: {reason}")
    };
    ctx.trust.check_event(&node, state, sender).map_err(refused)?;
    let Record::State(mut event) = record else { return Ok(record) };
    let placed = event.to_state == shared::OrderState::Placed;
    if event.seq > MAX_SEQ || placed != (event.seq == 0) {
        return Err(refused(format!("step {} is not a possible step of {state}", event.seq)));
    }
    event.terminal = event.definition().is_terminal(event.to_state);
    Ok(Record::State(event))
}

async fn serve(
    connection: lapin::Connection,
    ctx: Arc<NodeContext>,
    store: TrackerStore,
    health: Arc<Health>,
    mut retention: super::results::Retention,
    quiet: std::time::Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Publisher::open(&connection, ctx.trust.own_user()).await?;
    let Consumers { channel, elements: consumer, .. } = open_consumer(&connection, &ctx, &publisher).await?;
    let mut results = consume_results(&connection).await?;
    health.set_consuming(true);
    let mut batches = consumer.ready_chunks(usize::from(PREFETCH));
    let mut lag_tick = tokio::time::interval(shared::metrics::LAG_EVERY);
    let mut move_tick = tokio::time::interval(MOVE_EVERY);
    let mut late_swept = std::time::Instant::now();
    let result = loop {
        let chunk = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = lag_tick.tick() => {
                measure_lag(&channel).await;
                continue;
            }
            _ = move_tick.tick() => {
                // Late records are looked for less often: it reads the whole active store.
                let late_too = late_swept.elapsed() >= LATE_EVERY;
                if late_too {
                    late_swept = std::time::Instant::now();
                }
                move_to_warehouse(&store, quiet, late_too).await;
                // Outcomes a failed publish left unsent.
                super::outcomes::send_due(&store.store.pool, &publisher).await;
                continue;
            }
            next = results.next() => match next {
                Some(Ok(delivery)) => {
                    super::results::keep(&ctx, &store, &publisher, &mut retention, delivery).await;
                    continue;
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("results consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the results consumer")),
            },
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
        let mut events = Vec::new();
        // The last decoded delivery: a `multiple` ack on it settles every good
        // one; the undecodable ones are settled one by one when dead-lettered.
        let mut last = None;
        let mut stopped = false;
        for delivery in &deliveries {
            match records_of(&ctx, delivery) {
                Ok(records) => {
                    events.extend(records);
                    last = Some(delivery);
                }
                Err(reason) => dead_letter(&publisher, &ctx, delivery, &reason).await,
            }
            if events.len() >= BATCH_EVENTS {
                let written = last.take().expect("events come with their delivery");
                if !write_then_ack(&store, &health, &shutdown, &std::mem::take(&mut events), written).await {
                    stopped = true;
                    break;
                }
            }
        }
        if let (false, Some(last)) = (stopped, last) {
            stopped = !write_then_ack(&store, &health, &shutdown, &events, last).await;
        }
        if !stopped && owes_outcomes(&events) {
            super::outcomes::send_due(&store.store.pool, &publisher).await;
        }
        if stopped {
            break Ok(());
        }
        if let Some(error) = broken {
            break Err(anyhow::Error::from(error).context("consumer failed"));
        }
    };
    finish(&connection, &channel, &ctx, TaskTracker::new(), result).await
}

/// Whether a batch ended an order whose placer waits for its outcome.
fn owes_outcomes(events: &[Record]) -> bool {
    events.iter().any(|r| matches!(r, Record::State(e) if e.answer_to.is_some() && e.terminal))
}

/// Writes `events` in one transaction, then acknowledges every delivery up
/// to `last` (one `multiple` ack). A store outage pauses consumption: the
/// events stay in hand and are written again with growing delays until the
/// store recovers; false on shutdown meanwhile (the deliveries then come
/// back to the next tracker).
async fn write_then_ack(
    store: &TrackerStore,
    health: &Health,
    shutdown: &CancellationToken,
    events: &[Record],
    last: &lapin::message::Delivery,
) -> bool {
    let mut failures = 0i64;
    loop {
        match store.record(events).await {
            Ok(new) => {
                health.set_store_failing(false);
                shared::events::EventsRecorded { received: events.len(), new }.emit();
                ack_with(last, BasicAckOptions { multiple: true }).await;
                return true;
            }
            Err(error) => {
                failures += 1;
                health.set_store_failing(true);
                let delay = retry_delay(failures.min(4));
                tracing::warn!(
                    %error,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "tracking store write failed; consumption paused, retrying the batch"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
