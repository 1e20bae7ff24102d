//! The picklist node: batches reserved shipments into picklists per shipping method.

use shared::transport::batch_runner::run_batch_stage;
use workers::stages::picklist::Picklist;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(|settings, shutdown| run_batch_stage(Picklist, settings, shutdown)).await
}
