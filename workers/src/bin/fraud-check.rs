//! The fraud-check node: screens accepted orders before they are charged
//! (standard v2 on). Its help text, queues and settings are its row of the
//! process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("fraud-check", workers::stages::fraud_check::run)
}
