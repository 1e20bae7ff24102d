//! Trace context across hops: a W3C `traceparent` header
//! (`00-<trace id>-<span id>-<flags>`) on every message of an order: set
//! when it is published, read by each node when it takes the message,
//! continued (same trace id, the node's own span id) on everything the node
//! sends for it: audit events, the forwarded element, service calls and
//! results, change records. A node handles each delivery inside a span
//! whose fields, the trace id and the order id, are on every log line it
//! writes meanwhile; the tracker records each event's trace id.
//!
//! An order's trace id is, unless a client sent a `traceparent` of its own,
//! its order id's 128 bits: the same on every hop and every redelivery,
//! without any store, and an order's id finds its trace.

use lapin::{
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use uuid::Uuid;

/// The W3C trace-context header.
pub const HEADER: &str = "traceparent";

/// One span's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// W3C trace flags (1: sampled).
    pub flags: u8,
}

fn span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

impl TraceContext {
    /// The trace of an order: its id's bits as the trace id (a new random
    /// one for the nil id), a new span.
    pub fn of_order(order_id: Uuid) -> TraceContext {
        let trace_id = match order_id.as_u128() {
            0 => rand::random::<u128>() | 1,
            id => id,
        };
        TraceContext { trace_id, span_id: span_id(), flags: 1 }
    }

    /// A span of this process in the same trace, `self` its parent.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: span_id(), ..*self }
    }

    /// Reads a `traceparent` value; `None` unless it is well formed (version
    /// 00 exactly four fields; a later version at least four), with ids that are not all zero.
    pub fn parse(text: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = text.trim().split('-').collect();
        fn hex(s: &str, len: usize) -> Option<&str> {
            (s.len() == len && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))).then_some(s)
        }
        let version = hex(parts.first()?, 2)?;
        if version == "ff" || parts.len() < 4 || (version == "00" && parts.len() != 4) {
            return None;
        }
        let trace_id = u128::from_str_radix(hex(parts[1], 32)?, 16).ok().filter(|id| *id != 0)?;
        let span_id = u64::from_str_radix(hex(parts[2], 16)?, 16).ok().filter(|id| *id != 0)?;
        let flags = u8::from_str_radix(hex(parts[3], 2)?, 16).ok()?;
        Some(TraceContext { trace_id, span_id, flags })
    }

    /// The `traceparent` value.
    pub fn header(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The `traceparent` of a message's headers, if it has a well-formed one.
pub fn from_headers(headers: Option<&FieldTable>) -> Option<TraceContext> {
    TraceContext::parse(&crate::headers::header_text(headers, HEADER)?)
}

/// The order a message is about: its `correlation_id`, which every
/// orderflow message of an order carries.
pub fn order_of(properties: &BasicProperties) -> Option<Uuid> {
    Uuid::parse_str(properties.correlation_id().as_ref()?.as_str()).ok()
}

/// The trace a received message continues, when it says: its
/// `traceparent`, else the order its correlation id names.
pub fn known(properties: &BasicProperties) -> Option<TraceContext> {
    from_headers(properties.headers().as_ref()).or_else(|| order_of(properties).map(TraceContext::of_order))
}

/// [`known`], else a new trace.
pub fn of_message(properties: &BasicProperties) -> TraceContext {
    known(properties).unwrap_or_else(|| TraceContext::of_order(Uuid::nil()))
}

/// `properties` with `context` as their `traceparent`.
pub fn with_context(properties: BasicProperties, context: &TraceContext) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(HEADER.into(), AMQPValue::LongString(context.header().into()));
    properties.with_headers(headers)
}

/// The span a process handles a message in: on every log line meanwhile,
/// the node, the order id and the trace id (left empty when the message
/// does not say: [`fill`] records them once it is decoded). At WARN, so
/// that it is there whenever a log line is (the default level is WARN).
pub fn span(node: &str, properties: &BasicProperties, context: Option<&TraceContext>) -> tracing::Span {
    let span = tracing::warn_span!(
        "handle",
        node,
        order_id = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    if let Some(order) = properties.correlation_id().as_ref() {
        span.record("order_id", tracing::field::display(crate::text::escaped(order.as_str())));
    }
    if let Some(context) = context {
        span.record("trace_id", tracing::field::display(context.trace_id()));
        crate::otlp::adopt(&span, context.trace_id, context.span_id, context.flags);
    }
    span
}

/// Once a message is decoded: the order id (when its message did not name
/// it) and the trace (when it did not say: the order's) recorded on the
/// current span; the trace to continue.
pub fn decoded(properties: &BasicProperties, order_id: Uuid, known: Option<TraceContext>) -> TraceContext {
    let span = tracing::Span::current();
    if properties.correlation_id().is_none() {
        span.record("order_id", tracing::field::display(order_id));
    }
    known.unwrap_or_else(|| {
        let context = TraceContext::of_order(order_id);
        span.record("trace_id", tracing::field::display(context.trace_id()));
        context
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(text).unwrap();
        assert_eq!(context.header(), text);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35\u{1b}b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some()
        );
    }

    #[test]
    fn an_orders_trace_is_its_id_and_a_child_keeps_it() {
        let order = Uuid::new_v4();
        let context = TraceContext::of_order(order);
        assert_eq!(context.trace_id(), order.simple().to_string());
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
        let properties = BasicProperties::default().with_correlation_id(order.to_string().into());
        assert_eq!(of_message(&properties).trace_id, context.trace_id, "no header: the order's trace");
        let sent = with_context(
            properties,
            &TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap(),
        );
        assert_eq!(
            of_message(&sent).trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "a client's own trace is kept"
        );
    }
}
