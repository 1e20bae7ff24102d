//! The reference: the broker's limit for orderflow's message pattern, as a
//! minimal relay written directly on lapin with the pipeline's guarantees.
//! Durable quorum queues (delivery limit 10, like the pipeline's), persistent
//! and mandatory messages, publisher confirms, and a delivery acknowledged
//! only after what it caused is confirmed. A chain is what an order is:
//! publish = element to hop 1 + one audit message; each hop consumes (own
//! connection, prefetch 64, one task per delivery), publishes one audit
//! message and the element to the next hop (the last hop only its audit
//! message), awaits both confirms, then acks. The audit queue is consumed like
//! the tracker does: chunks of whatever arrived (up to 500), one `multiple`
//! ack. A chain is complete when its last hop's audit message is consumed.
//! Chains are published like the orderflow load: confirmed windows, with a
//! bounded number of chains in flight.
//! As many hops as a multi-unit order's path through the workflow
//! definition has nodes ([`multi_unit_hops`]: six today); single-unit orders
//! skip rebin, so the relay does at least an average order's work.

use crate::progress::Progress;
use crate::stats::{now_secs, Dist, Throughput};
use crate::{load, procfs};
use anyhow::Context;
use futures::StreamExt;
use harness::{Broker, Vhost};
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Confirmation, Connection, ExchangeKind,
};
use shared::audit::AuditEvent;
use shared::order::OrderElement;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const EXCHANGE: &str = "bench.relay";
const AUDIT_EXCHANGE: &str = "bench.audit";
const AUDIT_QUEUE: &str = "bench.audit";
const T0_HEADER: &str = "x-bench-t0";
/// Like the tracker: prefetch 1000, chunks of up to 500.
const AUDIT_PREFETCH: u16 = 1000;
const AUDIT_CHUNK: usize = 500;

/// The hops of a multi-unit order's happy path, from the workflow definition.
pub fn multi_unit_hops() -> usize {
    topology::WORKFLOW.happy_path(&topology::workflow::Facts { units: 2, holds_reservation: false }).len()
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub hops: usize,
    pub chains: usize,
    pub prefetch: u16,
    /// Chains published but not complete, at most (the saturating closed loop).
    pub in_flight: usize,
}

#[derive(Clone, Debug)]
pub struct RelayResult {
    pub chains: usize,
    pub throughput: Throughput,
    /// Publish to the last audit message's consumption, ms (mostly queueing: the run is saturated).
    pub latency: Dist,
    /// CPU seconds per 1,000 chains: the bench process (relay hops, publisher, audit consumer) and the broker.
    pub cpu_relay_per_1000: f64,
    pub cpu_broker_per_1000: f64,
}

fn hop_queue(hop: usize) -> String {
    format!("bench.hop-{hop}")
}

fn hop_key(hop: usize) -> String {
    format!("hop.{hop}")
}

fn audit_key(hop: usize) -> String {
    format!("audit.hop-{hop}")
}

fn quorum_arguments() -> FieldTable {
    let mut table = FieldTable::default();
    table.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    table.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(topology::DELIVERY_LIMIT));
    table
}

async fn declare(channel: &Channel, hops: usize) -> lapin::Result<()> {
    for exchange in [EXCHANGE, AUDIT_EXCHANGE] {
        let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(exchange.into(), ExchangeKind::Topic, options, FieldTable::default())
            .await?;
    }
    let mut queues: Vec<(String, &str, String)> =
        (1..=hops).map(|hop| (hop_queue(hop), EXCHANGE, hop_key(hop))).collect();
    queues.push((AUDIT_QUEUE.to_string(), AUDIT_EXCHANGE, "#".to_string()));
    for (queue, exchange, key) in queues {
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.as_str().into(), options, quorum_arguments()).await?;
        let bind = QueueBindOptions::default();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                key.as_str().into(),
                bind,
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Properties like the pipeline's (persistent, ids, type, timestamp, schema
/// header) plus the chain's publish time.
fn properties(t0_micros: i64, kind: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("schema_version".into(), AMQPValue::LongUInt(1));
    headers.insert(T0_HEADER.into(), AMQPValue::LongLongInt(t0_micros));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_correlation_id(uuid::Uuid::new_v4().to_string().into())
        .with_type(kind.into())
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
        .with_headers(headers)
}

fn t0_of(delivery: &Delivery) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(T0_HEADER))? {
        AMQPValue::LongLongInt(t) => Some(*t),
        _ => None,
    }
}

/// One message to publish: exchange, routing key, body, properties.
type Message<'a> = (&'static str, String, &'a [u8], BasicProperties);

/// Publishes every message (mandatory, persistent), then awaits each confirm.
async fn publish_confirmed(channel: &Channel, messages: &[Message<'_>]) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(messages.len());
    for (exchange, key, body, properties) in messages {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        confirms.push(
            channel
                .basic_publish((*exchange).into(), key.as_str().into(), options, body, properties.clone())
                .await?,
        );
    }
    for confirm in confirms {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            other => anyhow::bail!("relay publish not confirmed: {other:?}"),
        }
    }
    Ok(())
}

