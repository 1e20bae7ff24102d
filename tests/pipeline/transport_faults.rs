//! Transport faults (issue 15): a publish the broker refuses (the node's
//! user lost a right) closes the node's publishing channel, yet the
//! offending element is dead-lettered once with its reason and the node goes
//! on by itself; a retrying element
//! waits in its node's retry queue, not in a prefetch slot.

use std::time::{Duration, Instant};
use tests::{orders, states, Stack};
use topology::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_dead_lettered_once_and_the_node_goes_on() {
    let stack = Stack::start_with_node_users("refused").await;
    // Intake's user loses the right to forward to payment: its next publish
    // is refused (403) and the broker closes its publishing channel.
    let management = tests::management();
    let intake = stack.role_user("intake");
    let vhost = stack.vhost.name.clone();
    let workflow = topology::WORKFLOW_EXCHANGE;
    management.set_topic_permissions(&vhost, &intake, workflow, "^$", "^$").await.unwrap();
    let refused = stack.publish(&[orders::valid(1, "standard")]);
    stack.wait_dead_letters(1, Duration::from_secs(30)).await;
    let grant = topology::permissions::grant(topology::permissions::Role::Node(Node::Intake));
    let topic = grant.topic.iter().find(|t| t.exchange == workflow).unwrap();
    management.set_topic_permissions(&vhost, &intake, workflow, &topic.write, &topic.read).await.unwrap();

    // The same intake process goes on by itself with the next orders.
    let ids = stack.publish(&(0..8).map(|_| orders::valid(1, "standard")).collect::<Vec<_>>());
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(states(&stack.order(id).await).last().unwrap(), "shipped", "order {id}");
    }
    // Time for a second dead letter of the same element, were there one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let letters = stack.cli_json(&["dlq", "list", "--json"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["node"], "intake");
    assert_eq!(letters[0]["order_id"], refused[0].to_string());
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.contains("order.payment") && reason.contains("ACCESS_REFUSED"), "{reason}");
    stack.check_alive().expect("intake did not have to be restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_element_holds_no_prefetch_slot() {
    let env = [("ORDERFLOW_MAX_ATTEMPTS", "8"), ("ORDERFLOW_PREFETCH", "1")];
    let stack = Stack::start("retryslot", &env).await;
    let ledger = stack.sqlite("processor", "processor_charges").await;
    sqlx::query("ALTER TABLE processor_charges RENAME TO processor_charges_away")
        .execute(&ledger)
        .await
        .unwrap();
    // One order payment cannot charge: it retries with delays of 0.2, 0.4,
    // 0.8, 1.6, 3.2, 6.4 and 10 s (22.6 s in all) before it would give up.
    let stuck = stack.publish(&[orders::valid(1, "standard")]);
    stack.wait_state(&stuck[0], "accepted", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Declined orders end at payment without the ledger; with one prefetch
    // slot they would wait out every remaining delay if the retry held it.
    let started = Instant::now();
    let declined = stack.publish(&(0..10).map(|_| orders::declined()).collect::<Vec<_>>());
    stack.wait_terminal(&declined, Duration::from_secs(6)).await;
    let took = started.elapsed();
    let status = stack.statuses(&stuck).await;
    assert_eq!(status[&stuck[0].to_string()].state, "accepted", "the stuck order is still retrying");
    assert!(stack.cli_json(&["dlq", "list", "--json"]).as_array().unwrap().is_empty());

    sqlx::query("ALTER TABLE processor_charges_away RENAME TO processor_charges")
        .execute(&ledger)
        .await
        .unwrap();
    stack.wait_terminal(&stuck, Duration::from_secs(30)).await;
    assert_eq!(states(&stack.order(&stuck[0]).await).last().unwrap(), "shipped");
    eprintln!("10 declined orders passed the retrying one in {took:?}");
}
