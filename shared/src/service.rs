//! Service calls, as data: what a request to a node's service says about
//! where its result goes (`Call`), and the result itself (`CallResult`).
//! No AMQP here beyond reading a message's properties; the transport
//! (`transport::service`) answers calls, the coordinator and the CLI make them.
//!
//! A call is a message to `orderflow.services` with routing key
//! `service.<node>`, the element (or, at intake, a plain order) as its body,
//! and its request id as `message_id`. Where the result goes:
//!
//! | reply mode | the caller sets | the result goes to |
//! |---|---|---|
//! | `sync` | `reply_to` (a queue, or `amq.rabbitmq.reply-to`), `correlation_id` | `reply_to`, through the default exchange |
//! | `callback` | header `x-orderflow-callback: KEY` | `orderflow.results` with routing key `callback.KEY` |
//! | `poll` | `x-orderflow-poll-key` (`crate::poll`) | kept by the tracker for the key's token alone: `GET /calls/{request_id}`, `orderflow call status` |
//!
//! The mode is `x-orderflow-reply` when set, else `sync` with a `reply_to`,
//! `callback` with a callback key, `poll` otherwise. A call may carry a
//! deadline (`x-orderflow-deadline`, Unix milliseconds): a call still queued
//! after it is answered with an error and never run.

use crate::headers::value_text as text;
use crate::order::OrderElement;
use lapin::{
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use serde::{Deserialize, Serialize};

/// Header naming how the caller wants its result (`sync`, `callback`, `poll`).
pub const REPLY_HEADER: &str = "x-orderflow-reply";
/// Header with the caller's callback key (results to `callback.<key>`).
pub const CALLBACK_HEADER: &str = "x-orderflow-callback";
/// Header with the call's deadline, Unix milliseconds.
pub const DEADLINE_HEADER: &str = "x-orderflow-deadline";
/// Header the coordinator sets on its calls (`directed`): the steps are
/// recorded as done in directed mode. Believed only from the coordinator.
pub const MODE_HEADER: &str = "x-orderflow-mode";
/// Header on a result: the caller, as the broker verified it.
pub const CALLER_HEADER: &str = "x-orderflow-caller";
/// The `type` property of a result message.
pub const RESULT_TYPE: &str = "service_result";

/// The longest request id and callback key a call may have.
pub const MAX_ID_LEN: usize = 200;

/// Where a call's result goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// To the caller's queue (or RabbitMQ's direct reply-to), by name.
    Queue(String),
    /// To `orderflow.results` with routing key `callback.<key>`.
    Callback(String),
    /// Kept for polling (by the tracker).
    Poll,
}

impl ReplyTo {
    pub fn mode(&self) -> &'static str {
        match self {
            ReplyTo::Queue(_) => "sync",
            ReplyTo::Callback(_) => "callback",
            ReplyTo::Poll => "poll",
        }
    }
}

/// What a request says about itself, read from its properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub request_id: String,
    pub reply_to: ReplyTo,
    /// Echoed on the result (`correlation_id`), else the request id.
    pub correlation_id: String,
    /// Unix milliseconds after which the call is not run.
    pub deadline_ms: Option<i64>,
    /// Made by the coordinator for a directed order (if the sender is the coordinator).
    pub directed: bool,
    /// A poll call's key (`crate::poll`): the tracker shows the result only to its token.
    pub poll_key: Option<String>,
}

/// Why a request cannot be read as a call. Where it has a reply address
/// (`reply_to`), the caller gets the reason; otherwise it is dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct CallError {
    pub reason: String,
    /// The request's `reply_to`, if it had one.
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
}

/// A header of a message, by name.
pub(crate) fn header<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers?.inner().get(&ShortString::from(name))
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        other => text(other)?.trim().parse().ok(),
    }
}

/// A request id or callback key: 1 to 200 of letters, digits, `-`, `_`, `.`, `:`.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(fine) {
        return Err(format!(
            "{what} {:?} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_', '.' or ':'",
            crate::text::escaped(&id.chars().take(MAX_ID_LEN + 1).collect::<String>())
        ));
    }
    Ok(())
}

/// The queues a sync answer may go to: the caller's own direct reply-to
/// (`amq.rabbitmq.reply-to`, which the broker names per connection), and
/// the coordinator's replies queue (only for the coordinator's calls: see
/// [`Call::answers_to_coordinator`]).
pub fn answerable_queue(queue: &str) -> bool {
    queue == DIRECT_REPLY_TO
        || queue.starts_with("amq.rabbitmq.reply-to.")
        || queue == topology::COORDINATOR_REPLIES_QUEUE
}

/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

impl Call {
    /// Whether the answer goes to the coordinator's replies queue: only the
    /// coordinator's own calls may ask that.
    pub fn answers_to_coordinator(&self) -> bool {
        matches!(&self.reply_to, ReplyTo::Queue(queue) if queue == topology::COORDINATOR_REPLIES_QUEUE)
    }

