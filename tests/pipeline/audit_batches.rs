//! `audit_batches`: nodes send their audit events in batches (issue 12):
//! under load the broker carries fewer audit messages than the tracker
//! records events, and none is lost; a batch is checked event by event
//! against its sender, so one forged event in it (sent with a node's real
//! credentials by Python's `pika`) dead-letters the whole batch and nothing
//! of it is recorded, while an honest batch is; careless batches (empty,
//! not JSON, too many events) are dead-lettered with a reason.

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tests::{count, steady, Stack};
use uuid::Uuid;

/// Publishes `body` to the audit exchange as `type` `audit_batch` with pika,
/// as `url`'s user (signed with its `user_id`). `None` without pika.
fn publish_batch_with_pika(url: &str, user: &str, routing_key: &str, body: &str) -> Option<()> {
    let probe = Command::new("python3").args(["-c", "import pika"]).status().ok()?;
    if !probe.success() {
        return None;
    }
    let script = r#"
import sys, pika
url, user, key, body = sys.argv[1:5]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
channel.basic_publish("orderflow.audit", key, body.encode(),
                      pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                           type="audit_batch", user_id=user))
connection.close()
"#;
    let output = Command::new("python3").args(["-c", script, url, user, routing_key, body]).output().unwrap();
    assert!(output.status.success(), "pika: {}", String::from_utf8_lossy(&output.stderr));
    Some(())
}

/// A state event of `node` for `order_id`, as the node would write it.
fn event(node: &str, order_id: Uuid, state: &str, seq: u32) -> Value {
    json!({
        "schema_version": 1, "event_id": Uuid::new_v4(), "order_id": order_id, "node": node,
        "instance_id": format!("{node}-1"), "from_state": "placed", "to_state": state, "terminal": false,
        "at": "2026-11-29T00:00:00.000000Z", "detail": "", "seq": seq, "version": 0
    })
}

fn batch(events: &[Value]) -> String {
    let messages: Vec<Value> = events.iter().map(|e| json!({"type": "audit", "body": e})).collect();
    json!({ "messages": messages }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_checked_event_by_event_and_a_forged_one_refuses_it_whole() {
    let stack = Stack::start_with_node_users("batchtrust").await;
    let (url, user) = (stack.role_url("payment"), stack.role_user("payment"));
    let (honest, smuggled) = (Uuid::new_v4(), Uuid::new_v4());
    let forged = batch(&[event("payment", honest, "charged", 2), event("shipping", smuggled, "shipped", 7)]);
    if publish_batch_with_pika(&url, &user, "audit.payment.batch", &forged).is_none() {
        eprintln!("NOTE: skipped: pika is not installed (pip install pika)");
        return;
    }
    let refused = stack.letters_with("message 2 of 2 in the batch", 1).await;
    assert_eq!(refused.len(), 1, "the forged batch is dead-lettered once");
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(reason.contains("an event of shipping must come from"), "{reason}");

    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let good = batch(&[event("payment", first, "charged", 2), event("payment", second, "charged", 2)]);
    publish_batch_with_pika(&url, &user, "audit.payment.batch", &good).unwrap();
    stack.wait_state(&first, "charged", Duration::from_secs(30)).await;
    stack.wait_state(&second, "charged", Duration::from_secs(30)).await;
    // The forged batch's honest-looking event went with it.
    let known = stack.statuses(&[honest, smuggled]).await;
    assert!(known.is_empty(), "nothing of a refused batch is recorded: {known:?}");

    // Careless batches.
    let too_many: Vec<Value> = (0..65).map(|_| event("payment", Uuid::new_v4(), "charged", 2)).collect();
    let careless = [
        ("{\"messages\": []}".to_string(), "holds 1 to 64 messages, not 0"),
        ("not json at all".to_string(), "not an audit batch"),
        (json!({"messages": [{"type": "audit", "body": {"order_id": "x"}}]}).to_string(), "message 1 of 1"),
        (batch(&too_many), "not 65"),
    ];
    for (body, reason) in &careless {
        publish_batch_with_pika(&url, &user, "audit.payment.batch", body).unwrap();
        assert_eq!(stack.letters_with(reason, 1).await.len(), 1, "no dead letter saying {reason:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_the_broker_carries_fewer_audit_messages_than_events_and_none_is_lost() {
    let stack = Stack::start("batchload", &[]).await;
    let mut rng = rand::thread_rng();
    let placed: Vec<Value> = (0..400).map(|_| tests::random_valid_order(&mut rng)).collect();
    let ids = stack.publish(&placed);
    stack.wait_terminal(&ids, Duration::from_secs(120)).await;
    let tracker = stack.sqlite("tracker", "tracker_events").await;
    // Every step of every order (the last events may still be on their way): until the count settles.
    let events = steady(Duration::from_secs(3), Duration::from_secs(60), || {
        count(&tracker, "SELECT COUNT(*) FROM tracker_events")
    })
    .await;
    let steps = count(&tracker, "SELECT COUNT(DISTINCT order_id || '/' || seq) FROM tracker_events").await;
    assert_eq!(events, steps, "a step recorded twice");
    assert!(events >= 4 * ids.len() as i64, "{events} events for {} orders", ids.len());

    // The broker's count of messages the tracker's queue took: its
    // statistics are sampled every few seconds, so wait until they settle.
    let management = tests::management();
    let published = steady(Duration::from_secs(7), Duration::from_secs(40), || async {
        let queue = management.queue(&stack.vhost.name, topology::TRACKER_QUEUE).await.unwrap();
        queue["message_stats"]["publish"].as_i64().unwrap_or(0)
    })
    .await;
    assert!(published > 0, "the broker's statistics never counted the tracker's messages");
    eprintln!("{events} audit events recorded from {published} messages");
    assert!(
        (published as f64) < 0.8 * events as f64,
        "{published} messages carried {events} events: the nodes did not batch"
    );
}
