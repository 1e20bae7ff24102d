//! Competing consumers: two instances of a node share its queue's work.

use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tests::{orders, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_payment_instances_share_the_work() {
    let mut stack = Stack::empty("scaling", &[("ORDERFLOW_DELAY_MS_PAYMENT", "20")]).await;
    for binary in harness::processes() {
        stack.spawn(binary, &format!("{binary}-1"));
    }
    stack.spawn("payment", "payment-2");
    stack.wait_for_tracker().await;

    let batch: Vec<Value> = (0..100).map(|_| orders::valid(1, "standard")).collect();
    let ids = stack.publish(&batch);
    stack.wait_terminal(&ids, Duration::from_secs(90)).await;

    let mut per_instance: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let view = stack.order(id).await;
        let charged = view.entry("charged").unwrap();
        *per_instance.entry(charged.instance_id.clone()).or_default() += 1;
    }
    assert_eq!(per_instance.len(), 2, "charges by instance: {per_instance:?}");
    assert!(per_instance.values().all(|n| *n >= 20), "uneven sharing: {per_instance:?}");
}
