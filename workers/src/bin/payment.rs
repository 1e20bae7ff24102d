//! The payment node: charges cards through the simulated processor. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("payment", workers::payment::run)
}
