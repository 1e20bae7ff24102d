//! Structured logging: quiet by default (warnings and errors), detailed with `RUST_LOG`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Logs an error with its whole cause chain and returns the process exit code.
pub fn report_exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "exiting on error");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
