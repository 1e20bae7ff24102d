//! `metrics`: every worker, the coordinator and the tracker serve Prometheus
//! metrics on `ORDERFLOW_METRICS_ADDR` (issue 11, item 4). Scraped while and
//! after orders flow, each node's `orderflow_elements_handled_total` equals
//! the orders the tracker's histories show it handled, the tracker's
//! `orderflow_events_recorded_total` equals the entries it holds, and the
//! names and labels follow Prometheus conventions. A bad address stops the
//! process at start with the reason.

use std::collections::HashMap;
use std::time::Duration;
use tests::{orders, Stack};

/// The value of `metric` (a full series name without labels) in `text`.
fn value(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.split(['{', ' ']).next() == Some(metric))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(addr: &str) -> String {
    let response =
        reqwest::get(format!("http://{addr}/metrics")).await.expect("the metrics endpoint answers");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_the_orders_the_tracker_records() {
    let mut stack = Stack::empty("metrics", &[]).await;
    let mut addrs: HashMap<&str, String> = HashMap::new();
    for binary in harness::processes() {
        let addr = format!("127.0.0.1:{}", harness::stack::free_port().unwrap());
        stack.config.binary_env.push((binary.into(), "ORDERFLOW_METRICS_ADDR".into(), addr.clone()));
        addrs.insert(binary, addr);
    }
    stack.start_all().await.unwrap();

    let mut batch = Vec::new();
    for i in 0..40 {
        batch.push(orders::valid(1 + i % 3, "standard"));
    }
    batch.extend([orders::declined(), orders::out_of_stock(), orders::invalid()]);
    let mut ids = stack.publish(&batch);
    ids.extend(stack.publish_directed(&[orders::valid(2, "express"), orders::valid(1, "standard")]));
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;

    // What the tracker says each node did: the orders with a state it produced
    // in autonomous mode (a service call counts as a call, not an element).
    let mut handled: HashMap<String, f64> = HashMap::new();
    let mut entries = 0.0;
    for id in &ids {
        let view = stack.order(id).await;
        entries += view.history.len() as f64;
        let mut nodes: Vec<&str> = view
            .history
            .iter()
            .filter(|h| h.change_id.is_none() && h.node != "publisher" && h.mode.is_none())
            .map(|h| h.node.as_str())
            .collect();
        nodes.dedup();
        for node in nodes {
            *handled.entry(node.to_string()).or_default() += 1.0;
        }
    }
    let directed_steps: f64 = {
        let mut steps = 0.0;
        for id in &ids[ids.len() - 2..] {
            let view = stack.order(id).await;
            steps += view.history.iter().filter(|h| h.mode.as_deref() == Some("directed")).count() as f64;
        }
        steps
    };
    assert!(directed_steps > 0.0);

    let checked = harness::until(Duration::from_secs(15), Duration::from_millis(300), || async {
        let mut calls = 0.0;
        for node in harness::nodes() {
            let text = scrape(&addrs[node]).await;
            let got = value(&text, "orderflow_elements_handled_total").unwrap_or(-1.0);
            let want = handled.get(node).copied().unwrap_or(0.0);
            if got != want {
                return Ok(harness::Check::Waiting(format!(
                    "{node}: {got} handled, the tracker shows {want}"
                )));
            }
            calls += value(&text, "orderflow_calls_answered_total").unwrap_or(0.0);
            let timed = value(&text, "orderflow_handle_seconds_count").unwrap_or(0.0);
            assert!(timed >= got, "{node}: {timed} timed deliveries, {got} handled");
            assert_eq!(value(&text, "orderflow_in_flight"), Some(0.0), "{node} holds nothing when idle");
        }
        if calls < 1.0 {
            return Ok(harness::Check::Waiting(format!("{calls} service calls answered")));
        }
        let tracker = scrape(&addrs["tracker"]).await;
        let recorded = value(&tracker, "orderflow_events_recorded_total").unwrap_or(-1.0);
        if recorded != entries {
            return Ok(harness::Check::Waiting(format!("tracker: {recorded} recorded, {entries} entries")));
        }
        if value(&tracker, "orderflow_tracker_lag_events") != Some(0.0) {
            return Ok(harness::Check::Waiting("the tracker's lag is not 0 yet".into()));
        }
        Ok(harness::Check::Done(tracker))
    })
    .await;
    let tracker = checked.unwrap_or_else(|error| panic!("{error:#}"));
    let instance = r#"{node="tracker",instance="tracker-1"}"#;
    assert!(tracker.contains(&format!("orderflow_events_recorded_total{instance} ")), "{tracker}");
    assert!(tracker.contains("# TYPE orderflow_handle_seconds histogram"), "{tracker}");
    assert!(
        tracker.contains("# HELP orderflow_dead_lettered Messages sent to the dead-letter queue"),
        "{tracker}"
    );
    let coordinator = scrape(&addrs["coordinator"]).await;
    // One step per call for these orders: each answer the coordinator took moved one on.
    assert_eq!(
        value(&coordinator, "orderflow_elements_handled_total"),
        Some(directed_steps),
        "{coordinator}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_metrics_address_stops_the_process_with_the_reason() {
    let stack = Stack::empty("metrics-bad", &[]).await;
    for value in ["banana", "127.0.0.1:99999"] {
        let output = stack
            .command("payment")
            .env("ORDERFLOW_METRICS_ADDR", value)
            .env("ORDERFLOW_RUN_DIR", stack.run_dir.join("bad"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{value}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("ORDERFLOW_METRICS_ADDR"), "{value}: {stderr}");
    }
}
