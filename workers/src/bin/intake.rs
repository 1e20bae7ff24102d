//! The intake node: validates placed orders. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("intake", workers::stages::intake::run)
}
