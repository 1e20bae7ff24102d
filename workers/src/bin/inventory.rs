//! The inventory node: reserves stock it alone owns.

use shared::transport::runner::run_stage;
use workers::stages::inventory::Inventory;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(|settings, shutdown| async move {
        let stage = Inventory::open(&settings).await?;
        run_stage(stage, settings, shutdown).await
    })
    .await
}
