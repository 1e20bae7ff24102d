//! The customer domain: its primary, or with `ORDERFLOW_REGION` one of its replicas. Its help text, queues and settings are its row of
//! the process table (`topology::Process`).

fn main() -> std::process::ExitCode {
    workers::main("customer", workers::domains::customer::run)
}
