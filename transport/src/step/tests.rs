//! The step driven one element at a time, without a broker: a SQLite change
//! book in a scratch directory and a fake payment stage.

use super::*;
use shared::change::ChangeRequest;
use shared::change_book::{ChangeBook, Received};
use shared::order::Order;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use topology::Node;
use uuid::Uuid;

/// A run directory of its own, removed at the end of the test.
type Scratch = shared::settings::ScratchRun;

enum Reply {
    Charge,
    Decline,
    Permanent,
    Transient,
}

/// A payment stage that answers as told and counts its calls. With
/// `meanwhile`, another instance of the node hears that change while this
/// one is handling the element.
struct FakePayment {
    reply: Reply,
    calls: AtomicUsize,
    meanwhile: Option<(ChangeBook, ChangeRequest)>,
}

impl FakePayment {
    fn new(reply: Reply) -> FakePayment {
        FakePayment { reply, calls: AtomicUsize::new(0), meanwhile: None }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Stage for FakePayment {
    const NODE: Node = Node::Payment;

    async fn handle(&self, element: OrderElement) -> Result<Outcome, StageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some((book, request)) = &self.meanwhile {
            book.receive(request).await?;
        }
        match self.reply {
            Reply::Charge => Ok(Outcome::new(element).step(OrderState::Charged, "charged")),
            Reply::Decline => Ok(Outcome::new(element).step(OrderState::PaymentDeclined, "declined")),
            Reply::Permanent => Err(StageError::Permanent("card expired".into())),
            Reply::Transient => Err(StageError::Transient(anyhow::anyhow!("processor unreachable"))),
        }
    }
}

async fn payment_node(scratch: &Scratch) -> NodeContext {
    NodeContext::for_node(&scratch.settings(), Node::Payment, 1).await.unwrap()
}

fn accepted_order() -> OrderElement {
    let order = Order { shipping_method: "standard".into(), ..Order::default() };
    OrderElement { state: OrderState::Accepted, seq: 1, ..OrderElement::placed(order) }
}

fn routing_keys(messages: &[Outgoing]) -> Vec<&str> {
    messages.iter().map(|m| m.routing_key.as_str()).collect()
}

fn forwarded(handled: &Handled) -> OrderElement {
    let message = handled.messages.iter().find(|m| m.routing_key.starts_with("order.")).expect("a forward");
    serde_json::from_slice(&message.body).unwrap()
}

fn handled(outcome: StepOutcome) -> Handled {
    match outcome {
        StepOutcome::Handled(handled) => *handled,
        StepOutcome::Failed(settle) => panic!("expected the element handled, got {settle:?}"),
    }
}

fn failed(outcome: StepOutcome) -> Settle {
    match outcome {
        StepOutcome::Failed(settle) => settle,
        StepOutcome::Handled(handled) => panic!("expected a failure, got {:?}", handled.element.state),
    }
}

/// A request as the change consumer hands it on: with its verified
/// requester (the stack's one user, `guest`, who may change any order).
fn requested(order_id: Uuid, change: Change) -> ChangeRequest {
    ChangeRequest { requester: Some("guest".into()), ..ChangeRequest::new(order_id, change, None) }
}

fn method(shipping_method: &str, order_id: Uuid) -> ChangeRequest {
    requested(order_id, Change::ShippingMethod { shipping_method: shipping_method.into() })
}

#[tokio::test]
async fn a_handled_element_is_recorded_then_forwarded() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let stage = FakePayment::new(Reply::Charge);
    let handled = handled(step(&ctx, &stage, accepted_order(), 1).await);
    assert_eq!(routing_keys(&handled.messages), ["audit.payment.charged", "order.inventory"]);
    assert_eq!((handled.element.state, handled.element.seq), (OrderState::Charged, 2));
    assert_eq!(forwarded(&handled), handled.element);
    assert!(handled.changes.applied.is_empty() && handled.changes.rejected.is_empty());
}

#[tokio::test]
async fn pending_changes_are_decided_before_the_stage_and_the_same_on_redelivery() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let element = accepted_order();
    let book = ctx.book.as_ref().unwrap();
    let express = method("express", element.order_id);
    let teleport = method("teleport", element.order_id);
    for request in [&express, &teleport] {
        assert_eq!(book.receive(request).await.unwrap(), Received::Pending);
    }
    let stage = FakePayment::new(Reply::Charge);

    let first = handled(step(&ctx, &stage, element.clone(), 1).await);
    let mut keys = routing_keys(&first.messages)[..2].to_vec();
    keys.sort();
    assert_eq!(keys, ["audit.payment.change_applied", "audit.payment.change_rejected"]);
    assert_eq!(routing_keys(&first.messages)[2..], ["audit.payment.charged", "order.inventory"]);
    let sent = forwarded(&first);
    assert_eq!((sent.order.shipping_method.as_str(), sent.version), ("express", 1));
    assert_eq!(sent.resolved_changes.len(), 2);
    let applied = &first.changes.applied;
    assert_eq!((applied.len(), applied[0].change_id, applied[0].version), (1, express.change_id, 1));
    let rejected = &first.changes.rejected;
    assert_eq!((rejected.len(), rejected[0].change_id), (1, teleport.change_id));
    assert!(rejected[0].reason.contains("is not one of"), "{}", rejected[0].reason);

    // A redelivered element (its publish failed) meets the stored decisions.
    let again = handled(step(&ctx, &stage, element, 2).await);
    assert_eq!(forwarded(&again), sent);
    assert_eq!(again.changes.applied, first.changes.applied);

    let counted = || (shared::events::ELEMENTS_HANDLED.get(), shared::events::CHANGES_APPLIED.get());
    let before = counted();
    first.emit(ctx.node);
    let after = counted();
    assert!(after.0 > before.0 && after.1 > before.1, "{before:?} -> {after:?}");
}

