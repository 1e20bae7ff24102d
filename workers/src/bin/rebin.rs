//! The rebin node: consolidates multi-unit shipments.

use shared::transport::runner::run_stage;
use workers::stages::rebin::Rebin;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(|settings, shutdown| run_stage(Rebin, settings, shutdown)).await
}
