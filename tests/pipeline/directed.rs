//! `directed`: the coordinator drives orders through the nodes' services
//! (issue 9). The same orders, placed once autonomously and once directed,
//! end the same way: the same states in the same order, the same charges,
//! reservations and shipments; changes in flight are decided by the
//! coordinator before its next call; and killing the coordinator and every
//! service twice under 1,000 directed orders loses and doubles nothing.

use rand::{seq::SliceRandom, Rng};
use serde_json::{json, Value};
use shared::change::{Change, ChangeEvent, ChangeKind, ChangeRequest};
use shared::order::ShipTo;
use std::time::Duration;
use tests::{assert_ledgers_match_histories, orders, random_valid_order, states, Stack};
use transport::message::{change_event_message, change_request_message};
use transport::Publisher;
use uuid::Uuid;

/// A change request for an order not placed yet, as any client may send it:
/// decided by whoever meets the order first (intake, or the coordinator).
async fn change_before_the_order(stack: &Stack, order_id: Uuid, change: Change) {
    let request = ChangeRequest::new(order_id, change, None);
    let requested =
        ChangeEvent::new(&request, ChangeKind::ChangeRequested, "publisher", "test", String::new(), 0);
    let connection = stack.connect().await;
    let publisher = Publisher::open(&connection, &stack.user()).await.unwrap();
    let messages = [change_event_message(&requested), change_request_message(&request)];
    publisher.publish_all(&messages).await.unwrap();
    let _ = connection.close(200, "done".into()).await;
}

fn new_address() -> ShipTo {
    ShipTo {
        name: "Grace Hopper".into(),
        line1: "7 Compiler Court".into(),
        city: "Arlington".into(),
        postal_code: "22201".into(),
        country: "US".into(),
    }
}

/// The mixed set: multi- and single-unit, rejected, declined, out of stock,
/// an address change and a cancel (both heard before the order).
fn mixed_orders() -> Vec<(Value, Option<Change>)> {
    vec![
        (orders::valid(3, "standard"), None),
        (orders::valid(1, "express"), None),
        (orders::valid(2, "overnight"), None),
        (orders::invalid(), None),
        (orders::declined(), None),
        (orders::out_of_stock(), None),
        (orders::valid(2, "standard"), Some(Change::ShipTo { ship_to: new_address() })),
        (orders::valid(1, "standard"), Some(Change::Cancel)),
    ]
}

/// Places the mixed set (fresh ids) autonomously or directed; returns the ids.
async fn place(stack: &Stack, directed: bool) -> Vec<Uuid> {
    let mut placed = Vec::new();
    for (mut order, change) in mixed_orders() {
        let id = Uuid::new_v4();
        order["order_id"] = json!(id);
        if let Some(change) = change {
            change_before_the_order(stack, id, change).await;
        }
        placed.push(order);
    }
    // Let the tracker and the books hear the early changes first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if directed {
        stack.publish_directed(&placed)
    } else {
        stack.publish(&placed)
    }
}

