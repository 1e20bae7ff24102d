//! The tracker: records every audit event and serves each order's history over HTTP.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(workers::tracker::run).await
}
