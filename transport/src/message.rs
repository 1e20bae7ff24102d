//! Encoding of the messages orderflow sends (workflow elements, audit events,
//! dead letters) and decoding of what it receives, with clear reasons for
//! anything that can never be decoded.

use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use serde::de::DeserializeOwned;
use shared::audit::AuditEvent;
use shared::change::{ChangeEvent, ChangeRequest};
use shared::order::{OrderElement, SCHEMA_VERSION};
use shared::trace::TraceContext;
use topology::{Node, AUDIT_EXCHANGE, WORKFLOW_EXCHANGE};
use uuid::Uuid;

/// Header carrying the schema version of the body.
pub const SCHEMA_HEADER: &str = "schema_version";
/// Headers a dead letter carries: why, where, and where it was going.
pub const REASON_HEADER: &str = "x-orderflow-reason";
pub const NODE_HEADER: &str = "x-orderflow-node";
pub const ROUTING_KEY_HEADER: &str = "x-orderflow-routing-key";
pub const EXCHANGE_HEADER: &str = "x-orderflow-exchange";
pub const DEAD_LETTERED_AT_HEADER: &str = "x-orderflow-dead-lettered-at";
/// The queue the node received the dead-lettered message from: where a
/// replay sends it back (believed only from the node's own user).
pub const QUEUE_HEADER: &str = "x-orderflow-queue";
/// How many attempts at a message its node made before sending it round its
/// retry queue (a republished message starts a new `x-delivery-count`).
pub const ATTEMPT_HEADER: &str = "x-orderflow-attempt";
/// Set on a dead letter whose body had card numbers masked: it can no
/// longer be charged, so a replay to intake or payment would fail again.
pub const MASKED_HEADER: &str = "x-orderflow-card-masked";
/// How many times a message was replayed from the dead-letter queue.
pub const REPLAYS_HEADER: &str = "x-orderflow-replays";

/// A message ready to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub exchange: &'static str,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

fn properties(message_id: Uuid, order_id: Uuid, kind: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(SCHEMA_HEADER.into(), AMQPValue::LongUInt(SCHEMA_VERSION));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id.to_string().into())
        .with_correlation_id(order_id.to_string().into())
        .with_type(kind.into())
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
        .with_headers(headers)
}

/// The element forwarded to `node`. Its message id is derived from the step
/// it records, so a redone step sends a message with the same id.
pub fn element_message(element: &OrderElement, to: Node) -> Outgoing {
    let id = shared::audit::event_id(element.order_id, element.seq, element.state);
    Outgoing {
        exchange: WORKFLOW_EXCHANGE,
        routing_key: to.routing_key(),
        body: serde_json::to_vec(element).expect("an element always serializes"),
        properties: properties(id, element.order_id, "order"),
    }
}

pub fn audit_message(event: &AuditEvent) -> Outgoing {
    Outgoing {
        exchange: AUDIT_EXCHANGE,
        routing_key: topology::audit_routing_key(&event.node, event.to_state.as_str()),
        body: serde_json::to_vec(event).expect("an event always serializes"),
        properties: properties(event.event_id, event.order_id, "audit"),
    }
}

/// A change record for the tracker, on the audit exchange.
pub fn change_event_message(event: &ChangeEvent) -> Outgoing {
    Outgoing {
        exchange: AUDIT_EXCHANGE,
        routing_key: topology::audit_routing_key(&event.node, event.kind.as_str()),
        body: serde_json::to_vec(event).expect("an event always serializes"),
        properties: properties(event.event_id, event.order_id, CHANGE_EVENT_TYPE),
    }
}

/// A change request, fanned out to every node.
pub fn change_request_message(request: &ChangeRequest) -> Outgoing {
    Outgoing {
        exchange: topology::CHANGES_EXCHANGE,
        routing_key: String::new(),
        body: serde_json::to_vec(request).expect("a request always serializes"),
        properties: properties(request.change_id, request.order_id, "change_request"),
    }
}

/// An incident at `incident.node`, for the tracker, on the audit exchange.
pub fn incident_message(incident: &shared::incident::Incident) -> Outgoing {
    Outgoing {
        exchange: AUDIT_EXCHANGE,
        routing_key: topology::audit_routing_key(&incident.node, shared::incident::INCIDENT_TYPE),
        body: serde_json::to_vec(incident).expect("an incident always serializes"),
        properties: properties(
            incident.incident_id,
            incident.order_id.unwrap_or_default(),
            shared::incident::INCIDENT_TYPE,
        ),
    }
}

/// A shipped order's capture, to the settlement aggregation queue. Its
/// message id is the order's: a capture sent again is the same capture.
pub fn capture_message(capture: &shared::settlement::Capture) -> Outgoing {
    use shared::settlement::CAPTURE_TYPE;
    Outgoing {
        exchange: topology::SETTLEMENT_EXCHANGE,
        routing_key: topology::domains::CAPTURE_ROUTING_KEY.to_string(),
        body: serde_json::to_vec(capture).expect("a capture always serializes"),
        properties: properties(capture.order_id, capture.order_id, CAPTURE_TYPE),
    }
}

