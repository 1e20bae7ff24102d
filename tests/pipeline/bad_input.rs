//! Bad input gets a clear outcome and loses nothing: files the publish
//! command refuses (with the line and the reason, publishing nothing), orders
//! intake rejects with their reason, hostile but valid text stored verbatim,
//! and garbage on the audit exchange dead-lettered by the tracker.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::Duration;
use tests::{orders, states, Stack};

fn refused(stack: &Stack, content: &[u8], expected: &str) {
    let file = stack.run_dir.join("bad.jsonl");
    std::fs::write(&file, content).unwrap();
    let output = stack.cli(&["publish", "--file", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a file with {expected:?} was accepted");
    assert!(stderr.contains("line 2") && stderr.contains(expected), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_outcome_and_loses_nothing() {
    let stack = Stack::start("bad-input", &[]).await;
    let good = orders::valid(1, "standard").to_string();

    // Files the publish command refuses before publishing anything.
    refused(&stack, format!("{good}\n{{\"customer_id\": \n").as_bytes(), "not valid JSON");
    refused(&stack, [good.as_bytes(), b"\n\xff\xfe{}\n"].concat().as_slice(), "not UTF-8");
    refused(&stack, format!("{good}\n\"just a string\"\n").as_bytes(), "not a JSON object");
    let mut wrong_type = orders::valid(1, "standard");
    wrong_type["items"][0]["qty"] = json!("three");
    refused(&stack, format!("{good}\n{wrong_type}\n").as_bytes(), "not an order");
    let mut huge = orders::valid(1, "standard");
    huge["ship_to"]["name"] = json!("x".repeat(100_000));
    refused(&stack, format!("{good}\n{huge}\n").as_bytes(), "more than the maximum");
    let (_, stats) = stack.get("/stats").await;
    assert_eq!(serde_json::from_str::<Value>(&stats).unwrap()["orders"], 0);

    // Orders intake rejects, each with its reason.
    let mut rejected: Vec<(Value, &str)> = Vec::new();
    rejected.push((json!({}), "customer_id is missing"));
    let mut o = orders::valid(1, "standard");
    o["items"][0]["qty"] = json!(-3);
    rejected.push((o, "below 1"));
    let mut o = orders::valid(1, "standard");
    o["items"][0]["qty"] = json!(i64::MAX);
    rejected.push((o, "above"));
    let mut o = orders::valid(1, "standard");
    o["items"][0]["sku"] = json!("SKU-12345");
    rejected.push((o, "not in the catalog"));
    let mut o = orders::valid(1, "standard");
    o["ship_to"]["line1"] = json!("y".repeat(5_000));
    rejected.push((o, "longer than 200"));
    let mut o = orders::valid(1, "standard");
    o["ship_to"]["name"] = json!("Bobby\u{0007}\r\nTables");
    rejected.push((o, "control characters"));
    // A partial address (an order without any is placed by reference: see `domains`).
    let mut o = orders::valid(1, "standard");
    o["ship_to"]["city"] = json!("");
    rejected.push((o, "incomplete ship-to address"));

    // Hostile but valid text is accepted and stored exactly as given.
    let hostile = "Robert'); DROP TABLE tracker_events;-- <script>alert(1)</script> Ünïcødé";
    let mut accepted = orders::valid(2, "overnight");
    accepted["ship_to"]["name"] = json!(hostile);

    let mut batch: Vec<Value> = rejected.iter().map(|(o, _)| o.clone()).collect();
    batch.push(accepted);
    let ids = stack.publish(&batch);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    for ((_, reason), id) in rejected.iter().zip(&ids) {
        let view = stack.order(id).await;
        assert_eq!(states(&view), ["placed", "rejected"], "order {id}");
        let detail = &view.history[1].detail;
        assert!(detail.contains(reason), "{detail:?} should say {reason:?}");
    }
    let shipped = stack.order(ids.last().unwrap()).await;
    assert_eq!(states(&shipped).last().unwrap(), "shipped");
    assert!(shipped.history.last().unwrap().detail.contains(hostile));

    // Garbage on the audit exchange is dead-lettered by the tracker, which goes on.
    let connection = stack.connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    channel
        .basic_publish(
            topology::AUDIT_EXCHANGE.into(),
            "audit.intruder.shipped".into(),
            BasicPublishOptions::default(),
            br#"{"order_id": "not even a uuid"}"#,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let letters = stack.wait_dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(letters[0]["node"], "tracker");
    assert!(letters[0]["reason"].as_str().unwrap().contains("not a valid message"));
    let more = stack.publish(&[orders::valid(1, "express")]);
    stack.wait_terminal(&more, Duration::from_secs(30)).await;
}
