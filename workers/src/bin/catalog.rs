//! The catalog domain.

use shared::transport::domain::run_domain;
use std::sync::Arc;
use workers::domains::records::{RecordDomain, CATALOG};
use workers::Process;

const PROCESS: Process = Process::domain("catalog", "The catalog domain of orderflow: items (SKU, title, price, weight, active or withdrawn), behind request/reply over RabbitMQ.");

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let domain = RecordDomain::open(&settings, CATALOG).await?;
        run_domain(settings, Arc::new(domain), shutdown).await
    })
    .await
}
