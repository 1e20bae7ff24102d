//! One copy of a data domain, whichever the domain: its store, and either
//! the primary's change stream or a replica's following of it. The customer
//! domain and the domains of plain records (the catalog, the distributors)
//! answer through it, so a domain that the domains table
//! (`topology::domains::DOMAINS`) gives replicas gets them by this one
//! mechanism: the primary numbers and sends each write, a replica applies
//! them in order, answers reads marked with how far behind it may be, and
//! refuses writes naming the primary.

use super::documents::Documents;
use super::replication::{snapshot_page, Replica, Stream};
use lapin::message::Delivery;
use shared::domains::CopyStatus;
use shared::order::AsOf;
use shared::settings::Settings;
use std::sync::Arc;
use topology::permissions::Role;
use topology::DomainCopy;
use transport::domain::{DomainError, Request};
use transport::{NodeContext, Publisher};

pub struct CopyStore {
    pub copy: DomainCopy,
    pub docs: Arc<Documents>,
    /// The primary's change stream (a domain with replicas, or whose edits
    /// go to the orders that copied them).
    stream: Option<Stream>,
    /// A replica's following of its primary.
    replica: Option<Arc<Replica>>,
    /// What the primary sends its stream with (set when a session starts).
    publisher: std::sync::Mutex<Option<Publisher>>,
}

impl CopyStore {
    /// The copy of `domain` in `region` (`None`: the primary).
    pub async fn open(
        settings: &Settings,
        domain: &'static str,
        region: Option<&str>,
    ) -> anyhow::Result<CopyStore> {
        let copy = DomainCopy::find(domain, region).ok_or_else(|| {
            let regions = DomainCopy::primary(domain).def().replicas;
            let told = if regions.is_empty() { "it has none".to_string() } else { regions.join(", ") };
            anyhow::anyhow!(
                "the {domain} domain has no copy in region {region:?} (ORDERFLOW_REGION: unset for the primary; replicas: {told})"
            )
        })?;
        let owner = copy.process().replace('-', "_");
        let docs = Arc::new(Documents::open(settings, &owner).await?);
        let streams = !copy.def().replicas.is_empty() || copy.forwards_edits();
        let (stream, replica) = match copy.region {
            None => (streams.then(|| Stream::new(domain)), None),
            Some(_) => (None, Some(Arc::new(Replica::new(copy, settings)?))),
        };
        Ok(CopyStore { copy, docs, stream, replica, publisher: std::sync::Mutex::new(None) })
    }

    pub fn is_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// A replica's answer to a write: where writes go.
    pub fn refuse_write(&self) -> DomainError {
        let primary = DomainCopy::primary(self.copy.domain);
        DomainError::Refused(format!(
            "{} is a read-only replica: send writes to the primary ({}, routing key {})",
            self.copy.label(),
            primary.queue(),
            primary.routing_key()
        ))
    }

    /// The copy's position and, at a replica, its lag; given `after_seq`,
    /// the primary also says when the change after it was made.
    pub async fn status(&self, after_seq: Option<i64>) -> anyhow::Result<CopyStatus> {
        let records = self.docs.count().await?;
        let (role, (seq, seq_at_ms)) = match &self.replica {
            None => ("primary", self.docs.head().await?),
            Some(_) => ("replica", self.docs.position().await?.unwrap_or((0, 0))),
        };
        let next_at_ms = match (after_seq, &self.replica) {
            (Some(after), None) => self.docs.made_at(after + 1).await?,
            _ => None,
        };
        let lag = self.replica.as_ref().and_then(|replica| replica.lag());
        Ok(CopyStatus {
            copy: self.copy.label(),
            role: role.into(),
            records,
            seq,
            seq_at_ms,
            next_at_ms,
            lag,
        })
    }

    /// Which copy this is and the number of the last change it holds: the
    /// head of its log (the primary), its position in the feed (a replica).
    pub async fn as_of(&self) -> anyhow::Result<AsOf> {
        let seq = match &self.replica {
            None => self.docs.head().await?.0,
            Some(_) => self.docs.position().await?.map_or(0, |(seq, _)| seq),
        };
        let now = chrono::Utc::now().timestamp_millis();
        let stale_ms = self.replica.as_ref().and_then(|replica| replica.staleness_ms(now));
        Ok(AsOf { copy: self.copy.label(), seq, stale_ms })
    }

