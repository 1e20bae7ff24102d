//! One copy of a data domain, whichever the domain: its store, and either
//! the primary's change stream or a replica's following of it. The customer
//! domain and the domains of plain records (the catalog, the distributors)
//! answer through it, so a domain that the domains table
//! (`topology::domains::DOMAINS`) gives replicas gets them by this one
//! mechanism: the primary numbers and sends each write, a replica applies
//! them in order, answers reads marked with how far behind it may be, and
//! refuses writes naming the primary. Which copy is the primary is its
//! term's (`super::epochs`): a replica promoted by the operator takes the
//! writes and sends the stream; a primary that comes back after that
//! follows it.

use super::documents::Documents;
use super::epochs::Term;
use super::replication::{snapshot_page, Replica, Stream};
use lapin::message::Delivery;
use shared::domains::{page_size, ChangeRef, CopyRequest, CopyStatus, AHEAD_NAMED};
use shared::order::AsOf;
use shared::settings::Settings;
use std::sync::Arc;
use topology::permissions::Role;
use topology::DomainCopy;
use transport::domain::{DomainError, Request};
use transport::{NodeContext, Publisher};

/// How often a primary asks the other copies their epochs after its start.
const PEERS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct CopyStore {
    pub copy: DomainCopy,
    pub docs: Arc<Documents>,
    /// The change stream it sends while it is the primary (a domain with
    /// replicas, or whose edits go to the orders that copied them).
    stream: Option<Stream>,
    /// Its following of the primary while it is a replica, and its asking
    /// the other copies (a domain with replicas).
    replica: Option<Arc<Replica>>,
    /// Which copy is the primary, since which epoch.
    term: Arc<Term>,
    /// When this copy, as the primary, last asked the others their epochs.
    peers_asked_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// What the primary sends its stream with (set when a session starts).
    publisher: std::sync::Mutex<Option<Publisher>>,
    /// Whether the session was started as the primary.
    served_as_primary: std::sync::atomic::AtomicBool,
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
        let replicated = !copy.def().replicas.is_empty();
        let stream = (replicated || copy.forwards_edits()).then(|| Stream::new(domain));
        let replica = replicated.then(|| Replica::new(copy, settings)).transpose()?.map(Arc::new);
        let term = Arc::new(Term::load(copy, &docs).await?);
        Ok(CopyStore {
            copy,
            docs,
            stream,
            replica,
            term,
            publisher: std::sync::Mutex::new(None),
            served_as_primary: std::sync::atomic::AtomicBool::new(false),
            peers_asked_at: std::sync::Mutex::new(None),
        })
    }

    /// Whether this copy follows another (it refuses writes).
    pub fn is_replica(&self) -> bool {
        !self.term.is_primary()
    }

    /// The queue the copy takes now: the domain's own work while it is the
    /// primary (a promoted replica's too), else a replica's feed (a primary
    /// that came back as a replica has none: it asks for the changes).
    pub fn feed_queue(&self) -> Option<String> {
        match (self.is_replica(), self.copy.region) {
            (false, _) => self.copy.def().receives.map(|feed| feed.queue.to_string()),
            (true, Some(_)) => self.copy.feed_queue(),
            (true, None) => None,
        }
    }

    /// Whether it is time for the primary to ask the other copies their
    /// epochs again (every [`PEERS_EVERY`]).
    fn peers_due(&self) -> bool {
        let mut at = self.peers_asked_at.lock().expect("not poisoned");
        let due = at.is_none_or(|at| at.elapsed() >= PEERS_EVERY);
        if due {
            *at = Some(std::time::Instant::now());
        }
        due
    }

    /// Whether the copy became the primary, or stopped being it, since its
    /// session started.
    pub fn part_changed(&self) -> bool {
        self.served_as_primary.load(std::sync::atomic::Ordering::SeqCst) == self.is_replica()
    }

    /// A replica's answer to a write: where writes go.
    pub fn refuse_write(&self) -> DomainError {
        let primary = self.term.primary();
        let now = self.term.now();
        if self.copy.region.is_none() {
            return DomainError::Refused(format!(
                "{} is no longer the primary: {} was promoted at epoch {} and takes the writes \
                 (routing key {})",
                self.copy.label(),
                now.primary,
                now.epoch,
                DomainCopy::primary(self.copy.domain).routing_key()
            ));
        }
        DomainError::Refused(format!(
            "{} is a read-only replica: send writes to the primary ({}: queue {}, routing key {})",
            self.copy.label(),
            primary.label(),
            primary.queue(),
            DomainCopy::primary(self.copy.domain).routing_key()
        ))
    }

    /// The copy's position, epoch and, at a replica, its lag; given
    /// `after_seq`, the primary also says when the change after it was
    /// made and which changes follow it.
    pub async fn status(&self, after_seq: Option<i64>) -> anyhow::Result<CopyStatus> {
        let records = self.docs.count().await?;
        let position = self.docs.position().await?.unwrap_or((0, 0));
        let primary = !self.is_replica();
        let (role, (seq, seq_at_ms)) = match primary {
            true => ("primary", self.docs.head().await?.max(position)),
            false => ("replica", position),
        };
        let (next_at_ms, ahead) = match (after_seq, primary) {
            (Some(after), true) => {
                let ahead = self.docs.changes_after(after, AHEAD_NAMED).await?;
                let named = ahead.iter().map(|c| ChangeRef { seq: c.seq, key: c.key.clone() }).collect();
                (ahead.first().map(|c| c.at_ms), named)
            }
            _ => (None, Vec::new()),
        };
        let lag = self.replica.as_ref().filter(|_| !primary).and_then(|replica| replica.lag());
        let term = self.term.now();
        Ok(CopyStatus {
            copy: self.copy.label(),
            role: role.into(),
            records,
            seq,
            seq_at_ms,
            next_at_ms,
            lag,
            epoch: term.epoch,
            primary: term.primary,
            epoch_from_seq: term.from_seq,
            ahead,
        })
    }

    /// Which copy this is and the number of the last change it holds: the
    /// head of its log (the primary), its position in the feed (a replica).
    pub async fn as_of(&self) -> anyhow::Result<AsOf> {
        let position = self.docs.position().await?.map_or(0, |(seq, _)| seq);
        let seq = match self.is_replica() {
            false => self.docs.head().await?.0.max(position),
            true => position,
        };
        let now = chrono::Utc::now().timestamp_millis();
        let stale_ms = match self.is_replica() {
            true => self.replica.as_ref().and_then(|replica| replica.staleness_ms(now)),
            false => None,
        };
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
        if let Err(error) = self.send_stream().await {
            // If the broker fails here the next write or tick sends it.
            tracing::warn!(
                error = format!("{error:#}"),
                "a change is not on the stream yet; it will be sent"
            );
        }
        Ok(written.record)
    }

    /// Sends what the stream owes, while this copy is the primary.
    async fn send_stream(&self) -> anyhow::Result<()> {
        let publisher = self.publisher.lock().expect("not poisoned").clone();
        match (&self.stream, publisher, self.is_replica()) {
            (Some(stream), Some(publisher), false) => {
                stream.send(&self.docs, &publisher, self.term.now().epoch).await
            }
            _ => Ok(()),
        }
    }

    /// What every copy answers alike (`CopyRequest`): its status, and what
    /// the copies of one domain ask each other.
    pub async fn answer(
        &self,
        request: &Request<'_>,
        asked: CopyRequest,
        key_of: fn(&serde_json::Value) -> String,
    ) -> Result<serde_json::Value, DomainError> {
        match asked {
            CopyRequest::Status { after_seq } => {
                let status = self.status(after_seq).await.map_err(DomainError::Unavailable)?;
                Ok(serde_json::to_value(status).expect("a status serializes"))
            }
            CopyRequest::Snapshot { after, limit } => {
                self.check_asked_by_a_copy(request, "snapshots")?;
                let page = snapshot_page(&self.docs, key_of, after.as_deref(), page_size(limit)).await?;
                Ok(serde_json::to_value(page).expect("a page serializes"))
            }
            CopyRequest::Changes { after, limit } => {
                self.check_asked_by_a_copy(request, "changes")?;
                let epoch = self.term.now().epoch;
                let changes = self
                    .docs
                    .changes_after(after, page_size(limit))
                    .await
                    .map_err(DomainError::Unavailable)?
                    .into_iter()
                    .map(|change| super::documents::Change { epoch, ..change })
                    .collect::<Vec<_>>();
                Ok(serde_json::to_value(changes).expect("changes serialize"))
            }
            CopyRequest::Promote { epoch } => {
                if request.caller != request.trust.operator() {
                    return Err(DomainError::Refused(format!(
                        "refused: only the operator promotes a copy (`orderflow domains promote`); \
                         this request came from {}",
                        shared::text::escaped(if request.caller.is_empty() {
                            "an unnamed sender"
                        } else {
                            request.caller
                        })
                    )));
                }
                self.term.promote(&self.docs, epoch).await?;
                let status = self.status(None).await.map_err(DomainError::Unavailable)?;
                Ok(serde_json::to_value(status).expect("a status serializes"))
            }
        }
    }

    /// Snapshots and changes (every record, secrets included) go from the
    /// primary to the domain's other copies alone.
    fn check_asked_by_a_copy(&self, request: &Request<'_>, what: &str) -> Result<(), DomainError> {
        if self.is_replica() {
            return Err(DomainError::Refused(format!(
                "{} gives no {what}: ask the primary ({})",
                self.copy.label(),
                self.term.now().primary
            )));
        }
        if !takes_snapshots(self.copy.domain, request) {
            let caller = if request.caller.is_empty() { "an unnamed sender" } else { request.caller };
            return Err(DomainError::Refused(format!(
                "refused: only the {} domain's own copies take {what}; this request came from {}",
                self.copy.domain,
                shared::text::escaped(caller)
            )));
        }
        Ok(())
    }

    /// Before serving: a primary that was replaced while it was away
    /// becomes a replica; a replica that never synced takes a snapshot; a
    /// primary sends what its stream still owes.
    pub async fn prepare(&self, publisher: &Publisher) -> anyhow::Result<()> {
        *self.publisher.lock().expect("not poisoned") = Some(publisher.clone());
        if let (Some(replica), false) = (&self.replica, self.is_replica()) {
            replica.check_superseded(&self.docs, &self.term).await?;
            *self.peers_asked_at.lock().expect("not poisoned") = Some(std::time::Instant::now());
        }
        match (&self.replica, self.is_replica()) {
            (Some(replica), true) => replica.prepare(&self.docs, &self.term).await?,
            _ => self.send_stream().await?,
        }
        self.served_as_primary.store(!self.is_replica(), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// A replica applies one change of its feed; a primary has none here.
    pub async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        match &self.replica {
            Some(replica) => replica.apply(&self.docs, &self.term, ctx, publisher, delivery).await,
            None => transport::settle::dead_letter(publisher, ctx, &delivery, "a primary has no feed").await,
        }
    }

    /// Every tick: a replica checks its lag (one with no feed of its own
    /// also asks for the changes it lacks), a primary sends what its stream
    /// owes; both report their status on `/metrics`.
    pub async fn tick(&self, _publisher: &Publisher) {
        match (&self.replica, self.is_replica()) {
            (Some(replica), true) => {
                if replica.primary_epoch() > self.term.now().epoch {
                    if let Err(error) = replica.follow_if_newer(&self.docs, &self.term).await {
                        tracing::warn!(error = format!("{error:#}"), "could not follow the new primary yet");
                    }
                }
                if self.copy.region.is_none() {
                    if let Err(error) = replica.catch_up(&self.docs, &self.term).await {
                        tracing::debug!(
                            error = format!("{error:#}"),
                            "could not catch up with the primary yet"
                        );
                    }
                }
                replica.check_lag(&self.docs)
            }
            (replica, _) => {
                if let Err(error) = self.send_stream().await {
                    tracing::warn!(error = format!("{error:#}"), "could not send changes on the stream yet");
                }
                if let Some(replica) = replica.as_ref().filter(|_| self.peers_due()) {
                    // A copy that did not answer when this one started may
                    // have been promoted meanwhile: ask again, now and then.
                    let (replica, docs, term) = (replica.clone(), self.docs.clone(), self.term.clone());
                    tokio::spawn(async move {
                        if let Err(error) = replica.check_superseded(&docs, &term).await {
                            tracing::debug!(
                                error = format!("{error:#}"),
                                "could not ask the other copies their epochs"
                            );
                        }
                    });
                }
            }
        }
        if let Ok(status) = self.status(None).await {
            shared::metrics::set_status(serde_json::to_value(status).expect("a status serializes"));
        }
    }
}

/// Whether the caller may take a snapshot of `domain` (every record,
/// secrets included): one of that domain's own copies alone (its replicas,
/// or a primary that came back after a promotion).
pub fn takes_snapshots(domain: &str, request: &Request<'_>) -> bool {
    DomainCopy::all()
        .into_iter()
        .filter(|copy| copy.domain == domain)
        .any(|copy| request.is_from(Role::Domain(copy)))
}
