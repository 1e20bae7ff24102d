//! The intake node: validates placed orders.

use shared::transport::runner::run_stage;
use workers::stages::intake::Intake;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(|settings, shutdown| run_stage(Intake, settings, shutdown)).await
}
