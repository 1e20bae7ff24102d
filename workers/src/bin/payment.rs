//! The payment node: charges cards through the simulated processor.

use shared::transport::runner::run_stage;
use shared::Node;
use workers::Process;
use workers::{processor::Processor, stages::payment::Payment};

const PROCESS: Process = Process::node(Node::Payment, "The payment node of orderflow: charges each accepted order's card once through the simulated card processor.");

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| async move {
        let stage = Payment::new(Processor::open(&settings).await?);
        run_stage(stage, settings, shutdown).await
    })
    .await
}
