//! The tracker: consumes the audit exchange into the tracking store (one row
//! per state change, duplicates dropped by event id) and serves each order's
//! state and history over HTTP for anyone to poll.

pub mod consumer;
pub mod http;
pub mod store;

use shared::settings::Settings;
use tokio_util::sync::CancellationToken;

/// Runs the audit consumer and the HTTP API until shutdown.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = store::TrackerStore::open(&settings).await?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on ORDERFLOW_HTTP_ADDR={}: {e}", settings.http_addr))?;
    tracing::info!(addr = %settings.http_addr, "tracker API listening");
    let api = http::serve(listener, store.clone(), shutdown.clone());
    let consume = consumer::run(store, settings, shutdown.clone());
    let (api, consume) = tokio::join!(api, consume);
    api.and(consume)
}
