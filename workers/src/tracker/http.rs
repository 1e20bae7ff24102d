//! The tracker's HTTP API (loopback by default): `GET /` (the live dashboard,
//! with `GET /workflow` and the event stream `GET /live`), `GET /orders/{id}` (state,
//! terminal or not, ordered history), `POST /orders/status` (latest states of
//! many orders), `GET /orders?state=&at=&customer=&older_than=&newer_than=&limit=&after=`
//! (finding orders, a page at a time), `GET /calls/{request_id}` (a service
//! result kept for polling, only with its caller's poll token), `GET /report` (per node figures and stuck
//! orders for a range), `GET /stats` (orders per state), `GET /store`
//! (rows in the active store and the warehouse), `GET /health`.

use super::dashboard::{self, Depths};
use super::store::TrackerStore;
use super::Health;
use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use shared::order_search::OrderSearch;
use shared::tracker_api::{ApiError, StatusRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The largest `POST /orders/status` body: room for the promised 100,000 ids.
const STATUS_BODY_LIMIT: usize = 5 * 1024 * 1024;

pub fn router(store: TrackerStore, health: Arc<Health>, depths: Arc<Depths>) -> Router {
    let live_store = store.clone();
    let backlog = depths.clone();
    Router::new()
        .route("/", get(dashboard::page))
        .route("/workflow", get(dashboard::workflow))
        .route("/live", get(move || dashboard::live(live_store.clone(), depths.clone())))
        .route("/orders", get(search))
        .route(
            "/orders/{id}",
            get(move |store: State<TrackerStore>, id: Path<String>| order(store, id, backlog.clone())),
        )
        // 100,000 ids of 36 characters, quoted and separated: about 3.9 MB (axum's default is 2 MB).
        .route(
            "/orders/status",
            post(statuses).layer(axum::extract::DefaultBodyLimit::max(STATUS_BODY_LIMIT)),
        )
        .route("/stats", get(stats))
        .route("/store", get(store_rows))
        .route("/report", get(report))
        .route("/calls/{request_id}", get(call_result))
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

/// How long in-flight requests get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the API over HTTP/1.1 until `shutdown`. Unlike `axum::serve`, each
/// connection gets a header-read timeout (`header_timeout`): a client that
/// opens a connection and never finishes its headers, or leaves a kept-alive
/// connection idle, is disconnected instead of holding a socket for ever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: TrackerStore,
    health: Arc<Health>,
    depths: Arc<Depths>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(store, health, depths);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "the tracker API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "tracker API connection ended");
            }
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("tracker API requests still running after {SHUTDOWN_GRACE:?}; closing them");
    }
    Ok(())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: message.into() })).into_response()
}

fn internal(e: sqlx::Error) -> Response {
    shared::events::StoreFailed { owner: "tracker", during: "an API query", error: &e.to_string() }.emit();
    error(StatusCode::INTERNAL_SERVER_ERROR, "the tracking store is unavailable")
}

/// `GET /orders/{id}`. An order not recorded while audit messages wait in
/// the tracker's queue may be among them (just placed, or the tracker is
/// behind): the 404 says how far behind, not that no such order exists.
async fn order(State(store): State<TrackerStore>, Path(id): Path<String>, depths: Arc<Depths>) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(StatusCode::BAD_REQUEST, "order ids are uuids");
    };
    match store.order(id).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => match depths.tracker_backlog().await {
            Some(behind) if behind > 0 => error(
                StatusCode::NOT_FOUND,
                format!(
                    "no order {id} is recorded yet: the tracker is {behind} audit messages behind, and an order \
                     just placed may be among them; ask again"
                ),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no order {id} is known")),
        },
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

/// `GET /orders`: a bad, unknown or repeated parameter is a 400 with the reason.
async fn search(
    State(store): State<TrackerStore>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Ok(Query(pairs)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query string is not valid");
    };
    let search = match OrderSearch::parse(&pairs) {
        Ok(search) => search,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    match store.search(&search, chrono::Utc::now()).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /calls/{request_id}`: a service result kept for polling, shown
/// only to its caller: the request bears the call's poll token
/// (`Authorization: Bearer <token>`, `shared::poll`). Without a token, 401;
/// with a token that is not the call's, the same 404 as for no result at
/// all (nothing says whether the request id was ever used).
async fn call_result(
    State(store): State<TrackerStore>,
    Path(request_id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(reason) = shared::service::check_id("the request id", &request_id) {
        return error(StatusCode::BAD_REQUEST, reason);
    }
    let authorization = headers.get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let Some(token) = authorization.and_then(shared::poll::bearer) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "a polled result is shown only to its caller: send the call's poll token as \
             Authorization: Bearer <token> (x-orderflow-poll-key on the call is its SHA-256)",
        );
    };
    if let Err(reason) = shared::poll::check_token(token) {
        return error(StatusCode::BAD_REQUEST, reason);
    }
    match store.call_result(&request_id, &shared::poll::key_of(token)).await {
        Ok(Some(kept)) => Json(kept).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no result for request {} under this token: not answered yet, never sent, removed after \
                 its retention, or not yours",
                shared::text::mask_card_numbers(&request_id)
            ),
        ),
        Err(e) => internal(e),
    }
}

/// `GET /report?last=|from=&to=&stuck_after=`: the pipeline's figures for a range.
async fn report(
    State(store): State<TrackerStore>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Ok(Query(pairs)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query string is not valid");
    };
    let now = chrono::Utc::now();
    let asked = match shared::report::ReportQuery::parse(&pairs, now) {
        Ok(asked) => asked,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    match store.report(asked.from, asked.to, now, asked.stuck_after).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /store`: rows in the active store and in the warehouse.
async fn store_rows(State(store): State<TrackerStore>) -> Response {
    match store.row_counts().await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => internal(e),
    }
}

async fn stats(State(store): State<TrackerStore>) -> Response {
    match store.stats().await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => internal(e),
    }
}
