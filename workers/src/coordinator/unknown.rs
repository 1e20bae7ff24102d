//! Requests for a service nobody offers: the services exchange hands them to
//! its alternate exchange, whose queue the coordinator answers. A caller
//! waiting for its result (`reply_to`) or a callback gets "no such service"
//! with the services there are; a request with nowhere to answer is
//! dead-lettered with the same reason.

use lapin::message::Delivery;
use shared::service::{Call, CallResult, ReplyTo};
use topology::Node;
use transport::publisher::PublishError;
use transport::service::result_message;
use transport::settle::{ack, dead_letter};
use transport::{NodeContext, Publisher};

/// What a request for an unknown service gets told.
pub fn reason(routing_key: &str) -> String {
    let asked = routing_key.strip_prefix("service.").unwrap_or(routing_key);
    let services: Vec<&str> = Node::all().into_iter().map(Node::name).collect();
    format!(
        "no service is named {:?} (routing key {:?}); the services are {} (routing key service.<name>)",
        shared::text::escaped(asked),
        shared::text::escaped(routing_key),
        services.join(", ")
    )
}

pub async fn answer(ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
    let reason = reason(delivery.routing_key.as_str());
    let call = match Call::from_properties(&delivery.properties) {
        Ok(call) if call.reply_to != ReplyTo::Poll => call,
        // Nowhere to answer (polling results are kept by the services' own keys).
        _ => return dead_letter(publisher, ctx, &delivery, &reason).await,
    };
    let caller = ctx.trust.sender(&delivery.properties).unwrap_or_default();
    let result = CallResult::failed(&call.request_id, "unknown", reason.clone(), false);
    match publisher.publish_all(&[result_message(&call, &result, &caller)]).await {
        Ok(()) | Err(PublishError::Unroutable(_)) => ack(&delivery).await,
        Err(_) => dead_letter(publisher, ctx, &delivery, &reason).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reason_names_the_services_there_are() {
        let reason = super::reason("service.teleport");
        assert!(
            reason.contains("\"teleport\"") && reason.contains("payment") && reason.contains("exceptions")
        );
    }
}
