//! End to end: 300 orders of every kind reach a terminal state along the
//! right path, with one terminal event each, histories in order, and no full
//! card number anywhere in the tracker's answers.

use serde_json::Value;
use std::time::Duration;
use tests::{nodes, orders, states, Stack};

const TERMINAL: [&str; 5] = ["rejected", "payment_declined", "out_of_stock", "shipped", "cancelled"];

fn expected_path(kind: &str) -> Vec<&'static str> {
    match kind {
        "single" => vec!["placed", "accepted", "charged", "reserved", "picked", "shipped"],
        "multi" => vec!["placed", "accepted", "charged", "reserved", "picked", "rebinned", "shipped"],
        "declined" => vec!["placed", "accepted", "payment_declined"],
        "out_of_stock" => vec!["placed", "accepted", "charged", "stock_short", "voided", "out_of_stock"],
        "invalid" => vec!["placed", "rejected"],
        other => panic!("unknown kind {other}"),
    }
}

fn order_of_kind(i: usize) -> (&'static str, Value) {
    let methods = ["standard", "express", "overnight"];
    match i % 10 {
        0..=3 => ("single", orders::valid(1, methods[i % 3])),
        4..=6 => ("multi", orders::valid(2 + (i % 3) as i64, methods[i % 3])),
        7 => ("declined", orders::declined()),
        8 => ("out_of_stock", orders::out_of_stock()),
        _ => ("invalid", orders::invalid()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_orders_take_the_right_paths() {
    let mut stack = Stack::start("paths", &[]).await;
    let (kinds, batch): (Vec<&str>, Vec<Value>) = (0..300).map(order_of_kind).unzip();
    let ids = stack.publish(&batch);
    assert_eq!(ids.len(), 300);
    stack.wait_terminal(&ids, Duration::from_secs(120)).await;

    for (id, kind) in ids.iter().zip(&kinds) {
        let view = stack.order(id).await;
        let text = serde_json::to_string(&view).unwrap();
        assert!(
            !text.contains(orders::GOOD_CARD) && !text.contains(orders::DECLINED_CARD),
            "card number in {text}"
        );
        assert_eq!(states(&view), expected_path(kind), "{kind} order {id}");
        assert!(view.terminal, "order {id} is not terminal");
        let history = &view.history;
        let terminal_events = history.iter().filter(|h| TERMINAL.contains(&h.state.as_str())).count();
        assert_eq!(terminal_events, 1, "order {id} has {terminal_events} terminal events");
        let seqs: Vec<i64> = history.iter().map(|h| h.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "history out of order: {seqs:?}");
        for entry in history {
            let at = entry.at.as_str();
            assert!(at.ends_with('Z') && chrono_like(at), "time {at} is not RFC 3339 UTC");
        }
        if *kind == "declined" {
            assert!(!nodes(&view).contains(&"inventory".to_string()), "declined order reached inventory");
        }
        if *kind == "single" {
            assert!(!nodes(&view).contains(&"rebin".to_string()));
        }
    }

    let (status, body) = stack.get("/stats").await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["orders"], 300);
    assert_eq!(stats["by_state"]["shipped"], 210);
    assert_eq!(stats["by_state"]["rejected"], 30);

    for (label, status) in stack.stop_all().await {
        assert!(status.success(), "{label} did not exit cleanly on SIGTERM: {status}");
    }
}

fn chrono_like(at: &str) -> bool {
    at.len() >= 20 && at.as_bytes()[4] == b'-' && at.as_bytes()[10] == b'T'
}
