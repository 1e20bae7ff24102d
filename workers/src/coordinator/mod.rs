//! The coordinator: the manifesto's directed workflow. An order placed in
//! directed mode (routing key `order.coordinator`) comes here instead of to
//! intake; the coordinator keeps its own copy of the element in its store
//! and drives it through the nodes' services, one call at a time, choosing
//! each next call from the workflow definition (`flow`), the same table the
//! autonomous nodes forward by. The services run the same stage functions.
//!
//! A directed order's card number goes to the processor's vault before the
//! coordinator keeps the order: its store and its calls carry the token
//! (intake takes it as issued for that order), never the number.
//!
//! Every step is durable before the next is taken, in this order: the
//! audit and change records the step produces are published (their ids are
//! deterministic, so a redone step repeats them harmlessly), the record is
//! moved on in the store (a conditional update: a second copy of a reply,
//! or another instance, finds it moved and does nothing), the next call is
//! sent, and only then is the reply acknowledged. A crash anywhere leaves
//! an unacknowledged message or a due call, and a call is idempotent by its
//! request id, so nothing is lost and nothing is done twice.
//!
//! In-flight changes come to the coordinator like to any node (its own
//! queue on the changes fanout, its own change book): it decides them on
//! its copy of the element before each next call, with the same rules and
//! records as the nodes; the services never decide changes.
//!
//! Failures: a transient error is retried with growing delays up to
//! `ORDERFLOW_MAX_ATTEMPTS`; a permanent one dead-letters the order; a call
//! without an answer within `ORDERFLOW_CALL_TIMEOUT_MS` is sent again (same
//! request id), waiting twice as long each time, for as long as it takes.
//! A decline or a shortage is not a failure: it is a state, and the
//! definition routes it to its compensations (refund, release).
//!
//! The coordinator also answers requests for services that do not exist
//! (the services exchange's alternate exchange): "no such service".

pub mod flow;
pub mod store;
mod unknown;

use flow::AfterFailure;
use futures::StreamExt;
use lapin::message::Delivery;
use shared::change::cancel_outcome;
use shared::order::OrderElement;
use shared::service::{CallResult, CallStatus};
use shared::settings::Settings;
use shared::stage::{Outcome, StageError};
use shared::trace::TraceContext;
use std::sync::Arc;
use std::time::Duration;
use store::{CoordinatorStore, Next, Pending, Status};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use topology::Node;
use tracing::Instrument;
use transport::change_consumer::{dispatch_change, drain_changes};
use transport::message::Outgoing;
use transport::service::receive_result;
use transport::session::{finish, supervise};
use transport::settle::dead_letter_headers;
use transport::settle::{ack, dead_letter, requeue, settle_failure};
use transport::step::{record_outcome, resolve_changes, Onward};
use transport::{NodeContext, Publisher};

/// The coordinator's process name, role and store owner.
pub const NAME: &str = "coordinator";

/// How often the coordinator looks for calls due to be sent again.
const RESEND_EVERY: Duration = Duration::from_millis(250);
/// The most due calls sent again in one look.
const RESEND_BATCH: i64 = 500;

/// What every handler of the coordinator shares.
pub struct Coordinator {
    ctx: Arc<NodeContext>,
    store: CoordinatorStore,
    call_timeout: Duration,
    /// The card processor: its vault takes the directed orders' card numbers.
    processor: crate::processor::Processor,
    /// How long an order declined at payment waits for another card.
    payment_wait: Duration,
}

/// Runs the coordinator until shutdown.
/// The process's run, boxed here (see `workers::process`).
pub fn run(
    settings: Settings,
    shutdown: CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(run_until(settings, shutdown))
}

