//! Calling a data domain: one request to a domain copy over RabbitMQ, its
//! answer awaited on RabbitMQ's direct reply-to. Many requests may be in
//! flight on one client; answers are matched by correlation id. The CLI,
//! intake (building elements) and a replica (asking its primary) use it.
//!
//! A client lives on one channel: when that channel or its connection is
//! lost, every call fails with [`ClientError::Unavailable`] and the owner
//! opens a new client.

use crate::message::SCHEMA_HEADER;
use crate::{Outgoing, Publisher};
use futures::StreamExt;
use lapin::{
    options::BasicConsumeOptions,
    types::{AMQPValue, FieldTable},
    BasicProperties, Connection,
};
use shared::service::{CallResult, CallStatus, DEADLINE_HEADER, REPLY_HEADER};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use topology::DomainCopy;

pub use shared::service::DIRECT_REPLY_TO;

/// Why a call got no data.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The domain answered that the request is wrong (unknown id, bad
    /// value, a write to a replica): asking again gets the same answer.
    #[error("{0}")]
    Refused(String),
    /// No answer (the domain is down or slow, the broker refused or lost
    /// the request), or the domain cannot answer now: worth trying later.
    #[error("{0}")]
    Unavailable(String),
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<CallResult>>>>;

/// A client of the domains on one channel of a connection.
pub struct DomainClient {
    publisher: Publisher,
    pending: Pending,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl DomainClient {
    /// Opens a client on `connection`, whose user is `user`.
    pub async fn open(connection: &Connection, user: &str) -> lapin::Result<DomainClient> {
        let publisher = Publisher::open(connection, user).await?;
        let channel = publisher.channel().await?;
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut replies =
            channel.basic_consume(DIRECT_REPLY_TO.into(), "".into(), options, FieldTable::default()).await?;
        let pending: Pending = Arc::default();
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (waiting, lost) = (pending.clone(), broken.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let correlation = delivery.properties.correlation_id().as_ref().map(|c| c.to_string());
                let Some(correlation) = correlation else { continue };
                let Ok(result) = serde_json::from_slice::<CallResult>(&delivery.data) else { continue };
                if let Some(sender) = waiting.lock().expect("not poisoned").remove(&correlation) {
                    let _ = sender.send(result);
                }
            }
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
            waiting.lock().expect("not poisoned").clear();
        });
        Ok(DomainClient { publisher, pending, broken })
    }

    /// Whether the client lost its channel (open a new one).
    pub fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sends `request` to `copy` and waits up to `timeout` for its data.
    /// `request_id` makes a write idempotent: the same id gets the first answer.
    pub async fn call(
        &self,
        copy: DomainCopy,
        request: &serde_json::Value,
        request_id: Option<&str>,
        timeout: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        let result = self.call_result(copy, request, request_id, timeout).await?;
        match (result.status, result.data) {
            (CallStatus::Done, Some(data)) => Ok(data),
            (CallStatus::Done, None) => {
                Err(ClientError::Unavailable(format!("{} answered without data", copy.label())))
            }
            (CallStatus::Failed, _) if result.retryable => {
                Err(ClientError::Unavailable(result.error.unwrap_or_default()))
            }
            (CallStatus::Failed, _) => Err(ClientError::Refused(result.error.unwrap_or_default())),
        }
    }

    /// [`DomainClient::call`], returning the whole result.
    pub async fn call_result(
        &self,
        copy: DomainCopy,
        request: &serde_json::Value,
        request_id: Option<&str>,
        timeout: Duration,
    ) -> Result<CallResult, ClientError> {
        if self.is_broken() {
            return Err(ClientError::Unavailable("the connection to the broker was lost".into()));
        }
        let correlation = uuid::Uuid::new_v4().to_string();
        let request_id = request_id.map(String::from).unwrap_or_else(|| correlation.clone());
        let (sender, answer) = oneshot::channel();
        self.pending.lock().expect("not poisoned").insert(correlation.clone(), sender);
        let forget = || self.pending.lock().expect("not poisoned").remove(&correlation);
        let mut headers = FieldTable::default();
        headers.insert(SCHEMA_HEADER.into(), AMQPValue::LongUInt(shared::order::SCHEMA_VERSION));
        headers.insert(REPLY_HEADER.into(), AMQPValue::LongString("sync".into()));
        let deadline = chrono::Utc::now().timestamp_millis() + timeout.as_millis() as i64;
        headers.insert(DEADLINE_HEADER.into(), AMQPValue::LongLongInt(deadline));
        let message = Outgoing {
            exchange: topology::DOMAINS_EXCHANGE,
            routing_key: copy.routing_key(),
            body: serde_json::to_vec(request).expect("JSON always serializes"),
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(request_id.as_str().into())
                .with_correlation_id(correlation.as_str().into())
                .with_reply_to(DIRECT_REPLY_TO.into())
                .with_headers(headers),
        };
        if let Err(error) = self.publisher.publish_all(&[message]).await {
            forget();
            if error.is_permanent() {
                self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(ClientError::Refused(error.to_string()));
            }
            return Err(ClientError::Unavailable(format!(
                "{} did not take the request: {error}",
                copy.label()
            )));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(ClientError::Unavailable("the connection to the broker was lost".into())),
            Err(_) => {
                forget();
                Err(ClientError::Unavailable(format!(
                    "no answer from {} within {} ms",
                    copy.label(),
                    timeout.as_millis()
                )))
            }
        }
    }

    pub async fn close(&self) {
        self.publisher.close().await;
    }
}
