//! Structured logging: quiet by default (warnings, errors and each process's
//! start and stop lines), detailed with `RUST_LOG`; colour only on a
//! terminal; JSON lines with `ORDERFLOW_LOG_FORMAT=json`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// The target of the start and stop lines, shown at the default level.
pub const LIFECYCLE: &str = "orderflow::lifecycle";

/// What a long-running process logs without `RUST_LOG`.
pub const DEFAULT_FILTER: &str = "warn,orderflow::lifecycle=info";

/// Logging for a long-running process.
pub fn init() {
    init_with(DEFAULT_FILTER);
}

/// Logging with another default filter (the CLI's, which leaves lapin's own
/// reports of a closing connection out).
pub fn init_with(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let format = std::env::var("ORDERFLOW_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format.trim() {
        "json" => {
            let _ =
                builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init();
        }
        other => {
            let _ = builder.with_ansi(std::io::stderr().is_terminal()).try_init();
            if !matches!(other, "" | "text") {
                tracing::warn!(
                    ORDERFLOW_LOG_FORMAT = other,
                    "unknown log format (text or json); logging text"
                );
            }
        }
    }
}

/// The line a process logs when it starts serving.
pub fn started(node: &str, instance: &str, broker: &str, prefetch: u16) {
    tracing::info!(
        target: LIFECYCLE,
        version = env!("CARGO_PKG_VERSION"),
        node,
        instance,
        broker,
        prefetch,
        "started"
    );
}

/// The line a process logs when it stops, cleanly or on error.
pub fn stopped(node: &str, instance: &str, result: &anyhow::Result<()>) {
    match result {
        Ok(()) => tracing::info!(target: LIFECYCLE, node, instance, outcome = "shutdown", "stopped"),
        Err(error) => tracing::info!(
            target: LIFECYCLE,
            node,
            instance,
            outcome = "error",
            error = format!("{error:#}"),
            "stopped"
        ),
    }
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
