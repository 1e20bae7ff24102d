//! `orderflow call`: calls one node's service with an element (or, at
//! intake, a plain order) from a file, and gets the result the way asked:
//! `--sync` waits for it on RabbitMQ's direct reply-to (up to `--timeout`),
//! `--poll` prints the request id and a new poll token at once (the result
//! is kept by the tracker, shown only to that token: `orderflow call status
//! ID TOKEN`; the call carries only the token's hash, `shared::poll`),
//! `--callback KEY` has it sent to `orderflow.results` with routing key
//! `callback.KEY`. `call status` reads a kept result, waiting for it with
//! `--wait`.

use crate::exit::Outcome;
use anyhow::Context;
use futures::StreamExt;
use lapin::{
    options::BasicConsumeOptions,
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use shared::service::{CallResult, CallStatus, CALLBACK_HEADER, DEADLINE_HEADER, REPLY_HEADER};
use shared::settings::Settings;
use shared::tracker_api::TrackerClient;
use std::path::Path;
use std::time::{Duration, Instant};
use topology::Node;
use transport::message::SCHEMA_HEADER;
use transport::{connect, Outgoing, Publisher};

/// How the caller gets its result.
pub enum How {
    Sync(Duration),
    Poll,
    Callback(String),
}

use shared::service::DIRECT_REPLY_TO;

/// Reads the body of a call: one JSON object, at most `max_bytes`.
pub fn read_element_file(path: &Path, max_bytes: usize) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() <= max_bytes,
        "{} holds {} bytes, more than the maximum of {max_bytes} (ORDERFLOW_MAX_MESSAGE_BYTES)",
        path.display(),
        bytes.len()
    );
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?;
    anyhow::ensure!(
        value.is_object(),
        "{} does not hold a JSON object (an element or an order)",
        path.display()
    );
    Ok(serde_json::to_vec(&value)?)
}

/// Calls `service` and reports the result as `how` asks.
pub async fn call(
    settings: &Settings,
    service: Node,
    body: Vec<u8>,
    how: How,
    request_id: Option<String>,
) -> anyhow::Result<Outcome> {
    let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let connection = connect(&settings.amqp_url, "orderflow-call")
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", settings.amqp_url_redacted()))?;
    let publisher = Publisher::open(&connection, &settings.broker_user()).await?;
    let mut headers = FieldTable::default();
    headers.insert(SCHEMA_HEADER.into(), AMQPValue::LongUInt(shared::order::SCHEMA_VERSION));
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(request_id.as_str().into())
        .with_correlation_id(request_id.as_str().into());
    let mut replies = None;
    let mut poll_token = None;
    match &how {
        How::Sync(timeout) => {
            // Direct reply-to: consume the pseudo-queue on the channel that publishes.
            let channel = publisher.channel().await?;
            let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
            let consumer = channel
                .basic_consume(DIRECT_REPLY_TO.into(), "".into(), options, FieldTable::default())
                .await?;
            replies = Some(consumer);
            let deadline = chrono::Utc::now().timestamp_millis() + timeout.as_millis() as i64;
            headers.insert(REPLY_HEADER.into(), AMQPValue::LongString("sync".into()));
            headers.insert(DEADLINE_HEADER.into(), AMQPValue::LongLongInt(deadline));
            properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
        }
        How::Poll => {
            headers.insert(REPLY_HEADER.into(), AMQPValue::LongString("poll".into()));
            let token = shared::poll::new_token();
            let key = shared::poll::key_of(&token);
            headers.insert(shared::poll::POLL_KEY_HEADER.into(), AMQPValue::LongString(key.into()));
            poll_token = Some(token);
        }
        How::Callback(key) => {
            headers.insert(REPLY_HEADER.into(), AMQPValue::LongString("callback".into()));
            headers.insert(CALLBACK_HEADER.into(), AMQPValue::LongString(key.as_str().into()));
        }
    }
    let message = Outgoing {
        exchange: topology::SERVICES_EXCHANGE,
        routing_key: service.service_routing_key(),
        body,
        properties: properties.with_headers(headers),
    };
    publisher.publish_all(&[message]).await.with_context(|| format!("calling the {service} service"))?;
    let outcome = match (how, replies) {
        (How::Sync(timeout), Some(mut replies)) => {
            let started = Instant::now();
            loop {
                let next =
                    tokio::time::timeout(timeout.saturating_sub(started.elapsed()), replies.next()).await;
                match next {
                    Err(_) => {
                        eprintln!(
                            "no answer from {service} within {} s (request {request_id}: a repeat with \
                             --request-id gets the same result, never a second effect)",
                            timeout.as_secs_f64()
                        );
                        break Outcome::TimedOut;
                    }
                    Ok(None) => anyhow::bail!("the broker closed the reply consumer"),
                    Ok(Some(delivery)) => {
                        let delivery = delivery?;
                        let result: CallResult = serde_json::from_slice(&delivery.data)
                            .context("the service's answer is not a result")?;
                        if result.request_id != request_id && !result.request_id.is_empty() {
                            continue;
                        }
                        break print_result(&result)?;
                    }
                }
            }
        }
        _ => {
            // Polled: the token too (it alone reads the result); a callback: the request id.
            match poll_token {
                Some(token) => println!("{request_id} {token}"),
                None => println!("{request_id}"),
            }
            Outcome::Done
        }
    };
    publisher.close().await;
    let _ = connection.close(200, "called".into()).await;
    Ok(outcome)
}

/// Prints a result as JSON; done is 0, a failure 4 (1 when worth retrying).
fn print_result(result: &CallResult) -> anyhow::Result<Outcome> {
    println!("{}", serde_json::to_string_pretty(result)?);
    Ok(match (result.status, result.retryable) {
        (CallStatus::Done, _) => Outcome::Done,
        (CallStatus::Failed, false) => Outcome::Declined,
        (CallStatus::Failed, true) => Outcome::TimedOut,
    })
}

/// `orderflow call status ID TOKEN`: the kept result, waiting up to `wait` for it.
pub async fn status(
    settings: &Settings,
    request_id: &str,
    token: &str,
    wait: Duration,
) -> anyhow::Result<Outcome> {
    let client = TrackerClient::new(&settings.tracker_url());
    let deadline = Instant::now() + wait;
    loop {
        if let Some(kept) = client.call_result(request_id, token).await? {
            return print_result(&kept.result);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "no result for request {request_id} under this token yet: still running, never sent, \
                 removed after its retention (ORDERFLOW_RESULT_RETENTION_S after it was first read), or \
                 the token is not the one `call --poll` printed"
            );
            return Ok(Outcome::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
