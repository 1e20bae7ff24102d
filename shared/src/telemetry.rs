//! Structured logging: quiet by default (warnings, errors and each process's
//! start and stop lines), detailed with `RUST_LOG`; colour only on a
//! terminal; JSON lines with `ORDERFLOW_LOG_FORMAT=json`; spans exported
//! with OpenTelemetry when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`otlp`).

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The target of the start and stop lines, shown at the default level.
pub const LIFECYCLE: &str = "orderflow::lifecycle";

/// What a long-running process logs without `RUST_LOG`.
pub const DEFAULT_FILTER: &str = "warn,orderflow::lifecycle=info";

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Logging for the long-running process `service`, and span export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`otlp`).
pub fn init(service: &str) {
    init_layers(DEFAULT_FILTER, Some(service));
}

/// Logging with another default filter (the CLI's, which leaves lapin's own
/// reports of a closing connection out), without span export.
pub fn init_with(default_filter: &str) {
    init_layers(default_filter, None);
}

/// Logs that would carry a message's body, left out at every level (with
/// `RUST_LOG` too): lapin logs each returned message whole (a domain's
/// answer holds names, addresses and card tokens); a return is reported by
/// the publisher instead, naming only its exchange and routing key.
pub const NEVER_LOGGED: &[&str] = &["lapin::returned_messages=off"];

fn init_layers(default_filter: &str, exporting_as: Option<&str>) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    for directive in NEVER_LOGGED {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    let format = std::env::var("ORDERFLOW_LOG_FORMAT").unwrap_or_default();
    let format = format.trim();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<BoxedLayer> = vec![match format {
        "json" => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed(),
        _ => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
    }];
    let exporting = exporting_as.map(crate::otlp::layer::<Registry>).transpose();
    let export_error = match exporting {
        Ok(Some(Some(otel))) => {
            layers.push(otel.boxed());
            None
        }
        Ok(_) => None,
        Err(error) => Some(error),
    };
    let _ = tracing_subscriber::registry().with(layers.with_filter(filter)).try_init();
    if !matches!(format, "" | "text" | "json") {
        tracing::warn!(ORDERFLOW_LOG_FORMAT = format, "unknown log format (text or json); logging text");
    }
    if let Some(error) = export_error {
        tracing::warn!(error = format!("{error:#}"), "spans are not exported");
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

/// The line a process logs when it stops, cleanly or on error (after which
/// the spans still buffered are exported).
pub fn stopped(node: &str, instance: &str, result: &anyhow::Result<()>) {
    stopped_line(node, instance, result);
    crate::otlp::shutdown();
}

fn stopped_line(node: &str, instance: &str, result: &anyhow::Result<()>) {
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
