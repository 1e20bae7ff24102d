//! The simulated distributors: ship each purchase order after a delay, as received items.

use shared::help;
use workers::Process;

const PROCESS: Process = Process {
    name: topology::DISTRIBUTOR_SIM,
    about: "The simulated distributors of orderflow: take the purchase orders inventory sends for its backorders (the distributor shipments queue) and ship each after ORDERFLOW_DISTRIBUTOR_DELAY_MS, as received items.",
    reads: &[help::DISTRIBUTOR_SIM],
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    workers::node_main(PROCESS, workers::distributor_sim::run).await
}
