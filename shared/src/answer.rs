//! Where an order's outcome goes when it ends: the distribution center
//! answers whoever gave it the work. The placer names the place on the
//! message that places the order (never in its body, which anyone relaying
//! it could write): `reply_to` set to RabbitMQ's direct reply-to (a caller
//! that waits on its channel), or the header `x-orderflow-callback: KEY`
//! (the outcome goes to `orderflow.results` with routing key
//! `callback.KEY`: bind a queue of yours). The element carries it from the
//! door on, in both modes; the node where the order ends puts it on the
//! terminal audit event, and the tracker sends the outcome once
//! (`workers::tracker::outcomes`).
//!
//! Like a service, the tracker posts into no queue a placer names: any
//! other `reply_to` is refused at the door with the reason.

use crate::headers::value_text;
use crate::service::{check_id, header, DIRECT_REPLY_TO};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

/// The header naming a placer's callback key (the same as a service call's).
pub use crate::service::CALLBACK_HEADER;
/// The `type` property of an outcome message.
pub const OUTCOME_TYPE: &str = "order_outcome";

/// Where an order's outcome goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerTo {
    /// The placer's direct reply-to, as the broker named it for its channel.
    ReplyTo(String),
    /// `orderflow.results`, routing key `callback.<key>`.
    Callback(String),
}

impl AnswerTo {
    /// Read from the properties of the message that placed the order: none,
    /// one, or why it cannot be used.
    pub fn of_properties(properties: &BasicProperties) -> Result<Option<AnswerTo>, String> {
        let reply_to = properties.reply_to().as_ref().map(|q| q.to_string()).filter(|q| !q.is_empty());
        let callback = header(properties.headers().as_ref(), CALLBACK_HEADER);
        match (reply_to, callback) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                Err(format!("an order names reply_to or {CALLBACK_HEADER} for its outcome, not both"))
            }
            (Some(queue), None) => {
                if queue == DIRECT_REPLY_TO || queue.starts_with("amq.rabbitmq.reply-to.") {
                    return Ok(Some(AnswerTo::ReplyTo(queue)));
                }
                Err(format!(
                    "reply_to {:?} is not RabbitMQ's direct reply-to (amq.rabbitmq.reply-to): an order's \
                     outcome goes nowhere else; for a queue of yours, bind it to orderflow.results with \
                     callback.KEY and set {CALLBACK_HEADER}: KEY",
                    crate::text::escaped(&queue.chars().take(200).collect::<String>())
                ))
            }
            (None, Some(value)) => {
                let key = value_text(value).unwrap_or_default();
                check_id("the callback key", &key)?;
                Ok(Some(AnswerTo::Callback(key)))
            }
        }
    }

    /// The exchange and routing key the outcome is published with.
    pub fn target(&self) -> (&'static str, String) {
        match self {
            AnswerTo::ReplyTo(queue) => ("", queue.clone()),
            AnswerTo::Callback(key) => (topology::RESULTS_EXCHANGE, format!("callback.{key}")),
        }
    }
}

/// What the placer receives when its order ends (JSON; `message_id` and
/// `correlation_id` are the order id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderOutcome {
    pub order_id: uuid::Uuid,
    /// The state it ended in: shipped, rejected, payment_declined, out_of_stock or cancelled.
    pub outcome: String,
    /// The node where it ended.
    pub node: String,
    /// What that node said: the shipment (method, address, tracking number) or the exception.
    pub detail: String,
    /// When it ended (RFC 3339).
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable};

    fn with_callback(key: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(CALLBACK_HEADER.into(), key);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_placer_names_its_direct_reply_to_or_a_callback_key() {
        assert_eq!(AnswerTo::of_properties(&BasicProperties::default()), Ok(None));
        let direct = BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to.g1h2AA".into());
        let answer = AnswerTo::of_properties(&direct).unwrap().unwrap();
        assert_eq!(answer.target(), ("", "amq.rabbitmq.reply-to.g1h2AA".to_string()));
        let callback = with_callback(AMQPValue::LongString("shop-7.outcomes".into()));
        let answer = AnswerTo::of_properties(&callback).unwrap().unwrap();
        assert_eq!(answer.target(), (topology::RESULTS_EXCHANGE, "callback.shop-7.outcomes".to_string()));
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(json, r#"{"callback":"shop-7.outcomes"}"#);
    }

    #[test]
    fn another_queue_a_bad_key_or_both_are_refused_with_the_reason() {
        let queue = BasicProperties::default().with_reply_to("orderflow.payment".into());
        assert!(AnswerTo::of_properties(&queue).unwrap_err().contains("not RabbitMQ's direct reply-to"));
        for key in ["", "a b", "bell\u{7}", &"k".repeat(201)] {
            let error =
                AnswerTo::of_properties(&with_callback(AMQPValue::LongString(key.into()))).unwrap_err();
            assert!(error.contains("callback key"), "{error}");
        }
        let number = AnswerTo::of_properties(&with_callback(AMQPValue::LongLongInt(7))).unwrap_err();
        assert!(number.contains("callback key"), "{number}");
        let both =
            with_callback(AMQPValue::LongString("k".into())).with_reply_to("amq.rabbitmq.reply-to".into());
        assert!(AnswerTo::of_properties(&both).unwrap_err().contains("not both"));
    }
}
