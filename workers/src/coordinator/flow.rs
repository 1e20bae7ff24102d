//! The coordinator's decisions, as plain functions: the next call of an
//! order (from the workflow definition, the same table the autonomous
//! runner forwards by), each call's request id, and what a failed call
//! leads to. No broker, no store: unit-tested as they are.

use lapin::{
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use shared::order::{OrderElement, SCHEMA_VERSION};
use shared::routing::next_node;
use shared::service::{CallResult, MODE_HEADER};
use std::time::Duration;
use topology::Node;
use transport::message::SCHEMA_HEADER;
use transport::Outgoing;
use uuid::Uuid;

/// A new call's request id: 122 random bits, so that no one who knows the
/// order can predict it and answer in the service's place. It is kept in
/// the coordinator's record before the call is sent, and every resend of
/// the call uses the kept id (a service's kept answer is the answer to this
/// very call); a step or an applied change makes a new call with a new id.
pub fn request_id() -> String {
    Uuid::new_v4().to_string()
}

/// Why an answer to a call of the coordinator is not taken: it must come
/// for the service that was called (whose user the broker vouches for, see
/// `receive_result`), carry the order that was sent, and in a state that
/// service can produce from the state it was sent. `None`: it may be taken.
pub fn refuse_reply(called: &str, sent: &OrderElement, result: &CallResult) -> Option<String> {
    if result.service != called {
        return Some(format!(
            "an answer for {} to a call of {called}",
            shared::text::escaped(&result.service)
        ));
    }
    let Some(element) = &result.element else { return None };
    let node = Node::from_name(called)?;
    if element.order_id != sent.order_id {
        return Some(format!(
            "{called} answered for order {} to a call for {}",
            element.order_id, sent.order_id
        ));
    }
    // By the order's own definition (its version's routes), as the nodes check it.
    let definition = shared::routing::definition(sent).unwrap_or(&topology::WORKFLOW);
    let produced = definition.produces(node).contains(&element.state);
    let takes = definition.accepts_state(node, sent.state) || definition.resumes(node, sent.state);
    if !produced || !takes {
        return Some(format!("{called} cannot take an order from {} to {}", sent.state, element.state));
    }
    None
}

/// The next service to call for `element`, from the workflow definition;
/// `None` when its travel ended.
pub fn next_service(element: &OrderElement) -> Option<Node> {
    next_node(element)
}

/// The node an order waits at, when it waits (a waiting state of the
/// definition: declined at payment), and whether it still waits: `false`
/// once a change brought what it waits for (a card change: the processor's
/// token in its card field, where a decline leaves the masked number).
pub fn kept_waiting(element: &OrderElement) -> Option<(Node, bool)> {
    let definition = shared::routing::definition(element).unwrap_or(&topology::WORKFLOW);
    if definition.kind(element.state) != Some(topology::workflow::StateKind::Waiting) {
        return None;
    }
    let node = *definition.producers(element.state).first()?;
    let new_card = element.order.payment.card_number.starts_with(shared::order::PROCESSOR_TOKEN_PREFIX);
    Some((node, !new_card))
}

/// The call of `service` for `element`, answered to the coordinator's replies queue.
pub fn call_message(element: &OrderElement, service: Node, request_id: &str) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(SCHEMA_HEADER.into(), AMQPValue::LongUInt(SCHEMA_VERSION));
    headers.insert(MODE_HEADER.into(), AMQPValue::LongString("directed".into()));
    Outgoing {
        exchange: topology::SERVICES_EXCHANGE,
        routing_key: service.service_routing_key(),
        body: serde_json::to_vec(element).expect("an element always serializes"),
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(request_id.into())
            .with_correlation_id(element.order_id.to_string().into())
            .with_reply_to(topology::COORDINATOR_REPLIES_QUEUE.into())
            .with_type("service_call".into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers),
    }
}

/// How long to wait for the answer to a call sent `sent` times: the
/// timeout, doubled on each resend, at most a minute (a service that is down
/// or far behind is not flooded with copies).
pub fn answer_wait(timeout: Duration, sent: i64) -> Duration {
    let doublings = u32::try_from(sent.clamp(1, 8) - 1).unwrap_or(0);
    (timeout * 2u32.pow(doublings)).min(Duration::from_secs(60)).max(timeout)
}

/// What a failed call leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Call again (same request id) after this delay.
    Retry(Duration),
    /// Give the order up: dead-letter it with this reason.
    GiveUp(String),
}

