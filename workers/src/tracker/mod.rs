//! The tracker: consumes the audit exchange into the tracking store (one row
//! per state change, duplicates dropped by event id) and serves each order's
//! state and history over HTTP for anyone to poll; ended orders move to its
//! warehouse after a quiet period; it reports on the pipeline and serves a
//! live dashboard.

pub mod consumer;
pub mod dashboard;
pub mod http;
pub mod outcomes;
pub mod report;
pub mod results;
pub mod stack_view;
pub mod store;
pub mod warehouse;

use shared::settings::Settings;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What `/health` reports: the tracker is healthy only while its audit
/// consumer is connected and its store takes writes.
#[derive(Default)]
pub struct Health {
    consuming: AtomicBool,
    store_failing: AtomicBool,
}

impl Health {
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    pub fn set_store_failing(&self, failing: bool) {
        self.store_failing.store(failing, Ordering::Relaxed);
    }

    /// `Err(reason)` when the tracker is not recording events.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.consuming.load(Ordering::Relaxed) {
            return Err("the audit consumer is not connected to the broker: nothing is being recorded");
        }
        if self.store_failing.load(Ordering::Relaxed) {
            return Err("the tracking store refuses writes: consumption is paused until it recovers");
        }
        Ok(())
    }
}

/// Runs the audit consumer and the HTTP API until shutdown. If either ends
/// in error the other is stopped and the process exits with that error: a
/// tracker whose consumer is gone never keeps answering as if it worked.
/// The process's run, boxed here (see `workers::process`).
pub fn run(
    settings: Settings,
    shutdown: CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(run_until(settings, shutdown))
}

async fn run_until(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = store::TrackerStore::open(&settings).await?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on ORDERFLOW_HTTP_ADDR={}: {e}", settings.http_addr))?;
    tracing::info!(addr = %settings.http_addr, "tracker API listening");
    let health = Arc::new(Health::default());
    let stop = shutdown.child_token();
    let depths = Arc::new(dashboard::Depths::from_settings(&settings));
    let api = http::serve(
        listener,
        store.clone(),
        health.clone(),
        depths,
        settings.http_header_timeout,
        stop.clone(),
    );
    let consume = consumer::run(store, settings, health, stop.clone());
    tokio::pin!(api, consume);
    tokio::select! {
        result = &mut api => {
            stop.cancel();
            let _ = consume.await;
            result.map_err(|e| e.context("the tracker's HTTP API stopped"))
        }
        result = &mut consume => {
            stop.cancel();
            let _ = api.await;
            result.map_err(|e| e.context("the audit consumer stopped"))
        }
    }
}
