//! The live dashboard the tracker serves at `/`: one page (HTML, CSS and
//! script in `dashboard/index.html`, nothing fetched from elsewhere) that
//! draws the workflow from `GET /workflow` (the routing table's nodes and
//! edges) and updates itself from `GET /live`, a server-sent event stream
//! with, every second, the orders per state, the last minute's report
//! (counts, rates, dwell times, the slowest node, the stuck orders) and each
//! queue's depth from the management API (`ORDERFLOW_MGMT_URL`, as
//! `ORDERFLOW_MGMT_USER`, which needs the `monitoring` tag; without it the
//! depths show as unknown), and the rest of the stack (`stack_view`: the
//! coordinator, the domain copies and their lag, the backorders, the true
//! queues, the retry and dead-letter queues with the last hour's reasons).
//! Its search box opens an order's timeline from `GET /orders/{id}`.

use super::stack_view::{self, QueueDepth};
use super::store::TrackerStore;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use topology::WORKFLOW;

const PAGE: &str = include_str!("dashboard/index.html");

/// How often `/live` sends a snapshot.
pub const LIVE_EVERY: Duration = Duration::from_secs(1);
/// The window of the live report.
pub const LIVE_WINDOW: Duration = Duration::from_secs(60);

/// What the dashboard reads queue depths with.
pub struct Depths {
    management: Option<topology::management::Management>,
    vhost: String,
}

impl Depths {
    pub fn from_settings(settings: &shared::settings::Settings) -> Depths {
        let url = topology::management::amqp_urls(&settings.amqp_url).first().map(|u| u.to_string());
        let parts = url.as_deref().and_then(|u| topology::management::amqp_url_parts(u).ok());
        let management = url.as_deref().and_then(|u| topology::management::Management::from_env(u).ok());
        Depths { management, vhost: parts.map(|(_, _, vhost)| vhost).unwrap_or_else(|| "/".into()) }
    }

    /// Messages waiting in the tracker's own queue (ready or in hand), or
    /// `None` when the management API does not answer: how far behind it is.
    pub async fn tracker_backlog(&self) -> Option<u64> {
        let management = self.management.as_ref()?;
        let queue = management.queue(&self.vhost, topology::TRACKER_QUEUE);
        let queue = tokio::time::timeout(Duration::from_secs(2), queue).await.ok()?.ok()?;
        queue["messages"].as_u64()
    }

    /// Messages and consumers of each queue of the stack, or `None` when
    /// the management API does not answer.
    async fn read(&self) -> Option<BTreeMap<String, QueueDepth>> {
        let management = self.management.as_ref()?;
        let queues =
            tokio::time::timeout(Duration::from_secs(2), management.queues(&self.vhost)).await.ok()?.ok()?;
        Some(
            queues
                .iter()
                .filter_map(|q| {
                    let depth =
                        QueueDepth { messages: q["messages"].as_u64(), consumers: q["consumers"].as_u64() };
                    Some((q["name"].as_str()?.to_string(), depth))
                })
                .collect(),
        )
    }
}

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /workflow`: the nodes in table order with their queues, the edges
/// of the routing tables (which node forwards to which, in any definition),
/// and each definition's happy path (`workflows`).
pub async fn workflow() -> Json<Value> {
    let nodes: Vec<Value> = WORKFLOW
        .nodes()
        .map(|n| json!({"name": n.name(), "queue": n.queue(), "changes_queue": n.changes_queue()}))
        .collect();
    let mut edges = Vec::new();
    for node in WORKFLOW.nodes() {
        for to in topology::workflow::forwards_to_any(node) {
            edges.push(json!({"from": node.name(), "to": to.name()}));
        }
    }
    let multi_unit = topology::workflow::Facts { units: 2, holds_reservation: false };
    let workflows: Vec<Value> = topology::workflow::WORKFLOWS
        .iter()
        .map(|w| {
            let path: Vec<String> = w.happy_path(&multi_unit).iter().map(|(n, s)| format!("{n} {s}")).collect();
            json!({"name": w.name, "version": w.version, "path": path, "completes_at": w.completes_at.as_str()})
        })
        .collect();
    let terminal: Vec<&str> = topology::OrderState::all()
        .into_iter()
        .filter(|s| WORKFLOW.is_terminal(*s))
        .map(|s| s.as_str())
        .collect();
    Json(json!({"nodes": nodes, "edges": edges, "terminal_states": terminal, "workflows": workflows}))
}

/// One snapshot for `/live`.
async fn snapshot(store: &TrackerStore, depths: &Depths) -> Value {
    let now = chrono::Utc::now();
    let from = now - chrono::Duration::from_std(LIVE_WINDOW).unwrap_or_default();
    let stats = store.stats().await.ok();
    let report = store.report(from, now, now, None).await.ok();
    let queues = depths.read().await;
    let stack = stack_view::read(store, queues.as_ref()).await;
    let depths: Option<BTreeMap<&String, u64>> =
        queues.as_ref().map(|q| q.iter().filter_map(|(name, depth)| Some((name, depth.messages?))).collect());
    json!({"at": shared::audit::rfc3339::format(&now), "stats": stats, "report": report, "depths": depths, "stack": stack})
}

/// `GET /live`: a snapshot every [`LIVE_EVERY`] as server-sent events.
pub async fn live(store: TrackerStore, depths: Arc<Depths>) -> Response {
    let stream = futures::stream::unfold((store, depths, true), |(store, depths, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        let data = snapshot(&store, &depths).await.to_string();
        Some((Ok::<Event, Infallible>(Event::default().event("snapshot").data(data)), (store, depths, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
