//! Answering a data domain's requests: a domain copy (a primary or a
//! replica) consumes its request queue (`orderflow.domain.<domain>[.<region>]`)
//! and answers each request where the call asks, with the same conventions
//! as the stage services (`shared::service`: sync on `reply_to`, polled
//! through the tracker, or a callback key). What a request means is the
//! domain's business (`DomainService::answer`); here is only the plumbing:
//! the call's properties, the size limit, the deadline, who may write (the
//! publisher, support or the operator, by the broker-verified `user_id`;
//! reads are open to whoever the broker lets publish, though what a read
//! shows may depend on the caller's role: `Request::is_from`), the result,
//! and the acknowledgement after the result is confirmed.
//!
//! A replica also consumes its feed (`orderflow.replica.<domain>.<region>`)
//! one change at a time, in order (`DomainService::apply`), and every copy
//! gets a periodic `tick` (a primary sends its unsent changes, a replica
//! measures its lag). A copy whose part changes (a promotion) starts its
//! session again, with the queues of its new part.

use super::connect::Backoff;
use super::context::NodeContext;
use super::message::Outgoing;
use super::publisher::{PublishError, Publisher};
use super::service::{refuse, result_message};
use super::session::{finish, supervise};
use super::settle::{ack, requeue};
use futures::StreamExt;
use lapin::{message::Delivery, options::BasicQosOptions, Connection};
use shared::service::{Call, CallResult};
use shared::settings::Settings;
use std::{future::Future, sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use topology::DomainCopy;
use tracing::Instrument;

/// What a request may do, as decided from its verified sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    /// The back office, the operator (and support, for customers): may change the domain.
    Write,
}

/// One request, as the domain sees it.
pub struct Request<'a> {
    pub body: &'a [u8],
    /// The verified caller (its broker user; empty when the request names none).
    pub caller: &'a str,
    pub access: Access,
    /// Unique per (caller, request id): a write made twice is made once.
    pub request_key: String,
    /// The copy's trust: who the stack's roles are, for what a domain
    /// answers only to some of them (a card's token, a snapshot).
    pub trust: &'a shared::trust::Trust,
}

impl Request<'_> {
    /// Is the verified caller the user of `role`? (An unnamed caller is no one's.)
    pub fn is_from(&self, role: topology::permissions::Role) -> bool {
        let sender = Some(self.caller).filter(|caller| !caller.is_empty());
        sender.is_some() && self.trust.is_role(sender, role)
    }
}

/// Why a domain did not answer a request with data.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The request is wrong (unknown id, bad value, a write to a replica):
    /// the caller gets the reason; asking again gets the same.
    #[error("{0}")]
    Refused(String),
    /// The domain cannot answer now (its store failed, its primary is
    /// away): the caller gets a retryable failure.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

/// A domain copy's business: answering requests, and for a replica
/// applying its feed.
pub trait DomainService: Send + Sync + 'static {
    fn copy(&self) -> DomainCopy;

    /// Answers one request with the data the caller gets.
    fn answer(
        &self,
        request: Request<'_>,
    ) -> impl Future<Output = Result<serde_json::Value, DomainError>> + Send;

    /// Runs before the copy consumes anything, on every (re)connection: a
    /// replica catches up from a snapshot when it must.
    fn prepare(&self, _publisher: &Publisher) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Applies one change of the feed (replicas): ack it, requeue it, or
    /// dead-letter it; called one at a time, in order.
    fn apply(
        &self,
        _ctx: &NodeContext,
        _publisher: &Publisher,
        delivery: Delivery,
    ) -> impl Future<Output = ()> + Send {
        async move { requeue(&delivery).await }
    }

    /// Runs every [`TICK`] while the session is up.
    fn tick(&self, _ctx: &NodeContext, _publisher: &Publisher) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The queue of changes or work the copy takes now (asked when a
    /// session starts): a replica's feed, or the primary's own work, which
    /// a promoted replica takes over.
    fn feed_queue(&self) -> Option<String> {
        self.copy().feed_queue()
    }

    /// Whether the copy's part changed since its session started (promoted,
    /// or replaced as the primary): the session starts again, taking the
    /// queues of its new part.
    fn part_changed(&self) -> bool {
        false
    }
}

