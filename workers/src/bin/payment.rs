//! The payment node: charges cards through the simulated processor.

use shared::transport::runner::run_stage;
use workers::{processor::Processor, stages::payment::Payment};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(|settings, shutdown| async move {
        let stage = Payment::new(Processor::open(&settings).await?);
        run_stage(stage, settings, shutdown).await
    })
    .await
}
