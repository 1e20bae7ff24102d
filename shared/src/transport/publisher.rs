//! Confirmed publishing: every message is persistent and mandatory, and a
//! publish counts only when the broker has confirmed it (`Ack` without a
//! returned message). Confirms of a group are awaited together.

use super::message::Outgoing;
use lapin::{options::BasicPublishOptions, options::ConfirmSelectOptions, Channel, Confirmation, Connection};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack) for {0}")]
    Nacked(String),
    #[error("no queue is bound for {0}")]
    Unroutable(String),
    #[error("no confirm for {0} within {CONFIRM_TIMEOUT:?} (the connection is presumed dead)")]
    Unconfirmed(String),
}

/// How long a publish may wait for its confirm.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A channel in confirm mode. Cloning shares the channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> lapin::Result<Publisher> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes every message, then waits for each one's confirm.
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let confirm = self
                .channel
                .basic_publish(
                    message.exchange.into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &message.body,
                    message.properties.clone(),
                )
                .await?;
            confirms.push((confirm, message));
        }
        for (confirm, message) in confirms {
            let target = || format!("{} / {}", message.exchange, message.routing_key);
            // A confirm that never comes (the connection died under it) is a failure, not a wait for ever.
            let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                .await
                .map_err(|_| PublishError::Unconfirmed(target()))?;
            match confirmation? {
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
