//! `orderflow publish`: turns orders into workflow elements, records each
//! one's first state (`placed`) on the audit exchange, and sends it to
//! intake, every message confirmed by the broker before its id is printed.
//! It rides through a broker restart or a cut connection: it reconnects and
//! sends again what was not confirmed (the same elements, same order ids and
//! event ids, which the pipeline takes once), prints each id once, and gives
//! up only after `ORDERFLOW_PUBLISH_PATIENCE_S` seconds without progress.

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

type Session = (deadpool_lapin::Object, Publisher);

/// How long one attempt at a window of orders (connecting if need be,
/// publishing, every confirm) may take before it is given up and made again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(45);

/// A connection from the pool (a new one when the last died) with a confirm channel.
async fn open_session(pool: &deadpool_lapin::Pool, settings: &Settings) -> anyhow::Result<Session> {
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
    Ok((connection, publisher))
}

/// Publishes the orders and prints their ids in order.
/// `directed`: to the coordinator (routing key `order.coordinator`) instead of intake.
pub async fn publish(
    settings: &Settings,
    orders: Vec<Order>,
    rate: Option<f64>,
    directed: bool,
) -> anyhow::Result<()> {
    let patience = settings.publish_patience;
    // The pool reconnects to the first broker URL (the workers move between all of them).
    let first_url = topology::management::amqp_urls(&settings.amqp_url).first().map(|u| u.to_string());
    let pool = deadpool_lapin::Config { url: first_url, ..Default::default() }.create_pool(
        || lapin::ConnectionProperties::default().with_connection_name("orderflow-publish".into()),
        deadpool_lapin::Runtime::Tokio1,
    )?;
    // The first connection must work: a wrong URL or a missing topology is reported at once.
    let mut session: Option<Session> = Some(open_session(&pool, settings).await?);
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
            let placed =
                AuditEvent::for_transition(element, None, "publisher", &instance, placed_detail(element));
            let mut placing = [
                audit_message(&placed),
                if directed {
                    directed_message(element)
                } else {
                    element_message(element, topology::WORKFLOW.door())
                },
            ];
            // The order's trace starts here (its id is the order's).
            transport::message::stamp_trace(
                &mut placing,
                &shared::trace::TraceContext::of_order(element.order_id),
            );
            messages.extend(placing);
        }
        let mut failing_since: Option<Instant> = None;
        loop {
            let attempt = async {
                if session.is_none() {
                    session = Some(open_session(&pool, settings).await?);
                }
                let (_, publisher) = session.as_ref().expect("a session was just opened");
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
        for element in chunk {
            writeln!(stdout, "{}", element.order_id)?;
        }
        published += chunk.len();
        bar.inc(chunk.len() as u64);
    }
    stdout.flush()?;
    bar.finish_and_clear();
    if let Some((connection, publisher)) = session {
        publisher.close().await;
        let _ = connection.close(200, "published".into()).await;
    }
    wait_until_tracked(settings, &ids).await;
    Ok(())
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
