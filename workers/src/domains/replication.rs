//! A primary's change stream and a replica that follows it.
//!
//! The stream is a durable topic exchange (`orderflow.domain-changes`,
//! routing key: the domain) with one durable quorum queue per replica
//! (`orderflow.replica.<domain>.<region>`, single active consumer), declared
//! by `topology apply` before any process runs, so a replica that is down
//! finds every change it missed waiting in its queue. (A RabbitMQ stream
//! would let a new replica replay from any offset, but only as far back as
//! its retention, so a snapshot is needed anyway; a queue per replica also
//! works with plain AMQP 0-9-1 on every broker version and shows each
//! replica's backlog in the management UI.)
//!
//! Each change carries its number (`seq`, gap-free, in the order the
//! primary's writes committed) and the whole record after the change, so
//! applying it is idempotent and a snapshot taken while writes go on is
//! fixed up by the changes after it. The primary appends to its log first
//! and sends the log in order afterwards (an outbox: what a crash left
//! unsent is sent on the next write or tick). A replica applies change
//! `n` only after `n - 1`, in one transaction with its position; a
//! redelivered change is skipped; a missing one (its queue was deleted)
//! makes it take a snapshot again. Each change carries its primary's epoch
//! (`super::epochs`): one of an older epoch is refused, one of a newer
//! makes the replica follow the new primary. A copy with no feed queue of
//! its own (a primary that came back after a promotion) follows by asking
//! the primary for the changes after its position at every tick.

use super::documents::{Applied, Change, Documents, Epoch};
use super::epochs::Term;
use lapin::{message::Delivery, BasicProperties};
use shared::domains::{lag, CopyRequest, CopyStatus, Lag};
use shared::settings::Settings;
use std::sync::Arc;
use std::time::Duration;
use topology::permissions::Role;
use topology::DomainCopy;
use transport::domain::DomainError;
use transport::domain_client::DomainClient;
use transport::message::SCHEMA_HEADER;
use transport::settle::{ack, dead_letter, requeue};
use transport::{connect, NodeContext, Outgoing, Publisher};

/// The `type` of a change message.
pub const CHANGE_TYPE: &str = "domain_change";
/// Changes sent per confirmed batch.
const SEND_BATCH: usize = 200;
/// Records per snapshot page.
const SNAPSHOT_PAGE: usize = 100;
/// How long a replica waits for its primary's answer.
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a starting primary waits for the other copies' epochs.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// A primary's sending side: what the log holds and the stream does not yet.
pub struct Stream {
    pub domain: &'static str,
    sending: tokio::sync::Mutex<()>,
}

impl Stream {
    pub fn new(domain: &'static str) -> Stream {
        Stream { domain, sending: tokio::sync::Mutex::new(()) }
    }

    /// Sends every change of the log after the last one confirmed, in
    /// order, stamped with the primary's `epoch`.
    pub async fn send(&self, docs: &Documents, publisher: &Publisher, epoch: i64) -> anyhow::Result<()> {
        let _one_sender = self.sending.lock().await;
        loop {
            let sent = docs.position().await?.map_or(0, |(seq, _)| seq);
            let changes = docs.changes_after(sent, SEND_BATCH).await?;
            let Some(last) = changes.last() else { return Ok(()) };
            let (last_seq, last_at) = (last.seq, last.at_ms);
            let messages: Vec<Outgoing> =
                changes.into_iter().map(|change| self.message(&Change { epoch, ..change })).collect();
            publisher.publish_all(&messages).await?;
            docs.sent_up_to(last_seq, last_at).await?;
        }
    }

    fn message(&self, change: &Change) -> Outgoing {
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(SCHEMA_HEADER.into(), lapin::types::AMQPValue::LongUInt(1));
        Outgoing {
            exchange: topology::DOMAIN_CHANGES_EXCHANGE,
            routing_key: self.domain.to_string(),
            body: serde_json::to_vec(change).expect("a change always serializes"),
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(change.seq.to_string().as_str().into())
                .with_type(CHANGE_TYPE.into())
                .with_timestamp((change.at_ms / 1000) as u64)
                .with_headers(headers),
        }
    }
}

