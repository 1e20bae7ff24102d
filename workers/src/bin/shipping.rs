//! The shipping node: ships orders with a tracking number.

use shared::transport::runner::run_stage;
use workers::stages::shipping::Shipping;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(|settings, shutdown| async move {
        let stage = Shipping::open(&settings).await?;
        run_stage(stage, settings, shutdown).await
    })
    .await
}
