//! The rebin node: consolidates multi-unit shipments. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("rebin", workers::stages::rebin::run)
}
