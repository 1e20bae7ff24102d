//! `workflows`: every element carries the workflow it follows and its
//! version from intake on (issue 29, part 2's first step), in both modes:
//! `orderflow status --json` shows them. An order naming a workflow this
//! distribution center does not run is rejected with the reason, a careless
//! name too; an element claiming a version no node runs, forged by a node's
//! own user with pika, is dead-lettered with the reason, never guessed at.
//! The report counts the orders in flight on each version.

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
    unknown["workflow"] = json!("ship-then-bill");
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
            reason.contains("is not one this distribution center runs (it runs standard v1)"),
            "{reason}"
        );
        assert!(!reason.contains('\u{7}') && reason.len() < 300, "{reason:?}");
    }

    // The report counts the orders still on each version: one held at
    // payment (stopped) is in flight on standard v1, then none.
    let in_flight =
        |stack: &Stack| stack.cli_json(&["report", "--last", "30m", "--json"])["in_flight"].clone();
    assert_eq!(in_flight(&stack), json!([{"workflow": "standard", "version": 1, "orders": 0}]));
    stack.stop("payment-1").await;
    let held = stack.publish(&[orders::valid(1, "standard")])[0];
    stack.wait_state(&held, "accepted", Duration::from_secs(30)).await;
    assert_eq!(in_flight(&stack), json!([{"workflow": "standard", "version": 1, "orders": 1}]));
    let table = String::from_utf8(stack.cli(&["report", "--last", "30m"]).stdout).unwrap();
    assert!(table.contains("in flight by workflow: standard v1: 1 orders"), "{table}");
    stack.spawn("payment", "payment-1");
    stack.wait_terminal(&[held], Duration::from_secs(60)).await;
    assert_eq!(in_flight(&stack), json!([{"workflow": "standard", "version": 1, "orders": 0}]));

    // Payment's own user sends inventory a charged element that claims a
    // version no node runs: refused with the reason, not guessed at.
    let order: Order = serde_json::from_value(orders::valid(1, "standard")).unwrap();
    let charge = Charge { charge_id: Uuid::new_v4(), amount_cents: 1_000, card_last4: "1111".into() };
    for (workflow, version) in [("standard", 7), ("ship-then-bill", 1)] {
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
}
