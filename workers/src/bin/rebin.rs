//! The rebin node: consolidates multi-unit shipments.

use shared::transport::runner::run_stage;
use shared::Node;
use workers::stages::rebin::Rebin;
use workers::Process;

const PROCESS: Process = Process::node(
    Node::Rebin,
    "The rebin node of orderflow: consolidates picked shipments of more than one unit.",
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, |settings, shutdown| run_stage(Rebin, settings, shutdown)).await
}
