//! `named_workflows`: three workflows over the same nodes (issue 29, part
//! 1). 300 orders split over `standard`, `ship-then-bill` and `drop-ship`,
//! half autonomous and half directed, on a stack whose nodes have their own
//! broker users: each order follows exactly its definition's path (its
//! history compared step by step with the definition's happy path), the
//! same orders end the same way in both modes, and the ledgers balance by
//! each definition (a `ship-then-bill` order's capture is due once it is
//! charged, after shipping; a drop-shipped order takes no stock and gets no
//! shipment of ours). The drop-ship orders reach the distributors with the
//! customer's address, once per order, from purchasing's own user, and the
//! simulated distributors ship them without turning them into stock.

use futures::StreamExt as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tests::{orders, Stack};

const NAMES: [&str; 3] = ["standard", "ship-then-bill", "drop-ship"];
/// No distributor supplies it: a drop-ship order of it ends out of stock.
const UNSUPPLIED: &str = "SKU-0011";

/// The `i`-th order of each half: its workflow by `i % 3`, 1 to 3 units; a
/// drop-ship order's SKU is one the distributor supplies, but for every
/// tenth, which no distributor supplies.
fn order(i: usize) -> Value {
    let mut order = orders::valid(1 + (i as i64 / 3) % 3, ["standard", "express", "overnight"][i % 3]);
    let workflow = NAMES[i % 3];
    order["workflow"] = json!(workflow);
    if workflow == "drop-ship" {
        let sku = if i % 30 == 2 { UNSUPPLIED.to_string() } else { format!("SKU-{:04}", 1 + i % 10) };
        order["items"][0]["sku"] = json!(sku);
    }
    order
}

