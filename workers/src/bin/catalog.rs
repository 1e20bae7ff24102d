//! The catalog domain. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("catalog", workers::domains::records::run_catalog)
}
