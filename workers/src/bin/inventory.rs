//! The inventory node: reserves stock it alone owns. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("inventory", workers::inventory::run)
}
