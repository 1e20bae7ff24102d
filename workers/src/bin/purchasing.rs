//! The purchasing node: sends drop-shipped orders to the distributors. Its help text, queues and settings are its
//! row of the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("purchasing", workers::stages::purchasing::run)
}
