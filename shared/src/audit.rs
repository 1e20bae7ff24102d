//! Audit events: one per state change of an order, published by the node that
//! made the change to the audit exchange and recorded by the tracker.

use crate::order::{OrderElement, OrderState, SCHEMA_VERSION};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for deterministic event ids (uuid v5).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_7761_7564_6974_0001);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub schema_version: u32,
    /// Derived from (order, seq, state): a node that redoes a step after a
    /// redelivery emits the same id (whatever changes it saw), and the tracker keeps one.
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub node: String,
    pub instance_id: String,
    pub from_state: Option<OrderState>,
    pub to_state: OrderState,
    pub terminal: bool,
    #[serde(with = "rfc3339")]
    pub at: DateTime<Utc>,
    pub detail: String,
    pub seq: u32,
    pub version: u32,
    /// The customer who placed the order: set on `placed` events only (the
    /// tracker records it on the order so that orders can be found by customer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// How many units the order is for: set on `placed` events only (the
    /// tracker keeps it to tell where an order waits, as routing does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<i64>,
    /// How the step was driven: `directed` (by the coordinator, through the
    /// node's service) or `service` (another caller of the service); absent
    /// for the autonomous workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// What the order copied from the customer domain: set on intake's
    /// `accepted` event of an order placed by reference (the customer
    /// primary follows it, to send the order later edits of that address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied: Option<crate::domain_edits::Copied>,
    /// Where the order's outcome goes: set on its terminal event when its
    /// placer named a place (`crate::answer`); the tracker sends it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_to: Option<crate::answer::AnswerTo>,
    /// The workflow the order follows and its version: set on intake's
    /// `accepted` event, where the order takes them (the tracker shows them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_version: Option<u32>,
    /// The trace the event's message carried (its `traceparent` header, not
    /// the body): filled in by the tracker.
    #[serde(skip)]
    pub trace_id: Option<String>,
}

/// Identifies one state change of one order.
#[derive(Clone, Copy, Debug)]
pub struct Transition {
    pub order_id: Uuid,
    pub seq: u32,
    pub version: u32,
    pub from_state: Option<OrderState>,
    pub to_state: OrderState,
}

impl AuditEvent {
    pub fn new(transition: Transition, node: &str, instance_id: &str, detail: String) -> AuditEvent {
        let Transition { order_id, seq, version, from_state, to_state } = transition;
        AuditEvent {
            schema_version: SCHEMA_VERSION,
            event_id: event_id(order_id, seq, to_state),
            order_id,
            node: node.to_string(),
            instance_id: instance_id.to_string(),
            from_state,
            to_state,
            // Standard's, until the element's facts say its definition.
            terminal: topology::WORKFLOW.is_terminal(to_state),
            at: Utc::now(),
            detail,
            seq,
            version,
            customer_id: None,
            units: None,
            mode: None,
            copied: None,
            answer_to: None,
            workflow: None,
            workflow_version: None,
            trace_id: None,
        }
    }

    /// The event for `element` having just moved to its current state.
    pub fn for_transition(
        element: &OrderElement,
        from_state: Option<OrderState>,
        node: &str,
        instance_id: &str,
        detail: String,
    ) -> AuditEvent {
        let transition = Transition {
            order_id: element.order_id,
            seq: element.seq,
            version: element.version,
            from_state,
            to_state: element.state,
        };
        let mut event = AuditEvent::new(transition, node, instance_id, detail);
        if element.state == OrderState::Placed && !element.order.customer_id.is_empty() {
            event.customer_id = Some(element.order.customer_id.chars().take(200).collect());
        }
        if element.state == OrderState::Placed {
            event.units = Some(element.total_units());
        }
        event.with_element_facts(element);
        event
    }

    /// What an event says of its element besides the step: the workflow it
    /// follows (every step: whether a state ends the order is its
    /// definition's), what an accepted order copied, and where an ended
    /// order's outcome goes.
    pub fn with_element_facts(&mut self, element: &OrderElement) {
        if self.to_state == crate::domain_edits::COPIES_SAID_AT {
            self.copied = crate::domain_edits::Copied::of(element);
        }
        self.workflow = Some(element.workflow.clone());
        self.workflow_version = Some(element.workflow_version);
        self.terminal = self.definition().is_terminal(self.to_state);
        if self.terminal {
            self.answer_to = element.answer_to.clone();
        }
    }

    /// The definition the event's order follows, as the event names it
    /// (`standard` v1 when it names none, or one this build does not know).
    pub fn definition(&self) -> &'static topology::workflow::Workflow {
        let (name, version) =
            (self.workflow.as_deref().unwrap_or("standard"), self.workflow_version.unwrap_or(1));
        topology::workflow::workflow(name, version).unwrap_or(&topology::WORKFLOW)
    }
}

pub fn event_id(order_id: Uuid, seq: u32, state: OrderState) -> Uuid {
    let name = format!("{order_id}/{seq}/{state}");
    Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
}

/// RFC 3339 UTC timestamps with microseconds, e.g. `2026-11-27T15:04:05.123456Z`.
pub mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Order;

    #[test]
    fn same_step_gives_same_event_id() {
        let element = OrderElement::placed(Order::default());
        let a = AuditEvent::for_transition(&element, None, "cli", "a", String::new());
        let b = AuditEvent::for_transition(&element, None, "cli", "b", String::new());
        assert_eq!(a.event_id, b.event_id);
        let mut next = element.clone();
        next.seq += 1;
        next.state = OrderState::Accepted;
        let c = AuditEvent::for_transition(&next, Some(OrderState::Placed), "intake", "a", String::new());
        assert_ne!(a.event_id, c.event_id);
        // Only the placed event names the customer; events without one decode as before.
        let mut placed = OrderElement::placed(Order { customer_id: "cust-7".into(), ..Order::default() });
        let event = AuditEvent::for_transition(&placed, None, "publisher", "a", String::new());
        assert_eq!(event.customer_id.as_deref(), Some("cust-7"));
        placed.state = OrderState::Accepted;
        let later = AuditEvent::for_transition(&placed, None, "intake", "a", String::new());
        let json = serde_json::to_value(&later).unwrap();
        assert!(json.get("customer_id").is_none());
        let decoded = serde_json::from_value::<AuditEvent>(json).unwrap();
        assert_eq!((decoded.event_id, decoded.customer_id), (later.event_id, None));
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let element = OrderElement::placed(Order::default());
        let event = AuditEvent::for_transition(&element, None, "cli", "a", String::new());
        let json = serde_json::to_value(&event).unwrap();
        let at = json["at"].as_str().unwrap();
        assert!(at.ends_with('Z'), "{at}");
        assert!(DateTime::parse_from_rfc3339(at).is_ok());
    }
}
