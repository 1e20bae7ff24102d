//! Confirmed publishing: every message is persistent and mandatory (but
//! an answer to direct reply-to), and a publish counts only when the
//! broker has confirmed it (`Ack` without a
//! returned message). Confirms of a group are awaited together. A channel the
//! broker closed (a refused publish, a deleted exchange) is replaced by a
//! fresh one before the next publish, so one bad message never stops a node.
//! Every message carries the connection's user as `user_id`, which the
//! broker checks: receivers know who sent it (see `shared::trust`).
//! A node's publisher sends its audit messages through the audit batcher
//! (`super::audit_batch`): one confirmed message per batch of events.

use super::audit_batch::{is_audit, AuditBatcher};
use super::message::Outgoing;
pub use super::publish_error::{PublishError, CONFIRM_TIMEOUT};
use lapin::{
    options::BasicPublishOptions, options::ConfirmSelectOptions, Channel, Confirmation, Connection, ErrorKind,
};
use std::sync::Arc;

/// The stage error a failed publish amounts to: permanent when the broker
/// refused the message for this user, transient otherwise.
pub fn publish_failure(error: PublishError) -> shared::stage::StageError {
    if error.is_permanent() {
        shared::stage::StageError::Permanent(error.to_string())
    } else {
        shared::stage::StageError::Transient(error.into())
    }
}

/// How long a node keeps sending an element's messages while the broker
/// turns them down for a passing reason (a cluster node failing over takes
/// seconds) before the failure counts as one of the element's attempts.
pub const BROKER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A channel in confirm mode. Cloning shares the channel (and its replacement).
#[derive(Clone)]
pub struct Publisher {
    channel: Arc<tokio::sync::Mutex<Channel>>,
    /// Where a replacement channel comes from; `None` for a one-shot publisher.
    connection: Option<Arc<Connection>>,
    /// The connection's user, set as every message's `user_id`.
    user: lapin::types::ShortString,
    /// Where audit messages go to be sent in batches; `None`: one by one.
    audit: Option<AuditBatcher>,
}

async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

impl Publisher {
    /// A publisher on one channel of `connection` (for short-lived users
    /// such as the CLI: a closed channel is not replaced).
    /// `user` is the connection's user: the broker refuses a `user_id` that is not.
    pub async fn open(connection: &Connection, user: &str) -> lapin::Result<Publisher> {
        let channel = confirm_channel(connection).await?;
        let channel = Arc::new(tokio::sync::Mutex::new(channel));
        Ok(Publisher { channel, connection: None, user: user.into(), audit: None })
    }

    /// A publisher that opens a fresh channel on `connection` whenever the
    /// broker has closed the current one, and batches audit messages (what
    /// a node's session uses).
    pub async fn reopening(connection: Arc<Connection>, user: &str) -> lapin::Result<Publisher> {
        let channel = confirm_channel(&connection).await?;
        let channel = Arc::new(tokio::sync::Mutex::new(channel));
        let unbatched = Publisher { channel, connection: Some(connection), user: user.into(), audit: None };
        let sender = unbatched.clone();
        let audit = Some(AuditBatcher::start(Arc::new(move |messages: Vec<Outgoing>| {
            let sender = sender.clone();
            Box::pin(async move { sender.publish_all(&messages).await })
        })));
        Ok(Publisher { audit, ..unbatched })
    }

