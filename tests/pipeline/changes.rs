//! In-flight changes (address, shipping method, cancel) through the CLI and
//! the fanout, with stages slowed or stopped so that orders are really in
//! flight: each change is recorded as requested and then exactly once as
//! applied or rejected, by one node; cut-offs hold; cancels compensate; the
//! shipped order carries the last applied address; sync mode answers or
//! fails clearly.

use harness::OrderView;
use serde_json::{json, Value};
use shared::change::{Change, ChangeEvent, ChangeKind, ChangeRequest};
use shared::order::ShipTo;
use std::collections::HashMap;
use std::time::Duration;
use tests::{assert_books_balance, change_records, orders, states, Stack};
use transport::message::{change_event_message, change_request_message};
use transport::Publisher;

fn address(n: usize) -> ShipTo {
    ShipTo {
        name: format!("Recipient {n}"),
        line1: format!("{n} Change Street"),
        city: "Hamburg".into(),
        postal_code: format!("2{n:04}"),
        country: "DE".into(),
    }
}

fn address_json(n: usize) -> String {
    serde_json::to_string(&address(n)).unwrap()
}

/// The address part of a shipping or change detail: "<name>, <line1>, <postal> <city>, <country>".
fn address_text(to: &ShipTo) -> String {
    format!("{}, {}, {} {}, {}", to.name, to.line1, to.postal_code, to.city, to.country)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_address_changes_has_one_outcome_each_and_ships_the_last() {
    // Two instances of every node, each slowed, so orders are in flight while changes arrive.
    let env =
        [("ORDERFLOW_DELAY_MS", "60"), ("ORDERFLOW_PREFETCH", "8"), ("ORDERFLOW_DELAY_MS_PICKLIST", "0")];
    let mut stack = Stack::empty("storm", &env).await;
    stack.spawn("tracker", "tracker-1");
    for node in harness::nodes() {
        stack.spawn(node, &format!("{node}-1"));
        stack.spawn(node, &format!("{node}-2"));
    }
    stack.wait_for_tracker().await;
    let mut rng = rand::thread_rng();
    let batch: Vec<Value> = (0..100).map(|_| tests::random_valid_order(&mut rng)).collect();
    let ids = stack.publish(&batch);

    // 500 address changes, five rounds over the 100 orders, published as the CLI does.
    let connection = stack.connect().await;
    let publisher = Publisher::open(&connection, &stack.user()).await.unwrap();
    let mut requested: HashMap<uuid::Uuid, Vec<uuid::Uuid>> = HashMap::new();
    for round in 0..5 {
        let mut messages = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let change = Change::ShipTo { ship_to: address(round * 1000 + i) };
            let request = ChangeRequest::new(*id, change, None);
            let event = ChangeEvent::new(
                &request,
                ChangeKind::ChangeRequested,
                "publisher",
                "test",
                request.change.describe(),
                0,
            );
            messages.push(change_event_message(&event));
            messages.push(change_request_message(&request));
            requested.entry(*id).or_default().push(request.change_id);
        }
        publisher.publish_all(&messages).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stack.wait_terminal(&ids, Duration::from_secs(120)).await;

    let mut applied_total = 0;
    for id in &ids {
        let view = stack.wait_change_outcomes(id, 5, Duration::from_secs(60)).await;
        let mut last_applied: Option<String> = None;
        let mut applied = 0;
        for change_id in &requested[id] {
            let records = change_records(&view, &change_id.to_string());
            let kinds: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
            assert_eq!(kinds.len(), 2, "change {change_id}: {records:?}");
            assert_eq!(kinds[0], "change_requested");
            assert!(kinds[1] == "change_applied" || kinds[1] == "change_rejected", "{records:?}");
            if kinds[1] == "change_applied" {
                applied += 1;
            }
        }
        for entry in &view.history {
            if entry.state == "change_applied" {
                last_applied = Some(entry.detail.clone());
            }
        }
        let history = &view.history;
        let shipped = history.iter().find(|h| h.state == "shipped").expect("shipped");
        let shipped_detail = shipped.detail.as_str();
        if let Some(last) = last_applied {
            let shipped_to = last.trim_start_matches("ship to ").split(" (version").next().unwrap();
            assert!(shipped_detail.contains(shipped_to), "shipped {shipped_detail:?}, last applied {last:?}");
        }
        assert_eq!(shipped.version, applied, "the shipping step saw every applied change");
        applied_total += applied;
    }
    assert!(applied_total > 0, "no change was applied: nothing was in flight");
    assert_books_balance(&stack, &batch, &ids).await;
}

/// Holds an order just before `node` (stopped), asks to cancel it, and restarts the node.
async fn cancel_at(stack: &mut Stack, node: &str, waits_in: &str, units: i64) -> OrderView {
    let label = format!("{node}-1");
    assert!(stack.stop(&label).await.success());
    let ids = stack.publish(&[orders::valid(units, "express")]);
    stack.wait_state(&ids[0], waits_in, Duration::from_secs(30)).await;
    let (code, change_id, _, stderr) = stack.change_cli(&["cancel", &ids[0].to_string()]);
    assert_eq!(code, 0, "{stderr}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.spawn(node, &label);
    stack.wait_terminal(&ids, Duration::from_secs(30)).await;
    let view = stack.wait_change_outcomes(&ids[0], 1, Duration::from_secs(30)).await;
    let records = change_records(&view, &change_id);
    assert_eq!(records[1].0, "change_applied", "cancel at {node}: {records:?}");
    assert_eq!(records[1].1, node, "the cancel was applied by {}, not {node}", records[1].1);
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_at_each_stage_compensates_what_was_done() {
    let mut stack = Stack::start("cancel", &[]).await;
    let cases: [(&str, &str, i64, &[&str]); 6] = [
        ("intake", "placed", 1, &["placed", "cancelled"]),
        ("payment", "accepted", 1, &["placed", "accepted", "cancelled"]),
        ("inventory", "charged", 1, &["placed", "accepted", "charged", "cancelling", "voided", "cancelled"]),
        (
            "picklist",
            "reserved",
            1,
            &[
                "placed",
                "accepted",
                "charged",
                "reserved",
                "cancelling",
                "stock_released",
                "voided",
                "cancelled",
            ],
        ),
        (
            "rebin",
            "picked",
            3,
            &[
                "placed",
                "accepted",
                "charged",
                "reserved",
                "picked",
                "cancelling",
                "stock_released",
                "voided",
                "cancelled",
            ],
        ),
        (
            "shipping",
            "picked",
            1,
            &[
                "placed",
                "accepted",
                "charged",
                "reserved",
                "picked",
                "cancelling",
                "stock_released",
                "voided",
                "cancelled",
            ],
        ),
    ];
    for (node, waits_in, units, path) in cases {
        let view = cancel_at(&mut stack, node, waits_in, units).await;
        let order_states: Vec<String> =
            states(&view).into_iter().filter(|s| !s.starts_with("change_")).collect();
        assert_eq!(order_states, path, "cancel at {node}");
    }
    // Every unit reserved for a cancelled order went back to stock.
    let inventory = stack.sqlite("inventory", "inventory_bin_items").await;
    assert_eq!(
        tests::count(&inventory, "SELECT qty FROM inventory_bin_items WHERE sku = 'SKU-0042'").await,
        1_000_000
    );
    // Each cancelled order's authorization was voided (nothing was captured), once.
    let processor = stack.sqlite("processor", "processor_settlements").await;
    let voids = "SELECT COUNT(*) FROM processor_settlements WHERE kind = 'void'";
    assert_eq!(tests::count(&processor, voids).await, 4);
    assert_eq!(tests::count(&processor, "SELECT COUNT(*) FROM processor_refunds").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_a_picklist_batch_and_the_cut_off_points() {
    let mut stack = Stack::start("cutoff", &[("ORDERFLOW_PICKLIST_FLUSH_MS", "3000")]).await;

    // Waiting in a picklist batch: the address and the method change before the batch is emitted.
    let ids = stack.publish(&[orders::valid(1, "standard")]);
    stack.wait_state(&ids[0], "reserved", Duration::from_secs(30)).await;
    let id = ids[0].to_string();
    let (code, address_change, _, err) = stack.change_cli(&["change", &id, "--ship-to", &address_json(7)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, out, _) = stack.change_cli(&["change", &id, "--shipping-method", "overnight", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied by picklist"), "{out}");
    stack.wait_terminal(&ids, Duration::from_secs(30)).await;
    let view = stack.order(&ids[0]).await;
    let records = change_records(&view, &address_change);
    assert_eq!((records[1].0.as_str(), records[1].1.as_str()), ("change_applied", "picklist"), "{records:?}");
    let history = &view.history;
    let picked = history.iter().find(|h| h.state == "picked").unwrap();
    assert!(picked.detail.contains("overnight"), "{picked:?}");
    let shipped = history.iter().find(|h| h.state == "shipped").unwrap();
    let detail = &shipped.detail;
    assert!(detail.contains(&address_text(&address(7))) && detail.contains("overnight"), "{detail}");
    assert_eq!(shipped.version, 2);

    // After picking: the method is past its cut-off, the address is not.
    assert!(stack.stop("rebin-1").await.success());
    let ids = stack.publish(&[orders::valid(2, "express")]);
    stack.wait_state(&ids[0], "picked", Duration::from_secs(30)).await;
    let id = ids[0].to_string();
    let (_, method_change, _, _) = stack.change_cli(&["change", &id, "--shipping-method", "standard"]);
    let (_, address_change, _, _) = stack.change_cli(&["change", &id, "--ship-to", &address_json(8)]);
    stack.spawn("rebin", "rebin-1");
    stack.wait_terminal(&ids, Duration::from_secs(30)).await;
    let view = stack.wait_change_outcomes(&ids[0], 2, Duration::from_secs(30)).await;
    let method = change_records(&view, &method_change);
    assert_eq!((method[1].0.as_str(), method[1].1.as_str()), ("change_rejected", "rebin"), "{method:?}");
    assert!(method[1].2.contains("already picked"), "{method:?}");
    let address_records = change_records(&view, &address_change);
    assert_eq!((address_records[1].0.as_str(), address_records[1].1.as_str()), ("change_applied", "rebin"));
    let last = view.history.iter().rev().find(|h| h.state == "shipped").unwrap().clone();
    assert!(last.detail.contains(&address_text(&address(8))));

    // After shipping, for a terminal order, and for an order that does not exist: rejected with the reason.
    let (code, _, out, _) = stack.change_cli(&["change", &id, "--ship-to", &address_json(9), "--wait"]);
    assert_eq!(code, 4, "declined");
    assert!(out.contains("rejected by shipping") && out.contains("already shipped"), "{out}");
    let (code, _, out, _) = stack.change_cli(&["cancel", &id, "--wait"]);
    assert_eq!(code, 4, "declined");
    assert!(out.contains("already shipped"), "{out}");
    let nobody = uuid::Uuid::new_v4().to_string();
    let (code, _, out, _) = stack.change_cli(&["cancel", &nobody, "--wait"]);
    assert_eq!(code, 4, "declined");
    assert!(out.contains("rejected by tracker") && out.contains("no order"), "{out}");
    // An invalid address is rejected with the reason.
    let ids = stack.publish(&[orders::valid(1, "express")]);
    let incomplete =
        json!({"name": "X", "line1": "", "city": "Y", "postal_code": "1", "country": "DE"}).to_string();
    let (code, _, out, _) =
        stack.change_cli(&["change", &ids[0].to_string(), "--ship-to", &incomplete, "--wait"]);
    assert_eq!(code, 4, "declined");
    assert!(out.contains("line1 is missing"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_answers_both_ways_and_fails_clearly_without_its_node() {
    let mut stack = Stack::start("sync", &[("ORDERFLOW_PICKLIST_FLUSH_MS", "4000")]).await;
    // Applied: the order waits in a picklist batch, whose node answers.
    let ids = stack.publish(&[orders::valid(1, "standard")]);
    stack.wait_state(&ids[0], "reserved", Duration::from_secs(30)).await;
    let (code, _, out, err) = stack.change_cli(&[
        "change",
        &ids[0].to_string(),
        "--ship-to",
        &address_json(1),
        "--sync",
        "--timeout",
        "8",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("applied by picklist"), "{out}");
    stack.wait_terminal(&ids, Duration::from_secs(30)).await;
    // Rejected: past its cut-off.
    let (code, _, out, _) = stack.change_cli(&[
        "change",
        &ids[0].to_string(),
        "--shipping-method",
        "express",
        "--sync",
        "--timeout",
        "8",
    ]);
    assert_eq!(code, 4, "declined");
    assert!(out.contains("rejected") && out.contains("already shipped"), "{out}");

    // No answer: the node that would apply it is stopped. The command says so and fails,
    // and the change is never applied, even after the node comes back.
    assert!(stack.stop("payment-1").await.success());
    let ids = stack.publish(&[orders::valid(1, "express")]);
    stack.wait_state(&ids[0], "accepted", Duration::from_secs(30)).await;
    let (code, change_id, out, err) = stack.change_cli(&[
        "change",
        &ids[0].to_string(),
        "--ship-to",
        &address_json(2),
        "--sync",
        "--timeout",
        "2",
    ]);
    assert_eq!(code, 3, "timed out: {out} {err}");
    assert!(err.contains("no node answered within 2 s") && err.contains("not applied"), "{err}");
    assert!(!out.contains("applied"), "{out}");
    stack.spawn("payment", "payment-1");
    stack.wait_terminal(&ids, Duration::from_secs(30)).await;
    let view = stack.wait_change_outcomes(&ids[0], 1, Duration::from_secs(30)).await;
    let records = change_records(&view, &change_id);
    assert_eq!(records[1].0, "change_rejected", "{records:?}");
    assert!(records[1].2.contains("deadline"), "{records:?}");
    let shipped = view.history.iter().find(|h| h.state == "shipped").unwrap().clone();
    assert!(!shipped.detail.contains("Recipient 2"), "the withdrawn change was applied");
}

/// One decider per change: a change published (by any client) before its
/// order is decided by the node that meets the order, and by nobody else;
/// the CLI does not send a change for an order nobody placed, so nothing
/// rejected is applied later (the probe's case: rejected by the tracker,
/// then applied at intake once the order came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_has_one_decider_even_when_it_comes_before_its_order() {
    let stack = Stack::start("decider", &[]).await;
    // A raw change for an order that does not exist yet, as another client would send it.
    let early = uuid::Uuid::new_v4();
    let request = ChangeRequest::new(early, Change::ShipTo { ship_to: address(5) }, None);
    let requested =
        ChangeEvent::new(&request, ChangeKind::ChangeRequested, "publisher", "test", String::new(), 0);
    let connection = stack.connect().await;
    let publisher = Publisher::open(&connection, &stack.user()).await.unwrap();
    publisher
        .publish_all(&[change_event_message(&requested), change_request_message(&request)])
        .await
        .unwrap();
    // Through the CLI, a change for an order nobody placed is not sent at all.
    let never = uuid::Uuid::new_v4();
    let (code, _, out, _) = stack.change_cli(&["change", &never.to_string(), "--ship-to", &address_json(6)]);
    assert_eq!(code, 4, "declined: {out}");
    assert!(out.contains("no order") && out.contains("not sent"), "{out}");
    // Let the tracker record the early request before the order exists.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut first = orders::valid(1, "standard");
    first["order_id"] = json!(early);
    let mut second = orders::valid(1, "standard");
    second["order_id"] = json!(never);
    let ids = stack.publish(&[first, second]);
    assert_eq!(ids, [early, never]);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    let view = stack.wait_change_outcomes(&early, 1, Duration::from_secs(30)).await;
    let records = change_records(&view, &request.change_id.to_string());
    let kinds: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(kinds, ["change_requested", "change_applied"], "{records:?}");
    let shipped = view.history.iter().find(|h| h.state == "shipped").expect("shipped");
    assert!(shipped.detail.contains(&address_text(&address(5))), "{}", shipped.detail);
    let untouched = stack.order(&never).await;
    assert!(untouched.history.iter().all(|h| h.change_id.is_none()), "no change was sent for {never}");
    let _ = connection.close(200, "done".into()).await;
}