/// The failure CI met: payment charged an order and sent it on, was killed
/// before acknowledging it, and a cancel came meanwhile. The redelivery
/// must send the same charged element again (the cancel waits for the next
/// node, which voids the charge), not end the order a second way.
#[tokio::test]
async fn a_change_heard_after_the_first_delivery_waits_for_the_next_node() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let element = accepted_order();
    let book = ctx.book.as_ref().unwrap();
    let stage = FakePayment::new(Reply::Charge);
    let first = handled(step(&ctx, &stage, element.clone(), 1).await);
    assert_eq!(first.element.state, OrderState::Charged);

    let cancel = requested(element.order_id, Change::Cancel);
    assert_eq!(book.receive(&cancel).await.unwrap(), Received::Pending);
    let again = handled(step(&ctx, &stage, element.clone(), 2).await);
    assert_eq!(routing_keys(&again.messages), routing_keys(&first.messages), "the same step again");
    assert_eq!(forwarded(&again), forwarded(&first));
    assert!(again.changes.applied.is_empty(), "{:?}", again.changes.applied);

    // A first delivery of another order decides it as before.
    let other = accepted_order();
    book.receive(&requested(other.order_id, Change::Cancel)).await.unwrap();
    let cancelled = handled(step(&ctx, &stage, other, 1).await);
    assert_eq!(cancelled.element.state, OrderState::Cancelled);
}

#[tokio::test]
async fn a_cancel_takes_the_cancel_path_and_closes_the_order_here() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let element = accepted_order();
    let book = ctx.book.as_ref().unwrap();
    let cancel = requested(element.order_id, Change::Cancel);
    book.receive(&cancel).await.unwrap();
    let stage = FakePayment::new(Reply::Charge);

    let handled = handled(step(&ctx, &stage, element.clone(), 1).await);
    assert_eq!(stage.calls(), 0, "the stage does not run for a cancelled order");
    assert_eq!(handled.element.state, OrderState::Cancelled);
    assert_eq!(routing_keys(&handled.messages), ["audit.payment.change_applied", "audit.payment.cancelled"]);

    // The order ended here: a change heard later is rejected at once.
    let later = method("express", element.order_id);
    match book.receive(&later).await.unwrap() {
        Received::Reject(reason) => assert_eq!(reason, "the order is already cancelled"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn changes_heard_while_the_order_ends_here_are_rejected_with_it() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let element = accepted_order();
    let other_instance = ChangeBook::open(&scratch.settings(), "payment").await.unwrap();
    let late = method("express", element.order_id);
    let stage =
        FakePayment { meanwhile: Some((other_instance, late.clone())), ..FakePayment::new(Reply::Decline) };

    let handled = handled(step(&ctx, &stage, element, 1).await);
    assert_eq!(handled.element.state, OrderState::PaymentDeclined);
    assert_eq!(
        routing_keys(&handled.messages),
        ["audit.payment.payment_declined", "audit.payment.change_rejected"]
    );
    let rejected = &handled.changes.rejected;
    assert_eq!((rejected.len(), rejected[0].change_id), (1, late.change_id));
    assert_eq!(rejected[0].reason, "the order is already payment_declined");
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_with_its_reason() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let stage = FakePayment::new(Reply::Permanent);
    match failed(step(&ctx, &stage, accepted_order(), 1).await) {
        Settle::DeadLetter { reason } => assert!(reason.contains("card expired"), "{reason}"),
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_growing_delays_then_given_up() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let stage = FakePayment::new(Reply::Transient);
    let mut delays = Vec::new();
    for attempts in 1..ctx.max_attempts as i64 {
        match failed(step(&ctx, &stage, accepted_order(), attempts).await) {
            Settle::Retry { delay, .. } => delays.push(delay),
            other => panic!("attempt {attempts}: expected a retry, got {other:?}"),
        }
    }
    assert_eq!(delays, [Duration::from_millis(200), Duration::from_millis(400)]);
    match failed(step(&ctx, &stage, accepted_order(), ctx.max_attempts.into()).await) {
        Settle::GiveUp { attempts, error } => {
            assert_eq!(attempts, 3);
            assert!(format!("{error:#}").contains("processor unreachable"));
        }
        other => panic!("expected to give up, got {other:?}"),
    }
}

#[tokio::test]
async fn an_element_that_may_not_arrive_here_is_refused_before_its_changes_are_decided() {
    let scratch = Scratch::new("step");
    let ctx = payment_node(&scratch).await;
    let stray = OrderElement { state: OrderState::Placed, ..accepted_order() };
    let cancel = requested(stray.order_id, Change::Cancel);
    ctx.book.as_ref().unwrap().receive(&cancel).await.unwrap();
    let stage = FakePayment::new(Reply::Charge);

    match failed(step(&ctx, &stage, stray.clone(), 1).await) {
        Settle::DeadLetter { reason } => assert!(reason.contains("cannot handle"), "{reason}"),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert_eq!(stage.calls(), 0);
    // The cancel is still pending for the element when it arrives properly.
    let handled = handled(step(&ctx, &stage, OrderElement { state: OrderState::Accepted, ..stray }, 1).await);
    assert_eq!(handled.changes.applied[0].change_id, cancel.change_id);
}
