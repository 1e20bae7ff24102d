//! The shipping node: ships orders with a tracking number. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("shipping", workers::stages::shipping::run)
}