    /// Reads a call from a request's properties.
    pub fn from_properties(properties: &BasicProperties) -> Result<Call, CallError> {
        let headers = properties.headers().as_ref();
        let reply_queue = properties.reply_to().as_ref().map(|q| q.to_string()).filter(|q| !q.is_empty());
        if let Some(queue) = reply_queue.as_deref().filter(|queue| !answerable_queue(queue)) {
            // Never answered there, not even with this refusal: a service
            // must not post into a queue its caller names.
            return Err(CallError {
                reason: format!(
                    "reply_to {:?} is not RabbitMQ's direct reply-to (amq.rabbitmq.reply-to): a service answers a sync call nowhere else",
                    crate::text::escaped(queue)
                ),
                reply_to: None,
                correlation_id: None,
            });
        }
        let correlation = properties.correlation_id().as_ref().map(|c| c.to_string());
        let fail = |reason: String| CallError {
            reason,
            reply_to: reply_queue.clone(),
            correlation_id: correlation.clone(),
        };
        let callback = header(headers, CALLBACK_HEADER).map(|v| text(v).unwrap_or_default());
        let declared = header(headers, REPLY_HEADER).map(|v| text(v).unwrap_or_default());
        let reply_to = match (declared.as_deref(), &reply_queue, &callback) {
            (Some("sync") | None, Some(queue), _) => ReplyTo::Queue(queue.clone()),
            (Some("sync"), None, _) => {
                return Err(fail("a sync call needs reply_to (a queue, or amq.rabbitmq.reply-to)".into()))
            }
            (Some("callback") | None, _, Some(key)) => {
                check_id("the callback key", key).map_err(fail)?;
                ReplyTo::Callback(key.clone())
            }
            (Some("callback"), _, None) => {
                return Err(fail(format!("a callback call needs the {CALLBACK_HEADER} header")))
            }
            (Some("poll") | None, _, _) => ReplyTo::Poll,
            (Some(other), _, _) => {
                return Err(fail(format!(
                    "{REPLY_HEADER} is {:?}; it may be sync, callback or poll",
                    crate::text::escaped(other)
                )))
            }
        };
        let request_id = match (properties.message_id().as_ref(), &reply_to, &correlation) {
            (Some(id), _, _) => id.to_string(),
            // A sync caller waits for its correlation id: that may serve as the request id.
            (None, ReplyTo::Queue(_), Some(correlation)) => correlation.clone(),
            (None, _, _) => return Err(fail("a call needs its request id as message_id".into())),
        };
        check_id("the request id", &request_id).map_err(fail)?;
        let deadline_ms = match header(headers, DEADLINE_HEADER) {
            None => None,
            Some(value) => Some(
                integer(value)
                    .ok_or_else(|| fail(format!("{DEADLINE_HEADER} must be a time in Unix milliseconds")))?,
            ),
        };
        let directed = header(headers, MODE_HEADER).and_then(text).as_deref() == Some("directed");
        let poll_key = match header(headers, crate::poll::POLL_KEY_HEADER) {
            None => None,
            Some(value) => Some(crate::poll::check_key(&text(value).unwrap_or_default()).map_err(fail)?),
        };
        Ok(Call {
            correlation_id: correlation.unwrap_or_else(|| request_id.clone()),
            request_id,
            reply_to,
            deadline_ms,
            directed,
            poll_key,
        })
    }

    /// Whether the call's deadline has passed at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.deadline_ms.is_some_and(|deadline| now_ms > deadline)
    }
}

/// One state change a service made, as a result reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepDone {
    pub state: crate::order::OrderState,
    pub detail: String,
}

/// A service's answer to one call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    pub request_id: String,
    pub service: String,
    /// `done` or `failed`.
    pub status: CallStatus,
    /// The element after the service (when done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element: Option<OrderElement>,
    /// The state changes the service made, in order (when done).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepDone>,
    /// A domain's answer (when done): what was read, or what a write made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Why it failed (when failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the same call may succeed later (when failed).
    #[serde(default)]
    pub retryable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Done,
    Failed,
}

impl CallResult {
    pub fn done(request_id: &str, service: &str, element: OrderElement, steps: Vec<StepDone>) -> CallResult {
        CallResult {
            request_id: request_id.into(),
            service: service.into(),
            status: CallStatus::Done,
            element: Some(element),
            steps,
            data: None,
            error: None,
            retryable: false,
        }
    }

    /// A domain's answer.
    pub fn answered(request_id: &str, service: &str, data: serde_json::Value) -> CallResult {
        CallResult {
            request_id: request_id.into(),
            service: service.into(),
            status: CallStatus::Done,
            element: None,
            steps: Vec::new(),
            data: Some(data),
            error: None,
            retryable: false,
        }
    }