/// What the tasks of one relay run share.
struct Shared {
    hops: usize,
    audit_body: Vec<u8>,
    /// (completion time, latency ms) per completed chain.
    completed: Mutex<Vec<(f64, f64)>>,
    failure: Mutex<Option<String>>,
    cancel: CancellationToken,
}

impl Shared {
    fn fail(&self, error: impl std::fmt::Display) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert_with(|| error.to_string());
        }
        self.cancel.cancel();
    }
}

/// Connects as orderflow's processes do (on a cluster, spread over its nodes).
async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    transport::connect(url, name).await.with_context(|| format!("relay {name} cannot connect"))
}

/// One hop: its own connection, a consume channel with `prefetch`, a confirm-mode publish channel.
async fn hop(
    url: String,
    hop: usize,
    prefetch: u16,
    shared: Arc<Shared>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let connection = connect(&url, &format!("relay-hop-{hop}")).await?;
    let publish = connection.create_channel().await?;
    publish.confirm_select(ConfirmSelectOptions::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions { global: false }).await?;
    let tag = format!("relay-hop-{hop}");
    let mut consumer = channel
        .basic_consume(
            hop_queue(hop).as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = ready.send(());
    loop {
        let delivery = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => anyhow::bail!("hop {hop} consumer failed: {error}"),
                None => anyhow::bail!("hop {hop} consumer cancelled"),
            },
        };
        let (publish, shared) = (publish.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(error) = relay_one(&publish, &shared, hop, &delivery).await {
                shared.fail(format!("hop {hop}: {error:#}"));
            }
        });
    }
    let _ = connection.close(200, "relay done".into()).await;
    Ok(())
}

