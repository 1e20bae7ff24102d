//! `orderflow publish`: turns orders into workflow elements, records each
//! one's first state (`placed`) on the audit exchange, and sends it to
//! intake, every message confirmed by the broker before its id is printed.
//! It rides through a broker restart or a cut connection: it reconnects and
//! sends again what was not confirmed (the same elements, same order ids and
//! event ids, which the pipeline takes once), prints each id once, and gives
//! up only after `ORDERFLOW_PUBLISH_PATIENCE_S` seconds without progress.
//! With `--wait` each order names the command's direct reply-to as where its
//! outcome goes (`shared::answer`), and the command prints each outcome as
//! the order ends, without polling the tracker.

use crate::exit::Outcome;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shared::audit::AuditEvent;
use shared::order::{Order, OrderElement};
use shared::settings::Settings;
use shared::tracker_api::TrackerClient;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use transport::message::{audit_message, element_message};
use transport::Publisher;

/// Reads one order per line; any line that is not a JSON object of the order
/// shape stops the command before anything is published.
pub fn read_orders_file(path: &Path, max_message_bytes: usize) -> anyhow::Result<Vec<Order>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut orders = Vec::new();
    for (index, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let number = index + 1;
        let bytes = line.with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            anyhow::bail!("line {number}: not UTF-8 text; nothing was published");
        };
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("line {number}: not valid JSON ({e}); nothing was published"))?;
        if !value.is_object() {
            anyhow::bail!("line {number}: not a JSON object; nothing was published");
        }
        let order: Order = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("line {number}: not an order ({e}); nothing was published"))?;
        let size = serde_json::to_vec(&OrderElement::placed(order.clone()))?.len();
        if size > max_message_bytes {
            anyhow::bail!(
                "line {number}: the order makes a message of {size} bytes, more than the maximum of \
                 {max_message_bytes} (ORDERFLOW_MAX_MESSAGE_BYTES); nothing was published"
            );
        }
        orders.push(order);
    }
    anyhow::ensure!(!orders.is_empty(), "{} holds no orders; nothing was published", path.display());
    Ok(orders)
}

fn progress(total: usize) -> ProgressBar {
    if total < 100 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} publishing [{bar:30}] {pos}/{len} orders ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// A connection, its confirm channel, and (with `--wait`) the outcomes
/// arriving on that channel's direct reply-to.
type Session = (deadpool_lapin::Object, Publisher, Option<lapin::Consumer>);

/// How long one attempt at a window of orders (connecting if need be,
/// publishing, every confirm) may take before it is given up and made again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(45);

/// A connection from the pool (a new one when the last died) with a confirm channel.
async fn open_session(
    pool: &deadpool_lapin::Pool,
    settings: &Settings,
    answers: bool,
) -> anyhow::Result<Session> {
    let connection = pool
        .get()
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", settings.amqp_url_redacted()))?;
    let setup = connection.create_channel().await?;
    topology::ensure_for(&setup, &[])
        .await
        .context("the topology is not applied on this broker (run scripts/up.sh or `topology apply`)")?;
    let _ = setup.close(200, "checked".into()).await;
    let publisher = Publisher::open(&connection, &settings.broker_user()).await?;
    let outcomes = if answers {
        // Consumed before the first publish that names it, as RabbitMQ requires.
        let options = lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() };
        let channel = publisher.channel().await?;
        let queue = shared::service::DIRECT_REPLY_TO;
        Some(channel.basic_consume(queue.into(), "".into(), options, Default::default()).await?)
    } else {
        None
    };
    Ok((connection, publisher, outcomes))
}

/// How `orderflow publish` sends its orders.
pub struct Publishing {
    /// Orders per second (none: as fast as the broker confirms).
    pub rate: Option<f64>,
    /// To the coordinator (routing key `order.coordinator`) instead of intake.
    pub directed: bool,
    /// Print each order's outcome as it ends, waiting up to this long (none: print the ids).
    pub wait: Option<Duration>,
}

