//! The tracker: records every audit event and serves each order's history over HTTP. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("tracker", workers::tracker::run)
}