async fn run_until(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut ctx =
        NodeContext::new(&settings, NAME, topology::COORDINATOR_QUEUE.to_string(), settings.prefetch)?;
    let processor = crate::processor::Processor::open(&settings).await?;
    let book = shared::change_book::ChangeBook::open(&settings, NAME).await?;
    // A card change for a directed order: its token must be the vault's, for that order.
    book.vet_with(Arc::new(processor.clone()));
    ctx.book = Some(book);
    ctx.changes_queue = Some(topology::COORDINATOR_CHANGES_QUEUE.to_string());
    let coordinator = Arc::new(Coordinator {
        ctx: Arc::new(ctx),
        store: CoordinatorStore::open(&settings).await?,
        call_timeout: settings.call_timeout,
        processor,
        payment_wait: settings.payment_wait,
    });
    let ctx = &coordinator.ctx;
    supervise(&settings, ctx, &shutdown, |connection| {
        serve(connection, coordinator.clone(), shutdown.clone())
    })
    .await
}

async fn consume(channel: &lapin::Channel, queue: &str, tag: &str) -> lapin::Result<lapin::Consumer> {
    channel.basic_consume(queue.into(), tag.into(), Default::default(), Default::default()).await
}

async fn serve(
    connection: lapin::Connection,
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = &coordinator.ctx;
    let connection = Arc::new(connection);
    let publisher = Publisher::reopening(connection.clone(), ctx.trust.own_user()).await?;
    let setup = connection.create_channel().await?;
    topology::ensure_for(&setup, &topology::coordinator_queues()).await.map_err(|e| {
        anyhow::anyhow!("{e}: the topology is not applied (scripts/up.sh or `topology apply` create it)")
    })?;
    let _ = setup.close(200, "checked".into()).await;
    drain_changes(&connection, ctx, &publisher).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(ctx.prefetch, lapin::options::BasicQosOptions { global: false }).await?;
    let [orders_tag, changes_tag, replies_tag] = ctx.consumer_tags();
    let mut orders = consume(&channel, topology::COORDINATOR_QUEUE, &orders_tag).await?;
    let mut replies = consume(&channel, topology::COORDINATOR_REPLIES_QUEUE, &replies_tag).await?;
    let mut changes = consume(&channel, topology::COORDINATOR_CHANGES_QUEUE, &changes_tag).await?;
    let unknown_tag = format!("{}-unknown", ctx.instance_id);
    let mut unknown = consume(&channel, topology::UNKNOWN_SERVICE_QUEUE, &unknown_tag).await?;
    tracing::info!(node = NAME, "coordinating");
    let tasks = TaskTracker::new();
    let resending = Arc::new(tokio::sync::Mutex::new(()));
    let mut tick = tokio::time::interval(RESEND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = |what: &str| anyhow::anyhow!("the broker cancelled the {what} consumer");
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            next = changes.next() => {
                if let Err(error) = dispatch_change(next, &coordinator.ctx, &publisher, &tasks) {
                    break Err(error);
                }
            }
            next = replies.next() => match next {
                Some(Ok(delivery)) => {
                    let (coordinator, publisher) = (coordinator.clone(), publisher.clone());
                    tasks.spawn(async move { coordinator.handle_reply(&publisher, delivery).await });
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("replies consumer failed")),
                None => break Err(ended("replies")),
            },
            next = orders.next() => match next {
                Some(Ok(delivery)) => {
                    let (coordinator, publisher) = (coordinator.clone(), publisher.clone());
                    tasks.spawn(async move { coordinator.handle_order(&publisher, delivery).await });
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("orders consumer failed")),
                None => break Err(ended("orders")),
            },
            next = unknown.next() => match next {
                Some(Ok(delivery)) => {
                    let (coordinator, publisher) = (coordinator.clone(), publisher.clone());
                    tasks.spawn(async move { unknown::answer(&coordinator.ctx, &publisher, delivery).await });
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("unknown-service consumer failed")),
                None => break Err(ended("unknown-service")),
            },
            _ = tick.tick() => {
                if let Ok(guard) = resending.clone().try_lock_owned() {
                    let (coordinator, publisher) = (coordinator.clone(), publisher.clone());
                    tasks.spawn(async move {
                        coordinator.resend_due(&publisher).await;
                        coordinator.look_after_waiting(&publisher).await;
                        drop(guard);
                    });
                }
            }
        }
    };
    if result.is_ok() {
        let _ = channel.basic_cancel(unknown_tag.as_str().into(), Default::default()).await;
    }
    finish(&connection, &channel, ctx, tasks, result).await
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether an answer was taken (or was a harmless repeat), or refused.
enum Taken {
    Yes,
    /// Not the answer to the call: dead-lettered with the reason.
    Refused(String),
}

