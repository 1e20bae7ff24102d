//! The tracker: records every audit event and serves each order's history over HTTP.

use shared::help;
use workers::Process;

const PROCESS: Process = Process {
    name: "tracker",
    about: "The tracker of orderflow: records every audit event into the tracking store and serves each \
            order's state and history over HTTP (GET /orders/ID, /stats, /health on ORDERFLOW_HTTP_ADDR).",
    reads: &[help::TRACKER],
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, workers::tracker::run).await
}
