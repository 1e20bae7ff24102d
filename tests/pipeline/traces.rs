//! `traces`: W3C trace context across hops (issue 11, item 5). Every
//! message of an order carries a `traceparent` with the order's trace id:
//! each hop, the `placed` record, change records, the coordinator's calls and
//! the services' results; the tracker records it on every history entry. A
//! client's own `traceparent` is kept, a plain order without one gets its
//! order's. Every log line a node writes while handling an element carries
//! the trace id and the order id, in text and in JSON.

use serde_json::{json, Value};
use std::time::Duration;
use tests::{orders, Stack};
use uuid::Uuid;

fn traces_of(view: &harness::OrderView) -> Vec<(String, Option<String>)> {
    view.history.iter().map(|h| (h.state.clone(), h.trace_id.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_change_and_call_carries_the_orders_trace() {
    let mut stack = Stack::empty("traces", &[]).await;
    // Payment logs each element it handles (debug), as text; shipping as JSON.
    let env = &mut stack.config.binary_env;
    env.push(("payment".into(), "RUST_LOG".into(), "warn,shared::events=debug".into()));
    env.push(("shipping".into(), "RUST_LOG".into(), "warn,shared::events=debug".into()));
    env.push(("shipping".into(), "ORDERFLOW_LOG_FORMAT".into(), "json".into()));
    stack.config.pass_rust_log = true;
    stack.start_all().await.unwrap();

    let autonomous = stack.publish(&[orders::valid(2, "standard"), orders::declined()]);
    let directed = stack.publish_directed(&[orders::valid(1, "express")]);
    // A plain order from a client with a trace of its own (the management API's publish).
    let client_trace = format!("{:032x}", rand::random::<u128>() | 1);
    let own_id = Uuid::new_v4();
    let mut plain = orders::valid(1, "standard");
    plain["order_id"] = json!(own_id);
    let properties = json!({"content_type": "application/json",
                            "headers": {"traceparent": format!("00-{client_trace}-00f067aa0ba902b7-01")}});
    let answer = stack
        .publish_with_management_api("orderflow.workflow", "order.intake", properties, &plain.to_string())
        .await;
    assert_eq!(answer["routed"], true, "{answer}");
    let mut all: Vec<Uuid> = autonomous.iter().chain(&directed).copied().collect();
    all.push(own_id);
    stack.wait_terminal(&all, Duration::from_secs(60)).await;
    // A change after the end: its records are in the order's trace too.
    let (code, _, _, err) = stack.change_cli(&["cancel", &autonomous[0].to_string(), "--wait"]);
    assert_eq!(code, 4, "rejected after shipping: {err}");
    stack.wait_change_outcomes(&autonomous[0], 1, Duration::from_secs(30)).await;

    for id in autonomous.iter().chain(&directed) {
        let view = stack.order(id).await;
        let expected = Some(id.simple().to_string());
        for (state, trace) in traces_of(&view) {
            assert_eq!(trace, expected, "order {id}, {state}: {:?}", traces_of(&view));
        }
    }
    let directed_view = stack.order(&directed[0]).await;
    assert!(directed_view.history.iter().any(|h| h.mode.as_deref() == Some("directed")));
    let view = stack.order(&own_id).await;
    for (state, trace) in traces_of(&view) {
        assert_eq!(trace.as_deref(), Some(client_trace.as_str()), "the client's trace, at {state}");
    }

    // Log lines carry the trace and the order: text (payment) and JSON (shipping).
    let payment_log = std::fs::read_to_string(stack.run_dir.join("payment-1.log")).unwrap();
    for id in &autonomous {
        let line = payment_log
            .lines()
            .find(|l| l.contains("element handled") && l.contains(&id.to_string()))
            .unwrap_or_else(|| panic!("no line for {id} in:\n{payment_log}"));
        assert!(line.contains(&format!("trace_id={}", id.simple())), "{line}");
        assert!(line.contains(&format!("order_id={id}")), "{line}");
    }
    let own_line =
        payment_log.lines().find(|l| l.contains("element handled") && l.contains(&own_id.to_string()));
    assert!(own_line.is_some_and(|l| l.contains(&client_trace)), "{payment_log}");
    let shipping_log = std::fs::read_to_string(stack.run_dir.join("shipping-1.log")).unwrap();
    let shipped: Vec<Value> = shipping_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "element handled")
        .collect();
    assert!(!shipped.is_empty(), "{shipping_log}");
    for line in shipped {
        let order_id = line["span"]["order_id"].as_str().unwrap_or_default().to_string();
        let trace_id = line["span"]["trace_id"].as_str().unwrap_or_default();
        let expected = Uuid::parse_str(&order_id).map(|id| id.simple().to_string()).unwrap_or_default();
        if Uuid::parse_str(&order_id) == Ok(own_id) {
            assert_eq!(trace_id, client_trace, "{line}");
        } else {
            assert_eq!(trace_id, expected, "{line}");
        }
    }
}

/// A stand-in OpenTelemetry collector: keeps every OTLP/HTTP export it is sent.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, bodies)
}

/// One exported span: (service, trace id, span id, parent span id).
type Exported = (String, Vec<u8>, Vec<u8>, Vec<u8>);

fn decode_exports(bodies: &[Vec<u8>]) -> Vec<Exported> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let mut spans = Vec::new();
    for body in bodies {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf export");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span.trace_id, span.span_id, span.parent_span_id));
                }
            }
        }
    }
    spans
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, every node exports the span it
/// handled each element in, in the order's trace, each a child of the span
/// that sent it the element (all but intake's, whose parent is the
/// publisher's, which exports nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_with_opentelemetry_in_each_orders_trace() {
    let (endpoint, bodies) = collector().await;
    let stack = Stack::start(
        "otlp",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "200")],
    )
    .await;
    let ids = stack.publish(&[orders::valid(2, "standard"), orders::valid(1, "express")]);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    let nodes_of = |order: &Uuid, spans: &[Exported]| -> Vec<String> {
        let mut nodes: Vec<String> = spans
            .iter()
            .filter(|(_, trace, _, _)| trace.as_slice() == order.as_bytes())
            .map(|(service, ..)| service.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    };
    let spans = harness::until(Duration::from_secs(20), Duration::from_millis(300), || async {
        let spans = decode_exports(&bodies.lock().unwrap());
        // intake, payment, inventory, picklist, shipping (and rebin for the two-unit order).
        if nodes_of(&ids[0], &spans).len() >= 6 && nodes_of(&ids[1], &spans).len() >= 5 {
            Ok(harness::Check::Done(spans))
        } else {
            Ok(harness::Check::Waiting(format!(
                "exported: {:?} / {:?}",
                nodes_of(&ids[0], &spans),
                nodes_of(&ids[1], &spans)
            )))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    for id in &ids {
        let trace: Vec<&Exported> = spans.iter().filter(|(_, t, ..)| t.as_slice() == id.as_bytes()).collect();
        for (service, _, _, parent) in &trace {
            if service.contains("intake") || service.contains("tracker") {
                continue;
            }
            assert!(
                trace.iter().any(|(_, _, span, _)| span == parent),
                "{service}'s span in {id} has a parent that was not exported: {trace:?}"
            );
        }
    }
}
