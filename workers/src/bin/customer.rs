//! The customer domain: its primary, or with `ORDERFLOW_REGION` one of its replicas.

use shared::transport::domain::run_domain;
use std::sync::Arc;
use workers::domains::customer::{CustomerDomain, CustomerService};
use workers::Process;

const PROCESS: Process = Process::domain(
    "customer",
    "The customer domain of orderflow: customers, their addresses and cards on file (masked), behind \
     request/reply over RabbitMQ. The primary takes writes and sends each change on its stream; \
     ORDERFLOW_REGION=uk or de runs that replica, which follows the stream and answers reads.",
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let region = std::env::var("ORDERFLOW_REGION").ok().filter(|r| !r.is_empty());
        let domain = CustomerDomain::open(&settings, region.as_deref()).await?;
        run_domain(settings, Arc::new(CustomerService::new(domain)), shutdown).await
    })
    .await
}
