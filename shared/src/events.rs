//! Named events: each thing an operator may need to count or act on is a
//! struct whose `emit()` logs it with structured fields and adds one to its
//! counter. [`snapshot`] lists every counter by name, for a metrics endpoint.
//! ERROR means a message needs an operator (it was dead-lettered).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// A monotonic count of one kind of event, named as it is exported.
pub struct Counter {
    name: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str) -> Counter {
        Counter { name, value: AtomicU64::new(0) }
    }

    fn increment(&self) {
        self.add(1);
    }

    fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

pub static ELEMENTS_HANDLED: Counter = Counter::new("elements_handled");
pub static DEAD_LETTERED: Counter = Counter::new("dead_lettered");
pub static RETRIED: Counter = Counter::new("retried");
pub static GAVE_UP: Counter = Counter::new("gave_up");
pub static RECONNECTED: Counter = Counter::new("reconnected");
pub static CHANGES_APPLIED: Counter = Counter::new("changes_applied");
pub static CHANGES_REJECTED: Counter = Counter::new("changes_rejected");
pub static ELEMENTS_FAILED: Counter = Counter::new("elements_failed");
pub static CALLS_ANSWERED: Counter = Counter::new("calls_answered");
pub static EVENTS_RECORDED: Counter = Counter::new("events_recorded");
pub static ORDERS_MOVED: Counter = Counter::new("orders_moved");
pub static REFUSED: Counter = Counter::new("refused");
pub static STORE_FAILED: Counter = Counter::new("store_failed");

static ALL: [&Counter; 13] = [
    &ELEMENTS_HANDLED,
    &DEAD_LETTERED,
    &RETRIED,
    &GAVE_UP,
    &RECONNECTED,
    &CHANGES_APPLIED,
    &CHANGES_REJECTED,
    &ELEMENTS_FAILED,
    &CALLS_ANSWERED,
    &EVENTS_RECORDED,
    &ORDERS_MOVED,
    &REFUSED,
    &STORE_FAILED,
];

/// Every counter of this process, name → value.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    ALL.iter().map(|c| (c.name(), c.get())).collect()
}

/// An element was handled and its messages confirmed; its delivery is acknowledged.
#[derive(Clone, Debug, PartialEq)]
pub struct ElementHandled {
    pub node: &'static str,
    pub order_id: Uuid,
    pub state: crate::OrderState,
}

impl ElementHandled {
    pub fn emit(&self) {
        tracing::debug!(node = self.node, order_id = %self.order_id, state = %self.state, "element handled");
        ELEMENTS_HANDLED.increment();
    }
}

/// A message that can never succeed went to the dead-letter queue: it needs an operator.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLettered<'a> {
    pub node: &'a str,
    pub routing_key: &'a str,
    pub reason: &'a str,
}

impl DeadLettered<'_> {
    pub fn emit(&self) {
        tracing::error!(
            node = self.node,
            routing_key = self.routing_key,
            reason = crate::text::mask_card_numbers(self.reason),
            "dead-lettered a message"
        );
        DEAD_LETTERED.increment();
    }
}

/// A message refused because it is not what its sender may say (a forged
/// answer, a call from a stranger): dead-lettered or answered with the
/// reason, and counted apart from the careless input that is merely malformed.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused<'a> {
    pub node: &'a str,
    /// What was refused, as the node names it ("an answer", "a call").
    pub what: &'a str,
    pub reason: &'a str,
}

impl Refused<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            node = self.node,
            what = self.what,
            reason = crate::text::mask_card_numbers(self.reason),
            "refused a message"
        );
        REFUSED.increment();
    }
}

/// A process's own store failed a query it cannot retry for its caller (the
/// tracker's API answers 500): an operator should look at the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreFailed<'a> {
    pub owner: &'a str,
    /// What the store was doing ("an API query").
    pub during: &'a str,
    pub error: &'a str,
}

impl StoreFailed<'_> {
    pub fn emit(&self) {
        tracing::error!(owner = self.owner, during = self.during, error = self.error, "the store failed");
        STORE_FAILED.increment();
    }
}

