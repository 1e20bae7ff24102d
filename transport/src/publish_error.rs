//! How a confirmed publish fails ([`PublishError`]), and how long a
//! publish may wait for its confirm: shared by the publisher and the audit
//! batcher it sends through.

#[derive(Clone, Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack) for {0}")]
    Nacked(String),
    #[error("no queue is bound for {0}")]
    Unroutable(String),
    #[error("no confirm for {0} within {CONFIRM_TIMEOUT:?} (the connection is presumed dead)")]
    Unconfirmed(String),
    /// The broker refused one of these messages for this user (403
    /// ACCESS_REFUSED naming its exchange and routing key) and closed the
    /// channel: sending it again can never succeed.
    #[error("the broker refused to publish {target}: {reply}")]
    Refused { target: String, reply: String },
}

impl PublishError {
    /// True when publishing the same messages again can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PublishError::Refused { .. })
    }
}

/// How long a publish may wait for its confirm.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
