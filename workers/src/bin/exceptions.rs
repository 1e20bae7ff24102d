//! The exceptions node: compensates and ends failed orders.

use shared::transport::runner::run_stage;
use workers::{processor::Processor, stages::exceptions::Exceptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(|settings, shutdown| async move {
        let stage = Exceptions::new(Processor::open(&settings).await?);
        run_stage(stage, settings, shutdown).await
    })
    .await
}
