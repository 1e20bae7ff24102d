//! `workflows`: every element carries the workflow it follows and its
//! version from intake on (issue 29, part 2's first step), in both modes:
//! `orderflow status --json` shows them. An order naming a workflow this
//! distribution center does not run is rejected with the reason, a careless
//! name too; an element claiming a version no node runs, forged by a node's
//! own user with pika, is dead-lettered with the reason, never guessed at,
//! and so is one switched to a version whose route does not lead where it
//! was sent. The report counts the orders in flight on each version; a
//! version deployed mid-run leaves each order on the one it started on.

use serde_json::{json, Value};
use shared::order::{Charge, Order, OrderElement, OrderState};
use std::time::Duration;
use tests::{orders, Stack};
use uuid::Uuid;

fn status(stack: &Stack, id: &Uuid) -> Value {
    stack.cli_json(&["status", &id.to_string(), "--json"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elements_carry_their_workflow_and_version_and_unknown_ones_are_refused() {
    let mut stack = Stack::start_with_node_users("workflows").await;
    let mut named = orders::valid(2, "express");
    named["workflow"] = json!("standard");
    let mut unknown = orders::valid(1, "standard");
    unknown["workflow"] = json!("same-day");
    let mut careless = orders::valid(1, "standard");
    careless["workflow"] = json!("x\u{7}".repeat(500));
    let ids = stack.publish(&[orders::valid(1, "standard"), named.clone(), unknown, careless]);
    let directed = stack.publish_directed(&[named]);
    let all: Vec<Uuid> = ids.iter().chain(&directed).copied().collect();
    stack.wait_terminal(&all, Duration::from_secs(90)).await;

    for id in [ids[0], ids[1], directed[0]] {
        let view = status(&stack, &id);
        assert_eq!(view["state"], "shipped", "{view}");
        assert_eq!((&view["workflow"], &view["workflow_version"]), (&json!("standard"), &json!(1)), "{view}");
    }
    for id in [ids[2], ids[3]] {
        let view = status(&stack, &id);
        assert_eq!(view["state"], "rejected", "{view}");
        assert!(view.get("workflow").is_none(), "a rejected order follows no workflow: {view}");
        let history = view["history"].as_array().unwrap();
        let rejected = history.iter().find(|h| h["state"] == "rejected").unwrap();
        let reason = rejected["detail"].as_str().unwrap();
        assert!(
            reason.contains(
                "is not one this distribution center runs (it runs standard v1, standard v2, ship-then-bill v1, drop-ship v1)"
            ),
            "{reason}"
        );
        assert!(!reason.contains('\u{7}') && reason.len() < 300, "{reason:?}");
    }

    // The report counts the orders still on each version: one held at
    // payment (stopped) is in flight on standard v1, then none.
    let in_flight =
        |stack: &Stack| stack.cli_json(&["report", "--last", "30m", "--json"])["in_flight"].clone();
    let others = [
        json!({"workflow": "ship-then-bill", "version": 1, "orders": 0}),
        json!({"workflow": "drop-ship", "version": 1, "orders": 0}),
    ];
    let listed = |v1: u64| {
        let mut all = vec![
            json!({"workflow": "standard", "version": 1, "orders": v1}),
            json!({"workflow": "standard", "version": 2, "orders": 0}),
        ];
        all.extend(others.iter().cloned());
        Value::Array(all)
    };
    let none = listed(0);
    assert_eq!(in_flight(&stack), none);
    stack.stop("payment-1").await;
    let held = stack.publish(&[orders::valid(1, "standard")])[0];
    stack.wait_state(&held, "accepted", Duration::from_secs(30)).await;
    let one = listed(1);
    assert_eq!(in_flight(&stack), one);
    let table = String::from_utf8(stack.cli(&["report", "--last", "30m"]).stdout).unwrap();
    assert!(table.contains("in flight by workflow: standard v1: 1 orders"), "{table}");
    stack.spawn("payment", "payment-1");
    stack.wait_terminal(&[held], Duration::from_secs(60)).await;
    assert_eq!(in_flight(&stack), none);

    // Payment's own user sends inventory a charged element that claims a
    // version no node runs: refused with the reason, not guessed at.
    let order: Order = serde_json::from_value(orders::valid(1, "standard")).unwrap();
    let charge = Charge { charge_id: Uuid::new_v4(), amount_cents: 1_000, card_last4: "1111".into() };
    for (workflow, version) in [("standard", 7), ("same-day", 1)] {
        let forged = OrderElement {
            state: OrderState::Charged,
            seq: 2,
            charge: Some(charge.clone()),
            workflow: workflow.into(),
            workflow_version: version,
            ..OrderElement::placed(order.clone())
        };
        let body = serde_json::to_string(&forged).unwrap();
        let (url, user) = (stack.role_url("payment"), stack.role_user("payment"));
        let refused =
            tests::pika_publish(&url, &user, "orderflow.workflow", "order.inventory", "order", &body);
        assert_eq!(refused, None, "the broker lets payment forward to inventory");
        let said = format!("follows workflow \"{workflow}\" version {version}, which this node does not run");
        let letters = stack.letters_with(&said, 1).await;
        assert_eq!(letters.len(), 1, "no dead letter saying {said:?}");
        assert_eq!(letters[0]["node"], "inventory", "{}", letters[0]);
    }

    // The picklist's own user switches an element to version 2 between
    // hops and sends it to rebin, which version 2 does not use: refused.
    let multi: Order = serde_json::from_value(orders::valid(2, "standard")).unwrap();
    let switched = OrderElement {
        state: OrderState::Picked,
        seq: 4,
        charge: Some(charge.clone()),
        workflow_version: 2,
        ..OrderElement::placed(multi)
    };
    let body = serde_json::to_string(&switched).unwrap();
    let (url, user) = (stack.role_url("picklist"), stack.role_user("picklist"));
    let refused = tests::pika_publish(&url, &user, "orderflow.workflow", "order.rebin", "order", &body);
    assert_eq!(refused, None, "the broker lets the picklist forward to rebin");
    let said = format!("rebin cannot handle order {} in state picked", switched.order_id);
    assert_eq!(stack.letters_with(&said, 1).await.len(), 1, "no dead letter saying {said:?}");
}

/// The state path of an order's history (its steps' states, in order).
fn path_of(view: &shared::tracker_api::OrderView) -> Vec<String> {
    tests::states(view)
}

/// Each node and the state it left the order in, from its history (the
/// workflow's states only), and the same as its own definition's happy path
/// gives it for its units: the two are equal for an order that shipped on
/// the version it started on.
pub(crate) fn travelled_and_defined(
    view: &shared::tracker_api::OrderView,
    units: i64,
) -> (Vec<String>, Vec<String>) {
    let travelled = view
        .history
        .iter()
        .filter(|entry| entry.state != "placed" && OrderState::parse(&entry.state).is_some())
        .map(|entry| format!("{} {}", entry.node, entry.state))
        .collect();
    let version = view.workflow_version.and_then(|v| u32::try_from(v).ok()).unwrap_or_default();
    let definition = topology::workflow::workflow(view.workflow.as_deref().unwrap_or_default(), version)
        .unwrap_or_else(|| panic!("{}: an order on a definition no one runs", view.order_id));
    let facts = topology::workflow::Facts { units, holds_reservation: false };
    let defined =
        definition.happy_path(&facts).iter().map(|(node, state)| format!("{node} {state}")).collect();
    (travelled, defined)
}

/// "Changing the workflow while it runs" (issue 29, part 2): 1,000 orders,
/// the nodes slowed so that many are in flight; halfway, version 2 of
/// `standard` (adds the fraud check, drops rebin, closes the shipping method
/// at reserved) is deployed at intake while payment and rebin are killed -9
/// and started again. Every order follows the version it started on: a
/// version 1 order never meets the fraud check and a multi-unit one passes
/// rebin (the dropped node serves them after the switch); a version 2 order
/// is screened and never passes rebin, and one worth too much is held with
/// the reason; the report's count of version 1 orders in flight falls to 0;
/// nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_deployed_mid_run_leaves_each_order_on_the_version_it_started_on() {
    let mut stack = Stack::start_with_node_users_env("workflow-deploy", &[("ORDERFLOW_DELAY_MS", "3")]).await;
    // One order in a hundred is worth more than the fraud check lets through (100 x 46.99).
    let units = |i: i64| if i % 100 == 99 { 100 } else { 1 + (i % 3) };
    let orders: Vec<Value> = (0..1_000).map(|i| orders::valid(units(i), "standard")).collect();
    let first = stack.publish(&orders[..500]);
    // Halfway: once a hundred of them are past intake.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stack.statuses(&first).await.values().filter(|s| s.state != "placed").count() < 100 {
        assert!(std::time::Instant::now() < deadline, "intake did not accept 100 orders in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The deploy: intake takes version 2 for new orders; two nodes die meanwhile.
    stack.kill("payment-1");
    stack.kill("rebin-1");
    stack.stop("intake-1").await;
    let switched_at = chrono::Utc::now();
    stack.spawn_with("intake", "intake-2", &[("ORDERFLOW_WORKFLOWS", "standard:2")]).unwrap();
    let v1_in_flight =
        stack.cli_json(&["report", "--last", "30m", "--json"])["in_flight"][0]["orders"].as_i64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.spawn("payment", "payment-1");
    stack.spawn("rebin", "rebin-1");
    let second = stack.publish(&orders[500..]);
    let all: Vec<Uuid> = first.iter().chain(&second).copied().collect();
    stack.wait_terminal(&all, Duration::from_secs(600)).await;

    let (mut on_v1, mut on_v2, mut rebinned_after_switch, mut held) = (0, 0, 0, 0);
    for (id, order) in all.iter().zip(&orders) {
        let view = stack.order(id).await;
        let units: i64 = order["items"].as_array().unwrap().iter().map(|i| i["qty"].as_i64().unwrap()).sum();
        let passed = |state: &str| view.history.iter().find(|entry| entry.state == state);
        let rebin = passed("rebinned");
        match view.workflow_version {
            Some(1) => {
                on_v1 += 1;
                assert_eq!(view.state, "shipped", "{id} (v1): {:?}", path_of(&view));
                let (travelled, defined) = travelled_and_defined(&view, units);
                assert_eq!(travelled, defined, "{id} (v1, {units} units) step by step");
                assert!(passed("screened").is_none(), "{id} (v1) met the fraud check: {:?}", path_of(&view));
                assert_eq!(rebin.is_some(), units > 1, "{id} (v1, {units} units): {:?}", path_of(&view));
                let at = rebin.and_then(|entry| chrono::DateTime::parse_from_rfc3339(&entry.at).ok());
                rebinned_after_switch += usize::from(at.is_some_and(|at| at > switched_at));
            }
            Some(2) if units == 100 => {
                on_v2 += 1;
                held += 1;
                assert_eq!(path_of(&view), ["placed", "accepted", "rejected"], "{id} (v2, worth 4699.00)");
                let reason = &passed("rejected").unwrap().detail;
                assert!(reason.contains("held by the fraud check: the order is worth 4699.00"), "{reason}");
            }
            Some(2) => {
                on_v2 += 1;
                assert_eq!(view.state, "shipped", "{id} (v2): {:?}", path_of(&view));
                let (travelled, defined) = travelled_and_defined(&view, units);
                assert_eq!(travelled, defined, "{id} (v2, {units} units) step by step");
                assert_eq!(passed("screened").map(|entry| entry.node.as_str()), Some("fraud-check"), "{id}");
                assert!(rebin.is_none(), "{id} (v2) passed rebin: {:?}", path_of(&view));
            }
            other => panic!("{id}: version {other:?}"),
        }
    }
    eprintln!(
        "v1 in flight at the switch: {v1_in_flight:?}; v1 {on_v1}, v2 {on_v2} ({held} held by the fraud check); v1 rebinned after the switch {rebinned_after_switch}"
    );
    assert!(held >= 5, "the v2 orders worth too much were held by the fraud check: {held}");
    assert!(on_v1 >= 100 && on_v2 >= 500, "v1 {on_v1}, v2 {on_v2}: every order after the switch takes v2");
    assert!(v1_in_flight.is_some_and(|n| n > 0), "version 1 orders were in flight at the switch");
    assert!(rebinned_after_switch > 0, "the dropped node served version 1 orders after the switch");
    let in_flight = stack.cli_json(&["report", "--last", "30m", "--json"])["in_flight"].clone();
    assert_eq!(in_flight[0], json!({"workflow": "standard", "version": 1, "orders": 0}), "{in_flight}");
    assert!(
        stack.cli_json(&["dlq", "list", "--json"]).as_array().unwrap().is_empty(),
        "nothing dead-lettered"
    );

    // Directed, the coordinator runs version 2 too: it calls the fraud
    // check's service between intake and payment, and a large order ends there.
    let directed = stack.publish_directed(&[orders::valid(2, "standard"), orders::valid(100, "standard")]);
    stack.wait_terminal(&directed, Duration::from_secs(120)).await;
    let (small, large) = (stack.order(&directed[0]).await, stack.order(&directed[1]).await);
    assert_eq!((small.state.as_str(), small.workflow_version), ("shipped", Some(2)), "{:?}", path_of(&small));
    let (travelled, defined) = travelled_and_defined(&small, 2);
    assert_eq!(travelled, defined, "a directed v2 order step by step");
    let nodes = tests::nodes(&small);
    assert!(nodes.contains(&"fraud-check".to_string()) && !nodes.contains(&"rebin".to_string()), "{nodes:?}");
    assert_eq!(large.state, "rejected", "{:?}", path_of(&large));
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}
