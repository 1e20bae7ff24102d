//! The dead-letter queue under its own tools (issue 15): a replay works on a
//! snapshot and ends, a message that fails again is not replayed in a loop,
//! listing loses nothing, and discard removes exactly what it selects.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use tests::Stack;

/// Publishes a raw body without a message id, confirmed.
async fn publish_raw(stack: &Stack, exchange: &str, routing_key: &str, body: &[u8]) {
    let connection = stack.connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

/// Runs `orderflow args` and fails the test if it does not end within `limit`
/// (the process is killed first, so nothing is left behind).
async fn cli_within(stack: &Stack, args: &[&str], limit: Duration) -> Output {
    let mut child = stack
        .command("orderflow")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orderflow runs");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("orderflow {args:?} did not end within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn letters(stack: &Stack) -> Vec<Value> {
    stack.cli_json(&["dlq", "list", "--json"]).as_array().expect("a list").clone()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_works_on_a_snapshot_and_does_not_loop() {
    let stack = Stack::start("dlq-replay", &[]).await;
    publish_raw(&stack, topology::CHANGES_EXCHANGE, "", b"{}").await;
    let hearers = harness::change_hearers();
    let n = hearers.len();
    let first = stack.wait_dead_letters(n, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(letters(&stack).len(), n, "one dead letter per process that hears changes: {first:?}");

    let output = cli_within(&stack, &["dlq", "replay", "--all"], Duration::from_secs(30)).await;
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    // Each node's copy goes back to that node's changes queue alone (not to
    // the fanout, which would give every node a copy again).
    assert!(said.contains(&format!("done: {n} of {n} dead letters sent back, 0 skipped")), "{said}");
    for node in &hearers {
        assert!(said.contains(&format!("to queue orderflow.changes.{node}")), "{said}");
    }

    // The copy fails again at every hearer: one dead letter each, not thousands.
    let again = stack.wait_dead_letters(n, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = letters(&stack);
    assert!(now.len() <= n, "{} dead letters after one replay", now.len());
    assert!(again.iter().all(|l| l["replays"] == 1), "{again:?}");

    // A second replay refuses what already failed after a replay, and ends.
    let output = cli_within(&stack, &["dlq", "replay", "--all"], Duration::from_secs(30)).await;
    let said = text(&output);
    assert_eq!(output.status.code(), Some(4), "nothing sent back: {said}");
    assert_eq!(said.lines().filter(|l| l.starts_with("skipped ")).count(), n, "{said}");
    assert!(said.contains("--force"), "{said}");
    assert!(said.contains(&format!("done: 0 of {n} dead letters sent back, {n} skipped")), "{said}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(letters(&stack).len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_loses_nothing_and_discard_removes_what_it_selects() {
    let stack = Stack::start("dlq-discard", &[]).await;
    publish_raw(&stack, topology::CHANGES_EXCHANGE, "", b"{}").await;
    publish_raw(&stack, topology::WORKFLOW_EXCHANGE, "order.payment", b"{not json").await;
    let n = harness::change_hearers().len() + 1;
    stack.wait_dead_letters(n, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = letters(&stack);
    assert_eq!(all.len(), n, "{all:?}");

    // Every listing returns what it read; none is lost (quorum delivery limit).
    for round in 0..25 {
        assert_eq!(letters(&stack).len(), n, "after {round} listings");
    }

    // The text listing has a count per reason before the messages.
    let output = stack.cli(&["dlq", "list"]);
    let listing = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{}", text(&output));
    assert!(listing.starts_with(&format!("{n} dead letters by reason:")), "{listing}");
    let poison = all.iter().find(|l| l["routing_key"] == "order.payment").expect("the payment dead letter");
    let poison_reason = poison["reason"].as_str().unwrap().to_string();
    assert!(listing.contains(&format!("     1  {poison_reason}")), "{listing}");
    let change_reason =
        all.iter().find(|l| l["routing_key"] != "order.payment").unwrap()["reason"].as_str().unwrap();
    if change_reason != poison_reason {
        let count = all.iter().filter(|l| l["reason"] == change_reason).count();
        assert!(listing.contains(&format!("{count:>6}  {change_reason}")), "{listing}");
    }

    // Discard by reason removes exactly the letters whose reason contains it.
    let matching = all.iter().filter(|l| l["reason"].as_str().unwrap().contains(&poison_reason)).count();
    assert_eq!(matching, 1, "the payment reason is its own: {all:?}");
    let output = stack.cli(&["dlq", "discard", "--reason", &poison_reason]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("discarded 1 dead letters"), "{said}");
    let left = letters(&stack);
    assert_eq!(left.len(), n - 1, "{left:?}");
    assert!(left.iter().all(|l| l["routing_key"] != "order.payment"), "{left:?}");

    let output = stack.cli(&["dlq", "discard", "--all"]);
    assert!(text(&output).contains(&format!("discarded {} dead letters", n - 1)), "{}", text(&output));
    let left = letters(&stack);
    assert!(left.is_empty(), "{left:?}");
}
