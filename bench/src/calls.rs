//! A synchronous service call's round trip: the time from publishing a call
//! to intake's service (a plain order, RabbitMQ's direct reply-to, a fresh
//! request id each) to its result arriving, one call at a time, as a caller
//! waiting on each answer sees it.

use crate::stats::Dist;
use futures::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
    BasicProperties, Connection,
};
use std::time::{Duration, Instant};

/// `n` sequential synchronous calls to intake's service on `connection`;
/// their round trips, in milliseconds. Fails on a call without an answer in 30 s
/// or with a failed result.
pub async fn round_trips(connection: &Connection, user: &str, n: usize) -> anyhow::Result<Dist> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut replies = channel
        .basic_consume("amq.rabbitmq.reply-to".into(), "".into(), options, FieldTable::default())
        .await?;
    let orders = shared::generate::orders(n, false);
    let mut times = Vec::with_capacity(n);
    for order in orders {
        let request_id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::to_vec(&order)?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(request_id.as_str().into())
            .with_correlation_id(request_id.as_str().into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_user_id(user.into());
        let started = Instant::now();
        channel
            .basic_publish(
                topology::SERVICES_EXCHANGE.into(),
                topology::WORKFLOW.door().service_routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
                .await
                .map_err(|_| anyhow::anyhow!("no answer to a call in 30 s"))?
                .ok_or_else(|| anyhow::anyhow!("the reply consumer ended"))??;
            let result: shared::service::CallResult = serde_json::from_slice(&reply.data)?;
            if result.request_id != request_id {
                continue;
            }
            anyhow::ensure!(
                result.status == shared::service::CallStatus::Done,
                "a call failed: {:?}",
                result.error
            );
            break;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = channel.close(200, "calls done".into()).await;
    Ok(Dist::of_ms(&times))
}