/// A transient failure is retried with growing delays (200 ms doubling, at
/// most 10 s) up to `max_attempts`; a permanent one gives the order up.
pub fn after_failure(result: &CallResult, attempts: i64, max_attempts: u32) -> AfterFailure {
    let error = result.error.clone().unwrap_or_else(|| "no reason given".into());
    if !result.retryable {
        return AfterFailure::GiveUp(format!("{} refused the call: {error}", result.service));
    }
    if attempts >= i64::from(max_attempts) {
        return AfterFailure::GiveUp(format!(
            "{} failed {attempts} times, the last time with: {error}",
            result.service
        ));
    }
    AfterFailure::Retry(transport::settle::retry_delay(attempts - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::order::{Order, OrderState};

    fn element(state: OrderState) -> OrderElement {
        OrderElement { state, ..OrderElement::placed(Order::default()) }
    }

    #[test]
    fn the_next_call_follows_the_workflow_definition() {
        assert_eq!(next_service(&element(OrderState::Placed)), Some(Node::Intake));
        assert_eq!(next_service(&element(OrderState::Accepted)), Some(Node::Payment));
        assert_eq!(next_service(&element(OrderState::StockShort)), Some(Node::Exceptions));
        assert_eq!(next_service(&element(OrderState::Shipped)), None);
        assert_eq!(next_service(&element(OrderState::PaymentDeclined)), None);
    }

    /// A directed order declined at payment waits there (its call held)
    /// until a card change brings a processor's token; payment's answer to
    /// the call that brings it back is taken.
    #[test]
    fn a_declined_order_waits_at_payment_until_a_new_card() {
        let mut declined = element(OrderState::AwaitingPayment);
        declined.order.payment.card_number = "************0002".into();
        assert_eq!(next_service(&declined), None, "no route takes a waiting state");
        assert_eq!(kept_waiting(&declined), Some((Node::Payment, true)));
        declined.order.payment.card_number = format!("ptok_{}", Uuid::new_v4().simple());
        assert_eq!(kept_waiting(&declined), Some((Node::Payment, false)));
        assert_eq!(kept_waiting(&element(OrderState::Accepted)), None);
        let charged = CallResult {
            element: Some(OrderElement { state: OrderState::Charged, ..declined.clone() }),
            ..CallResult::done("r", "payment", declined.clone(), Vec::new())
        };
        assert_eq!(refuse_reply("payment", &declined, &charged), None);
        assert!(refuse_reply("inventory", &declined, &charged).is_some());
    }

    #[test]
    fn request_ids_cannot_be_predicted() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn an_answer_is_taken_only_for_the_call_it_answers() {
        let sent = element(OrderState::Accepted);
        let answered = |service: &str, state: OrderState| CallResult {
            element: Some(OrderElement { state, ..sent.clone() }),
            ..CallResult::done("r", service, sent.clone(), Vec::new())
        };
        assert_eq!(refuse_reply("payment", &sent, &answered("payment", OrderState::Charged)), None);
        assert_eq!(refuse_reply("payment", &sent, &answered("payment", OrderState::PaymentDeclined)), None);
        let forged = refuse_reply("payment", &sent, &answered("catalog", OrderState::Charged)).unwrap();
        assert!(forged.contains("an answer for catalog to a call of payment"), "{forged}");
        let skipped = refuse_reply("payment", &sent, &answered("payment", OrderState::Shipped)).unwrap();
        assert!(skipped.contains("cannot take an order from accepted to shipped"), "{skipped}");
        let other = CallResult {
            element: Some(OrderElement { state: OrderState::Charged, ..element(OrderState::Accepted) }),
            ..answered("payment", OrderState::Charged)
        };
        assert!(refuse_reply("payment", &sent, &other).unwrap().contains("answered for order"));
        let wrong_start = element(OrderState::Reserved);
        assert!(refuse_reply("payment", &wrong_start, &answered("payment", OrderState::Charged)).is_some());
    }

    #[test]
    fn an_answer_is_checked_against_the_orders_own_version() {
        let on = |version: u32| OrderElement { workflow_version: version, ..element(OrderState::Accepted) };
        let answered = |sent: &OrderElement, state: OrderState| CallResult {
            element: Some(OrderElement { state, ..sent.clone() }),
            ..CallResult::done("r", "fraud-check", sent.clone(), Vec::new())
        };
        let v2 = on(2);
        assert_eq!(refuse_reply("fraud-check", &v2, &answered(&v2, OrderState::Screened)), None);
        assert_eq!(next_service(&v2), Some(Node::FraudCheck));
        let v1 = on(1);
        let refused = refuse_reply("fraud-check", &v1, &answered(&v1, OrderState::Screened)).unwrap();
        assert!(refused.contains("cannot take an order from accepted to screened"), "{refused}");
    }

    #[test]
    fn failures_are_retried_with_growing_delays_then_given_up() {
        let transient = CallResult::failed("r", "payment", "database locked", true);
        assert_eq!(after_failure(&transient, 1, 5), AfterFailure::Retry(Duration::from_millis(200)));
        assert_eq!(after_failure(&transient, 3, 5), AfterFailure::Retry(Duration::from_millis(800)));
        assert!(matches!(after_failure(&transient, 5, 5), AfterFailure::GiveUp(r) if r.contains("5 times")));
        let permanent = CallResult::failed("r", "payment", "wrong state", false);
        assert!(
            matches!(after_failure(&permanent, 1, 5), AfterFailure::GiveUp(r) if r.contains("wrong state"))
        );
    }

    #[test]
    fn an_unanswered_call_waits_longer_each_time() {
        let timeout = Duration::from_secs(5);
        assert_eq!(answer_wait(timeout, 1), timeout);
        assert_eq!(answer_wait(timeout, 2), Duration::from_secs(10));
        assert_eq!(answer_wait(timeout, 50), Duration::from_secs(60));
    }
}