/// A transient failure: the message goes back to its queue after `delay`.
#[derive(Debug)]
pub struct Retried<'a> {
    pub node: &'a str,
    pub attempts: i64,
    pub delay: Duration,
    pub error: &'a anyhow::Error,
}

impl Retried<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            node = self.node,
            error = crate::text::mask_card_numbers(&format!("{:#}", self.error)),
            attempts = self.attempts,
            retry_in_ms = self.delay.as_millis() as u64,
            "transient failure; retrying"
        );
        RETRIED.increment();
    }
}

/// A message failed transiently on every allowed attempt; it is dead-lettered next.
#[derive(Debug)]
pub struct GaveUp<'a> {
    pub node: &'a str,
    pub attempts: i64,
    pub error: &'a anyhow::Error,
}

impl GaveUp<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            node = self.node,
            error = crate::text::mask_card_numbers(&format!("{:#}", self.error)),
            attempts = self.attempts,
            "transient failure on every attempt; giving up"
        );
        GAVE_UP.increment();
    }
}

/// A session on the broker ended in error and a new connection is up.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconnected<'a> {
    pub name: &'a str,
    pub broker: &'a str,
    /// From the end of the lost session to the new connection.
    pub down_for: Duration,
}

impl Reconnected<'_> {
    pub fn emit(&self) {
        tracing::info!(
            name = self.name,
            broker = self.broker,
            down_for_ms = self.down_for.as_millis() as u64,
            "reconnected"
        );
        RECONNECTED.increment();
    }
}

/// An in-flight change was applied to the element at this node (its record is confirmed).
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeApplied {
    pub node: &'static str,
    pub order_id: Uuid,
    pub change_id: Uuid,
    /// The element's version after the change.
    pub version: u32,
}

impl ChangeApplied {
    pub fn emit(&self) {
        tracing::info!(
            node = self.node,
            order_id = %self.order_id,
            change_id = %self.change_id,
            version = self.version,
            "change applied"
        );
        CHANGES_APPLIED.increment();
    }
}

/// An in-flight change was rejected at this node (its record is confirmed).
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeRejected {
    pub node: &'static str,
    pub order_id: Uuid,
    pub change_id: Uuid,
    pub reason: String,
}

impl ChangeRejected {
    pub fn emit(&self) {
        tracing::info!(
            node = self.node,
            order_id = %self.order_id,
            change_id = %self.change_id,
            reason = self.reason,
            "change rejected"
        );
        CHANGES_REJECTED.increment();
    }
}

/// A domain's edit was sent to an order that copied the old data, as a
/// change request (its requester the domain).
#[derive(Clone, Debug, PartialEq)]
pub struct EditForwarded {
    pub domain: &'static str,
    pub order_id: Uuid,
    /// The domain's change number that made it.
    pub seq: i64,
}

impl EditForwarded {
    pub fn emit(&self) {
        tracing::info!(domain = self.domain, order_id = %self.order_id, seq = self.seq, "edit forwarded to an order in flight");
    }
}

/// A delivery's handling failed: it goes round the retry queue, back to its
/// queue, or to the dead-letter queue (each of those is counted too).
#[derive(Clone, Debug, PartialEq)]
pub struct ElementFailed<'a> {
    pub node: &'a str,
    pub routing_key: &'a str,
}

impl ElementFailed<'_> {
    pub fn emit(&self) {
        tracing::debug!(node = self.node, routing_key = self.routing_key, "handling failed");
        ELEMENTS_FAILED.increment();
    }
}

/// A service call was answered (its result sent where it asked, or kept).
#[derive(Clone, Debug, PartialEq)]
pub struct CallAnswered<'a> {
    pub node: &'a str,
    pub request_id: &'a str,
    pub mode: &'a str,
}

impl CallAnswered<'_> {
    pub fn emit(&self) {
        tracing::debug!(node = self.node, request_id = self.request_id, mode = self.mode, "call answered");
        CALLS_ANSWERED.increment();
    }
}

