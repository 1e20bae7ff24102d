//! The intake node: validates placed orders.

use shared::transport::runner::run_stage;
use shared::Node;
use workers::stages::intake::Intake;
use workers::Process;

const PROCESS: Process = Process::node(Node::Intake, "The intake node of orderflow: validates placed orders (items, quantities, SKUs, address, card) and accepts or rejects them; an order placed by reference (a customer id, perhaps an address id, SKUs) is first filled in from the customer and catalog domains.");

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        run_stage(Intake::with_domains(&settings)?, settings, shutdown).await
    })
    .await
}
