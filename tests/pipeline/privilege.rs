//! Least privilege: with every node and the tracker connected as its own
//! user, the pipeline runs; and a node's user cannot read, publish,
//! declare or delete where it has no business (the broker refuses).

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Duration;
use tests::{orders, states, Stack};

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default()).await.expect("the role's user can connect")
}

/// Publishes one confirmed message; `Ok` only if the broker accepted it.
async fn publish(connection: &Connection, exchange: &str, key: &str) -> Result<(), String> {
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err("nacked".into())
    }
}

async fn consume(connection: &Connection, queue: &str) -> Result<(), String> {
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(queue.into(), "probe".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_run_with_least_privilege_and_cannot_stray() {
    let stack = Stack::start_with_node_users("privilege").await;
    let batch = vec![orders::valid(1, "standard"), orders::valid(3, "express"), orders::out_of_stock()];
    let ids = stack.publish(&batch);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    assert_eq!(states(&stack.order(&ids[1]).await).last().unwrap(), "shipped");
    assert_eq!(states(&stack.order(&ids[2]).await).last().unwrap(), "out_of_stock");

    let payment = connect(&stack.role_url("payment")).await;
    // What payment does: forward to inventory, record its audit events.
    publish(&payment, topology::WORKFLOW_EXCHANGE, "order.inventory")
        .await
        .expect("payment forwards to inventory");
    publish(&payment, topology::AUDIT_EXCHANGE, "audit.payment.charged")
        .await
        .expect("payment records its events");
    // What it may not do.
    let refused = [
        publish(&payment, topology::WORKFLOW_EXCHANGE, "order.shipping").await,
        publish(&payment, topology::AUDIT_EXCHANGE, "audit.shipping.shipped").await,
        publish(&payment, topology::CHANGES_EXCHANGE, "").await,
        consume(&payment, "orderflow.shipping").await,
        consume(&payment, topology::TRACKER_QUEUE).await,
        consume(&payment, topology::DEAD_LETTER_QUEUE).await,
    ];
    for (i, result) in refused.iter().enumerate() {
        let error = result.as_ref().expect_err(&format!("payment was allowed stray action {i}"));
        assert!(error.contains("ACCESS_REFUSED") || error.contains("403"), "action {i}: {error}");
    }
    let channel = payment.create_channel().await.unwrap();
    let declared = channel
        .queue_declare("orderflow.evil".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await;
    assert!(declared.is_err(), "payment declared a queue of its own choosing");
    // Nor may it delete its own queue (losing what it holds): no configure right at all.
    let channel = payment.create_channel().await.unwrap();
    let deleted = channel.queue_delete("orderflow.payment".into(), Default::default()).await;
    let error = deleted.expect_err("payment deleted its own queue").to_string();
    assert!(error.contains("ACCESS_REFUSED") || error.contains("403"), "{error}");
    let queue = tests::management().queue(&stack.vhost.name, "orderflow.payment").await;
    assert!(queue.is_ok(), "the queue is gone");

    let publisher = connect(&stack.role_url("publisher")).await;
    publish(&publisher, topology::WORKFLOW_EXCHANGE, "order.intake")
        .await
        .expect("the publisher feeds intake");
    assert!(publish(&publisher, topology::WORKFLOW_EXCHANGE, "order.payment").await.is_err());
    assert!(consume(&publisher, "orderflow.intake").await.is_err());
}