    pub fn failed(request_id: &str, service: &str, error: impl Into<String>, retryable: bool) -> CallResult {
        CallResult {
            request_id: request_id.into(),
            service: service.into(),
            status: CallStatus::Failed,
            element: None,
            steps: Vec::new(),
            data: None,
            error: Some(crate::text::mask_card_numbers(&error.into())),
            retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> BasicProperties {
        BasicProperties::default().with_message_id("r-1".into())
    }

    fn with_header(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(name.into(), value);
        properties.with_headers(headers)
    }

    #[test]
    fn the_reply_mode_follows_what_the_caller_set() {
        for elsewhere in ["orderflow.payment", "orderflow.audit.tracker", "mine", "amq.rabbitmq.reply-tox"] {
            let error = Call::from_properties(&props().with_reply_to(elsewhere.into())).unwrap_err();
            assert!(error.reason.contains("not RabbitMQ's direct reply-to"), "{error}");
            assert_eq!(error.reply_to, None, "a refusal is not sent to {elsewhere} either");
        }
        let coordinator =
            Call::from_properties(&props().with_reply_to("orderflow.coordinator.replies".into()));
        assert!(coordinator.unwrap().answers_to_coordinator());
        let sync = Call::from_properties(&props().with_reply_to("amq.rabbitmq.reply-to".into())).unwrap();
        assert!(!sync.answers_to_coordinator());
        assert_eq!(sync.reply_to, ReplyTo::Queue("amq.rabbitmq.reply-to".into()));
        assert_eq!(sync.correlation_id, "r-1");
        let key = AMQPValue::LongString("mine.results".into());
        let callback = Call::from_properties(&with_header(props(), CALLBACK_HEADER, key)).unwrap();
        assert_eq!(callback.reply_to, ReplyTo::Callback("mine.results".into()));
        assert_eq!(Call::from_properties(&props()).unwrap().reply_to, ReplyTo::Poll);
    }

    #[test]
    fn a_call_that_cannot_be_answered_says_why() {
        let sync = with_header(props(), REPLY_HEADER, AMQPValue::LongString("sync".into()));
        let error = Call::from_properties(&sync).unwrap_err();
        assert!(error.reason.contains("needs reply_to"), "{error}");
        assert_eq!(error.reply_to, None);
        let no_id = Call::from_properties(&BasicProperties::default()).unwrap_err();
        assert!(no_id.reason.contains("message_id"));
        // A sync caller's correlation id serves as the request id.
        let by_correlation = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id("c-9".into());
        assert_eq!(Call::from_properties(&by_correlation).unwrap().request_id, "c-9");
        let bad_key = with_header(props(), CALLBACK_HEADER, AMQPValue::LongString("a b\u{7}".into()));
        assert!(Call::from_properties(&bad_key).unwrap_err().reason.contains("callback key"));
        let long_id = BasicProperties::default().with_message_id("x".repeat(201).into());
        assert!(Call::from_properties(&long_id).is_err());
        let bad_mode = with_header(props(), REPLY_HEADER, AMQPValue::LongString("carrier-pigeon".into()));
        assert!(Call::from_properties(&bad_mode).unwrap_err().reason.contains("sync, callback or poll"));
    }

    #[test]
    fn a_deadline_is_read_as_unix_milliseconds() {
        let call =
            Call::from_properties(&with_header(props(), DEADLINE_HEADER, AMQPValue::LongLongInt(1_000)))
                .unwrap();
        assert!(call.expired(1_001));
        assert!(!call.expired(1_000));
        let text = with_header(props(), DEADLINE_HEADER, AMQPValue::LongString("2000".into()));
        assert_eq!(Call::from_properties(&text).unwrap().deadline_ms, Some(2000));
        let nonsense = with_header(props(), DEADLINE_HEADER, AMQPValue::LongString("NaN".into()));
        assert!(Call::from_properties(&nonsense).is_err());
    }

    #[test]
    fn a_failed_result_never_carries_a_card_number() {
        let result = CallResult::failed("r", "payment", "card 4111111111111111 declined", false);
        assert!(!result.error.unwrap().contains("4111111111111111"));
    }

    #[test]
    fn a_poll_call_carries_its_callers_poll_key() {
        assert_eq!(Call::from_properties(&props()).unwrap().poll_key, None);
        let key = crate::poll::key_of("a-token-of-the-caller");
        let upper = AMQPValue::LongString(key.to_ascii_uppercase().into());
        let call = Call::from_properties(&with_header(props(), crate::poll::POLL_KEY_HEADER, upper)).unwrap();
        assert_eq!(call.poll_key, Some(key));
        let raw = AMQPValue::LongString("a-token-of-the-caller".into());
        let error =
            Call::from_properties(&with_header(props(), crate::poll::POLL_KEY_HEADER, raw)).unwrap_err();
        assert!(error.reason.contains("SHA-256"), "{error}");
    }
}
