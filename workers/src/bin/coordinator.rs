//! The coordinator: drives directed orders through the nodes' services. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("coordinator", workers::coordinator::run)
}
