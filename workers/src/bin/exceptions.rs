//! The exceptions node: compensates and ends failed orders.

use shared::transport::runner::run_stage;
use shared::Node;
use workers::Process;
use workers::{processor::Processor, stages::exceptions::Exceptions};

const PROCESS: Process = Process::node(
    Node::Exceptions,
    "The exceptions node of orderflow: compensates failed and cancelled orders (refunds) and ends them.",
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let stage = Exceptions::new(Processor::open(&settings).await?);
        run_stage(stage, settings, shutdown).await
    })
    .await
}
