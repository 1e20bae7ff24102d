//! The tracker's HTTP API, defined once: the types it serves (an order's
//! view and history, latest states, counts per state, errors) and a typed
//! client of it, used by the CLI, the tests' harness and the bench.
//!
//! The field names and order are the wire format: the tracker serializes
//! exactly these types, so changing one changes what every client reads.

use crate::order_search::{OrderPage, OrderSearch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// The states that close an in-flight change: a node applied it, or someone rejected it.
pub const CHANGE_OUTCOMES: [&str; 2] = ["change_applied", "change_rejected"];

/// One entry of an order's history: a state change, or a record of an in-flight change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub state: String,
    pub from_state: Option<String>,
    pub node: String,
    pub instance_id: String,
    /// When the node made the change.
    pub at: String,
    /// When the tracker recorded it.
    pub recorded_at: String,
    pub detail: String,
    pub seq: i64,
    pub version: i64,
    pub event_id: String,
    /// Set on the records of in-flight changes (`change_requested`, `change_applied`, `change_rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// How the step was driven: `directed` (the coordinator called the
    /// node's service), `service` (someone else did); absent when the
    /// element travelled the autonomous workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The W3C trace id its message carried (`traceparent`), 32 hex digits:
    /// an order's entries share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// How many rows the tracker's active store and its warehouse hold (`GET /store`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreRows {
    pub active_orders: i64,
    pub active_events: i64,
    pub warehouse_orders: i64,
    pub warehouse_events: i64,
}

/// A service result kept for polling: `GET /calls/{request_id}` (with the call's poll token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeptResult {
    /// Who made the call, as the broker verified it.
    pub caller: String,
    pub result: crate::service::CallResult,
    pub received_at_ms: i64,
    /// When it was first read; it is removed `ORDERFLOW_RESULT_RETENTION_S` after.
    pub collected_at_ms: Option<i64>,
}

impl HistoryEntry {
    /// Whether this entry is the outcome (applied or rejected) of an in-flight change.
    pub fn is_change_outcome(&self) -> bool {
        CHANGE_OUTCOMES.contains(&self.state.as_str())
    }
}

/// An order as the tracker knows it: `GET /orders/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderView {
    pub order_id: String,
    pub state: String,
    pub terminal: bool,
    pub history: Vec<HistoryEntry>,
    /// The workflow the order follows and its version, once intake accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_version: Option<i64>,
}

impl OrderView {
    /// The first entry in `state`, if any.
    pub fn entry(&self, state: &str) -> Option<&HistoryEntry> {
        self.history.iter().find(|h| h.state == state)
    }

    /// The outcome (applied or rejected) of the change `change_id`, once there is one.
    pub fn change_outcome(&self, change_id: &str) -> Option<&HistoryEntry> {
        self.history.iter().find(|h| h.change_id.as_deref() == Some(change_id) && h.is_change_outcome())
    }
}

/// An order's latest state only: the values of `POST /orders/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderStatus {
    pub state: String,
    pub terminal: bool,
}

/// The answer of `POST /orders/status`: the latest state of each known order, by order id.
pub type Statuses = BTreeMap<String, OrderStatus>;

/// The body of `POST /orders/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusRequest {
    pub ids: Vec<Uuid>,
}

/// `GET /stats`: how many orders the tracker knows, and how many are in each state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub orders: i64,
    pub by_state: BTreeMap<String, i64>,
}