/// The tracker recorded a batch of audit events: `new` of them for the first time.
#[derive(Clone, Debug, PartialEq)]
pub struct EventsRecorded {
    pub received: usize,
    pub new: u64,
}

impl EventsRecorded {
    pub fn emit(&self) {
        tracing::debug!(received = self.received, new = self.new, "audit events recorded");
        EVENTS_RECORDED.add(self.new);
    }
}

/// The tracker moved ended orders' histories to the warehouse.
#[derive(Clone, Debug, PartialEq)]
pub struct OrdersMoved {
    pub orders: u64,
    pub events: u64,
    pub late_events: u64,
}

impl OrdersMoved {
    pub fn emit(&self) {
        tracing::debug!(
            orders = self.orders,
            events = self.events,
            late_events = self.late_events,
            "moved to the warehouse"
        );
        ORDERS_MOVED.add(self.orders);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Counters are process-wide and tests run in parallel: check increases, not values.
    fn grows_by_at_least_one(counter: &Counter, emit: impl FnOnce()) {
        let before = counter.get();
        emit();
        assert!(counter.get() > before, "{} did not count", counter.name());
    }

    #[test]
    fn each_emit_counts_its_event() {
        let error = anyhow::anyhow!("store down");
        let id = Uuid::new_v4();
        grows_by_at_least_one(&ELEMENTS_HANDLED, || {
            ElementHandled { node: "payment", order_id: id, state: crate::OrderState::Charged }.emit()
        });
        grows_by_at_least_one(&DEAD_LETTERED, || {
            DeadLettered { node: "payment", routing_key: "order.payment", reason: "bad" }.emit()
        });
        grows_by_at_least_one(&RETRIED, || {
            Retried { node: "payment", attempts: 1, delay: Duration::from_millis(200), error: &error }.emit()
        });
        grows_by_at_least_one(&GAVE_UP, || GaveUp { node: "payment", attempts: 5, error: &error }.emit());
        grows_by_at_least_one(&RECONNECTED, || {
            Reconnected { name: "payment-1", broker: "amqp://guest:***@host", down_for: Duration::ZERO }
                .emit()
        });
        grows_by_at_least_one(&CHANGES_APPLIED, || {
            ChangeApplied { node: "payment", order_id: id, change_id: id, version: 1 }.emit()
        });
        grows_by_at_least_one(&CHANGES_REJECTED, || {
            ChangeRejected { node: "payment", order_id: id, change_id: id, reason: "late".into() }.emit()
        });
        grows_by_at_least_one(&ELEMENTS_FAILED, || {
            ElementFailed { node: "payment", routing_key: "order.payment" }.emit()
        });
        grows_by_at_least_one(&CALLS_ANSWERED, || {
            CallAnswered { node: "payment", request_id: "r", mode: "sync" }.emit()
        });
        grows_by_at_least_one(&EVENTS_RECORDED, || EventsRecorded { received: 2, new: 1 }.emit());
        grows_by_at_least_one(&ORDERS_MOVED, || OrdersMoved { orders: 1, events: 6, late_events: 0 }.emit());
        grows_by_at_least_one(&STORE_FAILED, || {
            StoreFailed { owner: "tracker", during: "an API query", error: "locked" }.emit()
        });
        grows_by_at_least_one(&REFUSED, || {
            Refused { node: "coordinator", what: "an answer", reason: "x" }.emit()
        });
    }

    #[test]
    fn snapshot_lists_every_counter_once() {
        let names: Vec<&str> = snapshot().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "elements_handled",
                "dead_lettered",
                "retried",
                "gave_up",
                "reconnected",
                "changes_applied",
                "changes_rejected",
                "elements_failed",
                "calls_answered",
                "events_recorded",
                "orders_moved",
                "refused",
                "store_failed"
            ]
        );
        let before = snapshot()[1].1;
        DeadLettered { node: "tracker", routing_key: "audit.x", reason: "bad" }.emit();
        assert!(snapshot()[1].1 > before);
    }
}
