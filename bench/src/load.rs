//! The load: valid generated orders (single- and multi-unit mixed, as
//! `orderflow publish --count` makes them), published the way the CLI does
//! (a `placed` audit event and the element to intake, confirmed), either
//! saturating (closed loop, a bounded number of orders in flight) or open loop
//! (paced by the clock, not by completions); at intake, or directed
//! through the coordinator.

use crate::stats::now_secs;
use shared::audit::AuditEvent;
use shared::order::{Order, OrderElement};
use std::time::{Duration, Instant};
use transport::message::{audit_message, element_message};
use transport::{Outgoing, Publisher};
use uuid::Uuid;

/// Valid generated orders, as `orderflow publish --count` makes them.
pub fn orders(n: usize) -> Vec<Order> {
    shared::generate::orders(n, false)
}

/// Share of single-unit orders (they skip rebin: 5 hops instead of 6).
pub fn single_unit_share(orders: &[Order]) -> f64 {
    let single = orders.iter().filter(|o| o.items.iter().map(|i| i.qty).sum::<i64>() == 1).count();
    single as f64 / orders.len().max(1) as f64
}

/// Where orders are placed: at intake (the autonomous workflow) or with the
/// coordinator (directed mode), as `orderflow publish [--directed]` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Autonomous,
    Directed,
}

/// The messages that place an order, made now (so `placed.at` is the publish time).
fn place(order: Order, messages: &mut Vec<Outgoing>, route: Route) -> Uuid {
    let element = OrderElement::placed(order);
    let detail = format!("order from {} with {} units", element.order.customer_id, element.total_units());
    let placed = AuditEvent::for_transition(&element, None, "publisher", "bench", detail);
    let mut message = element_message(&element, topology::WORKFLOW.door());
    if route == Route::Directed {
        message.routing_key = topology::COORDINATOR_ROUTING_KEY.to_string();
    }
    let mut placing = [audit_message(&placed), message];
    transport::message::stamp_trace(&mut placing, &shared::trace::TraceContext::of_order(element.order_id));
    messages.extend(placing);
    element.order_id
}

/// What was published, and when (seconds since the epoch).
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub ids: Vec<Uuid>,
    pub start: f64,
    pub end: f64,
    /// Longest delay of an open-loop publish behind its schedule.
    pub max_lag_ms: f64,
}

impl Published {
    pub fn rate(&self) -> f64 {
        self.ids.len() as f64 / (self.end - self.start).max(1e-3)
    }
}

/// Orders per confirmed publish window of a saturating run.
pub const WINDOW: usize = 100;

/// Saturates closed loop: publishes windows of [`WINDOW`] orders, each
/// confirmed before the next, as fast as confirms allow while fewer than
/// `in_flight` orders are published but not `completed()`. The publisher keeps
/// running (and costing what publishing costs) for the whole measurement,
/// while every queue holds a backlog.
pub async fn saturate(
    publisher: &Publisher,
    route: Route,
    orders: Vec<Order>,
    in_flight: usize,
    completed: impl Fn() -> usize,
    mut on_progress: impl FnMut(usize),
) -> anyhow::Result<Published> {
    let start = now_secs();
    let mut ids = Vec::with_capacity(orders.len());
    let mut orders = orders.into_iter().peekable();
    while orders.peek().is_some() {
        while ids.len().saturating_sub(completed()) + WINDOW > in_flight.max(WINDOW) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut messages = Vec::with_capacity(2 * WINDOW);
        for order in orders.by_ref().take(WINDOW) {
            ids.push(place(order, &mut messages, route));
        }
        publisher.publish_all(&messages).await?;
        on_progress(ids.len());
    }
    Ok(Published { ids, start, end: now_secs(), max_lag_ms: 0.0 })
}

/// Publishes open loop at `rate` orders per second: order `i` is due at
/// `start + i / rate` whatever happens downstream; confirms are awaited
/// concurrently, so a slow confirm never delays the next order.
pub async fn open_loop(
    publisher: &Publisher,
    route: Route,
    orders: Vec<Order>,
    rate: f64,
    mut on_progress: impl FnMut(usize),
) -> anyhow::Result<Published> {
    let n = orders.len();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut orders = orders.into_iter();
    let mut ids = Vec::with_capacity(n);
    let mut confirms = tokio::task::JoinSet::new();
    let mut max_lag = Duration::ZERO;
    let started = Instant::now();
    let start = now_secs();
    while ids.len() < n {
        let due = started + interval.mul_f64(ids.len() as f64);
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        max_lag = max_lag.max(now - due);
        let due_count = (((now - started).as_secs_f64() * rate).floor() as usize + 1).clamp(ids.len() + 1, n);
        let mut messages = Vec::with_capacity(2 * (due_count - ids.len()));
        for order in orders.by_ref().take(due_count - ids.len()) {
            ids.push(place(order, &mut messages, route));
        }
        let publisher = publisher.clone();
        confirms.spawn(async move { publisher.publish_all(&messages).await });
        while let Some(done) = confirms.try_join_next() {
            done??;
        }
        on_progress(ids.len());
    }
    let end = now_secs();
    while let Some(done) = confirms.join_next().await {
        done??;
    }
    Ok(Published { ids, start, end, max_lag_ms: max_lag.as_secs_f64() * 1000.0 })
}
