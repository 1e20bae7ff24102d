//! The picklist node: batches reserved shipments into picklists per shipping method. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("picklist", workers::stages::picklist::run)
}
