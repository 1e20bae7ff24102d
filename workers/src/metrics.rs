//! The `GET /metrics` endpoint every worker and the tracker serve on
//! `ORDERFLOW_METRICS_ADDR` (Prometheus' text format, from
//! `shared::metrics`), until shutdown, and beside it `GET /status`, where a
//! process reports its state as JSON (a domain copy: its position in the
//! change stream and, for a replica, its lag). Listening fails at start, loudly: a
//! process asked to export metrics never runs without them.

use axum::{http::header, response::IntoResponse, routing::get, Router};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// Binds `addr` and serves this process's metrics in the background.
pub async fn serve(
    addr: SocketAddr,
    node: &'static str,
    instance: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on ORDERFLOW_METRICS_ADDR={addr}: {e}"))?;
    let instance = instance.to_string();
    let router = Router::new()
        .route(
            "/status",
            get(|| async {
                match shared::metrics::status() {
                    Some(status) => axum::Json(status).into_response(),
                    None => (axum::http::StatusCode::NOT_FOUND, "this process reports no status\n")
                        .into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = shared::metrics::render(node, &instance);
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
                        .into_response()
                }
            }),
        );
    tracing::info!(%addr, "metrics at /metrics");
    tokio::spawn(async move {
        let stopped = async move { shutdown.cancelled().await };
        if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}