/// What an order's run amounts to: its business states in order, and what
/// the ledgers hold for it.
async fn run_of(stack: &Stack, id: &Uuid) -> Value {
    let view = stack.order(id).await;
    let path: Vec<String> = states(&view).into_iter().filter(|s| !s.starts_with("change_")).collect();
    let changes: Vec<String> =
        states(&view).into_iter().filter(|s| s.starts_with("change_") && s != "change_requested").collect();
    let one = |pool: sqlx::AnyPool, sql: String| async move {
        let value: Option<String> = sqlx::query_scalar(&sql).fetch_optional(&pool).await.unwrap();
        pool.close().await;
        value
    };
    let charge = one(
        stack.store("processor", "processor_charges").await,
        format!("SELECT CAST(amount_cents AS TEXT) || ' ' || card_last4 FROM processor_charges WHERE order_id = '{id}'"),
    )
    .await;
    let reservation = one(
        stack.store("inventory", "inventory_reservations").await,
        format!("SELECT lines || ' released ' || CAST(released AS TEXT) FROM inventory_reservations WHERE order_id = '{id}'"),
    )
    .await;
    let shipment = one(
        stack.store("shipping", "shipping_shipments").await,
        format!("SELECT ship_to FROM shipping_shipments WHERE order_id = '{id}'"),
    )
    .await;
    json!({"path": path, "changes": changes, "charge": charge, "reservation": reservation, "shipment": shipment})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_orders_end_the_same_way_autonomous_and_directed() {
    let stack = Stack::start_with_node_users("directed-same").await;
    let autonomous = place(&stack, false).await;
    let directed = place(&stack, true).await;
    let all: Vec<Uuid> = autonomous.iter().chain(&directed).copied().collect();
    stack.wait_terminal(&all, Duration::from_secs(90)).await;
    // The nodes the coordinator called, and where each directed order ended.
    let (mut called, mut ends) = (std::collections::BTreeSet::new(), Vec::new());
    for (i, (a, d)) in autonomous.iter().zip(&directed).enumerate() {
        let (run_a, run_d) = (run_of(&stack, a).await, run_of(&stack, d).await);
        assert_eq!(run_a, run_d, "order {i}: autonomous {a} and directed {d} ended differently");
        // The directed run was driven by the coordinator, through the services.
        let view = stack.order(d).await;
        for entry in view.history.iter().filter(|h| h.node != "publisher" && h.node != "coordinator") {
            assert_eq!(entry.mode.as_deref(), Some("directed"), "order {i}: {entry:?}");
            called.insert(entry.node.clone());
        }
        ends.push(view.state);
        let autonomous_view = stack.order(a).await;
        assert!(autonomous_view.history.iter().all(|h| h.mode.is_none()), "order {i}");
    }
    assert_eq!(
        ends,
        [
            "shipped",
            "shipped",
            "shipped",
            "rejected",
            "payment_declined",
            "out_of_stock",
            "shipped",
            "cancelled"
        ],
        "every path was taken"
    );
    // The coordinator's calls are not kept in the nodes' call books: its own
    // store makes its steps idempotent (transport::service).
    assert!(called.len() >= 5, "{called:?}");
    for node in called {
        let table = format!("{}_calls", node.replace('-', "_"));
        let pool = stack.store(&node, &table).await;
        let kept = tests::count(&pool, &format!("SELECT COUNT(*) FROM {table}")).await;
        pool.close().await;
        assert_eq!(kept, 0, "{node} kept {kept} of the coordinator's calls");
    }
    let changed = run_of(&stack, &directed[6]).await;
    assert!(changed["shipment"].as_str().unwrap().contains("7 Compiler Court"), "{changed}");
    let cancel = stack.order(&directed[7]).await;
    let applied =
        cancel.history.iter().find(|h| h.state == "change_applied").expect("the cancel was applied");
    assert_eq!(applied.node, "coordinator", "the coordinator decides a directed order's changes");
}

/// A change heard while the coordinator waits on a call is decided on its
/// copy before the next call; a cancel then takes the compensations the
/// definition routes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_flight_are_decided_by_the_coordinator_before_its_next_call() {
    let mut stack = Stack::start("directed-changes", &[("ORDERFLOW_CALL_TIMEOUT_MS", "1000")]).await;
    assert!(stack.stop("picklist-1").await.success());
    let ids = stack.publish_directed(&[orders::valid(2, "standard"), orders::valid(1, "express")]);
    for id in &ids {
        stack.wait_state(id, "reserved", Duration::from_secs(30)).await;
    }
    let address = serde_json::to_string(&new_address()).unwrap();
    // --sync: applied within its timeout (once picklist answers) or not at all.
    let syncing = stack
        .command("orderflow")
        .args(["change", &ids[0].to_string(), "--ship-to", &address, "--sync", "--timeout", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, cancel_id, _, err) = stack.change_cli(&["cancel", &ids[1].to_string()]);
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.spawn("picklist", "picklist-1");
    let synced = tokio::task::spawn_blocking(move || syncing.wait_with_output().unwrap()).await.unwrap();
    let printed = String::from_utf8_lossy(&synced.stdout).to_string();
    assert!(synced.status.success(), "--sync: {printed}{}", String::from_utf8_lossy(&synced.stderr));
    let change_id = printed.lines().next().unwrap_or_default().trim().to_string();
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;

    let changed = stack.wait_change_outcomes(&ids[0], 1, Duration::from_secs(30)).await;
    let applied = changed
        .history
        .iter()
        .find(|h| h.change_id.as_deref() == Some(change_id.as_str()) && h.state == "change_applied");
    assert_eq!(applied.map(|h| h.node.as_str()), Some("coordinator"), "{:?}", states(&changed));
    assert_eq!(changed.state, "shipped");
    let shipped = changed.history.iter().find(|h| h.state == "shipped").unwrap();
    assert!(shipped.detail.contains("7 Compiler Court"), "{}", shipped.detail);
    assert_eq!(shipped.version, 1, "shipping saw the change");

    let cancelled = stack.wait_change_outcomes(&ids[1], 1, Duration::from_secs(30)).await;
    let path: Vec<String> = states(&cancelled).into_iter().filter(|s| !s.starts_with("change_")).collect();
    // The call to picklist was out when the cancel came: decided on its answer, before the next call.
    let expected = [
        "placed",
        "accepted",
        "charged",
        "reserved",
        "picked",
        "cancelling",
        "stock_released",
        "voided",
        "cancelled",
    ];
    assert_eq!(path, expected);
    let records = tests::change_records(&cancelled, &cancel_id);
    assert_eq!(records[1].0, "change_applied", "{records:?}");

    // A change after the end is rejected by the coordinator, which closed the order.
    let (code, _, out, _) =
        stack.change_cli(&["change", &ids[0].to_string(), "--ship-to", &address, "--wait"]);
    assert_eq!(code, 4, "rejected after shipping: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_coordinator_and_every_service_loses_and_doubles_nothing() {
    let mut stack = Stack::start("directed-kill9", &[("ORDERFLOW_CALL_TIMEOUT_MS", "2000")]).await;
    let mut rng = rand::thread_rng();
    let mut orders: Vec<Value> = (0..1000).map(|_| random_valid_order(&mut rng)).collect();
    for i in (0..1000).step_by(25) {
        orders[i] = match i % 3 {
            0 => tests::orders::declined(),
            1 => tests::orders::out_of_stock(),
            _ => tests::orders::invalid(),
        };
    }
    // Two coordinators share the work (and the store).
    stack.spawn("coordinator", "coordinator-2");
    let publishing = stack.publish_in_background(&orders, &["--rate", "150", "--directed"]);
    let mut victims: Vec<&str> = harness::processes().into_iter().filter(|p| *p != "tracker").collect();
    for round in 0..2 {
        victims.shuffle(&mut rng);
        for process in &victims {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
            // Each coordinator instance is killed once per round, the others each service.
            let labels: Vec<String> = if *process == "coordinator" {
                vec![format!("coordinator-{}", round + 1), format!("coordinator-{}", 2 - round)]
            } else {
                vec![format!("{process}-1")]
            };
            for label in labels {
                stack.kill(&label);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
                stack.spawn(process, &label);
            }
        }
    }
    let ids = tokio::task::spawn_blocking(move || tests::finish_publish(publishing)).await.unwrap();
    assert_eq!(ids.len(), 1000, "every order was published");
    stack.wait_terminal(&ids, Duration::from_secs(300)).await;
    let ends = assert_ledgers_match_histories(&stack, &orders, &ids).await;
    assert_eq!(ends.values().sum::<usize>(), 1000, "0 lost: {ends:?}");
    let coordinator = stack.store("coordinator", "coordinator_orders").await;
    let done =
        tests::count(&coordinator, "SELECT COUNT(*) FROM coordinator_orders WHERE status = 'done'").await;
    assert_eq!(done, 1000, "the coordinator saw every order to its end");
    coordinator.close().await;
    for id in ids.iter().take(50) {
        let view = stack.order(id).await;
        assert!(view.history.iter().any(|h| h.mode.as_deref() == Some("directed")), "{id} was directed");
    }
}
