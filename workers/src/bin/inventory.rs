//! The inventory node: reserves stock it alone owns.

use shared::transport::domain::run_domain;
use shared::transport::runner::run_stage;
use shared::Node;
use workers::inventory::stock::StockDomain;
use workers::inventory::Inventory;
use workers::Process;

const PROCESS: Process = Process::node(
    Node::Inventory,
    "The inventory node of orderflow: reserves each charged order's items from the stock it alone owns, or backorders them (purchase orders to the distributors) when a distributor supplies what is short; answers the stock domain's requests and takes the received items, one at a time in order of arrival, releasing the backorders they cover, oldest first.",
)
.reading(&[shared::help::NODE, shared::help::INVENTORY]);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let stage = Inventory::open(&settings).await?;
        // It also answers for the stock domain and takes the received items.
        let stock = std::sync::Arc::new(StockDomain::open(&settings).await?);
        let domain = run_domain(settings.clone(), stock, shutdown.clone());
        tokio::try_join!(run_stage(stage, settings, shutdown), domain).map(|_| ())
    })
    .await
}
