//! A session of the domain commands: one client on a connection of its
//! own, asking a domain copy and waiting up to the domain timeout, and what
//! a refused or unanswered request means for the exit code.

use crate::exit::Outcome;
use anyhow::Context;
use serde_json::Value;
use shared::settings::Settings;
use shared::text::escaped;
use std::time::Duration;
use topology::DomainCopy;
use transport::domain_client::{ClientError, DomainClient};

/// A client on a connection of its own.
pub struct Session {
    connection: lapin::Connection,
    pub client: DomainClient,
    pub timeout: Duration,
}

impl Session {
    pub async fn open(settings: &Settings) -> anyhow::Result<Session> {
        let connection = transport::connect(&settings.amqp_url, "orderflow-domains")
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {}", settings.amqp_url_redacted()))?;
        let client = DomainClient::open(&connection, &settings.broker_user()).await?;
        Ok(Session { connection, client, timeout: settings.domain_timeout })
    }

    pub async fn ask(
        &self,
        copy: DomainCopy,
        request: Value,
        request_id: Option<&str>,
    ) -> Result<Value, ClientError> {
        self.client.call(copy, &request, request_id, self.timeout).await
    }

    pub async fn close(&self) {
        self.client.close().await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// What a refused or unanswered request means for the exit code.
pub fn failed(error: ClientError) -> Outcome {
    eprintln!("{}", escaped(&error.to_string()));
    match error {
        ClientError::Refused(_) => Outcome::Declined,
        ClientError::Unavailable(_) => Outcome::TimedOut,
    }
}