    /// The channel to publish on: the current one, or a fresh one when the
    /// broker closed it.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        let mut channel = self.channel.lock().await;
        if let Some(connection) = &self.connection {
            if !channel.status().connected() && connection.status().connected() {
                tracing::info!("the publishing channel was closed; opening a new one");
                *channel = confirm_channel(connection).await?;
            }
        }
        Ok(channel.clone())
    }

    /// Closes the current channel (before its connection closes: a channel
    /// dropped meanwhile would be closed twice, and lapin would log it).
    pub async fn close(&self) {
        let channel = self.channel.lock().await;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
    }

    /// [`Publisher::publish_all`], tried again with growing delays for up to
    /// `patience` while the broker turns the messages down for a passing
    /// reason (a nack, no confirm, a queue without a leader: a cluster node
    /// failing over) and the connection is still up. Sending the same
    /// messages again is safe: their ids are deterministic and receivers
    /// drop duplicates. A refusal for this user, a lost connection (the
    /// delivery comes back after reconnecting) or patience run out return
    /// the error at once.
    pub async fn publish_all_patiently(
        &self,
        messages: &[Outgoing],
        patience: std::time::Duration,
    ) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = super::connect::Backoff::default();
        loop {
            let error = match self.publish_all(messages).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let connected = self.connection.as_ref().is_some_and(|c| c.status().connected());
            let delay = backoff.next_delay();
            if error.is_permanent() || !connected || tokio::time::Instant::now() + delay > deadline {
                return Err(error);
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "the broker did not take the messages; sending them again");
            tokio::time::sleep(delay).await;
        }
    }

    /// Publishes every message, then waits for each one's confirm (audit
    /// messages through the batcher, when this publisher has one).
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        let batcher = self.audit.as_ref().filter(|_| messages.iter().any(is_audit));
        let Some(batcher) = batcher else {
            return self.publish_now(&messages.iter().collect::<Vec<_>>()).await;
        };
        let (audits, direct): (Vec<&Outgoing>, Vec<&Outgoing>) = messages.iter().partition(|m| is_audit(m));
        // The batcher's task owns what it sends: only the audit messages are copied.
        let audits = audits.into_iter().cloned().collect();
        let (sent, batched) = tokio::join!(self.publish_now(&direct), batcher.publish(audits));
        sent.and(batched)
    }

    /// Publishes every message on the channel, then waits for each one's confirm.
    async fn publish_now(&self, messages: &[&Outgoing]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let publish = channel.basic_publish(
                message.exchange.into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions { mandatory: !to_direct_reply(message), ..Default::default() },
                &message.body,
                message.properties.clone().with_user_id(self.user.clone()),
            );
            // A publish the connection never takes (it died under it) fails too.
            let unsent =
                || PublishError::Unconfirmed(format!("{} / {}", message.exchange, message.routing_key));
            let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, publish).await.map_err(|_| unsent())??;
            confirms.push((confirm, message));
        }
        for (confirm, message) in confirms {
            let target = || format!("{} / {}", message.exchange, message.routing_key);
            // A confirm that never comes (the connection died under it) is a failure, not a wait for ever.
            let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                .await
                .map_err(|_| PublishError::Unconfirmed(target()))?;
            match confirmation.map_err(|error| refused_among(error, messages))? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => return Err(PublishError::Unroutable(target())),
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(PublishError::Nacked(target()))
                }
            }
        }
        Ok(())
    }
}

/// An answer to RabbitMQ's direct reply-to: the broker hands it to the
/// caller's channel while routing and then finds no queue, so a mandatory
/// publish would come back NO_ROUTE even when it was delivered (and lapin
/// logs every returned message whole). It goes without `mandatory`: a caller
/// that is gone loses only its answer, which the service keeps for a repeat.
fn to_direct_reply(message: &Outgoing) -> bool {
    message.exchange.is_empty() && message.routing_key.starts_with(shared::service::DIRECT_REPLY_TO)
}

/// A channel closed with ACCESS_REFUSED fails every confirm pending on it,
/// including those of other tasks' messages; the refusal is this group's own
/// (permanent) only when the broker's reply names one of its messages'
/// exchange and routing key. Any other channel error is transient.
fn refused_among(error: lapin::Error, messages: &[&Outgoing]) -> PublishError {
    if let ErrorKind::ProtocolError(amqp) = error.kind() {
        let reply = amqp.to_string();
        if let Some(message) = messages.iter().find(|m| names_refused(&reply, m)) {
            let target = format!("{} / {}", message.exchange, message.routing_key);
            return PublishError::Refused { target, reply };
        }
    }
    PublishError::Broker(error)
}

/// Whether a broker reply is a 403 naming this message's exchange (and, for
/// a topic exchange, its routing key).
fn names_refused(reply: &str, message: &Outgoing) -> bool {
    reply.contains("ACCESS_REFUSED")
        && reply.contains(&format!("exchange '{}'", message.exchange))
        && (!reply.contains("access to topic") || reply.contains(&format!("topic '{}'", message.routing_key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(exchange: &'static str, routing_key: &str) -> Outgoing {
        Outgoing {
            exchange,
            routing_key: routing_key.into(),
            body: Vec::new(),
            properties: Default::default(),
        }
    }

    #[test]
    fn a_refusal_is_ours_only_when_it_names_our_routing_key() {
        let reply = "ACCESS_REFUSED - access to topic 'order.exceptions' in exchange 'orderflow.workflow' \
                     in vhost 'v' refused for user 'of-intake'";
        assert!(names_refused(reply, &to("orderflow.workflow", "order.exceptions")));
        assert!(!names_refused(reply, &to("orderflow.workflow", "order.payment")));
        assert!(!names_refused(reply, &to("orderflow.audit", "order.exceptions")));
        let exchange =
            "ACCESS_REFUSED - access to exchange 'orderflow.changes' in vhost 'v' refused for user 'u'";
        assert!(names_refused(exchange, &to("orderflow.changes", "")));
        let gone = "NOT_FOUND - no exchange 'orderflow.workflow' in vhost 'v'";
        assert!(!names_refused(gone, &to("orderflow.workflow", "order.payment")));
    }
}
