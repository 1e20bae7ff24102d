//! Answering service calls: a node's stage, run for whoever calls it on the
//! node's service queue (`orderflow.service.<node>`), with the result sent
//! where the call asks (`shared::service`). The same stage function as the
//! workflow runs; what differs is only what happens to its outcome:
//!
//! - the audit events go to the tracker as ever (marked `directed` for the
//!   coordinator's calls, `service` for anyone else's);
//! - the element is not forwarded: it goes back in the result;
//! - changes are not decided here: the caller holds the element and owns
//!   its changes (the coordinator decides them before each call).
//!
//! A call is idempotent by (caller, request id): the first answer is kept in
//! the node's call book and a repeat gets it again, without running the
//! stage. Effects are keyed by order besides, so a new request id for the
//! same order still charges, reserves and ships once. The coordinator's
//! calls are not kept: its own store already makes each of its steps
//! idempotent (a second answer to a call finds the order moved on and does
//! nothing), so a repeat runs the stage again, whose effects and event ids
//! are the order's; its result goes out with the events, not after them
//! (its replies queue always routes), and the call is acknowledged once both
//! are confirmed. Only the coordinator
//! and the operator may call the services after intake (their elements
//! carry a charge or a reservation that only the nodes' own replies vouch
//! for); intake's is the public door. A request that cannot be answered
//! (no request id, a sync call without `reply_to`) is dead-lettered with the
//! reason; every other bad request gets a failed result, where it asked.
//! A result never carries a full card number: the element comes back with
//! its card masked (the coordinator keeps the number until payment).

use super::arrival::{decode_at_intake, from_outside, placed_record};
use super::context::NodeContext;
use super::message::{audit_message, decode_element, Outgoing, SCHEMA_HEADER};
use super::publisher::{PublishError, Publisher};
use super::settle::{ack, dead_letter, requeue};
use super::step::outcome_events;
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use shared::call_book::{Answered, CallBook};
use shared::order::{OrderElement, OrderState, SCHEMA_VERSION};
use shared::routing::check_call_arrival;
use shared::service::{Call, CallError, CallResult, ReplyTo, StepDone, CALLER_HEADER, RESULT_TYPE};
use shared::stage::{BatchStage, Outcome, Stage, StageError};
use std::{future::Future, sync::Arc};
use topology::permissions::Role;
use topology::Node;
use tracing::Instrument;

/// A stage as a service: one element in, one outcome out.
pub trait Service: Send + Sync + 'static {
    fn node(&self) -> Node;
    fn serve(&self, element: OrderElement) -> impl Future<Output = Result<Outcome, StageError>> + Send;
}

/// A per-element stage, served as it is.
pub struct StageService<S>(pub Arc<S>);

impl<S: Stage> Service for StageService<S> {
    fn node(&self) -> Node {
        S::NODE
    }
    fn serve(&self, element: OrderElement) -> impl Future<Output = Result<Outcome, StageError>> + Send {
        self.0.handle_call(element)
    }
}

/// A batch stage (the picklist), served one element at a time: a call is a
/// batch of one, released at once.
pub struct BatchService<S>(pub Arc<S>);

impl<S: BatchStage> Service for BatchService<S> {
    fn node(&self) -> Node {
        S::NODE
    }
    async fn serve(&self, element: OrderElement) -> Result<Outcome, StageError> {
        let key = self.0.group_key(&element);
        let order_id = element.order_id;
        self.0
            .emit(&key, vec![element])
            .into_iter()
            .find(|outcome| outcome.element.order_id == order_id)
            .ok_or_else(|| StageError::Permanent(format!("{} returned no outcome for the order", S::NODE)))
    }
}

/// Answers one call delivered on the node's service queue, then
/// acknowledges it, inside the span of the call's trace.
pub async fn handle_call<S: Service>(
    ctx: &NodeContext,
    calls: &CallBook,
    service: &S,
    publisher: &Publisher,
    delivery: Delivery,
) {
    let trace = shared::trace::of_message(&delivery.properties);
    let span = shared::trace::span(service.node().name(), &delivery.properties, Some(&trace));
    answer_call(ctx, calls, service, publisher, delivery, trace).instrument(span).await
}

