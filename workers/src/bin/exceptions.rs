//! The exceptions node: compensates and ends failed orders. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("exceptions", workers::stages::exceptions::run)
}