/// How often a copy's [`DomainService::tick`] runs.
pub const TICK: Duration = Duration::from_millis(500);

/// At most this many changes of its feed a replica holds at once.
const FEED_PREFETCH: u16 = 200;

/// Runs a domain copy until shutdown: its requests, its feed, its ticks,
/// reconnecting when the session is lost.
pub async fn run_domain<S: DomainService>(
    settings: Settings,
    service: Arc<S>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let copy = service.copy();
    let ctx = Arc::new(NodeContext::new(&settings, copy.process_name(), copy.queue(), settings.prefetch)?);
    let feed_prefetch = feed_prefetch(copy, &settings);
    supervise(&settings, &ctx, &shutdown, |connection| {
        session(connection, ctx.clone(), service.clone(), feed_prefetch, shutdown.clone())
    })
    .await
}

/// How many messages of its feed a copy holds at once: a replica's changes
/// come in hundreds; a true queue's work (received items) is taken one at a
/// time, so a receipt put back for later is the next one delivered and the
/// order of arrival holds; an aggregation queue's (captures) a full batch
/// and as many again, so a batch can fill while the last one is settled.
fn feed_prefetch(copy: DomainCopy, settings: &Settings) -> u16 {
    use topology::domains::Taken;
    match (copy.region, copy.def().receives.map(|feed| feed.taken)) {
        (Some(_), _) => FEED_PREFETCH,
        (None, Some(Taken::InBatches)) => u16::try_from(settings.settlement_batch * 2).unwrap_or(u16::MAX),
        (None, _) => 1,
    }
}

async fn session<S: DomainService>(
    connection: Connection,
    ctx: Arc<NodeContext>,
    service: Arc<S>,
    feed_prefetch: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let copy = service.copy();
    let connection = Arc::new(connection);
    let publisher = Publisher::reopening(connection.clone(), ctx.trust.own_user()).await?;
    let setup = connection.create_channel().await?;
    topology::ensure_for(&setup, &topology::domain_queues(copy)).await.map_err(|e| {
        anyhow::anyhow!("{e}: the topology is not applied (scripts/up.sh or `topology apply` create it)")
    })?;
    let _ = setup.close(200, "checked".into()).await;
    let mut backoff = Backoff::default();
    while let Err(error) = service.prepare(&publisher).await {
        let delay = backoff.next_delay();
        tracing::warn!(
            domain = copy.label(),
            error = format!("{error:#}"),
            retry_in_ms = delay.as_millis() as u64,
            "not ready to serve yet"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let requests_channel = connection.create_channel().await?;
    requests_channel.basic_qos(ctx.prefetch, BasicQosOptions { global: false }).await?;
    let tag = ctx.instance_id.clone();
    let mut requests = requests_channel
        .basic_consume(
            copy.queue().as_str().into(),
            tag.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await?;
    let mut feed = match service.feed_queue() {
        Some(queue) => {
            let channel = connection.create_channel().await?;
            channel.basic_qos(feed_prefetch, BasicQosOptions { global: false }).await?;
            let tag = format!("{}-feed", ctx.instance_id);
            Some(
                channel
                    .basic_consume(
                        queue.as_str().into(),
                        tag.as_str().into(),
                        Default::default(),
                        Default::default(),
                    )
                    .await?,
            )
        }
        None => None,
    };
    tracing::info!(domain = copy.label(), queue = copy.queue(), "serving");
    let tasks = TaskTracker::new();
    let mut ticks = tokio::time::interval(TICK);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = requests.next() => match next {
                Some(Ok(delivery)) => {
                    let (ctx, service, publisher) = (ctx.clone(), service.clone(), publisher.clone());
                    tasks.spawn(async move { handle_request(&ctx, &*service, &publisher, delivery).await });
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("the request consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the request consumer")),
            },
            next = super::session::next_of(&mut feed) => match next {
                Some(Ok(delivery)) => service.apply(&ctx, &publisher, delivery).await,
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("the feed consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the feed consumer")),
            },
            _ = ticks.tick() => {
                service.tick(&ctx, &publisher).await;
                if service.part_changed() {
                    tracing::warn!(domain = copy.label(), "this copy's part changed: serving it anew");
                    break Err(anyhow::anyhow!("{}'s part changed (a promotion): starting again", copy.label()));
                }
            }
        }
    };
    finish(&connection, &requests_channel, &ctx, tasks, result).await
}

