//! The distributor domain.

use shared::transport::domain::run_domain;
use std::sync::Arc;
use workers::domains::records::{RecordDomain, DISTRIBUTOR};
use workers::Process;

const PROCESS: Process = Process::domain("distributor", "The distributor domain of orderflow: distributors, the SKUs each supplies and their lead times, behind request/reply over RabbitMQ.");

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let domain = RecordDomain::open(&settings, DISTRIBUTOR).await?;
        run_domain(settings, Arc::new(domain), shutdown).await
    })
    .await
}