async fn answer_call<S: Service>(
    ctx: &NodeContext,
    calls: &CallBook,
    service: &S,
    publisher: &Publisher,
    delivery: Delivery,
    trace: shared::trace::TraceContext,
) {
    let node = service.node();
    let _in_hand = shared::metrics::InHand::start();
    let call = match Call::from_properties(&delivery.properties) {
        Ok(call) => call,
        Err(error) => return refuse(ctx, publisher, &delivery, node.name(), error).await,
    };
    let caller = ctx.trust.sender(&delivery.properties);
    let caller_key = caller.clone().unwrap_or_default();
    if call.answers_to_coordinator() && !ctx.trust.is_role(caller.as_deref(), Role::Coordinator) {
        let reason = "only the coordinator's calls are answered to its replies queue";
        shared::events::Refused { node: node.name(), what: "a call", reason }.emit();
        return dead_letter(publisher, ctx, &delivery, &format!("refused: {reason}")).await;
    }
    ctx.simulate_busy().await;
    let answered = match answer(ctx, calls, service, &call, caller.as_deref(), &delivery).await {
        Ok(answered) => answered,
        Err(error) => {
            // Our own store failed: the call is tried again (the quorum
            // queue's delivery limit stops a call that always fails).
            tracing::warn!(node = node.name(), request_id = call.request_id, error = %error, "could not answer a call; it will be tried again");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            return requeue(&delivery).await;
        }
    };
    let mut messages: Vec<Outgoing> = answered.placed.into_iter().collect();
    messages.extend(answered.kept.events.iter().map(audit_message));
    // The coordinator's replies queue always routes: its result goes with the events.
    let with_events = call.answers_to_coordinator();
    if with_events {
        messages.push(result_message(&call, &answered.kept.result, &caller_key));
    }
    crate::message::stamp_trace(&mut messages, &trace);
    if let Err(error) = publisher.publish_all_patiently(&messages, super::publisher::BROKER_PATIENCE).await {
        tracing::warn!(node = node.name(), request_id = call.request_id, %error, "the call's events were not confirmed; it will be tried again");
        return requeue(&delivery).await;
    }
    // A callback already delivered is not sent again; the coordinator's went with the events.
    let delivered_before = matches!(call.reply_to, ReplyTo::Callback(_)) && answered.kept.delivered;
    let send_result = !with_events && !delivered_before;
    if send_result {
        let mut result = [result_message(&call, &answered.kept.result, &caller_key)];
        crate::message::stamp_trace(&mut result, &trace);
        match publisher.publish_all(&result).await {
            Ok(()) => {
                if matches!(call.reply_to, ReplyTo::Callback(_)) && answered.stored {
                    if let Err(error) = calls.delivered(&caller_key, &call.request_id).await {
                        tracing::warn!(%error, "could not record a callback as delivered; a repeat may send it again");
                    }
                }
            }
            // Nobody waits on the reply queue (a sync caller that gave up):
            // the result is kept, and a repeat of the call gets it.
            Err(PublishError::Unroutable(target)) => {
                tracing::info!(
                    node = node.name(),
                    request_id = call.request_id,
                    target,
                    "the caller is gone; result kept"
                );
            }
            Err(error) => {
                tracing::warn!(node = node.name(), request_id = call.request_id, %error, "the result was not confirmed; the call will be tried again");
                return requeue(&delivery).await;
            }
        }
    }
    ack(&delivery).await;
    let mode = call.reply_to.mode();
    shared::events::CallAnswered { node: node.name(), request_id: &call.request_id, mode }.emit();
}

/// A call's answer: the result and events (kept, or failed and not kept),
/// and a plain order's `placed` record (intake).
struct Answer {
    kept: Answered,
    /// The answer is in the call book (a done call, not a failure).
    stored: bool,
    placed: Option<Outgoing>,
}

