//! Transport faults (issue 15): a publish the broker refuses closes the
//! node's publishing channel, yet the offending element is dead-lettered
//! once with its reason and the node goes on by itself; a retrying element
//! waits in its node's retry queue, not in a prefetch slot.

use shared::change::{Change, ChangeRequest};
use shared::order::{Charge, Order, OrderElement};
use shared::transport::message::{change_request_message, element_message};
use shared::transport::Publisher;
use std::time::{Duration, Instant};
use tests::{orders, states, Stack};
use topology::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_dead_lettered_once_and_the_node_goes_on() {
    let mut stack = Stack::start_with_node_users("refused").await;
    // A forged element: placed, yet carrying a charge. Cancelled at intake it
    // takes the refund path to exceptions, which intake's grant refuses.
    // Intake is stopped so that the cancel is in its book before the element.
    stack.stop("intake-1").await;
    let connection =
        lapin::Connection::connect(&stack.role_url("publisher"), lapin::ConnectionProperties::default())
            .await
            .expect("the publisher user connects");
    let publisher = Publisher::open(&connection).await.unwrap();
    let order: Order = serde_json::from_value(orders::valid(1, "standard")).unwrap();
    let mut forged = OrderElement::placed(order);
    forged.charge =
        Some(Charge { charge_id: uuid::Uuid::new_v4(), amount_cents: 1999, card_last4: "1111".into() });
    let cancel = ChangeRequest::new(forged.order_id, Change::Cancel, None);
    publisher.publish_all(&[change_request_message(&cancel)]).await.unwrap();
    publisher.publish_all(&[element_message(&forged, Node::Intake)]).await.unwrap();
    stack.spawn("intake", "intake-1");

    let ids = stack.publish(&(0..8).map(|_| orders::valid(1, "standard")).collect::<Vec<_>>());
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(states(&stack.order(id).await).last().unwrap(), "shipped", "order {id}");
    }
    stack.wait_dead_letters(1, Duration::from_secs(10)).await;
    // Time for a second dead letter of the same element, were there one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let letters = stack.cli_json(&["dlq", "list", "--json"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["node"], "intake");
    assert_eq!(letters[0]["routing_key"], "order.intake");
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.contains("order.exceptions") && reason.contains("ACCESS_REFUSED"), "{reason}");
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
