//! `orderflow change` and `orderflow cancel`: publish an in-flight change
//! request to the changes fanout (recording it as requested) and print its
//! id at once (a new card is first handed to payment's cards service, and
//! the change carries only the token it answers); with `--wait`, poll the
//! tracker for its outcome; with `--sync`, give it a deadline: a node
//! applies it before then or never.

use crate::exit::Outcome;
use anyhow::Context;
use chrono::Utc;
use shared::change::{Change, ChangeEvent, ChangeKind, ChangeRequest};
use shared::change_book::MAX_CHANGE_REQUEST_BYTES;
use shared::domains::{CardsRequest, TokenizedCard};
use shared::order::{PaymentCard, ShipTo};
use shared::settings::Settings;
use shared::text::escaped as safe;
use shared::tracker_api::{TrackerClient, TrackerError};
use std::time::{Duration, Instant};
use topology::DomainCopy;
use transport::domain_client::{ClientError, DomainClient};
use transport::message::{change_event_message, change_request_message};
use transport::{connect, Publisher};
use uuid::Uuid;

/// How long the command waits for a change's outcome.
pub enum Mode {
    /// Print the change id and return (the request is queued).
    Queue,
    /// Also poll for the outcome, up to the timeout.
    Wait(Duration),
    /// The change must be applied within the timeout or not at all.
    Sync(Duration),
}

/// What `orderflow change` asks for, as its arguments give it (clap lets exactly one be set).
pub struct Asked {
    pub ship_to: Option<String>,
    pub ship_to_file: Option<std::path::PathBuf>,
    pub shipping_method: Option<String>,
    pub card_file: Option<std::path::PathBuf>,
}

/// `orderflow change`: the change asked for, sent (a card first handed to
/// payment's cards service for its token).
pub async fn change(
    settings: &Settings,
    order_id: Uuid,
    asked: Asked,
    mode: Mode,
) -> anyhow::Result<Outcome> {
    let what = match asked {
        Asked { card_file: Some(file), .. } => {
            match tokenize(settings, order_id, read_card_file(&file)?).await? {
                Ok(what) => what,
                Err(refused) => return Ok(refused),
            }
        }
        Asked { ship_to: Some(json), .. } => Change::ShipTo { ship_to: parse_ship_to(&json)? },
        Asked { ship_to_file: Some(file), .. } => {
            let json = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            Change::ShipTo { ship_to: parse_ship_to(&json)? }
        }
        Asked { shipping_method: Some(method), .. } => Change::ShippingMethod { shipping_method: method },
        _ => unreachable!("clap requires --ship-to, --ship-to-file, --shipping-method or --card-file"),
    };
    request(settings, order_id, what, mode).await
}

/// The card of `--card-file`: `{"card_number": .., "expiry": "MM/YY"}`.
/// Its number is read here and sent only to payment's cards service.
pub fn read_card_file(path: &std::path::Path) -> anyhow::Result<PaymentCard> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|_| {
        // The serde error may quote the file, the number with it.
        anyhow::anyhow!("{} is not a JSON object of card_number and expiry", path.display())
    })
}

/// Has payment's cards service keep `card` for the order: the change to
/// send (its token and masked number), or, refused, the outcome (the
/// reason printed; nothing is sent).
pub async fn tokenize(
    settings: &Settings,
    order_id: Uuid,
    card: PaymentCard,
) -> anyhow::Result<Result<Change, Outcome>> {
    let connection = connect(&settings.amqp_url, "orderflow-change")
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", settings.amqp_url_redacted()))?;
    let client = DomainClient::open(&connection, &settings.broker_user()).await?;
    let request = CardsRequest::Tokenize { order_id, card }.to_json();
    let answer = client.call(DomainCopy::primary("cards"), &request, None, settings.domain_timeout).await;
    client.close().await;
    let _ = connection.close(200, "tokenized".into()).await;
    match answer {
        Ok(value) => {
            let card: TokenizedCard =
                serde_json::from_value(value).context("payment's cards service answered no token")?;
            Ok(Ok(Change::Card { token: card.token, masked: card.masked }))
        }
        Err(error) => {
            eprintln!("payment's cards service: {}; no change was sent", safe(&error.to_string()));
            Ok(Err(match error {
                ClientError::Refused(_) => Outcome::Declined,
                ClientError::Unavailable(_) => Outcome::TimedOut,
            }))
        }
    }
}

pub fn parse_ship_to(json: &str) -> anyhow::Result<ShipTo> {
    serde_json::from_str(json)
        .context("the address is not a JSON object of name, line1, city, postal_code, country")
}