/// Why handling a message failed for a passing reason: it is tried again.
#[derive(Debug)]
struct Passing(String);

impl<E: std::fmt::Display> From<E> for Passing {
    fn from(error: E) -> Passing {
        Passing(error.to_string())
    }
}

impl Coordinator {
    /// A directed order: records it (unless known already), decides the
    /// changes already heard for it, and sends its first call.
    async fn handle_order(&self, publisher: &Publisher, delivery: Delivery) {
        let trace = shared::trace::known(&delivery.properties);
        let span = shared::trace::span(NAME, &delivery.properties, trace.as_ref());
        self.take_order(publisher, delivery, trace).instrument(span).await
    }

    async fn take_order(&self, publisher: &Publisher, delivery: Delivery, trace: Option<TraceContext>) {
        let ctx = &self.ctx;
        let arrival = match transport::arrival::receive_directed(ctx, &delivery) {
            Ok(arrival) => arrival,
            Err(error) => return settle_failure(publisher, ctx, &delivery, error).await,
        };
        let trace = shared::trace::decoded(&delivery.properties, arrival.element.order_id, trace);
        let mut messages: Vec<Outgoing> = arrival.placed.into_iter().collect();
        let result: Result<(), Passing> = async {
            let element = self.tokenized(arrival.element).await?;
            let (element, decided) = self.decide_changes(element).await?;
            messages.extend(decided);
            transport::message::stamp_trace(&mut messages, &trace);
            publisher.publish_all_patiently(&messages, transport::publisher::BROKER_PATIENCE).await?;
            let mut next = self.next_for(&element);
            next.trace = Some(trace.header());
            let record = self.store.place(next).await?;
            // Sent again on a redelivery too: a call is idempotent by its request id.
            if let Some(pending) = record.pending.as_ref().filter(|_| !record.waiting) {
                self.call(publisher, &record.element, pending, &trace).await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => ack(&delivery).await,
            Err(Passing(error)) => {
                tracing::warn!(error, "could not take a directed order; it will be tried again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                requeue(&delivery).await
            }
        }
    }

    /// The order with its card number exchanged for the processor's token,
    /// before anything keeps it. A card field that is neither a number nor
    /// a token (dashes, letters, a card the vault refuses) is masked: intake
    /// rejects the order for it, as it would have.
    async fn tokenized(&self, mut element: OrderElement) -> Result<OrderElement, Passing> {
        let card = &element.order.payment;
        if shared::order::is_token(&card.card_number) {
            return Ok(element);
        }
        let token = if shared::order::is_card_number(&card.card_number) {
            self.processor.tokenize(element.order_id, card).await?.ok()
        } else {
            None
        };
        let card = &mut element.order.payment.card_number;
        *card = token.unwrap_or_else(|| shared::order::mask_card(card));
        Ok(element)
    }

    /// A service's answer to one of the coordinator's calls.
    async fn handle_reply(&self, publisher: &Publisher, delivery: Delivery) {
        let _in_hand = shared::metrics::InHand::start();
        let trace = shared::trace::of_message(&delivery.properties);
        let span = shared::trace::span(NAME, &delivery.properties, Some(&trace));
        self.reply_traced(publisher, delivery, trace).instrument(span).await
    }

    async fn reply_traced(&self, publisher: &Publisher, delivery: Delivery, trace: TraceContext) {
        let ctx = &self.ctx;
        let result = match receive_result(ctx, &delivery, "an answer") {
            Ok(result) => result,
            Err(reason) => return dead_letter(publisher, ctx, &delivery, &reason).await,
        };
        match self.take_reply(publisher, result, &trace).await {
            Ok(Taken::Yes) => ack(&delivery).await,
            Ok(Taken::Refused(reason)) => {
                shared::events::Refused { node: NAME, what: "an answer", reason: &reason }.emit();
                dead_letter(publisher, ctx, &delivery, &format!("refused: {reason}")).await
            }
            Err(Passing(error)) => {
                tracing::warn!(error, "could not take a service's answer; it will be tried again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                requeue(&delivery).await
            }
        }
    }

    async fn take_reply(
        &self,
        publisher: &Publisher,
        result: CallResult,
        trace: &TraceContext,
    ) -> Result<Taken, Passing> {
        let Some(record) = self.store.waiting_on(&result.request_id).await? else {
            // A second copy of an answer already taken, or of a call sent
            // again (or a guess at a request id: ids are random).
            tracing::debug!(request_id = result.request_id, "an answer nobody waits for");
            return Ok(Taken::Yes);
        };
        let Some(pending) = record.pending.clone() else { return Ok(Taken::Yes) };
        if let Some(reason) = flow::refuse_reply(&pending.service, &record.element, &result) {
            return Ok(Taken::Refused(reason));
        }
        self.take_answer(publisher, record, pending, result, trace).await.map(|()| Taken::Yes)
    }

    /// An answer of the service called, for the call sent: the order moves on.
    async fn take_answer(
        &self,
        publisher: &Publisher,
        record: store::Record,
        pending: Pending,
        result: CallResult,
        trace: &TraceContext,
    ) -> Result<(), Passing> {
        match (result.status, result.element) {
            (CallStatus::Done, Some(mut element)) if element.order_id == record.element.order_id => {
                keep_card(&record.element, &mut element);
                let detail = format!("{} step(s)", result.steps.len());
                let (element, mut decided) = self.decide_changes(element).await?;
                // The order ended shipped: its authorization is due for capture.
                let reached = result.steps.iter().map(|step| step.state);
                let capture = shared::settlement::Capture::due_after(reached, &element);
                decided.extend(capture.map(|capture| transport::message::capture_message(&capture)));
                transport::message::stamp_trace(&mut decided, trace);
                publisher.publish_all_patiently(&decided, transport::publisher::BROKER_PATIENCE).await?;
                let next = self.next_for(&element);
                let call = next.pending.clone().filter(|_| !next.waiting);
                let moved = self
                    .store
                    .advance(&pending.request_id, (&pending.service, "done", &detail), next)
                    .await?;
                if let (true, Some(call)) = (moved, call) {
                    self.call(publisher, &element, &call, trace).await?;
                }
                if moved {
                    let (order_id, state) = (element.order_id, element.state);
                    shared::events::ElementHandled { node: NAME, order_id, state }.emit();
                }
                Ok(())
            }
            (CallStatus::Done, _) => {
                let reason = format!("{} answered without the order's element", pending.service);
                self.give_up(publisher, &record.element, &pending, reason, trace).await
            }
            (CallStatus::Failed, _) => {
                let failed = CallResult { element: None, ..result };
                let attempts = record.attempts + 1;
                match flow::after_failure(&failed, attempts, self.ctx.max_attempts) {
                    AfterFailure::Retry(delay) => {
                        let error = failed.error.as_deref().unwrap_or_default();
                        tracing::warn!(order_id = %record.element.order_id, service = pending.service, attempts, error, "a call failed; calling again later");
                        let due_at = now_ms() + delay.as_millis() as i64;
                        self.store.retry_later(&pending.request_id, attempts, due_at).await?;
                        Ok(())
                    }
                    AfterFailure::GiveUp(reason) => {
                        self.give_up(publisher, &record.element, &pending, reason, trace).await
                    }
                }
            }
        }
    }

    /// Decides the changes heard for the order on the coordinator's copy of
    /// the element (a cancel sends it on its cancel path), and closes the
    /// order in the change book when it ended: the element as it stands, and
    /// the records to publish.
    async fn decide_changes(&self, element: OrderElement) -> Result<(OrderElement, Vec<Outgoing>), Passing> {
        let ctx = &self.ctx;
        let before = (element.seq, Some(element.state));
        let resolved = resolve_changes(ctx, element).await.map_err(stage_error)?;
        let outcome = if resolved.cancelled {
            cancel_outcome(resolved.element)
        } else {
            Outcome::new(resolved.element)
        };
        // The coordinator forwards nothing: it calls the next service.
        let handled = record_outcome(ctx, before, resolved.changes, &outcome, Onward::Kept)
            .await
            .map_err(stage_error)?;
        handled.changes.emit();
        Ok((handled.element, handled.messages))
    }

    /// What the record of `element` becomes: its next call, or its end.
    /// An order waiting at a node (declined at payment) holds its call to
    /// that node until a change brings what it waits for (a new card), or
    /// until its wait runs out (the node then ends it).
    fn next_for<'a>(&self, element: &'a OrderElement) -> Next<'a> {
        let (service, waiting) = match (flow::next_service(element), flow::kept_waiting(element)) {
            (Some(service), _) => (service, None),
            (None, Some((node, waits))) => (node, Some(waits)),
            (None, None) => {
                let status = Status::Done;
                return Next {
                    element,
                    trace: None,
                    status,
                    pending: None,
                    due_at: 0,
                    reason: None,
                    waiting: false,
                };
            }
        };
        let pending = Pending { service: service.name().to_string(), request_id: flow::request_id() };
        let wait = if waiting == Some(true) { self.payment_wait } else { self.call_timeout };
        Next {
            element,
            trace: None,
            status: Status::Calling,
            pending: Some(pending),
            due_at: now_ms() + wait.as_millis() as i64,
            reason: None,
            waiting: waiting == Some(true),
        }
    }

    /// The orders waiting at a node: the changes heard for each are decided
    /// on the coordinator's copy; one that brings what it waits for (a new
    /// card) calls its node again at once, a cancel ends it, another change
    /// (a new address) is kept while it waits on.
    async fn look_after_waiting(&self, publisher: &Publisher) {
        let Some(book) = &self.ctx.book else { return };
        let waiting = match self.store.waiting_with_changes(book.changes_table(), RESEND_BATCH).await {
            Ok(waiting) => waiting,
            Err(error) => return tracing::warn!(%error, "could not read the waiting orders"),
        };
        for record in waiting {
            let order_id = record.element.order_id;
            if let Err(Passing(error)) = self.resume_if_changed(publisher, record).await {
                tracing::warn!(%order_id, error, "could not decide a waiting order's changes; trying again");
            }
        }
    }

    async fn resume_if_changed(&self, publisher: &Publisher, record: store::Record) -> Result<(), Passing> {
        let (Some(book), Some(pending)) = (&self.ctx.book, &record.pending) else { return Ok(()) };
        if !book.may_have_changes(record.element.order_id).await? {
            return Ok(());
        }
        let (element, mut decided) = self.decide_changes(record.element.clone()).await?;
        if decided.is_empty() {
            return Ok(());
        }
        let trace = record.trace.as_deref().and_then(TraceContext::parse);
        let trace = trace.unwrap_or_else(|| TraceContext::of_order(element.order_id));
        transport::message::stamp_trace(&mut decided, &trace);
        publisher.publish_all_patiently(&decided, transport::publisher::BROKER_PATIENCE).await?;
        let mut next = self.next_for(&element);
        if next.waiting {
            // Still waiting (a new address): its wait goes on as it was.
            next.due_at = record.due_at;
        }
        let call = next.pending.clone().filter(|_| !next.waiting);
        let detail = format!("{} change(s) decided while it waited", decided.len());
        let moved = self.store.resume(&pending.request_id, (NAME, "changed", &detail), next).await?;
        if let (true, Some(call)) = (moved, call) {
            self.call(publisher, &element, &call, &trace).await?;
        }
        Ok(())
    }

    /// Sends a call (confirmed).
    async fn call(
        &self,
        publisher: &Publisher,
        element: &OrderElement,
        pending: &Pending,
        trace: &TraceContext,
    ) -> Result<(), Passing> {
        let service = Node::from_name(&pending.service)
            .ok_or_else(|| Passing(format!("no service is named {}", pending.service)))?;
        let mut message = [flow::call_message(element, service, &pending.request_id)];
        transport::message::stamp_trace(&mut message, trace);
        publisher.publish_all_patiently(&message, transport::publisher::BROKER_PATIENCE).await?;
        Ok(())
    }

    /// Dead-letters the order with `reason` and stops coordinating it.
    async fn give_up(
        &self,
        publisher: &Publisher,
        element: &OrderElement,
        pending: &Pending,
        reason: String,
        trace: &TraceContext,
    ) -> Result<(), Passing> {
        let routing_key = format!("{NAME}.{}", pending.service);
        shared::events::DeadLettered { node: NAME, routing_key: &routing_key, reason: &reason }.emit();
        let mut letter = [Outgoing {
            exchange: topology::DEAD_LETTER_EXCHANGE,
            routing_key,
            body: masked_body(element),
            properties: dead_letter_headers(NAME, topology::COORDINATOR_QUEUE, &pending.service, &reason),
        }];
        transport::message::stamp_trace(&mut letter, trace);
        publisher.publish_all_patiently(&letter, transport::publisher::BROKER_PATIENCE).await?;
        let failed = Some(reason.clone());
        let next = Next {
            element,
            trace: None,
            status: Status::Failed,
            pending: None,
            due_at: 0,
            reason: failed,
            waiting: false,
        };
        self.store.advance(&pending.request_id, (&pending.service, "failed", &reason), next).await?;
        Ok(())
    }

    /// Sends again every call that is due: unanswered within its wait, or
    /// retried after a transient failure.
    async fn resend_due(&self, publisher: &Publisher) {
        let due = match self.store.due(now_ms(), RESEND_BATCH).await {
            Ok(due) => due,
            Err(error) => return tracing::warn!(%error, "could not read the calls due"),
        };
        for record in due {
            let Some(pending) = &record.pending else { continue };
            let wait = flow::answer_wait(self.call_timeout, record.sent + 1);
            let due_at = now_ms() + wait.as_millis() as i64;
            match self.store.claim_resend(&pending.request_id, record.sent, due_at).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => return tracing::warn!(%error, "could not claim a call to send again"),
            }
            if record.attempts == 0 {
                tracing::warn!(order_id = %record.element.order_id, service = pending.service, sent = record.sent, "no answer in time; calling again");
            }
            let trace = record.trace.as_deref().and_then(TraceContext::parse);
            let trace = trace.unwrap_or_else(|| TraceContext::of_order(record.element.order_id));
            if let Err(Passing(error)) = self.call(publisher, &record.element, pending, &trace).await {
                tracing::warn!(error, "could not send a call again; it stays due");
            }
        }
    }
}

/// An element as a dead letter keeps it: card numbers masked.
fn masked_body(element: &OrderElement) -> Vec<u8> {
    let body = serde_json::to_vec(element).expect("an element always serializes");
    shared::text::mask_card_numbers_in_body(&body).unwrap_or(body)
}

/// Services answer with a card on file's token masked (the customer's
/// secret); until the order is charged the coordinator's copy keeps the
/// token (the masked form of an answer must be that very token's). A
/// processor's token comes back as it went.
fn keep_card(ours: &OrderElement, answered: &mut OrderElement) {
    let open = answered.charge.is_none() && !shared::routing::has_ended(answered);
    let (given, theirs) = (&ours.order.payment.card_number, &mut answered.order.payment.card_number);
    if open && shared::order::mask_card(given) == *theirs {
        theirs.clone_from(given);
    }
}

fn stage_error(error: StageError) -> Passing {
    Passing(error.to_string())
}
