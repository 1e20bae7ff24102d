//! orderflow's worker nodes: each stage's logic (plain functions from a
//! workflow element to an outcome), the data each node owns, and the tracker.
//! The binaries in `src/bin/` only wire a stage to the transport.

pub mod catalog;
pub mod processor;
pub mod stages;
pub mod tracker;

use shared::{settings::Settings, telemetry};
use std::{future::Future, process::ExitCode};
use tokio_util::sync::CancellationToken;

/// The whole `main` of a node binary: logging, settings, run until SIGTERM, report.
pub async fn node_main<F, Fut>(run: F) -> ExitCode
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    telemetry::init();
    let result = async {
        let settings = Settings::from_env()?;
        run(settings, shared::shutdown::on_signal()).await
    };
    telemetry::report_exit(result.await)
}