/// Every drop-ship order waiting in the distributors' queue, read without
/// taking it (the channel closes with them unacknowledged: they go back).
async fn waiting_drop_ship_orders(stack: &Stack) -> Vec<(Value, Option<String>)> {
    let connection = stack.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            topology::DISTRIBUTOR_SHIPMENTS_QUEUE.into(),
            "test-reader".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut found = Vec::new();
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        let body: Value = serde_json::from_slice(&delivery.data).unwrap();
        let sender = delivery.properties.user_id().as_ref().map(|u| u.to_string());
        assert_eq!(
            delivery.properties.kind().as_ref().map(|k| k.as_str()),
            Some("drop_ship_order"),
            "{body}"
        );
        found.push((body, sender));
    }
    let _ = channel.close(200, "read".into()).await;
    let _ = connection.close(200, "done".into()).await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workflows_run_over_the_same_nodes_in_both_modes() {
    let mut stack = Stack::start_with_node_users("named-workflows").await;
    let supplied: Vec<String> = (1..=10).map(|i| format!("SKU-{i:04}")).collect();
    crate::backorders::supplied_by_d01(&stack, &supplied.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    // The distributors stopped: their queue keeps the drop-ship orders for the test to read.
    stack.stop("distributor-sim-1").await;

    let all: Vec<Value> = (0..300).map(|i| order(i % 150)).collect();
    let mut ids = stack.publish(&all[..150]);
    ids.extend(stack.publish_directed(&all[150..]));
    stack.wait_terminal(&ids, Duration::from_secs(300)).await;

    let mut ended: Vec<(String, Vec<String>)> = Vec::new();
    let mut ends_per_workflow: BTreeMap<String, usize> = BTreeMap::new();
    let mut drop_shipped: BTreeMap<String, i64> = BTreeMap::new();
    for (i, (id, order)) in ids.iter().zip(&all).enumerate() {
        let view = stack.order(id).await;
        let (name, units) = (NAMES[i % 150 % 3], order["items"][0]["qty"].as_i64().unwrap());
        let path = tests::states(&view);
        assert_eq!(
            (view.workflow.as_deref(), view.workflow_version),
            (Some(name), Some(1)),
            "{id}: {path:?}"
        );
        let definition = tests::follows(&view);
        if order["items"][0]["sku"] == UNSUPPLIED {
            let failed = ["placed", "accepted", "charged", "stock_short", "voided", "out_of_stock"];
            assert_eq!(path, failed, "{id} ({name}, no distributor supplies it)");
        } else {
            assert_eq!(view.state, definition.completes_at.as_str(), "{id} ({name}): {path:?}");
            let (travelled, defined) = crate::workflows::travelled_and_defined(&view, units);
            assert_eq!(travelled, defined, "{id} ({name}, {units} units) step by step");
        }
        if name == "drop-ship" && view.state == "shipped" {
            drop_shipped.insert(id.to_string(), units);
        }
        *ends_per_workflow.entry(format!("{name} {}", view.state)).or_default() += 1;
        ended.push((view.state.clone(), tests::nodes(&view)));
    }
    for i in 0..150 {
        assert_eq!(ended[i], ended[i + 150], "order {i} ({}) ends otherwise when directed", NAMES[i % 3]);
    }
    let expected: BTreeMap<String, usize> = [
        ("standard shipped", 100),
        ("ship-then-bill charged", 100),
        ("drop-ship shipped", 90),
        ("drop-ship out_of_stock", 10),
    ]
    .map(|(end, n)| (end.to_string(), n))
    .into();
    assert_eq!(ends_per_workflow, expected);
    // `topology workflow` prints each definition with what it ends in.
    let printed =
        std::process::Command::new(tests::bin_dir().join("topology")).arg("workflow").output().unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    for said in [
        "workflow ship-then-bill version 1",
        "payment     shipped",
        "cut-off: no cancel from shipped on",
        "completed (its capture due) at charged",
        "workflow drop-ship version 1",
        "purchasing  charged",
    ] {
        assert!(printed.contains(said), "`topology workflow` lacks {said:?}:\n{printed}");
    }
    // A ship-then-bill order is charged after it shipped, by payment.
    let billed = stack.order(&ids[1]).await;
    let at = |state: &str| billed.history.iter().position(|h| h.state == state).unwrap();
    assert!(at("shipped") < at("charged"), "{:?}", tests::states(&billed));
    assert_eq!(billed.history[at("charged")].node, "payment");

    // Each drop-shipped order reached the distributor once, with its
    // customer's address and units, from purchasing's own user.
    let waiting = waiting_drop_ship_orders(&stack).await;
    let purchasing = stack.role_user("purchasing");
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for (order, sender) in &waiting {
        assert_eq!(sender.as_deref(), Some(purchasing.as_str()), "{order}");
        assert_eq!(order["distributor_id"], "D-01", "{order}");
        assert_eq!(order["ship_to"]["line1"], "12 St James's Square", "{order}");
        let units: i64 = order["lines"].as_array().unwrap().iter().map(|l| l["qty"].as_i64().unwrap()).sum();
        let previous = seen.insert(order["order_id"].as_str().unwrap().to_string(), units);
        assert_eq!(previous, None, "an order drop-shipped twice: {order}");
    }
    assert_eq!(seen, drop_shipped, "one drop-ship order per drop-shipped order, of its units");

    // The distributors ship them: the queue drains, and no stock comes of them.
    stack.spawn("distributor-sim", "distributor-sim-1");
    let management = tests::management();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let queue = management.queue(&stack.vhost.name, topology::DISTRIBUTOR_SHIPMENTS_QUEUE).await.unwrap();
        if queue["messages"].as_i64() == Some(0) && queue["consumers"].as_i64() == Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the drop-ship orders were not taken: {queue}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ends = tests::assert_ledgers_match_histories(&stack, &all, &ids).await;
    eprintln!("ends: {ends:?}; per workflow: {ends_per_workflow:?}");
    for sku in &supplied {
        let stock = stack.cli_json(&["stock", sku, "--json"]);
        assert_eq!(stock["on_hand"], json!(1_000_000), "{sku}: a drop-ship moved stock: {stock}");
    }
    let letters = stack.cli_json(&["dlq", "list", "--json"]);
    assert!(letters.as_array().unwrap().is_empty(), "nothing dead-lettered: {letters}");
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}

/// An element as a node's own user would forge it: `state`, `workflow`,
/// charged or not; its order id and its body.
fn forged(state: shared::OrderState, workflow: &str, charged: bool) -> (String, String) {
    let order: shared::order::Order = serde_json::from_value(orders::valid(1, "standard")).unwrap();
    let charge = shared::order::Charge {
        charge_id: uuid::Uuid::new_v4(),
        amount_cents: 4_699,
        card_last4: "1111".into(),
    };
    let element = shared::OrderElement {
        state,
        seq: 4,
        charge: charged.then_some(charge),
        reservation: Some(shared::order::Reservation { reservation_id: uuid::Uuid::new_v4() }),
        workflow: workflow.into(),
        ..shared::OrderElement::placed(order)
    };
    (element.order_id.to_string(), serde_json::to_string(&element).unwrap())
}

/// The named workflows against their own users and careless input: a
/// ship-then-bill order waiting for a card after it shipped can no longer be
/// cancelled or sent elsewhere; careless workflow names are rejected with
/// the reason; an element switched to another workflow between hops, forged
/// by a node's own user with pika, is dead-lettered by what it carries (a
/// charge where its claimed workflow has none yet, or none where it has);
/// only purchasing may order a drop-ship from the distributors, and a
/// malformed one is dead-lettered; purchasing's user may not ship or
/// receive anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_switched_or_forged_between_hops_is_refused_and_its_cut_offs_hold() {
    let mut stack =
        Stack::start_with_node_users_env("workflow-hostile", &[("ORDERFLOW_PAYMENT_WAIT_S", "120")]).await;
    let mut declined = orders::declined();
    declined["workflow"] = json!("ship-then-bill");
    let careless: Vec<Value> = ["drop-ship\u{0}", "DROP-SHIP", " ship-then-bill", "ship-then-bill\n"]
        .iter()
        .map(|name| {
            let mut order = orders::valid(1, "standard");
            order["workflow"] = json!(name);
            order
        })
        .collect();
    let ids = stack.publish(&[vec![declined], careless].concat());
    stack.wait_state(&ids[0], "awaiting_payment", Duration::from_secs(60)).await;
    let waiting = stack.order(&ids[0]).await;
    let shipped_first = ["placed", "accepted", "reserved", "picked", "shipped", "awaiting_payment"];
    assert_eq!(tests::states(&waiting), shipped_first);
    let id = ids[0].to_string();
    let (code, _, out, _) = stack.change_cli(&["cancel", &id, "--wait"]);
    assert_eq!(code, 4, "a shipped order is not cancelled: {out}");
    assert!(out.contains("already shipped"), "{out}");
    let elsewhere = json!({"name": "Bob", "line1": "1 Other Road", "city": "Leeds", "postal_code": "LS1 1AA", "country": "GB"});
    let (code, _, out, _) = stack.change_cli(&["change", &id, "--ship-to", &elsewhere.to_string(), "--wait"]);
    assert_eq!(code, 4, "a shipped order goes nowhere else: {out}");
    assert!(out.contains("already shipped"), "{out}");
    stack.wait_terminal(&ids[1..], Duration::from_secs(60)).await;
    for id in &ids[1..] {
        let view = stack.order(id).await;
        assert_eq!(view.state, "rejected", "{id}: {:?}", tests::states(&view));
        let reason = &view.history.iter().find(|h| h.state == "rejected").unwrap().detail;
        assert!(reason.contains("is not one this distribution center runs"), "{reason}");
        assert!(!reason.contains('\u{0}') && !reason.contains('\n'), "{reason:?}");
    }

    // Switched between hops by the nodes' own users: refused by what the element carries.
    use shared::OrderState as S;
    let switched = [
        ("shipping", "order.payment", forged(S::Shipped, "ship-then-bill", true), "carries a charge"),
        ("picklist", "order.shipping", forged(S::Picked, "standard", false), "carries none"),
        ("payment", "order.purchasing", forged(S::Charged, "drop-ship", false), "carries none"),
    ];
    for (role, key, (order_id, body), says) in &switched {
        let (url, user) = (stack.role_url(role), stack.role_user(role));
        let refused = tests::pika_publish(&url, &user, "orderflow.workflow", key, "order", body);
        assert_eq!(refused, None, "the broker lets {role} send {key}");
        let letters = stack.letters_with(order_id, 1).await;
        let reason = letters.first().and_then(|l| l["reason"].as_str()).unwrap_or_default();
        assert!(
            reason.contains(says) && reason.contains("switched to another workflow or forged between hops"),
            "{role} → {key}: {letters:?}"
        );
    }

    // The distributors take a drop-ship order from purchasing only, and only a well-formed one.
    let drop_ship = json!({"po_id": uuid::Uuid::new_v4(), "order_id": uuid::Uuid::new_v4(), "distributor_id": "D-01",
        "ship_to": {"name": "Eve", "line1": "1 Fake St", "city": "Nowhere", "postal_code": "0", "country": "GB"},
        "lines": [{"sku": "SKU-0001", "qty": 1_000}]});
    let send_as = |role: &str, body: &serde_json::Value| {
        let (url, user) = (stack.role_url(role), stack.role_user(role));
        tests::pika_publish(
            &url,
            &user,
            "orderflow.purchase-orders",
            "po.D-01",
            "drop_ship_order",
            &body.to_string(),
        )
    };
    assert_eq!(send_as("inventory", &drop_ship), None, "inventory may send purchase orders");
    assert_eq!(stack.letters_with("only a drop-shipping node orders a drop-ship", 1).await.len(), 1);
    let mut malformed = drop_ship.clone();
    malformed["lines"][0]["qty"] = json!("NaN");
    malformed["extra"] = json!(true);
    assert_eq!(send_as("purchasing", &malformed), None);
    assert_eq!(stack.letters_with("not a drop-ship order", 1).await.len(), 1);
    let (url, user) = (stack.role_url("purchasing"), stack.role_user("purchasing"));
    for (exchange, key) in [("orderflow.workflow", "order.shipping"), ("orderflow.receiving", "received")] {
        let refused = tests::pika_publish(&url, &user, exchange, key, "order", "{}");
        assert!(
            refused.is_some_and(|r| r.contains("403") || r.contains("ACCESS_REFUSED")),
            "purchasing may not publish {key} on {exchange}"
        );
    }
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}
