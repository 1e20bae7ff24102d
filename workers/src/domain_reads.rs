//! Reading the data domains from a stage: the small trait the stages ask
//! through ([`DomainReads`]: one request to one domain copy, its answer or
//! its refusal, a copy that does not answer being a transient failure), and
//! its one implementation on the broker ([`DomainReader`], a client on a
//! connection of its own). Stages hold a `dyn DomainReads`, so their
//! decisions are unit-tested with a fake and know nothing of AMQP.

use futures::future::BoxFuture;
use shared::settings::Settings;
use shared::stage::StageError;
use std::collections::HashMap;
use std::time::{Duration, Instant};
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
        Box::pin(self.ask_nearest(copy, request))
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
    /// The domains whose primary did not answer lately, and until when
    /// their replicas are asked first.
    primary_down: std::sync::Mutex<HashMap<&'static str, Instant>>,
}

/// How long a primary that did not answer is passed over for its replicas.
const PRIMARY_RETRY: Duration = Duration::from_secs(5);

impl DomainReader {
    pub fn new(settings: &Settings, connection_name: &'static str) -> anyhow::Result<DomainReader> {
        Ok(DomainReader {
            settings: settings.clone(),
            connection_name,
            timeout: settings.domain_timeout,
            client: tokio::sync::Mutex::new(None),
            primary_down: std::sync::Mutex::new(HashMap::new()),
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

    /// Asks `copy`; a primary with replicas that does not answer is stood
    /// in for by a replica within `ORDERFLOW_DOMAIN_MAX_STALENESS_MS` of it
    /// (its answer's `as_of` says which copy answered, and how far behind it
    /// may be). A replica's refusal is not the domain's answer (it may not
    /// have a new record yet): with no replica fit to answer, the read is a
    /// transient failure, tried again later, never a rejection.
    async fn ask_nearest(&self, copy: DomainCopy, request: serde_json::Value) -> Result<Answer, StageError> {
        let replicas: Vec<DomainCopy> = copy
            .def()
            .replicas
            .iter()
            .map(|region| DomainCopy { domain: copy.domain, region: Some(region) })
            .collect();
        if copy.region.is_some() || replicas.is_empty() {
            return self.ask_now(copy, request).await;
        }
        let passed_over = self
            .primary_down
            .lock()
            .expect("not poisoned")
            .get(copy.domain)
            .is_some_and(|until| Instant::now() < *until);
        let mut why = Vec::new();
        if !passed_over {
            match self.ask_now(copy, request.clone()).await {
                Err(StageError::Transient(error)) => {
                    why.push(format!("{error:#}"));
                    self.primary_down
                        .lock()
                        .expect("not poisoned")
                        .insert(copy.domain, Instant::now() + PRIMARY_RETRY);
                }
                answered => return answered,
            }
        }
        let bound = self.settings.domain_max_staleness.as_millis() as i64;
        for replica in replicas {
            match self.ask_now(replica, request.clone()).await {
                Ok(Ok(data)) => match data["as_of"]["stale_ms"].as_i64() {
                    Some(ms) if ms <= bound => return Ok(Ok(data)),
                    Some(ms) => why.push(format!("{} may be {ms} ms behind", replica.label())),
                    None => why.push(format!("{} does not know how far behind it is", replica.label())),
                },
                Ok(Err(reason)) => why.push(format!("{}: {reason}", replica.label())),
                Err(error) => why.push(format!("{error}")),
            }
        }
        Err(StageError::Transient(anyhow::anyhow!(
            "the {} primary did not answer and no replica is within {bound} ms of it ({})",
            copy.domain,
            why.join("; ")
        )))
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
