//! Poison messages: an undecodable body, non-UTF-8 bytes, an unknown schema
//! version and an oversized body are dead-lettered with their reason, node
//! and routing key, and every other order still flows.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::Duration;
use tests::{orders, Stack};

fn header(headers: &FieldTable, key: &str) -> String {
    match headers.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_rest_flows() {
    let stack = Stack::start("poison", &[("ORDERFLOW_MAX_MESSAGE_BYTES", "4096")]).await;
    let connection = stack.connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut future_schema = FieldTable::default();
    future_schema.insert("schema_version".into(), AMQPValue::LongUInt(99));
    let poison: Vec<(Vec<u8>, FieldTable)> = vec![
        (b"{not json".to_vec(), FieldTable::default()),
        (vec![0xff, 0xfe, 0x00], FieldTable::default()),
        (b"{}".to_vec(), future_schema),
        (vec![b' '; 10_000], FieldTable::default()),
    ];
    for (body, headers) in &poison {
        channel
            .basic_publish(
                topology::WORKFLOW_EXCHANGE.into(),
                "order.payment".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2).with_headers(headers.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let ids = stack.publish(&(0..20).map(|_| orders::valid(2, "express")).collect::<Vec<_>>());
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;

    let mut consumer = channel
        .basic_consume(
            topology::DEAD_LETTER_QUEUE.into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < poison.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("every poison message reaches the dead-letter queue")
            .unwrap()
            .unwrap();
        let headers = delivery.properties.headers().clone().unwrap();
        assert_eq!(header(&headers, "x-orderflow-node"), "payment");
        assert_eq!(header(&headers, "x-orderflow-routing-key"), "order.payment");
        reasons.push(header(&headers, "x-orderflow-reason"));
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    reasons.sort();
    let all = reasons.join(" | ");
    for expected in
        ["not a valid message", "not UTF-8", "unknown schema version 99", "larger than the maximum"]
    {
        assert!(all.contains(expected), "no reason mentions {expected:?}: {all}");
    }
}
