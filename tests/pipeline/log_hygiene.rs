//! `log_hygiene`: no log carries a payload (issue 30). A whole stack with
//! its domains seeded from the repository's files (names, emails,
//! addresses, cards on file) places orders by reference, answers direct
//! reply-to calls (the sync service call, the domain reads, the replicas'
//! lag checks); then every process's log is scanned for card tokens,
//! emails, addresses, card digits and returned-message dumps
//! (`harness::log_scan`, which also scans every other test's logs when
//! `scripts/test.sh` runs the suite). Left idle
//! for 60 s, no process's log grows by 10 KB.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tests::Stack;

fn log_sizes(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "log"))
        .map(|entry| (entry.file_name().to_string_lossy().to_string(), entry.metadata().unwrap().len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_holds_a_token_an_email_an_address_or_card_digits_and_an_idle_stack_stays_quiet() {
    let mut stack = Stack::start_with_node_users("log-hygiene").await;
    stack.start_domains().await.expect("the domains start");
    let seed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/domains");
    let seeded = stack.cli(&["domains", "seed", "--dir", seed_dir.to_str().unwrap()]);
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));
    let by_reference: Vec<serde_json::Value> = (1..=20)
        .map(|n| {
            serde_json::json!({"customer_id": format!("C-{:06}", n), "items": [{"sku": "SKU-0007", "qty": 1}],
                               "shipping_method": "standard"})
        })
        .collect();
    let ids = stack.publish(&by_reference);
    let plain = stack.publish(&[tests::orders::valid(2, "express"), tests::orders::declined()]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/order.json");
    let call = stack.cli(&["call", "intake", "--element-file", example.to_str().unwrap(), "--sync"]);
    assert!(call.status.success(), "{}", String::from_utf8_lossy(&call.stderr));
    for region in ["uk", "de"] {
        let read = stack.cli(&["customer", "get", "C-000002", "--region", region, "--json"]);
        assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    }
    stack.wait_terminal(&[ids, plain].concat(), Duration::from_secs(90)).await;

    let found = harness::log_scan::leaking_lines(&stack.run_dir);
    assert!(found.is_empty(), "{} log lines leak:\n{}", found.len(), found.join("\n"));

    // Idle: only the replicas' lag checks and the ticks run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = log_sizes(&stack.run_dir);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = log_sizes(&stack.run_dir);
    let mut grew = Vec::new();
    for (name, size) in &after {
        let growth = size - before.get(name).copied().unwrap_or(0);
        eprintln!("idle 60 s: {name} grew {growth} bytes");
        if growth >= 10 * 1024 {
            grew.push(format!("{name} grew {growth} bytes"));
        }
    }
    assert!(grew.is_empty(), "an idle stack's logs grow: {grew:?}");
    assert!(after.len() >= 15, "every process has its log: {after:?}");
}