/// Answers one request where its call asks, then acknowledges it.
pub async fn handle_request<S: DomainService>(
    ctx: &NodeContext,
    service: &S,
    publisher: &Publisher,
    delivery: Delivery,
) {
    let trace = shared::trace::of_message(&delivery.properties);
    let span = shared::trace::span(ctx.node, &delivery.properties, Some(&trace));
    answer_request(ctx, service, publisher, delivery).instrument(span).await
}

async fn answer_request<S: DomainService>(
    ctx: &NodeContext,
    service: &S,
    publisher: &Publisher,
    delivery: Delivery,
) {
    let _in_hand = shared::metrics::InHand::start();
    let label = service.copy().label();
    let call = match Call::from_properties(&delivery.properties) {
        Ok(call) => call,
        Err(error) => return refuse(ctx, publisher, &delivery, &label, error).await,
    };
    let caller = ctx.trust.sender(&delivery.properties).unwrap_or_default();
    if call.answers_to_coordinator() {
        let reason = "a domain answers only to its caller's direct reply-to";
        shared::events::Refused { node: ctx.node, what: "a request", reason }.emit();
        return crate::settle::dead_letter(publisher, ctx, &delivery, &format!("refused: {reason}")).await;
    }
    let result = match decide(ctx, service, &call, &caller, &delivery).await {
        Ok(data) => CallResult::answered(&call.request_id, &label, data),
        Err(DomainError::Refused(reason)) => CallResult::failed(&call.request_id, &label, reason, false),
        Err(DomainError::Unavailable(error)) => {
            tracing::warn!(
                domain = label,
                request_id = call.request_id,
                error = format!("{error:#}"),
                "could not answer a request now"
            );
            CallResult::failed(
                &call.request_id,
                &label,
                format!("{label} cannot answer now: {error:#}"),
                true,
            )
        }
    };
    reply(ctx, publisher, &delivery, &call, &result).await
}

async fn decide<S: DomainService>(
    ctx: &NodeContext,
    service: &S,
    call: &Call,
    caller: &str,
    delivery: &Delivery,
) -> Result<serde_json::Value, DomainError> {
    let domain = service.copy().domain;
    let sender = Some(caller).filter(|c| !c.is_empty());
    if call.expired(chrono::Utc::now().timestamp_millis()) {
        return Err(DomainError::Refused("the request's deadline passed before it was answered".into()));
    }
    if delivery.data.len() > ctx.max_message_bytes {
        return Err(DomainError::Refused(format!(
            "the request is {} bytes, more than the maximum of {} (ORDERFLOW_MAX_MESSAGE_BYTES)",
            delivery.data.len(),
            ctx.max_message_bytes
        )));
    }
    let access =
        if ctx.trust.check_domain_write(domain, sender).is_ok() { Access::Write } else { Access::Read };
    let request_key = format!("{caller}\u{1f}{}", call.request_id);
    service.answer(Request { body: &delivery.data, caller, access, request_key, trust: &ctx.trust }).await
}

/// Sends the result where the call asked; acknowledges the request once it
/// is confirmed (or the caller is gone), else requeues it.
async fn reply(
    ctx: &NodeContext,
    publisher: &Publisher,
    delivery: &Delivery,
    call: &Call,
    result: &CallResult,
) {
    let caller = ctx.trust.sender(&delivery.properties).unwrap_or_default();
    let message: Outgoing = result_message(call, result, &caller);
    match publisher.publish_all(&[message]).await {
        Ok(()) | Err(PublishError::Unroutable(_)) => ack(delivery).await,
        Err(error) => {
            tracing::warn!(node = ctx.node, request_id = call.request_id, %error, "the answer was not confirmed; the request will be answered again");
            tokio::time::sleep(Duration::from_millis(200)).await;
            requeue(delivery).await
        }
    }
}

/// Reads a request's JSON body as `T`, refusing it with the reason.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DomainError> {
    serde_json::from_slice(body).map_err(|e| {
        DomainError::Refused(format!(
            "not a request this domain knows: {}",
            shared::text::escaped(&e.to_string())
        ))
    })
}