/// A settled batch, for the tracker's report, on the audit exchange
/// (`audit.<node>.settlement`, from the settling node's user).
pub fn settled_batch_message(node: &str, batch: &shared::settlement::SettledBatch) -> Outgoing {
    use shared::settlement::SETTLEMENT_TYPE;
    Outgoing {
        exchange: AUDIT_EXCHANGE,
        routing_key: topology::audit_routing_key(node, SETTLEMENT_TYPE),
        body: serde_json::to_vec(batch).expect("a batch always serializes"),
        properties: properties(batch.batch_id, Uuid::nil(), SETTLEMENT_TYPE),
    }
}

/// The `type` property of change records on the audit exchange.
pub const CHANGE_EVENT_TYPE: &str = "change_event";

/// Stamps what a process sends on behalf of `parent` with one span of its
/// own: the exported span it handles the message in, when spans are
/// exported (`otlp`), else a new span id.
pub fn stamp_trace(messages: &mut [Outgoing], parent: &TraceContext) {
    let span = match shared::otlp::current_span_id() {
        Some(span_id) => TraceContext { span_id, ..*parent },
        None => parent.child(),
    };
    for message in messages {
        message.properties = shared::trace::with_context(std::mem::take(&mut message.properties), &span);
    }
}

/// Why a received message can never be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("body of {size} bytes is larger than the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unknown schema version {0} (this node reads version {SCHEMA_VERSION})")]
    UnknownSchema(String),
    #[error("body is not UTF-8: {0}")]
    NotUtf8(String),
    #[error("body is not a valid message: {0}")]
    Invalid(String),
}

pub use shared::headers::{header_text, value_text};

/// Reads the schema version from the headers (absent means the current one).
fn header_schema(headers: Option<&FieldTable>) -> Option<String> {
    let value = headers?.inner().get(&ShortString::from(SCHEMA_HEADER))?;
    Some(match value {
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongString(v) => v.to_string(),
        other => format!("{other:?}"),
    })
}

/// Decodes a body into `T`, checking size, schema version and encoding.
pub fn decode<T: DeserializeOwned>(
    body: &[u8],
    headers: Option<&FieldTable>,
    max_bytes: usize,
) -> Result<T, DecodeError> {
    if body.len() > max_bytes {
        return Err(DecodeError::TooLarge { size: body.len(), max: max_bytes });
    }
    if let Some(version) = header_schema(headers) {
        if version != SCHEMA_VERSION.to_string() {
            return Err(DecodeError::UnknownSchema(version));
        }
    }
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if let Some(version) = value.get("schema_version") {
        if version != &serde_json::json!(SCHEMA_VERSION) {
            return Err(DecodeError::UnknownSchema(version.to_string()));
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// The most steps an element may have gone through: a real order takes a
/// dozen; a larger `seq` is forged or corrupt (and could wrap the counter).
pub const MAX_SEQ: u32 = 10_000;

pub fn decode_element(delivery: &Delivery, max_bytes: usize) -> Result<OrderElement, DecodeError> {
    let element: OrderElement = decode(&delivery.data, delivery.properties.headers().as_ref(), max_bytes)?;
    check_seq(&element)?;
    Ok(element)
}

pub(crate) fn check_seq(element: &OrderElement) -> Result<(), DecodeError> {
    if element.seq > MAX_SEQ {
        return Err(DecodeError::Invalid(format!(
            "seq {} is beyond the {MAX_SEQ} steps an order can take",
            element.seq
        )));
    }
    Ok(())
}

pub fn decode_audit(delivery: &Delivery, max_bytes: usize) -> Result<AuditEvent, DecodeError> {
    decode(&delivery.data, delivery.properties.headers().as_ref(), max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_near_the_counters_limit_is_refused() {
        let mut element = OrderElement::placed(shared::order::Order::default());
        element.seq = u32::MAX;
        assert!(check_seq(&element).unwrap_err().to_string().contains("beyond the 10000 steps"));
        element.seq = 12;
        assert!(check_seq(&element).is_ok());
    }
    use shared::order::Order;

    #[test]
    fn element_round_trips() {
        let element = OrderElement::placed(Order::default());
        let message = element_message(&element, Node::Intake);
        let decoded: OrderElement =
            decode(&message.body, message.properties.headers().as_ref(), 1 << 16).unwrap();
        assert_eq!(decoded, element);
        assert_eq!(message.routing_key, "order.intake");
    }

    #[test]
    fn bad_bodies_have_reasons() {
        let too_big = vec![b' '; 100];
        assert_eq!(
            decode::<OrderElement>(&too_big, None, 10),
            Err(DecodeError::TooLarge { size: 100, max: 10 })
        );
        assert!(matches!(decode::<OrderElement>(&[0xff, 0xfe], None, 100), Err(DecodeError::NotUtf8(_))));
        assert!(matches!(decode::<OrderElement>(b"{not json", None, 100), Err(DecodeError::Invalid(_))));
        let mut element = serde_json::to_value(OrderElement::placed(Order::default())).unwrap();
        element["schema_version"] = serde_json::json!(7);
        let body = serde_json::to_vec(&element).unwrap();
        assert!(matches!(decode::<OrderElement>(&body, None, 1 << 16), Err(DecodeError::UnknownSchema(_))));
    }
}