/// A snapshot page as the primary answers `snapshot`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SnapshotPage {
    pub records: Vec<(String, serde_json::Value)>,
    /// The key to ask after for the next page; `None` on the last.
    pub next_after: Option<String>,
}

/// The primary's answer to `snapshot`.
pub async fn snapshot_page(
    docs: &Documents,
    key_of: fn(&serde_json::Value) -> String,
    after: Option<&str>,
    limit: usize,
) -> Result<SnapshotPage, DomainError> {
    let records = docs.list(after, limit).await.map_err(|e| DomainError::Unavailable(e.into()))?;
    let records: Vec<(String, serde_json::Value)> = records.into_iter().map(|r| (key_of(&r), r)).collect();
    let next_after = if records.len() == limit { records.last().map(|(key, _)| key.clone()) } else { None };
    Ok(SnapshotPage { records, next_after })
}

/// A replica: applies its primary's feed and keeps track of its lag.
pub struct Replica {
    pub copy: DomainCopy,
    settings: Settings,
    /// Its client of the other copies; calls run side by side (the lock is
    /// held only to open it).
    client: tokio::sync::Mutex<Option<(lapin::Connection, Arc<DomainClient>)>>,
    lag: std::sync::Mutex<Option<Lag>>,
    /// The newest epoch the primary has answered with.
    primary_epoch: std::sync::atomic::AtomicI64,
    checking: tokio::sync::Mutex<()>,
}

impl Replica {
    pub fn new(copy: DomainCopy, settings: &Settings) -> anyhow::Result<Replica> {
        Ok(Replica {
            copy,
            settings: settings.clone(),
            client: tokio::sync::Mutex::new(None),
            lag: std::sync::Mutex::new(None),
            primary_epoch: std::sync::atomic::AtomicI64::new(0),
            checking: tokio::sync::Mutex::new(()),
        })
    }

    /// Asks the domain's primary (whichever copy its routing key reaches).
    async fn ask_primary(&self, request: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.ask_copy(DomainCopy::primary(self.copy.domain), request, PRIMARY_TIMEOUT).await
    }

    /// Asks the primary where it stands, making sure the copy `expected`
    /// answers (and not a copy it replaced, still reached by a stale route).
    pub async fn primary_status(&self, expected: &str) -> anyhow::Result<CopyStatus> {
        let status = self.primary_says().await?;
        if status.copy != expected || status.primary != expected {
            anyhow::bail!("{} answered for the primary of {}, not {expected}", status.copy, self.copy.domain);
        }
        Ok(status)
    }

    /// What the copy the domain's routing key reaches says of itself: its
    /// status, with the primary and epoch it knows.
    async fn primary_says(&self) -> anyhow::Result<CopyStatus> {
        let request = CopyRequest::Status { after_seq: None }.to_json();
        Ok(serde_json::from_value(self.ask_primary(request).await?)?)
    }

    /// Asks one copy of the domain, on a connection of this copy's own
    /// (opened when needed, again after it was lost).
    pub async fn ask_copy(
        &self,
        copy: DomainCopy,
        request: serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let domains = {
            let mut client = self.client.lock().await;
            if client.as_ref().is_none_or(|(_, c)| c.is_broken()) {
                let name = format!("{}-to-copies", self.copy.process());
                let connection = connect(&self.settings.amqp_url, &name).await?;
                let user = topology::management::amqp_url_parts(&self.settings.amqp_url)?.0;
                let opened = DomainClient::open(&connection, &user).await?;
                *client = Some((connection, Arc::new(opened)));
            }
            client.as_ref().expect("opened above").1.clone()
        };
        Ok(domains.call(copy, &request, None, timeout).await?)
    }

