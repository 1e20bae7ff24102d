//! The shipping node: ships orders with a tracking number.

use shared::transport::runner::run_stage;
use shared::Node;
use workers::stages::shipping::Shipping;
use workers::Process;

const PROCESS: Process = Process::node(
    Node::Shipping,
    "The shipping node of orderflow: ships each order once, with a tracking number.",
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let stage = Shipping::open(&settings).await?;
        run_stage(stage, settings, shutdown).await
    })
    .await
}
