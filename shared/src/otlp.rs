//! OpenTelemetry export, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then the `handle` span of
//! every message a process handles is exported over OTLP/HTTP (protobuf),
//! in batches from a thread of its own, as a span of its order's trace: its
//! parent is the span the message's `traceparent` names, and what the
//! process sends on continues from it (`trace::stamp`). The service name is
//! the process's (`OTEL_SERVICE_NAME` overrides it), with its instance id;
//! the exporter reads the other standard `OTEL_EXPORTER_OTLP_*` and
//! `OTEL_BSP_*` settings itself. When it is off no layer is installed, so
//! spans cost what they did before.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

fn configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The layer that exports spans, when an endpoint is configured; `Err` with
/// the reason when it is configured wrongly.
pub fn layer<S>(service: &str) -> anyhow::Result<Option<impl tracing_subscriber::Layer<S>>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot export spans to OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let mut resource = opentelemetry_sdk::Resource::builder().with_service_name(service);
    if let Ok(instance) = std::env::var("ORDERFLOW_INSTANCE_ID") {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance));
    }
    let provider =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    let tracer = provider.tracer("orderflow");
    let _ = PROVIDER.set(provider);
    Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer)))
}

/// Makes `span` (not yet entered) a child of the span a message names: its
/// W3C trace id, span id and flags (`crate::trace::TraceContext`'s fields,
/// passed as they are so that this module needs nothing of that one).
pub fn adopt(span: &tracing::Span, trace_id: u128, span_id: u64, flags: u8) {
    if !enabled() {
        return;
    }
    let remote = SpanContext::new(
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes(span_id.to_be_bytes()),
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The exported span id of the current span, when spans are exported.
pub fn current_span_id() -> Option<u64> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| u64::from_be_bytes(span_context.span_id().to_bytes()))
}

/// Sends what is still buffered (at most a few seconds), at exit.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(3)) {
            tracing::debug!(%error, "spans not all exported at exit");
        }
    }
}
