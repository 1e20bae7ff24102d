//! AMQP header values read as text: the one reading every module shares
//! (the transport's messages, the sender checks of `crate::trust`), so that
//! neither depends on the other for it.

use lapin::types::{AMQPValue, FieldTable, ShortString};

/// A text header's value (a long or short string); `None` when absent or not text.
pub fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    value_text(headers?.inner().get(&ShortString::from(name))?)
}

/// A header value as text, when it is a long or short string.
pub fn value_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}
