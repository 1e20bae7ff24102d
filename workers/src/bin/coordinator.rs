//! The coordinator: drives directed orders through the nodes' services.

use shared::help;
use workers::Process;

const PROCESS: Process = Process {
    name: "coordinator",
    about: "The coordinator of orderflow (directed mode): takes the orders placed with routing key \
            order.coordinator, calls the nodes' services in the order the workflow definition gives, \
            decides in-flight changes on its copy of each order, and records every step in its own store.",
    reads: &[help::COORDINATOR],
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, workers::coordinator::run).await
}