    /// Before serving: a replica that never synced takes a snapshot.
    pub async fn prepare(&self, docs: &Documents, term: &Term) -> anyhow::Result<()> {
        if docs.position().await?.is_none() {
            self.snapshot(docs, &term.now().primary, false).await?;
        }
        Ok(())
    }

    /// Copies every record from the primary (`expected`), page by page,
    /// then takes the primary's position from before the first page: the
    /// changes after it (waiting in the feed) fix up what changed
    /// meanwhile. With `replace`, the records the copy held are dropped and
    /// the whole snapshot kept in one transaction, once every page came (a
    /// copy that follows a new primary never answers from half of one).
    pub async fn snapshot(&self, docs: &Documents, expected: &str, replace: bool) -> anyhow::Result<()> {
        let status = self.primary_status(expected).await?;
        let (seq, at_ms) = (status.seq, status.seq_at_ms);
        let mut after: Option<String> = None;
        let mut held: Vec<(String, serde_json::Value)> = Vec::new();
        let mut copied = 0;
        loop {
            let request = CopyRequest::Snapshot { after: after.clone(), limit: Some(SNAPSHOT_PAGE) };
            let page: SnapshotPage = serde_json::from_value(self.ask_primary(request.to_json()).await?)?;
            copied += page.records.len();
            let last = page.next_after.is_none();
            match replace {
                true => held.extend(page.records),
                false => docs.restore(&page.records, false, last.then_some((seq, at_ms))).await?,
            }
            if last {
                break;
            }
            after = page.next_after;
        }
        if replace {
            docs.restore(&held, true, Some((seq, at_ms))).await?;
        }
        tracing::info!(copy = self.copy.label(), records = copied, seq, "took a snapshot of the primary");
        Ok(())
    }

