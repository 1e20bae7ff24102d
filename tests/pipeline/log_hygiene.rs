//! `log_hygiene`: no log carries a payload (issue 30). A whole stack with
//! its domains seeded from the repository's files (names, emails,
//! addresses, cards on file) places orders by reference, answers direct
//! reply-to calls (the sync service call, the domain reads, the replicas'
//! lag checks); then every process's log is scanned for card tokens,
//! emails, addresses, card digits and returned-message dumps. Left idle
//! for 60 s, no process's log grows by 10 KB.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tests::Stack;

/// What must never be in a log: (what it is, a test on one line).
fn leaks(line: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    if line.contains("tok_") {
        found.push("a card token");
    }
    if line.contains("@example.com") {
        found.push("an email");
    }
    if line.contains("Market Sq") || line.contains("Hauptstrasse") {
        found.push("an address");
    }
    if card_numbers(line) > 0 {
        found.push("card digits");
    }
    if line.contains("returned us a message") {
        found.push("a returned message's dump");
    }
    found
}

/// Card-like numbers in `line`: whole words of 13 to 19 digits that pass
/// the Luhn check (a timestamp or an id's digits rarely do both).
fn card_numbers(line: &str) -> usize {
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| (13..=19).contains(&word.len()) && word.chars().all(|c| c.is_ascii_digit()))
        .filter(|word| luhn(word))
        .count()
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn log_sizes(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "log"))
        .map(|entry| (entry.file_name().to_string_lossy().to_string(), entry.metadata().unwrap().len()))
        .collect()
}

#[test]
fn the_scan_finds_what_it_looks_for() {
    assert_eq!(leaks(r#"card="tok_3f9a""#), ["a card token"]);
    assert_eq!(leaks("ada.1@example.com"), ["an email"]);
    assert_eq!(leaks("4111111111111111"), ["card digits"]);
    assert_eq!(leaks("number=4000000000000002,"), ["card digits"]);
    assert!(leaks("due_at=1733480000123").is_empty(), "a timestamp is not a card");
    assert!(leaks("order 3f2a-11 took 120 ms; ************1111").is_empty());
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

    let mut found = Vec::new();
    for name in log_sizes(&stack.run_dir).keys() {
        let text = std::fs::read_to_string(stack.run_dir.join(name)).unwrap_or_default();
        for line in text.lines() {
            for leak in leaks(line) {
                found.push(format!("{name}: {leak}: {}", line.chars().take(300).collect::<String>()));
            }
        }
    }
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