async fn answer<S: Service>(
    ctx: &NodeContext,
    calls: &CallBook,
    service: &S,
    call: &Call,
    caller: Option<&str>,
    delivery: &Delivery,
) -> Result<Answer, StageError> {
    let node = service.node();
    let failed = |reason: String, retryable: bool| Answer {
        kept: Answered {
            result: CallResult::failed(&call.request_id, node.name(), reason, retryable),
            events: Vec::new(),
            delivered: false,
        },
        stored: false,
        placed: None,
    };
    if let Err(reason) = ctx.trust.check_call(node, caller) {
        shared::events::Refused { node: node.name(), what: "a call", reason: &reason }.emit();
        return Ok(failed(format!("refused: {reason}"), false));
    }
    if call.expired(chrono::Utc::now().timestamp_millis()) {
        return Ok(failed("the call's deadline passed before it was run".into(), false));
    }
    let caller_key = caller.unwrap_or_default();
    // The coordinator's calls are not kept (the module's header says why).
    let keep = !call.answers_to_coordinator();
    if keep {
        if let Some(kept) = calls.find(caller_key, &call.request_id).await? {
            return Ok(Answer { kept, stored: true, placed: None });
        }
    }
    let door = topology::WORKFLOW.door() == node;
    let decoded = if door {
        decode_at_intake(delivery, ctx.max_message_bytes)
    } else {
        decode_element(delivery, ctx.max_message_bytes).map(|element| (element, false))
    };
    let (mut element, plain) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => return Ok(failed(error.to_string(), false)),
    };
    if let Err(StageError::Permanent(reason)) = check_call_arrival(node, &element) {
        return Ok(failed(reason, false));
    }
    let directed = call.directed && ctx.trust.is_role(caller, Role::Coordinator);
    let mut placed = None;
    if door && element.state == OrderState::Placed {
        // The coordinator relays the placer it verified; anyone else is the placer.
        let placer = if directed { element.placed_by.clone() } else { caller.map(String::from) };
        // Where the outcome goes, too, came with the order to the coordinator's door.
        let answer_to = if directed { element.answer_to.clone() } else { None };
        element = OrderElement { answer_to, ..from_outside(element, placer) };
        if plain {
            placed = Some(placed_record(ctx, &element, delivery));
        }
    }
    let before = (element.seq, Some(element.state));
    let outcome = match service.serve(element).await {
        Ok(outcome) => outcome,
        Err(StageError::Permanent(reason)) => return Ok(failed(reason, false)),
        Err(StageError::Transient(error)) => return Ok(failed(format!("{error:#}"), true)),
    };
    let (element, mut events) = outcome_events(before, &outcome, ctx);
    let mode = if directed { "directed" } else { "service" };
    events.iter_mut().for_each(|event| event.mode = Some(mode.into()));
    let steps = outcome.steps.iter().map(|s| StepDone { state: s.state, detail: s.detail.clone() }).collect();
    let result = CallResult::done(&call.request_id, node.name(), masked(element), steps);
    let answered = Answered { result, events, delivered: false };
    let kept = if keep { calls.keep(caller_key, &call.request_id, answered).await? } else { answered };
    Ok(Answer { kept, stored: keep, placed })
}

/// The element as a result carries it: with its card number masked (the
/// caller has the number; results are kept, by this node and the tracker),
/// and a card on file's token too (the customer's secret). A processor's
/// token stays: it pays for this order only, and the caller goes on with it.
fn masked(mut element: OrderElement) -> OrderElement {
    let card = &mut element.order.payment.card_number;
    let processor_token = card.starts_with(shared::order::PROCESSOR_TOKEN_PREFIX);
    if !processor_token && card.chars().filter(char::is_ascii_digit).count() > 4 {
        *card = shared::order::mask_card(card);
    }
    element
}