    /// Applies one change of the feed: in order, once; from the primary of
    /// its epoch only.
    pub async fn apply(
        &self,
        docs: &Documents,
        term: &Term,
        ctx: &NodeContext,
        publisher: &Publisher,
        delivery: Delivery,
    ) {
        let sender = ctx.trust.sender(&delivery.properties);
        let change: Change = match serde_json::from_slice(&delivery.data) {
            Ok(change) => change,
            Err(error) => {
                let reason = format!(
                    "not a change of {}: {}",
                    self.copy.domain,
                    shared::text::escaped(&error.to_string())
                );
                return dead_letter(publisher, ctx, &delivery, &reason).await;
            }
        };
        let is_from = |copy: DomainCopy| ctx.trust.is_role(sender.as_deref(), Role::Domain(copy));
        if change.epoch > term.now().epoch {
            match self.learn_epoch(docs, term, &change, is_from).await {
                Ok(None) => {}
                Ok(Some(refused)) => return dead_letter(publisher, ctx, &delivery, &refused).await,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "could not follow a new primary yet");
                    return requeue_later(&delivery).await;
                }
            }
        }
        if let Some(refused) = self.refusal(term, &change, is_from(term.primary()), sender.as_deref()) {
            return dead_letter(publisher, ctx, &delivery, &refused).await;
        }
        match self.apply_in_order(docs, term, &change).await {
            Ok(()) => ack(&delivery).await,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not apply a change; it will be tried again"
                );
                requeue_later(&delivery).await
            }
        }
    }

    /// Why a change is not taken: an older epoch than the copy's (its
    /// primary was fenced), or a sender that is not the epoch's primary.
    fn refusal(
        &self,
        term: &Term,
        change: &Change,
        from_primary: bool,
        sender: Option<&str>,
    ) -> Option<String> {
        let now = term.now();
        if change.epoch < now.epoch {
            return Some(format!(
                "refused: change {} of {} is of epoch {}, and {} is the primary since epoch {}: \
                 its sender was fenced",
                change.seq, self.copy.domain, change.epoch, now.primary, now.epoch
            ));
        }
        (!from_primary).then(|| {
            format!(
                "refused: a change of {} must come from its primary's user ({} at epoch {}); this one came from {}",
                self.copy.domain,
                now.primary,
                now.epoch,
                shared::text::escaped(sender.unwrap_or("an unnamed sender"))
            )
        })
    }

    /// A change of a newer epoch: asks the primary where it stands and, if
    /// it sent the change, follows it. `Some(reason)` when the change is
    /// not the primary's.
    async fn learn_epoch(
        &self,
        docs: &Documents,
        term: &Term,
        change: &Change,
        is_from: impl Fn(DomainCopy) -> bool,
    ) -> anyhow::Result<Option<String>> {
        let told = self.primary_says().await?;
        let sender_is_told = DomainCopy::all()
            .into_iter()
            .any(|copy| copy.domain == self.copy.domain && copy.label() == told.primary && is_from(copy));
        if told.epoch < change.epoch || !sender_is_told || told.copy != told.primary {
            return Ok(Some(format!(
                "refused: change {} of {} claims epoch {}, which its primary ({} at epoch {}) did not send",
                change.seq, self.copy.domain, change.epoch, told.primary, told.epoch
            )));
        }
        self.follow(docs, term, &told).await?;
        Ok(None)
    }

    /// Applies a change of the copy's epoch; a gap takes a snapshot first.
    async fn apply_in_order(&self, docs: &Documents, term: &Term, change: &Change) -> anyhow::Result<()> {
        if let Applied::Gap { expected } = docs.apply(change).await? {
            tracing::warn!(
                copy = self.copy.label(),
                expected,
                got = change.seq,
                "a change is missing; taking a snapshot"
            );
            self.snapshot(docs, &term.now().primary, false).await?;
            if let Applied::Gap { expected } = docs.apply(change).await? {
                anyhow::bail!("change {expected} is still missing after a snapshot");
            }
        }
        Ok(())
    }

    /// A copy with no feed of its own (a primary that came back as a
    /// replica): asks the primary for the changes after its position.
    pub async fn catch_up(&self, docs: &Documents, term: &Term) -> anyhow::Result<()> {
        let applied = docs.position().await?.map_or(0, |(seq, _)| seq);
        let request = CopyRequest::Changes { after: applied, limit: Some(SEND_BATCH) };
        let changes: Vec<Change> = serde_json::from_value(self.ask_primary(request.to_json()).await?)?;
        for change in changes {
            if change.epoch > term.now().epoch {
                // Promoted again meanwhile: follow whoever is the primary now.
                let told = self.primary_says().await?;
                self.follow(docs, term, &told).await?;
                return Ok(());
            }
            self.apply_in_order(docs, term, &change).await?;
        }
        Ok(())
    }

    /// Follows the primary that `told` names, at its epoch: drops the
    /// changes after that epoch's start, takes a snapshot of the primary,
    /// and keeps the new term. Returns the changes dropped (lost).
    pub async fn follow(
        &self,
        docs: &Documents,
        term: &Term,
        told: &CopyStatus,
    ) -> anyhow::Result<Vec<Change>> {
        let lost = docs.drop_after(told.epoch_from_seq).await?;
        for change in &lost {
            tracing::warn!(
                copy = self.copy.label(),
                seq = change.seq,
                key = change.key,
                epoch = told.epoch,
                primary = told.primary,
                "a change made here is lost: the copy promoted after it never had it"
            );
        }
        self.snapshot(docs, &told.primary, true).await?;
        let epoch = Epoch { epoch: told.epoch, primary: told.primary.clone(), from_seq: told.epoch_from_seq };
        term.set(docs, epoch).await?;
        tracing::warn!(
            copy = self.copy.label(),
            epoch = told.epoch,
            primary = told.primary,
            "following a new primary"
        );
        Ok(lost)
    }

    /// A primary that starts: asks the domain's other copies their epochs;
    /// if one was promoted meanwhile, follows it. A copy that does not
    /// answer in time is not waited for.
    pub async fn check_superseded(&self, docs: &Documents, term: &Term) -> anyhow::Result<()> {
        let others: Vec<DomainCopy> = DomainCopy::all()
            .into_iter()
            .filter(|copy| copy.domain == self.copy.domain && *copy != self.copy && copy.region.is_some())
            .collect();
        let status = CopyRequest::Status { after_seq: None }.to_json();
        let answers = futures::future::join_all(
            others.iter().map(|copy| self.ask_copy(*copy, status.clone(), PEER_TIMEOUT)),
        )
        .await;
        let newest = answers
            .into_iter()
            .filter_map(|answer| serde_json::from_value::<CopyStatus>(answer.ok()?).ok())
            .filter(|status| status.primary != self.copy.label())
            .max_by_key(|status| status.epoch);
        match newest {
            Some(told) if told.epoch > term.now().epoch => {
                tracing::warn!(
                    copy = self.copy.label(),
                    epoch = told.epoch,
                    primary = told.primary,
                    "this copy was replaced as the primary while it was away: it becomes a replica"
                );
                let primary = self.primary_status(&told.primary).await?;
                self.follow(docs, term, &primary).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Asks the primary how far ahead it is (in the background, one check at a time).
    pub fn check_lag(self: &Arc<Self>, docs: &Arc<Documents>) {
        let (replica, docs) = (self.clone(), docs.clone());
        tokio::spawn(async move {
            let Ok(_one) = replica.checking.try_lock() else { return };
            let applied = docs.position().await.ok().flatten().map_or(0, |(seq, _)| seq);
            let now = chrono::Utc::now().timestamp_millis();
            let request = CopyRequest::Status { after_seq: Some(applied) }.to_json();
            let answer = replica.ask_primary(request).await;
            let answer = answer.and_then(|status| Ok(serde_json::from_value::<CopyStatus>(status)?));
            let mut lag_now = match answer {
                Ok(status) => {
                    replica.primary_epoch.fetch_max(status.epoch, std::sync::atomic::Ordering::SeqCst);
                    Lag { missing: status.ahead, ..lag(status.seq, applied, status.next_at_ms, now) }
                }
                Err(error) => {
                    tracing::debug!(
                        error = format!("{error:#}"),
                        "the primary did not answer a status request"
                    );
                    let mut last = replica.lag().unwrap_or_default();
                    last.primary_reachable = false;
                    last.changes = (last.primary_seq - applied).max(0);
                    last.missing.retain(|change| change.seq > applied);
                    last
                }
            };
            lag_now.checked_at_ms = now;
            shared::metrics::set_replica_lag(lag_now.changes, lag_now.ms, applied);
            *replica.lag.lock().expect("not poisoned") = Some(lag_now);
        });
    }

    /// The newest epoch the primary answered with (0: none yet).
    pub fn primary_epoch(&self) -> i64 {
        self.primary_epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Follows the primary if it is of a newer epoch than this copy's (a
    /// promotion this copy has not heard of from its feed yet).
    pub async fn follow_if_newer(&self, docs: &Documents, term: &Term) -> anyhow::Result<()> {
        let told = self.primary_says().await?;
        if told.epoch > term.now().epoch && told.copy == told.primary {
            self.follow(docs, term, &told).await?;
        }
        Ok(())
    }

    pub fn lag(&self) -> Option<Lag> {
        self.lag.lock().expect("not poisoned").clone()
    }

    /// How far behind its primary this replica may be now, in ms: since the
    /// last moment it knew it held every change (it keeps growing while the
    /// primary does not answer); `None` before it first asked its primary.
    pub fn staleness_ms(&self, now_ms: i64) -> Option<i64> {
        self.lag().filter(|lag| lag.fresh_at_ms > 0).map(|lag| (now_ms - lag.fresh_at_ms).max(0))
    }
}

async fn requeue_later(delivery: &Delivery) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    requeue(delivery).await
}
