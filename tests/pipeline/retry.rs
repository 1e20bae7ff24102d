//! Transient failures: with the processor's ledger gone (a dependency down)
//! payment retries with growing delays and, after its attempts, dead-letters
//! the order with the reason, while orders that do not need it flow on; once
//! the ledger is back, `dlq replay` sends them back (each carries the
//! processor's token for its card, never the number) and each is charged and
//! ships once, its history intact. A short outage heals by retries alone.

use std::time::Duration;
use tests::{count, orders, states, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_then_dead_letter_and_replay_once() {
    let stack = Stack::start("retry", &[("ORDERFLOW_MAX_ATTEMPTS", "4")]).await;
    let ledger = stack.sqlite("processor", "processor_charges").await;
    sqlx::query("ALTER TABLE processor_charges RENAME TO processor_charges_away")
        .execute(&ledger)
        .await
        .unwrap();

    let mut batch: Vec<_> = (0..5).map(|_| orders::valid(2, "express")).collect();
    batch.extend((0..5).map(|_| orders::declined()));
    batch.extend((0..5).map(|_| orders::invalid()));
    let ids = stack.publish(&batch);
    // Orders that never need the processor reach their end meanwhile.
    stack.wait_terminal(&ids[5..], Duration::from_secs(30)).await;

    let letters = stack.wait_dead_letters(5, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 5);
    for letter in &letters {
        assert_eq!(letter["node"], "payment");
        assert_eq!(letter["routing_key"], "order.payment");
        let reason = letter["reason"].as_str().unwrap();
        assert!(
            reason.contains("gave up after 4 attempts") && reason.contains("processor_charges"),
            "{reason}"
        );
    }
    // The report counts each retry and dead letter at payment (its incidents), nothing elsewhere.
    let counted = harness::until(Duration::from_secs(15), Duration::from_millis(300), || async {
        let (_, body) = stack.get("/report?last=600").await;
        let report: shared::report::Report = serde_json::from_str(&body).unwrap();
        let payment = report.nodes.iter().find(|n| n.node == "payment").cloned().unwrap_or_default();
        match (payment.retries, payment.dead_letters) {
            (15, 5) => Ok(harness::Check::Done(report)),
            seen => Ok(harness::Check::Waiting(format!("payment's (retries, dead letters): {seen:?}"))),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(counted.nodes.iter().filter(|n| n.node != "payment").all(|n| n.errors == 0), "{counted:?}");

    sqlx::query("ALTER TABLE processor_charges_away RENAME TO processor_charges")
        .execute(&ledger)
        .await
        .unwrap();
    let output = stack.cli(&["dlq", "replay", "--all"]);
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "every letter goes back: {said}");
    assert!(!said.contains("card number was masked"), "{said}");
    stack.wait_terminal(&ids[..5], Duration::from_secs(30)).await;
    for id in &ids[..5] {
        let expected = ["placed", "accepted", "charged", "reserved", "picked", "rebinned", "shipped"];
        assert_eq!(states(&stack.order(id).await), expected, "order {id}");
    }
    assert_eq!(count(&ledger, "SELECT COUNT(*) FROM processor_charges").await, 5);
    assert!(stack.cli(&["dlq", "discard", "--all"]).status.success());
    assert!(stack.cli_json(&["dlq", "list", "--json"]).as_array().unwrap().is_empty());

    // A short outage heals by retries alone, with nothing dead-lettered.
    sqlx::query("ALTER TABLE processor_charges RENAME TO processor_charges_away")
        .execute(&ledger)
        .await
        .unwrap();
    let more = stack.publish(&(0..3).map(|_| orders::valid(1, "standard")).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("ALTER TABLE processor_charges_away RENAME TO processor_charges")
        .execute(&ledger)
        .await
        .unwrap();
    stack.wait_terminal(&more, Duration::from_secs(30)).await;
    for id in &more {
        assert_eq!(states(&stack.order(id).await).last().unwrap(), "shipped");
    }
    assert!(stack.cli_json(&["dlq", "list", "--json"]).as_array().unwrap().is_empty());
    assert_eq!(count(&ledger, "SELECT COUNT(*) FROM processor_charges").await, 8);
}
