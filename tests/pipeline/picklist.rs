//! The aggregation queue: picklists group one shipping method, never exceed
//! the batch size, and a partial group is flushed within the interval once
//! traffic stops.

use chrono::DateTime;
use std::collections::HashMap;
use std::time::Duration;
use tests::{orders, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picklists_group_by_method_within_batch_size_and_flush() {
    let flush_ms = 400;
    let stack = Stack::start(
        "picklist",
        &[("ORDERFLOW_PICKLIST_BATCH", "5"), ("ORDERFLOW_PICKLIST_FLUSH_MS", &flush_ms.to_string())],
    )
    .await;
    let methods = ["standard", "express", "overnight"];
    let batch: Vec<_> = (0..33).map(|i| orders::valid(1, methods[i % 3])).collect();
    let ids = stack.publish(&batch);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;

    let mut picklists: HashMap<String, Vec<&str>> = HashMap::new();
    let mut waits_ms = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let view = stack.order(id).await;
        let at = |state: &str| {
            let entry = view.entry(state).expect(state);
            DateTime::parse_from_rfc3339(&entry.at).unwrap()
        };
        let picked = view.entry("picked").expect("picked");
        let detail = picked.detail.as_str();
        let picklist_id = detail.split_whitespace().nth(1).unwrap().to_string();
        assert!(detail.contains(methods[i % 3]), "{detail} should name {}", methods[i % 3]);
        picklists.entry(picklist_id).or_default().push(methods[i % 3]);
        waits_ms.push((at("picked") - at("reserved")).num_milliseconds());
    }
    for (picklist, members) in &picklists {
        assert!(members.len() <= 5, "picklist {picklist} has {} orders", members.len());
        assert!(members.iter().all(|m| *m == members[0]), "picklist {picklist} mixes methods: {members:?}");
    }
    // 11 orders per method: at least one full picklist, and partial ones that only the timer released.
    assert!(picklists.values().any(|m| m.len() == 5), "no full picklist: {picklists:?}");
    assert!(picklists.values().any(|m| m.len() < 5), "no partial picklist was flushed: {picklists:?}");
    let longest = *waits_ms.iter().max().unwrap();
    assert!(longest < flush_ms + 1500, "an order waited {longest} ms in the picklist (flush {flush_ms} ms)");
}
