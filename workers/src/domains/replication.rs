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
//! makes it take a snapshot again.

use super::documents::{Applied, Change, Documents};
use lapin::{message::Delivery, BasicProperties};
use shared::domains::{lag, Lag};
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

/// A primary's sending side: what the log holds and the stream does not yet.
pub struct Stream {
    pub domain: &'static str,
    sending: tokio::sync::Mutex<()>,
}

impl Stream {
    pub fn new(domain: &'static str) -> Stream {
        Stream { domain, sending: tokio::sync::Mutex::new(()) }
    }

    /// Sends every change of the log after the last one confirmed, in order.
    pub async fn send(&self, docs: &Documents, publisher: &Publisher) -> anyhow::Result<()> {
        let _one_sender = self.sending.lock().await;
        loop {
            let sent = docs.position().await?.map_or(0, |(seq, _)| seq);
            let changes = docs.changes_after(sent, SEND_BATCH).await?;
            let Some(last) = changes.last() else { return Ok(()) };
            let (last_seq, last_at) = (last.seq, last.at_ms);
            let messages: Vec<Outgoing> = changes.iter().map(|change| self.message(change)).collect();
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
    client: tokio::sync::Mutex<Option<(lapin::Connection, DomainClient)>>,
    lag: std::sync::Mutex<Option<Lag>>,
    checking: tokio::sync::Mutex<()>,
}

impl Replica {
    pub fn new(copy: DomainCopy, settings: &Settings) -> anyhow::Result<Replica> {
        Ok(Replica {
            copy,
            settings: settings.clone(),
            client: tokio::sync::Mutex::new(None),
            lag: std::sync::Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
        })
    }

    /// Asks the primary, on a connection of the replica's own (opened when
    /// needed, again after it was lost).
    async fn ask_primary(&self, request: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|(_, c)| c.is_broken()) {
            let connection =
                connect(&self.settings.amqp_url, &format!("{}-to-primary", self.copy.process())).await?;
            let user = topology::management::amqp_url_parts(&self.settings.amqp_url)?.0;
            let opened = DomainClient::open(&connection, &user).await?;
            *client = Some((connection, opened));
        }
        let (_, domains) = client.as_ref().expect("opened above");
        let primary = DomainCopy::primary(self.copy.domain);
        Ok(domains.call(primary, &request, None, PRIMARY_TIMEOUT).await?)
    }

    /// Before serving: a replica that never synced takes a snapshot.
    pub async fn prepare(&self, docs: &Documents) -> anyhow::Result<()> {
        if docs.position().await?.is_none() {
            self.snapshot(docs).await?;
        }
        Ok(())
    }

    /// Copies every record from the primary, page by page, then takes the
    /// primary's position from before the first page: the changes after it
    /// (waiting in the feed) fix up what changed meanwhile.
    pub async fn snapshot(&self, docs: &Documents) -> anyhow::Result<()> {
        let status = self.ask_primary(serde_json::json!({"op": "status"})).await?;
        let seq = status["seq"].as_i64().unwrap_or(0);
        let at_ms = status["seq_at_ms"].as_i64().unwrap_or(0);
        let mut after: Option<String> = None;
        let mut copied = 0;
        loop {
            let page = self
                .ask_primary(serde_json::json!({"op": "snapshot", "after": after, "limit": SNAPSHOT_PAGE}))
                .await?;
            let page: SnapshotPage = serde_json::from_value(page)?;
            copied += page.records.len();
            let last = page.next_after.is_none();
            docs.restore(&page.records, last.then_some((seq, at_ms))).await?;
            if last {
                break;
            }
            after = page.next_after;
        }
        tracing::info!(copy = self.copy.label(), records = copied, seq, "took a snapshot of the primary");
        Ok(())
    }

    /// Applies one change of the feed: in order, once; from the primary only.
    pub async fn apply(
        &self,
        docs: &Documents,
        ctx: &NodeContext,
        publisher: &Publisher,
        delivery: Delivery,
    ) {
        let sender = ctx.trust.sender(&delivery.properties);
        let primary = Role::Domain(DomainCopy::primary(self.copy.domain));
        if !ctx.trust.is_role(sender.as_deref(), primary) {
            let reason = format!(
                "refused: a change of {} must come from its primary's user; this one came from {}",
                self.copy.domain,
                shared::text::escaped(sender.as_deref().unwrap_or("an unnamed sender"))
            );
            return dead_letter(publisher, ctx, &delivery, &reason).await;
        }
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
        match docs.apply(&change).await {
            Ok(Applied::Applied | Applied::Duplicate) => ack(&delivery).await,
            Ok(Applied::Gap { expected }) => {
                tracing::warn!(
                    copy = self.copy.label(),
                    expected,
                    got = change.seq,
                    "a change is missing; taking a snapshot"
                );
                match self.snapshot(docs).await {
                    Ok(()) => match docs.apply(&change).await {
                        Ok(Applied::Gap { .. }) | Err(_) => requeue_later(&delivery).await,
                        Ok(_) => ack(&delivery).await,
                    },
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "snapshot failed; the change waits");
                        requeue_later(&delivery).await
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not apply a change; it will be tried again"
                );
                requeue_later(&delivery).await
            }
        }
    }

    /// Asks the primary how far ahead it is (in the background, one check at a time).
    pub fn check_lag(self: &Arc<Self>, docs: &Arc<Documents>) {
        let (replica, docs) = (self.clone(), docs.clone());
        tokio::spawn(async move {
            let Ok(_one) = replica.checking.try_lock() else { return };
            let applied = docs.position().await.ok().flatten().map_or(0, |(seq, _)| seq);
            let now = chrono::Utc::now().timestamp_millis();
            let answer = replica.ask_primary(serde_json::json!({"op": "status", "after_seq": applied})).await;
            let mut lag_now = match answer {
                Ok(status) => {
                    lag(status["seq"].as_i64().unwrap_or(0), applied, status["next_at_ms"].as_i64(), now)
                }
                Err(error) => {
                    tracing::debug!(
                        error = format!("{error:#}"),
                        "the primary did not answer a status request"
                    );
                    let mut last = replica.lag().unwrap_or_default();
                    last.primary_reachable = false;
                    last.changes = (last.primary_seq - applied).max(0);
                    last
                }
            };
            lag_now.checked_at_ms = now;
            shared::metrics::set_replica_lag(lag_now.changes, lag_now.ms, applied);
            *replica.lag.lock().expect("not poisoned") = Some(lag_now);
        });
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
