//! `insight` (issue 11): the report and the warehouse against real processes.
//!
//! - With inventory slowed (`ORDERFLOW_DELAY_MS_INVENTORY=150`) the report
//!   names inventory as the slowest node and counts what each node did, the
//!   changes, and a dead letter at intake. Once the orders' quiet period has
//!   passed the tracker moves them to the warehouse: the active store is
//!   empty, each order's status and history read the same as before, the
//!   report over the same range gives the same figures, searches and counts
//!   still find them, Python's `sqlite3` reads the warehouse as it is, and a
//!   late duplicate of a moved order's event makes nothing active again.
//! - With shipping stopped the report lists the waiting orders as stuck at
//!   shipping; once it is back they ship and nothing is stuck. A direct
//!   service call's element, which ends at intake by design, is counted
//!   apart and never listed as stuck.

use serde_json::{json, Value};
use shared::report::Report;
use shared::tracker_api::StoreRows;
use std::time::Duration;
use tests::{count, orders, Stack};

async fn report(stack: &Stack, query: &str) -> Report {
    let (status, body) = stack.get(&format!("/report?{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn store_rows(stack: &Stack) -> StoreRows {
    let (status, body) = stack.get("/store").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn node<'a>(report: &'a Report, name: &str) -> &'a shared::report::NodeFigures {
    report.nodes.iter().find(|n| n.node == name).unwrap_or_else(|| panic!("no {name} in {report:?}"))
}

fn encode(time: &str) -> String {
    time.replace(':', "%3A").replace('+', "%2B")
}

/// Waits until the tracker has moved every order to the warehouse, then
/// checks that each reads as before, the report over `range` gives the same
/// figures as `live` did, searches and counts still find them, and each
/// step's dwell time is the time since the previous step. Returns the rows.
async fn the_move_keeps_everything(
    stack: &Stack,
    ids: &[uuid::Uuid],
    views: &[harness::OrderView],
    range: &str,
    live: &Report,
) -> StoreRows {
    // The move: nothing active is left, and everything reads as before.
    let rows = harness::until(Duration::from_secs(40), Duration::from_millis(500), || async {
        let rows = store_rows(stack).await;
        if rows.active_orders == 0 && rows.active_events == 0 {
            Ok(harness::Check::Done(rows))
        } else {
            Ok(harness::Check::Waiting(format!("{rows:?}")))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(rows.warehouse_orders, ids.len() as i64);
    let entries: usize = views.iter().map(|v| v.history.len()).sum();
    assert_eq!(rows.warehouse_events, entries as i64);
    for (id, before) in ids.iter().zip(views) {
        assert_eq!(&stack.order(id).await, before, "{id} reads differently from the warehouse");
    }
    let mut historical = report(stack, range).await;
    let mut before = live.clone();
    historical.stuck_after_ms.clear();
    before.stuck_after_ms.clear();
    // Settled batches are not histories: they stay where they are, and one
    // settled within the range may have reached the tracker after the first report.
    historical.settlement = Default::default();
    before.settlement = Default::default();
    assert_eq!(historical, before, "the warehouse gives other figures than the live store did");
    let stats = stack.tracker().stats().await.unwrap();
    assert_eq!(stats.orders, ids.len() as i64);
    let (status, body) = stack.get("/orders?state=payment_declined").await;
    assert_eq!(status, 200);
    assert!(body.contains(&ids[ids.len() - 3].to_string()), "{body}");

    // The warehouse as analysis tools see it: one row per step, dwell filled in.
    let tracker_db = stack.store("tracker", "warehouse_events").await;
    let missing =
        "SELECT COUNT(*) FROM warehouse_events WHERE change_id IS NULL AND seq > 0 AND dwell_ms IS NULL";
    assert_eq!(count(&tracker_db, missing).await, 0);
    let view = &views[0];
    for (step, previous) in view
        .history
        .iter()
        .skip(1)
        .zip(&view.history)
        .filter(|(s, p)| s.change_id.is_none() && p.change_id.is_none())
    {
        let sql = format!("SELECT dwell_ms FROM warehouse_events WHERE event_id = '{}'", step.event_id);
        let kept = count(&tracker_db, &sql).await;
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap();
        let expected = (at(&step.at) - at(&previous.at)).num_microseconds().unwrap() as f64 / 1000.0;
        assert!(
            (kept as f64 - expected).abs() <= 1.0,
            "{}: dwell {kept} ms, the history says {expected} ms",
            step.state
        );
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_finds_the_slow_node_and_the_warehouse_keeps_every_figure() {
    let stack = Stack::start(
        "insight-warehouse",
        &[("ORDERFLOW_DELAY_MS_INVENTORY", "150"), ("ORDERFLOW_WAREHOUSE_AFTER_S", "8")],
    )
    .await;
    let from = shared::audit::rfc3339::format(&(chrono::Utc::now() - chrono::Duration::seconds(1)));
    let mut batch: Vec<Value> = (0..16).map(|i| orders::valid(1 + i % 2, "standard")).collect();
    batch.extend([orders::declined(), orders::out_of_stock(), orders::invalid()]);
    let ids = stack.publish(&batch);
    let (code, _, _, err) = stack.change_cli(&["cancel", &ids[15].to_string()]);
    assert_eq!(code, 0, "{err}");
    // Not an order at all: intake dead-letters it, which its incident records.
    let routed = stack
        .publish_with_management_api(topology::WORKFLOW_EXCHANGE, "order.intake", json!({}), "{\"not\": ")
        .await;
    assert_eq!(routed["routed"], true, "{routed}");
    stack.wait_terminal(&ids, Duration::from_secs(90)).await;
    stack.wait_change_outcomes(&ids[15], 1, Duration::from_secs(30)).await;
    let mut views = Vec::new();
    for id in &ids {
        views.push(stack.order(id).await);
    }
    let to = shared::audit::rfc3339::format(&(chrono::Utc::now() + chrono::Duration::seconds(1)));
    let range = format!("from={}&to={}", encode(&from), encode(&to));

    let live = harness::until(Duration::from_secs(20), Duration::from_millis(300), || async {
        let live = report(&stack, &range).await;
        match node(&live, "intake").dead_letters {
            0 => Ok(harness::Check::Waiting("intake's dead letter is not counted yet".into())),
            _ => Ok(harness::Check::Done(live)),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(live.slowest.as_deref(), Some("inventory"), "{live:#?}");
    assert_eq!(live.orders_placed, ids.len() as u64);
    assert_eq!(live.orders_ended, ids.len() as u64);
    assert_eq!(live.end_to_end.count, ids.len() as u64);
    assert_eq!(node(&live, "intake").handled, ids.len() as u64, "every order was accepted or rejected");
    assert_eq!(node(&live, "intake").dead_letters, 1);
    assert_eq!(live.outcomes.get("rejected"), Some(&1), "{:?}", live.outcomes);
    assert_eq!(live.outcomes.get("payment_declined"), Some(&1), "{:?}", live.outcomes);
    let inventory = node(&live, "inventory");
    let picklist = node(&live, "picklist");
    assert!(inventory.dwell.p99_ms >= 150, "{inventory:?}");
    assert!(inventory.dwell.p99_ms > picklist.dwell.p99_ms, "{inventory:?} {picklist:?}");
    assert_eq!(live.changes.requested, 1);
    assert_eq!(live.changes.applied + live.changes.rejected, 1);
    assert!(live.stuck.is_empty(), "{:?}", live.stuck);

    // The command line shows the same, as a table and as JSON.
    let out = stack.cli(&["report", "--last", "5m"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let slow_line = text.lines().find(|l| l.contains("<- slowest")).unwrap_or_else(|| panic!("{text}"));
    assert!(slow_line.starts_with("inventory"), "{text}");
    let json = stack.cli_json(&["report", "--from", &from, "--to", &to, "--json"]);
    assert_eq!(json["slowest"], "inventory");
    let out = stack.cli(&["report", "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "a bad time is a usage error");

    let rows = the_move_keeps_everything(&stack, &ids, &views, &range, &live).await;
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); \
             print(db.execute(\"SELECT COUNT(*) FROM warehouse_orders WHERE latency_ms >= 0\").fetchone()[0]); \
             print(db.execute(\"SELECT node FROM warehouse_events WHERE dwell_ms IS NOT NULL \
             GROUP BY node ORDER BY MAX(dwell_ms) DESC LIMIT 1\").fetchone()[0])",
        )
        .arg(stack.run_dir.join("tracker.db"))
        .output()
        .expect("python3 runs");
    let printed = String::from_utf8_lossy(&python.stdout);
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [ids.len().to_string().as_str(), "inventory"],
        "{printed}"
    );

    // A late duplicate of a moved order's `placed` event (as the operator may send it).
    let placed = views[0].entry("placed").expect("a placed entry").clone();
    let event = json!({
        "schema_version": shared::order::SCHEMA_VERSION, "event_id": placed.event_id, "order_id": ids[0],
        "node": placed.node, "instance_id": placed.instance_id, "from_state": null, "to_state": "placed",
        "terminal": false, "at": placed.at, "detail": placed.detail, "seq": 0, "version": placed.version,
        "customer_id": "cust-1"
    });
    let properties = json!({"type": "audit", "user_id": "guest", "delivery_mode": 2,
                            "headers": {"schema_version": shared::order::SCHEMA_VERSION}});
    let routed = stack
        .publish_with_management_api(
            topology::AUDIT_EXCHANGE,
            "audit.publisher.placed",
            properties,
            &event.to_string(),
        )
        .await;
    assert_eq!(routed["routed"], true, "{routed}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = store_rows(&stack).await;
    assert_eq!((after.active_orders, after.active_events), (0, 0), "{after:?}");
    assert_eq!(after.warehouse_events, rows.warehouse_events, "a duplicate was stored twice");
    assert_eq!(&stack.order(&ids[0]).await, &views[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_waiting_at_a_stopped_node_are_reported_stuck_there() {
    let mut stack = Stack::start("insight-stuck", &[]).await;
    // A direct call of intake's service: its element ends at intake, accepted,
    // by design (issue 31): counted apart, never stuck at payment.
    let order_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/order.json");
    let called = stack.cli(&["call", "intake", "--element-file", order_file, "--sync", "--timeout", "10"]);
    assert!(called.status.success(), "{}", String::from_utf8_lossy(&called.stderr));
    stack.stop("shipping-1").await;
    let ids = stack.publish(&(0..5).map(|_| orders::valid(1, "express")).collect::<Vec<_>>());
    let stuck = harness::until(Duration::from_secs(45), Duration::from_millis(500), || async {
        let report = report(&stack, "last=300&stuck_after=2").await;
        let at_shipping: Vec<&str> =
            report.stuck.iter().filter(|s| s.at_node == "shipping").map(|s| s.order_id.as_str()).collect();
        if ids.iter().all(|id| at_shipping.contains(&id.to_string().as_str())) {
            Ok(harness::Check::Done(report))
        } else {
            let (_, waiting) = stack.get("/orders?at=shipping").await;
            Ok(harness::Check::Waiting(format!("stuck: {:?}; at shipping: {waiting}", report.stuck)))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(stuck.stuck.iter().all(|s| s.waiting_ms >= 2_000 && s.threshold_ms == 2_000), "{stuck:?}");
    assert!(
        stuck.stuck.iter().all(|s| s.at_node == "shipping"),
        "the call's element is not stuck: {stuck:?}"
    );
    assert_eq!(stuck.service_calls, 1, "{stuck:?}");
    // Without an override, shipping (which handled nothing) waits for the default.
    let default = report(&stack, "last=300").await;
    assert_eq!(default.stuck_after_ms["shipping"], shared::report::DEFAULT_STUCK_AFTER.as_millis() as u64);
    assert!(default.stuck.is_empty(), "{:?}", default.stuck);
    let out = stack.cli(&["report", "--stuck-after", "2s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}  ", ids[0])) && text.contains("at shipping"), "{text}");
    assert!(text.contains("service calls: 1 active orders"), "{text}");

    stack.spawn("shipping", "shipping-1");
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    let after = report(&stack, "last=300&stuck_after=2").await;
    assert!(after.stuck.is_empty(), "{:?}", after.stuck);
    assert_eq!(node(&after, "shipping").handled, ids.len() as u64);
}

/// The move on PostgreSQL: its own SQL (times and the window function) gives the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_the_warehouse_keeps_every_figure_too() {
    let database = tests::PgDatabase::create("warehouse").await;
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("ORDERFLOW_DB_MAX_CONNECTIONS", tests::PG_CONNECTIONS_PER_PROCESS),
        ("ORDERFLOW_WAREHOUSE_AFTER_S", "4"),
    ];
    let stack = Stack::start("insight-pg", &env).await;
    let from = shared::audit::rfc3339::format(&(chrono::Utc::now() - chrono::Duration::seconds(1)));
    let mut batch: Vec<Value> = (0..8).map(|i| orders::valid(1 + i % 2, "standard")).collect();
    batch.extend([orders::declined(), orders::out_of_stock(), orders::invalid()]);
    let ids = stack.publish(&batch);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    let mut views = Vec::new();
    for id in &ids {
        views.push(stack.order(id).await);
    }
    let to = shared::audit::rfc3339::format(&(chrono::Utc::now() + chrono::Duration::seconds(1)));
    let range = format!("from={}&to={}", encode(&from), encode(&to));
    let live = report(&stack, &range).await;
    assert_eq!(live.orders_ended, ids.len() as u64);
    the_move_keeps_everything(&stack, &ids, &views, &range, &live).await;
}
