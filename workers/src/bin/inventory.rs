//! The inventory node: reserves stock it alone owns.

use shared::transport::runner::run_stage;
use shared::Node;
use workers::stages::inventory::Inventory;
use workers::Process;

const PROCESS: Process = Process::node(
    Node::Inventory,
    "The inventory node of orderflow: reserves each charged order's items from the stock it alone owns.",
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let stage = Inventory::open(&settings).await?;
        run_stage(stage, settings, shutdown).await
    })
    .await
}
