//! The intake node: validates placed orders.

use shared::transport::runner::run_stage;
use shared::Node;
use workers::stages::intake::Intake;
use workers::Process;

const PROCESS: Process = Process::node(Node::Intake, "The intake node of orderflow: validates placed orders (items, quantities, SKUs, address, card) and accepts or rejects them.");

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| run_stage(Intake, settings, shutdown)).await
}