async fn relay_one(
    publish: &Channel,
    shared: &Shared,
    hop: usize,
    delivery: &Delivery,
) -> anyhow::Result<()> {
    let t0 = t0_of(delivery).unwrap_or_default();
    let mut messages: Vec<Message> =
        vec![(AUDIT_EXCHANGE, audit_key(hop), &shared.audit_body, properties(t0, "audit"))];
    if hop < shared.hops {
        messages.push((EXCHANGE, hop_key(hop + 1), &delivery.data, properties(t0, "order")));
    }
    publish_confirmed(publish, &messages).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// The audit consumer: records each chain whose last hop's audit message arrives.
async fn audit(
    url: String,
    shared: Arc<Shared>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let connection = connect(&url, "relay-audit").await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(AUDIT_PREFETCH, BasicQosOptions { global: false }).await?;
    let consumer = channel
        .basic_consume(
            AUDIT_QUEUE.into(),
            "relay-audit".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = ready.send(());
    let last_key = audit_key(shared.hops);
    let mut chunks = consumer.ready_chunks(AUDIT_CHUNK);
    loop {
        let chunk = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            chunk = chunks.next() => chunk.context("audit consumer cancelled")?,
        };
        let now = now_secs();
        let mut last = None;
        let mut done = Vec::new();
        for delivery in chunk {
            let delivery = delivery?;
            if delivery.routing_key.as_str() == last_key {
                let t0 = t0_of(&delivery).unwrap_or_default() as f64 / 1e6;
                done.push((now, (now - t0) * 1000.0));
            }
            last = Some(delivery);
        }
        if let Some(last) = last {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        if let Ok(mut completed) = shared.completed.lock() {
            completed.extend(done);
        }
    }
    let _ = connection.close(200, "relay done".into()).await;
    Ok(())
}

/// Runs one relay measurement in a vhost of its own (deleted afterwards).
pub async fn run(
    broker: &Broker,
    run_id: &str,
    tag: &str,
    config: &RelayConfig,
) -> anyhow::Result<RelayResult> {
    let mut vhost = Vhost::create(broker, &format!("orderflow-bench-{run_id}-{tag}")).await?;
    let result = run_in(&vhost.amqp_url, config, tag).await;
    let deleted = vhost.delete().await;
    let result = result?;
    deleted?;
    Ok(result)
}

async fn run_in(url: &str, config: &RelayConfig, tag: &str) -> anyhow::Result<RelayResult> {
    let setup = connect(url, "relay-setup").await?;
    declare(&setup.create_channel().await?, config.hops).await.context("declaring the relay's queues")?;
    // Bodies the size of the pipeline's: a generated order's element and an audit event.
    let sample = OrderElement::placed(load::orders(1).remove(0));
    let audit_body =
        serde_json::to_vec(&AuditEvent::for_transition(&sample, None, "relay", "relay-1", "relayed".into()))?;
    let shared = Arc::new(Shared {
        hops: config.hops,
        audit_body,
        completed: Mutex::new(Vec::with_capacity(config.chains)),
        failure: Mutex::new(None),
        cancel: CancellationToken::new(),
    });
    let _cancel_on_drop = shared.cancel.clone().drop_guard();
    let mut tasks = start_tasks(url, config, &shared).await?;

    let progress = Progress::start(&format!("relay {tag}"));
    let broker_pids = procfs::broker_pids();
    let (cpu_own_0, cpu_broker_0) = (procfs::own_cpu_seconds(), procfs::total_cpu_seconds(&broker_pids));
    let publish = setup.create_channel().await?;
    publish.confirm_select(ConfirmSelectOptions::default()).await?;
    let element_bodies: Vec<Vec<u8>> = load::orders(config.chains)
        .into_iter()
        .map(|o| serde_json::to_vec(&OrderElement::placed(o)))
        .collect::<Result<_, _>>()?;
    let publish_start = now_secs();
    publish_chains(&publish, &element_bodies, config, &shared, &progress).await?;
    let publish_end = now_secs();

    wait_for_chains(config, &shared, &progress).await?;
    let cpu_own = procfs::own_cpu_seconds() - cpu_own_0;
    let cpu_broker = procfs::total_cpu_seconds(&broker_pids) - cpu_broker_0;
    shared.cancel.cancel();
    while tasks.join_next().await.is_some() {}
    let _ = setup.close(200, "relay done".into()).await;

    let completed = shared.completed.lock().map(|c| c.clone()).unwrap_or_default();
    let times: Vec<f64> = completed.iter().map(|(t, _)| *t).collect();
    let latencies: Vec<f64> = completed.iter().map(|(_, l)| *l).collect();
    let throughput = crate::stats::saturated_throughput(&times, publish_start, publish_end);
    let per_1000 = 1000.0 / config.chains as f64;
    progress.finish(&format!("{:.0} chains/s", throughput.per_sec));
    Ok(RelayResult {
        chains: config.chains,
        throughput,
        latency: Dist::of_ms(&latencies),
        cpu_relay_per_1000: cpu_own * per_1000,
        cpu_broker_per_1000: cpu_broker * per_1000,
    })
}

/// Starts a task per hop and the audit consumer, and waits until each is consuming.
async fn start_tasks(
    url: &str,
    config: &RelayConfig,
    shared: &Arc<Shared>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut readies = Vec::new();
    for hop_number in 1..=config.hops {
        let (ready, started) = tokio::sync::oneshot::channel();
        readies.push(started);
        let (url, shared, prefetch) = (url.to_string(), shared.clone(), config.prefetch);
        tasks.spawn(async move {
            if let Err(error) = hop(url, hop_number, prefetch, shared.clone(), ready).await {
                shared.fail(format!("{error:#}"));
            }
        });
    }
    let (ready, started) = tokio::sync::oneshot::channel();
    readies.push(started);
    let (audit_url, audit_shared) = (url.to_string(), shared.clone());
    tasks.spawn(async move {
        if let Err(error) = audit(audit_url, audit_shared.clone(), ready).await {
            audit_shared.fail(format!("{error:#}"));
        }
    });
    for started in readies {
        if started.await.is_err() {
            let failure = shared.failure.lock().ok().and_then(|f| f.clone()).unwrap_or_default();
            anyhow::bail!("a relay task did not start: {failure}");
        }
    }

    Ok(tasks)
}

/// How many chains are complete so far.
fn completed(shared: &Shared) -> usize {
    shared.completed.lock().map(|c| c.len()).unwrap_or(0)
}

/// Publishes every chain's first element and audit message like the
/// orderflow publisher: confirmed windows, at most `in_flight` chains incomplete.
async fn publish_chains(
    publish: &lapin::Channel,
    element_bodies: &[Vec<u8>],
    config: &RelayConfig,
    shared: &Shared,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut published = 0;
    for bodies in element_bodies.chunks(load::WINDOW) {
        while published - completed(shared).min(published) + load::WINDOW > config.in_flight.max(load::WINDOW)
        {
            if shared.cancel.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut messages: Vec<Message> = Vec::with_capacity(2 * bodies.len());
        for body in bodies {
            let t0 = chrono::Utc::now().timestamp_micros();
            messages.push((
                AUDIT_EXCHANGE,
                "audit.publish".to_string(),
                &shared.audit_body,
                properties(t0, "audit"),
            ));
            messages.push((EXCHANGE, hop_key(1), body, properties(t0, "order")));
        }
        publish_confirmed(publish, &messages).await?;
        published += bodies.len();
        progress.set(format!("published {published}/{}, completed {}", config.chains, completed(shared)));
    }
    Ok(())
}

/// Waits until every chain is complete; fails on a task's failure or 30 s without progress.
async fn wait_for_chains(config: &RelayConfig, shared: &Shared, progress: &Progress) -> anyhow::Result<()> {
    let mut last_progress = (completed(shared), Instant::now());
    loop {
        let done = completed(shared);
        if done >= config.chains {
            break;
        }
        if let Some(failure) = shared.failure.lock().ok().and_then(|f| f.clone()) {
            anyhow::bail!("the relay failed: {failure}");
        }
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        }
        anyhow::ensure!(
            last_progress.1.elapsed() < Duration::from_secs(30),
            "the relay made no progress for 30 s ({done} of {} chains)",
            config.chains
        );
        progress.set(format!("published {0}/{0}, completed {done}", config.chains));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