/// A service's result as its receiver takes it (`what`: how it names it):
/// decoded, and sent by the user of the service it names; otherwise the
/// reason (to dead-letter it with).
pub fn receive_result(ctx: &NodeContext, delivery: &Delivery, what: &str) -> Result<CallResult, String> {
    let headers = delivery.properties.headers().as_ref();
    let result: CallResult =
        super::message::decode(&delivery.data, headers, ctx.max_message_bytes).map_err(|e| e.to_string())?;
    let sender = ctx.trust.sender(&delivery.properties);
    ctx.trust
        .check_result(what, &result.service, sender.as_deref())
        .map_err(|reason| format!("refused: {reason}"))?;
    Ok(result)
}

/// The message carrying a call's result to where the call asked.
pub fn result_message(call: &Call, result: &CallResult, caller: &str) -> Outgoing {
    let (exchange, routing_key) = match &call.reply_to {
        ReplyTo::Queue(queue) => ("", queue.clone()),
        ReplyTo::Callback(key) => (topology::RESULTS_EXCHANGE, topology::callback_routing_key(key)),
        ReplyTo::Poll => (topology::RESULTS_EXCHANGE, topology::poll_routing_key(&result.service)),
    };
    let mut properties = result_properties(&call.request_id, &call.correlation_id, caller);
    if let (ReplyTo::Poll, Some(key)) = (&call.reply_to, &call.poll_key) {
        // The caller's poll key: the tracker shows the result only to its token.
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(shared::poll::POLL_KEY_HEADER.into(), AMQPValue::LongString(key.as_str().into()));
        properties = properties.with_headers(headers);
    }
    Outgoing {
        exchange,
        routing_key,
        body: serde_json::to_vec(result).expect("a result always serializes"),
        properties,
    }
}

fn result_properties(request_id: &str, correlation_id: &str, caller: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(SCHEMA_HEADER.into(), AMQPValue::LongUInt(SCHEMA_VERSION));
    headers.insert(CALLER_HEADER.into(), AMQPValue::LongString(caller.into()));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(request_id.into())
        .with_correlation_id(correlation_id.into())
        .with_type(RESULT_TYPE.into())
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
        .with_headers(headers)
}

/// A request that is not a call the service `service` (a node, a domain
/// copy) can answer: the reason goes to its `reply_to` when it has one,
/// else it is dead-lettered.
pub async fn refuse(
    ctx: &NodeContext,
    publisher: &Publisher,
    delivery: &Delivery,
    service: &str,
    error: CallError,
) {
    tracing::warn!(service, reason = error.reason, "refused a malformed call");
    if let Some(queue) = &error.reply_to {
        let request_id =
            delivery.properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
        let result = CallResult::failed(&request_id, service, error.reason.clone(), false);
        let correlation = error.correlation_id.clone().unwrap_or_else(|| request_id.clone());
        let caller = ctx.trust.sender(&delivery.properties).unwrap_or_default();
        let reply = Outgoing {
            exchange: "",
            routing_key: queue.clone(),
            body: serde_json::to_vec(&result).expect("a result always serializes"),
            properties: result_properties(&request_id, &correlation, &caller),
        };
        match publisher.publish_all(&[reply]).await {
            Ok(()) | Err(PublishError::Unroutable(_)) => return ack(delivery).await,
            Err(_) => {}
        }
    }
    dead_letter(publisher, ctx, delivery, &format!("not a call {service} can answer: {}", error.reason)).await
}

/// Hands a call heard on the service queue to a task; an error when the
/// consumer failed or was cancelled (the session must be rebuilt).
pub fn dispatch_call<S: Service>(
    next: Option<lapin::Result<Delivery>>,
    ctx: &Arc<NodeContext>,
    service: &Arc<S>,
    publisher: &Publisher,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<()> {
    match next {
        Some(Ok(delivery)) => {
            let (ctx, service, publisher) = (ctx.clone(), service.clone(), publisher.clone());
            tasks.spawn(async move {
                if let Some((_, calls)) = &ctx.calls {
                    handle_call(&ctx, calls, &*service, &publisher, delivery).await
                }
            });
            Ok(())
        }
        Some(Err(error)) => Err(anyhow::Error::from(error).context("service consumer failed")),
        None => Err(anyhow::anyhow!("the broker cancelled the service consumer")),
    }
}
