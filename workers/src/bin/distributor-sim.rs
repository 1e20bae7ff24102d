//! The simulated distributors: ship each purchase order after a delay, as received items. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("distributor-sim", workers::distributor_sim::run)
}