/// Publishes the orders and prints their ids in order (or, with `wait`, their outcomes).
pub async fn publish(settings: &Settings, orders: Vec<Order>, how: Publishing) -> anyhow::Result<Outcome> {
    let Publishing { rate, directed, wait } = how;
    let patience = settings.publish_patience;
    // The pool reconnects to the first broker URL (the workers move between all of them).
    let first_url = topology::management::amqp_urls(&settings.amqp_url).first().map(|u| u.to_string());
    let pool = deadpool_lapin::Config { url: first_url, ..Default::default() }.create_pool(
        || lapin::ConnectionProperties::default().with_connection_name("orderflow-publish".into()),
        deadpool_lapin::Runtime::Tokio1,
    )?;
    // The first connection must work: a wrong URL or a missing topology is reported at once.
    let mut session: Option<Session> = Some(open_session(&pool, settings, wait.is_some()).await?);
    let instance = format!("cli-{}", std::process::id());

    let elements: Vec<OrderElement> = orders.into_iter().map(OrderElement::placed).collect();
    let ids: Vec<uuid::Uuid> = elements.iter().map(|e| e.order_id).collect();
    let bar = progress(elements.len());
    // Unpaced: confirm in windows of 200 orders; paced: one order per tick.
    let window = if rate.is_some() { 1 } else { 200 };
    // `--rate` is checked (0.001 to 1,000,000 per second), so the interval is a sane duration.
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut published = 0usize;
    for (index, chunk) in elements.chunks(window).enumerate() {
        if let Some(interval) = interval {
            let due = started + interval * index as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        let mut messages = Vec::with_capacity(chunk.len() * 2);
        for element in chunk {
            messages.extend(placing(element, &instance, directed, wait.is_some()));
        }
        let mut failing_since: Option<Instant> = None;
        loop {
            let attempt = async {
                if session.is_none() {
                    session = Some(open_session(&pool, settings, wait.is_some()).await?);
                }
                let (_, publisher, _) = session.as_ref().expect("a session was just opened");
                publisher.publish_all(&messages).await.context("publishing orders")
            };
            // An attempt the broker never answers (a connection that died under a
            // pending request: lapin may then wait for ever) fails, and is made again.
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await.unwrap_or_else(|_| {
                Err(anyhow::anyhow!("no answer from the broker within {} s", ATTEMPT_TIMEOUT.as_secs()))
            });
            let Err(error) = attempt else { break };
            session = None;
            let since = *failing_since.get_or_insert_with(|| {
                bar.suspend(|| eprintln!("warning: {error:#}; reconnecting and sending again"));
                Instant::now()
            });
            if since.elapsed() >= patience {
                bar.finish_and_clear();
                stdout.flush()?;
                anyhow::bail!(
                    "published {published} of {} orders (their ids are printed); gave up after {} s \
                     without the broker confirming the rest: {error:#}",
                    elements.len(),
                    patience.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for element in chunk.iter().filter(|_| wait.is_none()) {
            writeln!(stdout, "{}", element.order_id)?;
        }
        published += chunk.len();
        bar.inc(chunk.len() as u64);
    }
    stdout.flush()?;
    bar.finish_and_clear();
    let Some((connection, publisher, outcomes)) = session else { return Ok(Outcome::Done) };
    let waited = match (wait, outcomes) {
        (Some(wait), Some(outcomes)) => Some(print_outcomes(outcomes, &ids, wait).await?),
        _ => None,
    };
    publisher.close().await;
    let _ = connection.close(200, "published".into()).await;
    if let Some(waited) = waited {
        return Ok(waited);
    }
    wait_until_tracked(settings, &ids).await;
    Ok(Outcome::Done)
}

/// Prints each order's outcome (one JSON line) as it arrives, until every
/// order of `ids` has one or `wait` has passed.
async fn print_outcomes(
    mut outcomes: lapin::Consumer,
    ids: &[uuid::Uuid],
    wait: Duration,
) -> anyhow::Result<Outcome> {
    use futures::StreamExt;
    let mut owed: std::collections::HashSet<uuid::Uuid> = ids.iter().copied().collect();
    let bar = ProgressBar::new(owed.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} ended {pos}/{len} orders ({elapsed})")
            .expect("valid template"),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut stdout = std::io::stdout().lock();
    while !owed.is_empty() {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, outcomes.next()).await else { break };
        let Ok(outcome) = serde_json::from_slice::<shared::answer::OrderOutcome>(&delivery.data) else {
            continue;
        };
        if owed.remove(&outcome.order_id) {
            bar.suspend(|| {
                writeln!(stdout, "{}", serde_json::to_string(&outcome).expect("an outcome serializes"))
            })?;
            bar.inc(1);
        }
    }
    stdout.flush()?;
    bar.finish_and_clear();
    if owed.is_empty() {
        return Ok(Outcome::Done);
    }
    eprintln!("{} of {} orders have no outcome within {} s", owed.len(), ids.len(), wait.as_secs());
    Ok(Outcome::TimedOut)
}

/// An order's `placed` record and the order itself, to intake or (`directed`)
/// to the coordinator; with `answers`, naming this channel's direct reply-to
/// as where its outcome goes.
fn placing(
    element: &OrderElement,
    instance: &str,
    directed: bool,
    answers: bool,
) -> [transport::Outgoing; 2] {
    let placed = AuditEvent::for_transition(element, None, "publisher", instance, placed_detail(element));
    let mut order = if directed {
        directed_message(element)
    } else {
        element_message(element, topology::WORKFLOW.door())
    };
    if answers {
        order.properties = order.properties.with_reply_to(shared::service::DIRECT_REPLY_TO.into());
    }
    let mut placing = [audit_message(&placed), order];
    // The order's trace starts here (its id is the order's).
    transport::message::stamp_trace(&mut placing, &shared::trace::TraceContext::of_order(element.order_id));
    placing
}

/// A placed element for the coordinator (directed mode).
fn directed_message(element: &OrderElement) -> transport::Outgoing {
    let mut message = element_message(element, topology::WORKFLOW.door());
    message.routing_key = topology::COORDINATOR_ROUTING_KEY.to_string();
    message
}

fn placed_detail(element: &OrderElement) -> String {
    format!(
        "order from {} with {} units",
        element.order.customer_id.chars().take(64).collect::<String>(),
        element.total_units()
    )
}

/// Waits (up to 10 s) until the tracker has recorded every published order,
/// so that `status` knows an order as soon as this command returns.
async fn wait_until_tracked(settings: &Settings, ids: &[uuid::Uuid]) {
    let client = TrackerClient::new(&settings.tracker_url());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.statuses(ids).await {
            Ok(found) if found.len() == ids.len() => return,
            Ok(found) if Instant::now() >= deadline => {
                eprintln!("note: the tracker has recorded {} of {} orders so far", found.len(), ids.len());
                return;
            }
            Err(error) => {
                eprintln!("note: the orders are published; {:#}", anyhow::Error::from(error));
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
