//! The tracker's HTTP API (loopback by default): `GET /orders/{id}` (state,
//! terminal or not, ordered history), `POST /orders/status` (latest states of
//! many orders), `GET /stats` (orders per state), `GET /health`.

use super::store::TrackerStore;
use super::Health;
use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use shared::tracker_api::{ApiError, StatusRequest};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The largest `POST /orders/status` body: room for the promised 100,000 ids.
const STATUS_BODY_LIMIT: usize = 5 * 1024 * 1024;

pub fn router(store: TrackerStore, health: Arc<Health>) -> Router {
    Router::new()
        .route("/orders/{id}", get(order))
        // 100,000 ids of 36 characters, quoted and separated: about 3.9 MB (axum's default is 2 MB).
        .route(
            "/orders/status",
            post(statuses).layer(axum::extract::DefaultBodyLimit::max(STATUS_BODY_LIMIT)),
        )
        .route("/stats", get(stats))
        .with_state(store)
        .route("/health", get(move || async move { health_answer(&health) }))
}

/// `200 ok` while events are being recorded; `503` with the reason otherwise.
fn health_answer(health: &Health) -> Response {
    match health.check() {
        Ok(()) => "ok".into_response(),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    store: TrackerStore,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(store, health))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: message.into() })).into_response()
}

fn internal(e: sqlx::Error) -> Response {
    tracing::error!(error = %e, "tracking store query failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, "the tracking store is unavailable")
}

async fn order(State(store): State<TrackerStore>, Path(id): Path<String>) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(StatusCode::BAD_REQUEST, "order ids are uuids");
    };
    match store.order(id).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no order {id} is known")),
        Err(e) => internal(e),
    }
}

async fn statuses(State(store): State<TrackerStore>, Json(request): Json<StatusRequest>) -> Response {
    if request.ids.len() > 100_000 {
        return error(StatusCode::BAD_REQUEST, "at most 100000 ids per request");
    }
    match store.statuses(&request.ids).await {
        Ok(found) => Json(found).into_response(),
        Err(e) => internal(e),
    }
}

async fn stats(State(store): State<TrackerStore>) -> Response {
    match store.stats().await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => internal(e),
    }
}