    /// The record of `key`, marked (`as_of`) with the copy and change number
    /// it is at least as recent as.
    pub async fn get_marked(&self, key: &str) -> Result<Option<serde_json::Value>, DomainError> {
        // The change number first, then the record: the record is at least that recent.
        let as_of = self.as_of().await.map_err(DomainError::Unavailable)?;
        let record = self.docs.get(key).await.map_err(|e| DomainError::Unavailable(e.into()))?;
        Ok(record.map(|mut record| {
            record["as_of"] = serde_json::to_value(as_of).expect("a mark serializes");
            record
        }))
    }

    /// A write at the primary (a replica refuses it): once per request, then
    /// sent on the stream before the caller hears of it.
    pub async fn write(
        &self,
        request: &Request<'_>,
        key: &str,
        change: impl FnOnce(Option<serde_json::Value>) -> Result<serde_json::Value, String>,
    ) -> Result<serde_json::Value, DomainError> {
        if self.is_replica() {
            return Err(self.refuse_write());
        }
        let written = self
            .docs
            .write(&request.request_key, key, change)
            .await
            .map_err(DomainError::Unavailable)?
            .map_err(DomainError::Refused)?;
        let publisher = self.publisher.lock().expect("not poisoned").clone();
        if let (Some(stream), Some(publisher)) = (&self.stream, publisher) {
            // If the broker fails here the next write or tick sends it.
            if let Err(error) = stream.send(&self.docs, &publisher).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "a change is not on the stream yet; it will be sent"
                );
            }
        }
        Ok(written.record)
    }

    /// A page of every record for a new replica: the primary's answer to
    /// `snapshot`, to the domain's replicas alone.
    pub async fn snapshot(
        &self,
        request: &Request<'_>,
        key_of: fn(&serde_json::Value) -> String,
        after: Option<&str>,
        limit: usize,
    ) -> Result<serde_json::Value, DomainError> {
        if self.is_replica() {
            return Err(DomainError::Refused(format!(
                "{} takes snapshots from the primary; it gives none",
                self.copy.label()
            )));
        }
        if !takes_snapshots(self.copy.domain, request) {
            let caller = if request.caller.is_empty() { "an unnamed sender" } else { request.caller };
            return Err(DomainError::Refused(format!(
                "refused: only the {} domain's replicas take snapshots; this request came from {}",
                self.copy.domain,
                shared::text::escaped(caller)
            )));
        }
        let page = snapshot_page(&self.docs, key_of, after, limit).await?;
        Ok(serde_json::to_value(page).expect("a page serializes"))
    }

    /// Before serving: a replica that never synced takes a snapshot; a
    /// primary sends what its stream still owes.
    pub async fn prepare(&self, publisher: &Publisher) -> anyhow::Result<()> {
        *self.publisher.lock().expect("not poisoned") = Some(publisher.clone());
        match (&self.replica, &self.stream) {
            (Some(replica), _) => replica.prepare(&self.docs).await,
            (None, Some(stream)) => stream.send(&self.docs, publisher).await,
            (None, None) => Ok(()),
        }
    }

    /// A replica applies one change of its feed; a primary has none here.
    pub async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        match &self.replica {
            Some(replica) => replica.apply(&self.docs, ctx, publisher, delivery).await,
            None => transport::settle::dead_letter(publisher, ctx, &delivery, "a primary has no feed").await,
        }
    }

    /// Every tick: a replica checks its lag, a primary sends what its stream
    /// owes; both report their status on `/metrics`.
    pub async fn tick(&self, publisher: &Publisher) {
        match (&self.replica, &self.stream) {
            (Some(replica), _) => replica.check_lag(&self.docs),
            (None, Some(stream)) => {
                if let Err(error) = stream.send(&self.docs, publisher).await {
                    tracing::warn!(error = format!("{error:#}"), "could not send changes on the stream yet");
                }
            }
            (None, None) => {}
        }
        if let Ok(status) = self.status(None).await {
            shared::metrics::set_status(serde_json::to_value(status).expect("a status serializes"));
        }
    }
}

/// Whether the caller may take a snapshot of `domain` (every record,
/// secrets included): one of that domain's replicas alone.
pub fn takes_snapshots(domain: &str, request: &Request<'_>) -> bool {
    DomainCopy::all()
        .into_iter()
        .filter(|copy| copy.domain == domain && copy.region.is_some())
        .any(|replica| request.is_from(Role::Domain(replica)))
}
