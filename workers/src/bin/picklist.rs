//! The picklist node: batches reserved shipments into picklists per shipping method.

use shared::help;
use shared::transport::batch_runner::run_batch_stage;
use shared::Node;
use workers::stages::picklist::Picklist;
use workers::Process;

const PROCESS: Process = Process::node(
    Node::Picklist,
    "The picklist node of orderflow: batches reserved shipments into picklists per shipping method.",
)
.reading(&[help::NODE, help::PICKLIST]);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| run_batch_stage(Picklist, settings, shutdown)).await
}