impl Stats {
    /// Orders in `state` (0 when none is).
    pub fn count(&self, state: &str) -> i64 {
        self.by_state.get(state).copied().unwrap_or(0)
    }
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Why a call to the tracker failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("the tracker is not reachable at {base} (is it running? see ORDERFLOW_HTTP_ADDR)")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The tracker answered with an error status; `message` is its `error` (or the status).
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the tracker's answer is not what this client expects")]
    Malformed(#[source] reqwest::Error),
}

/// A client of the tracker's HTTP API at one address.
#[derive(Clone)]
pub struct TrackerClient {
    base: String,
    http: reqwest::Client,
}

/// At most this many ids per `POST /orders/status` (the tracker takes up to 100,000).
const STATUS_CHUNK: usize = 5000;

impl TrackerClient {
    /// A client of the tracker at `base` (`http://host:port`); each call gives up after 30 s.
    pub fn new(base: &str) -> TrackerClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        TrackerClient { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, TrackerError> {
        let response = request
            .send()
            .await
            .map_err(|source| TrackerError::Unreachable { base: self.base.clone(), source })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = match response.json::<ApiError>().await {
            Ok(body) => body.error,
            Err(_) => status.as_str().to_string(),
        };
        Err(TrackerError::Refused { status: status.as_u16(), message })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, TrackerError> {
        let response = self.send(self.http.get(format!("{}{path}", self.base))).await?;
        response.json().await.map_err(TrackerError::Malformed)
    }

    /// `GET /health`: whether the tracker answers.
    pub async fn health(&self) -> Result<(), TrackerError> {
        self.send(self.http.get(format!("{}/health", self.base))).await.map(|_| ())
    }

    /// `GET /orders/{id}`: the order's state and ordered history.
    pub async fn order(&self, id: &Uuid) -> Result<OrderView, TrackerError> {
        self.get(&format!("/orders/{id}")).await
    }

    /// `POST /orders/status`: the latest state of each of `ids` the tracker knows.
    pub async fn statuses(&self, ids: &[Uuid]) -> Result<Statuses, TrackerError> {
        let mut all = Statuses::new();
        for chunk in ids.chunks(STATUS_CHUNK) {
            let body = StatusRequest { ids: chunk.to_vec() };
            let request = self.http.post(format!("{}/orders/status", self.base)).json(&body);
            let found: Statuses = self.send(request).await?.json().await.map_err(TrackerError::Malformed)?;
            all.extend(found);
        }
        Ok(all)
    }

    /// `GET /orders?...`: one page of the orders that match `search`.
    pub async fn orders(&self, search: &OrderSearch) -> Result<OrderPage, TrackerError> {
        let request = self.http.get(format!("{}/orders", self.base)).query(&search.to_pairs());
        self.send(request).await?.json().await.map_err(TrackerError::Malformed)
    }

    /// `GET /report`: the pipeline's figures for a range (`pairs` as the
    /// endpoint takes them: `last`, `from`, `to`, `stuck_after`).
    pub async fn report(&self, pairs: &[(&str, String)]) -> Result<crate::report::Report, TrackerError> {
        let request = self.http.get(format!("{}/report", self.base)).query(pairs);
        self.send(request).await?.json().await.map_err(TrackerError::Malformed)
    }

    /// `GET /store`: rows in the active store and the warehouse.
    pub async fn store_rows(&self) -> Result<StoreRows, TrackerError> {
        self.get("/store").await
    }

    /// `GET /stats`: orders per state.
    pub async fn stats(&self) -> Result<Stats, TrackerError> {
        self.get("/stats").await
    }

    /// `GET /calls/{request_id}`: a service result kept for polling, read
    /// with the call's poll token (`crate::poll`); `Ok(None)` while there is
    /// none: not answered yet, never sent, removed after its retention, or
    /// not under this token.
    pub async fn call_result(
        &self,
        request_id: &str,
        token: &str,
    ) -> Result<Option<KeptResult>, TrackerError> {
        let url = format!("{}/calls/{}", self.base, topology::management::encode(request_id));
        let request = self.http.get(url).bearer_auth(token);
        let answer = match self.send(request).await {
            Ok(response) => response.json().await.map_err(TrackerError::Malformed),
            Err(error) => Err(error),
        };
        match answer {
            Ok(kept) => Ok(Some(kept)),
            Err(TrackerError::Refused { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_id_is_left_out_unless_set() {
        let mut entry = HistoryEntry {
            state: "placed".into(),
            from_state: None,
            node: "publisher".into(),
            instance_id: "cli-1".into(),
            at: "2030-01-01T00:00:00.000000Z".into(),
            recorded_at: "2030-01-01T00:00:00.100000Z".into(),
            detail: String::new(),
            seq: 0,
            version: 0,
            event_id: "e".into(),
            change_id: None,
            mode: None,
            trace_id: None,
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert!(json.get("change_id").is_none() && json["from_state"].is_null());
        assert_eq!(serde_json::from_value::<HistoryEntry>(json).unwrap(), entry);
        entry.change_id = Some("c".into());
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["change_id"], "c");
        assert_eq!(serde_json::from_value::<HistoryEntry>(json).unwrap(), entry);
    }
}
