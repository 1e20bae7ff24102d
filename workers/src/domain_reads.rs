//! Reading the data domains from a stage: the small trait the stages ask
//! through ([`DomainReads`]: one request to one domain copy, its answer or
//! its refusal, a copy that does not answer being a transient failure), and
//! its one implementation on the broker ([`DomainReader`], a client on a
//! connection of its own). Stages hold a `dyn DomainReads`, so their
//! decisions are unit-tested with a fake and know nothing of AMQP.

use futures::future::BoxFuture;
use shared::settings::Settings;
use shared::stage::StageError;
use std::time::Duration;
use topology::DomainCopy;
use transport::domain_client::{ClientError, DomainClient};

/// An answer of a domain copy: its data, or the reason it refused.
pub type Answer = Result<serde_json::Value, String>;

/// One request to one domain copy, as a stage asks it.
pub trait DomainReads: Send + Sync {
    /// Asks `copy`: its answer, or its refusal's reason; a copy that does
    /// not answer in time is a transient failure.
    fn ask(&self, copy: DomainCopy, request: serde_json::Value) -> BoxFuture<'_, Result<Answer, StageError>>;
}

impl DomainReads for DomainReader {
    fn ask(&self, copy: DomainCopy, request: serde_json::Value) -> BoxFuture<'_, Result<Answer, StageError>> {
        Box::pin(self.ask_now(copy, request))
    }
}

/// A node's reader of the domains (intake's lookups, inventory's
/// suppliers): a client on a connection of its own, opened when first
/// needed and again after it was lost.
pub struct DomainReader {
    settings: Settings,
    /// The connection's name in the management UI.
    connection_name: &'static str,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<(lapin::Connection, std::sync::Arc<DomainClient>)>>,
}

impl DomainReader {
    pub fn new(settings: &Settings, connection_name: &'static str) -> anyhow::Result<DomainReader> {
        Ok(DomainReader {
            settings: settings.clone(),
            connection_name,
            timeout: settings.domain_timeout,
            client: tokio::sync::Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<std::sync::Arc<DomainClient>, StageError> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|(_, c)| c.is_broken()) {
            let transient = |e: lapin::Error| {
                StageError::Transient(anyhow::Error::from(e).context("reaching the domains"))
            };
            let connection =
                transport::connect(&self.settings.amqp_url, self.connection_name).await.map_err(transient)?;
            let opened =
                DomainClient::open(&connection, &self.settings.broker_user()).await.map_err(transient)?;
            *client = Some((connection, std::sync::Arc::new(opened)));
        }
        Ok(client.as_ref().expect("opened above").1.clone())
    }

    async fn ask_now(
        &self,
        copy: DomainCopy,
        request: serde_json::Value,
    ) -> Result<Result<serde_json::Value, String>, StageError> {
        let client = self.client().await?;
        match client.call(copy, &request, None, self.timeout).await {
            Ok(data) => Ok(Ok(data)),
            Err(ClientError::Refused(reason)) => Ok(Err(reason)),
            Err(ClientError::Unavailable(reason)) => {
                Err(StageError::Transient(anyhow::anyhow!("{} did not answer: {reason}", copy.label())))
            }
        }
    }
}

/// A fake of the domains for the stages' unit tests: each request is
/// answered by a function of the copy and the request; `None` stands for a
/// copy that does not answer (a transient failure, as on the broker).
#[cfg(test)]
pub struct FakeDomains<F>(pub F);

#[cfg(test)]
impl<F> DomainReads for FakeDomains<F>
where
    F: Fn(&DomainCopy, &serde_json::Value) -> Option<Answer> + Send + Sync,
{
    fn ask(&self, copy: DomainCopy, request: serde_json::Value) -> BoxFuture<'_, Result<Answer, StageError>> {
        let answer = (self.0)(&copy, &request)
            .ok_or_else(|| StageError::Transient(anyhow::anyhow!("{} did not answer", copy.label())));
        Box::pin(std::future::ready(answer))
    }
}
