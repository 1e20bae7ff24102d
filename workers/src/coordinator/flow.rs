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
use shared::transport::message::SCHEMA_HEADER;
use shared::transport::Outgoing;
use std::time::Duration;
use topology::Node;
use uuid::Uuid;

/// Namespace of the coordinator's request ids.
const REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_636f_6f72_6431);

/// The request id of the call that takes `element` (as it is now) to
/// `service`: the same for every resend of that call, different once the
/// element moved on (a step, an applied change), so a service's kept
/// answer is only ever the answer to this very element.
pub fn request_id(element: &OrderElement, service: Node) -> String {
    let key = format!("{}/{}/{}/{}", element.order_id, element.seq, element.version, service.name());
    Uuid::new_v5(&REQUEST_NAMESPACE, key.as_bytes()).to_string()
}

/// The next service to call for `element`, from the workflow definition;
/// `None` when its travel ended.
pub fn next_service(element: &OrderElement) -> Option<Node> {
    next_node(element)
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
    AfterFailure::Retry(shared::transport::settle::retry_delay(attempts - 1))
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

    #[test]
    fn a_request_id_names_the_element_as_it_is() {
        let mut e = element(OrderState::Accepted);
        let first = request_id(&e, Node::Payment);
        assert_eq!(first, request_id(&e, Node::Payment), "resends keep their id");
        e.version += 1;
        assert_ne!(first, request_id(&e, Node::Payment), "a changed element is a new call");
        e.seq += 1;
        assert_ne!(request_id(&e, Node::Payment), request_id(&e, Node::Inventory));
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