/// Publishes the request; with `--wait` or `--sync`, says whether it was
/// applied ([`Outcome::Done`]), rejected ([`Outcome::Declined`]) or neither in time.
pub async fn request(
    settings: &Settings,
    order_id: Uuid,
    change: Change,
    mode: Mode,
) -> anyhow::Result<Outcome> {
    let deadline = match mode {
        Mode::Sync(timeout) => Some(Utc::now() + chrono::Duration::from_std(timeout)?),
        _ => None,
    };
    let request = ChangeRequest::new(order_id, change, deadline);
    let size = serde_json::to_vec(&request)?.len();
    anyhow::ensure!(
        size <= MAX_CHANGE_REQUEST_BYTES,
        "the change request is {size} bytes; at most {MAX_CHANGE_REQUEST_BYTES} are accepted (nothing was sent)"
    );
    let client = TrackerClient::new(&settings.tracker_url());
    // Not a decision (the node holding the order makes that, once): a request
    // for an order nobody placed is simply not sent.
    match client.order(&order_id).await {
        Err(TrackerError::Refused { status: 404, .. }) => {
            // Same output as always: the change id, then its outcome.
            println!("{}", request.change_id);
            println!(
                "rejected by tracker: no order {order_id} exists, so the request was not sent \
                 (an order placed a moment ago may not be known yet: try again)"
            );
            return Ok(Outcome::Declined);
        }
        Err(error @ TrackerError::Unreachable { .. }) => {
            eprintln!("warning: {error}; sending the change anyway (the node holding the order decides it)");
        }
        _ => {}
    }
    send(settings, &request).await?;
    println!("{}", request.change_id);

    let (timeout, sync) = match mode {
        Mode::Queue => return Ok(Outcome::Done),
        Mode::Wait(timeout) => (timeout, false),
        // After the deadline no node applies it; the grace lets a just-made decision reach the tracker.
        Mode::Sync(timeout) => (timeout + Duration::from_secs(2), true),
    };
    await_outcome(&client, order_id, &request.change_id.to_string(), timeout, sync).await
}

/// Polls the tracker until a node decides the change or `timeout` passes;
/// `sync` says the deadline has passed by then (the change will never be applied).
async fn await_outcome(
    client: &TrackerClient,
    order_id: Uuid,
    change_id: &str,
    timeout: Duration,
    sync: bool,
) -> anyhow::Result<Outcome> {
    let until = Instant::now() + timeout;
    loop {
        if let Ok(view) = client.order(&order_id).await {
            if let Some(outcome) = view.change_outcome(change_id) {
                let (node, detail) = (safe(&outcome.node), safe(&outcome.detail));
                if outcome.state == "change_applied" {
                    println!("applied by {node}: {detail}");
                    return Ok(Outcome::Done);
                }
                println!("rejected by {node}: {detail}");
                return Ok(Outcome::Declined);
            }
        }
        if Instant::now() >= until {
            let state =
                client.order(&order_id).await.map(|view| view.state).unwrap_or_else(|_| "unknown".into());
            let state = safe(&state);
            if sync {
                eprintln!(
                    "no node answered within {:.0} s: the node that would handle the order (now {state}) \
                     is not answering. The change was not applied, and will not be: its deadline has passed",
                    timeout.as_secs_f64() - 2.0
                );
            } else {
                eprintln!(
                    "no outcome within {:.0} s (the order is {state}); the change stays queued: \
                     follow it with `orderflow status {order_id}`",
                    timeout.as_secs_f64()
                );
            }
            return Ok(Outcome::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends the request to every node, with its `change_requested` record for
/// the tracker, once the topology is known to be applied.
async fn send(settings: &Settings, request: &ChangeRequest) -> anyhow::Result<()> {
    let order_id = request.order_id;
    let connection = connect(&settings.amqp_url, "orderflow-change")
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", settings.amqp_url_redacted()))?;
    let setup = connection.create_channel().await?;
    topology::ensure_for(&setup, &[]).await.context("the topology is not applied on this broker")?;
    let _ = setup.close(200, "checked".into()).await;
    let publisher = Publisher::open(&connection, &settings.broker_user()).await?;
    let instance = format!("cli-{}", std::process::id());
    let requested = ChangeEvent::new(
        request,
        ChangeKind::ChangeRequested,
        shared::trust::Trust::cli_role(settings).name(),
        &instance,
        request.change.describe(),
        0,
    );
    publisher
        .publish_all(&in_the_orders_trace(
            [change_event_message(&requested), change_request_message(request)],
            order_id,
        ))
        .await
        .context("publishing the change request")?;
    publisher.close().await;
    let _ = connection.close(200, "requested".into()).await;
    Ok(())
}

/// A change is part of its order's trace (the trace id is the order's).
fn in_the_orders_trace<const N: usize>(
    mut messages: [transport::Outgoing; N],
    order_id: Uuid,
) -> [transport::Outgoing; N] {
    transport::message::stamp_trace(&mut messages, &shared::trace::TraceContext::of_order(order_id));
    messages
}
