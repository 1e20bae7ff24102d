//! Service results kept for polling: a node answering a call that named no
//! reply queue and no callback key sends its result to `orderflow.results`
//! (`poll.<service>`), and the tracker keeps it for `GET /calls/{id}` and
//! `orderflow call status`. A result is believed only from the user of the
//! service it names. It is kept under (caller, request id, poll key): the
//! caller as that service verified it, the key the hash of the caller's
//! poll token (`shared::poll`), so that only the caller reads it; a result
//! without a key is not kept (nobody could read it). Every card number in a
//! result is masked before it is kept, whoever sent it. A collected result
//! is removed `ORDERFLOW_RESULT_RETENTION_S` after it was first read; one
//! never collected after `ORDERFLOW_CHANGE_RETENTION_S`.

use super::store::TrackerStore;
use lapin::message::Delivery;
use serde_json::Value;
use shared::poll::{check_key, POLL_KEY_HEADER};
use shared::service::{CallResult, CALLER_HEADER};
use shared::settings::Settings;
use shared::text::mask_card_numbers;
use std::time::{Duration, Instant};
use transport::message::header_text;
use transport::service::receive_result;
use transport::settle::{ack, dead_letter, requeue};
use transport::{NodeContext, Publisher};

/// How long a collected result is kept, and one never collected.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub collected: Duration,
    pub uncollected: Duration,
    purged_at: Option<Instant>,
}

impl Retention {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Retention> {
        Ok(Retention {
            collected: settings.result_retention,
            uncollected: settings.change_retention,
            purged_at: None,
        })
    }
}

const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Keeps one result (or dead-letters it, when it cannot be read or its
/// sender is not the service it names), then acknowledges it.
pub async fn keep(
    ctx: &NodeContext,
    store: &TrackerStore,
    publisher: &Publisher,
    retention: &mut Retention,
    delivery: Delivery,
) {
    let checked = receive_result(ctx, &delivery, "a result");
    let result = match checked {
        Ok(result) => result,
        Err(reason) => return dead_letter(publisher, ctx, &delivery, &reason).await,
    };
    let Some(poll_key) = poll_key_of(&delivery) else {
        tracing::info!(service = result.service, "a polled result without a poll key; not kept");
        return ack(&delivery).await;
    };
    let caller = shared::text::mask_card_numbers(&caller_of(&delivery));
    if let Err(error) = store.keep_call_result(&masked(result), &caller, &poll_key).await {
        tracing::warn!(%error, "could not keep a service result; it will be tried again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        return requeue(&delivery).await;
    }
    ack(&delivery).await;
    if retention.purged_at.is_none_or(|at| at.elapsed() > PURGE_EVERY) {
        retention.purged_at = Some(Instant::now());
        if let Err(error) = store.purge_call_results(retention.collected, retention.uncollected).await {
            tracing::warn!(%error, "could not purge old service results");
        }
    }
}

fn caller_of(delivery: &Delivery) -> String {
    header_text(delivery.properties.headers().as_ref(), CALLER_HEADER).unwrap_or_default()
}

/// The poll key the result carries (copied by the service from the call), if a valid one.
fn poll_key_of(delivery: &Delivery) -> Option<String> {
    let key = header_text(delivery.properties.headers().as_ref(), POLL_KEY_HEADER)?;
    check_key(&key).ok()
}

/// A result as the tracker keeps it: every card number masked, whoever sent
/// it. In strings, any run of 13 to 19 digits (as `shared::text` masks
/// them), but not a uuid (an id, never a card); in object keys the same;
/// numbers of card length become the masked text, except a 13-digit time
/// in milliseconds (a field named `*_ms`). A result that no longer reads
/// as one once masked (a card number where a number or an id belongs) is
/// kept as a failure saying so, without it.
pub fn masked(result: CallResult) -> CallResult {
    let Ok(mut value) = serde_json::to_value(&result) else { return result };
    if !mask(&mut value, "") {
        return result;
    }
    serde_json::from_value(value).unwrap_or_else(|_| {
        let reason = "the result held a card number where it cannot be masked; the tracker did not keep it";
        CallResult::failed(&mask_card_numbers(&result.request_id), &result.service, reason, false)
    })
}

/// Masks card numbers in `value` (held under the key `key`); true when
/// something changed.
fn mask(value: &mut Value, key: &str) -> bool {
    match value {
        Value::String(text) => {
            if text.len() == 36 && uuid::Uuid::try_parse(text).is_ok() {
                return false;
            }
            let masked = mask_card_numbers(text);
            let changed = masked != *text;
            *text = masked;
            changed
        }
        Value::Number(number) => {
            let text = number.to_string();
            let a_time = key.ends_with("_ms") && text.len() == 13 && text.bytes().all(|b| b.is_ascii_digit());
            let masked = mask_card_numbers(&text);
            if a_time || masked == text {
                return false;
            }
            *value = Value::String(masked);
            true
        }
        Value::Array(items) => items.iter_mut().map(|item| mask(item, key)).fold(false, |a, b| a | b),
        Value::Object(fields) => {
            let mut changed = false;
            let old = std::mem::take(fields);
            for (name, mut field) in old {
                changed |= mask(&mut field, &name);
                let masked = mask_card_numbers(&name);
                changed |= masked != name;
                fields.insert(masked, field);
            }
            changed
        }
        Value::Bool(_) | Value::Null => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CARD: &str = "4111111111111111";

    fn accepted() -> shared::OrderElement {
        let order: shared::Order = serde_json::from_value(json!({
            "customer_id": "c-1", "items": [{"sku": "SKU-0001", "qty": 1}], "shipping_method": "standard",
            "ship_to": {"name": "Ada", "line1": "1 Main St", "city": "Leeds", "postal_code": "LS1", "country": "GB"},
            "payment": {"card_number": CARD, "expiry": "12/30"}
        }))
        .unwrap();
        shared::OrderElement::placed(order)
    }

    fn digit_runs(text: &str) -> usize {
        text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0)
    }

    #[test]
    fn a_forged_result_keeps_no_card_number_anywhere() {
        let mut element = accepted();
        element.order.ship_to.line1 = "4111 1111 1111 1111 Main St".into();
        element.tracking_number = Some(format!("T{CARD}"));
        let mut result = CallResult::done("req-1", "payment", element.clone(), Vec::new());
        result.data =
            Some(json!({"card": 4111111111111111u64, CARD: "as a key", "seq_at_ms": 1_767_225_600_000i64}));
        let kept = masked(result);
        let text = serde_json::to_string(&kept).unwrap();
        assert!(!text.contains(CARD) && !text.contains("4111 1111 1111 1111"), "{text}");
        assert!(text.contains("****1111"), "{text}");
        let element_text = serde_json::to_string(&kept.element).unwrap();
        assert!(digit_runs(&element_text) < 13, "{element_text}");
        let kept_element = kept.element.unwrap();
        assert_eq!(kept_element.order_id, element.order_id, "ids are not cards");
        assert_eq!(kept_element.placed_at, element.placed_at);
        let data = kept.data.unwrap();
        assert_eq!(data["card"], "****1111");
        assert_eq!(data["****1111"], "as a key");
        assert_eq!(data["seq_at_ms"], 1_767_225_600_000i64, "a time in milliseconds is kept");
    }

    #[test]
    fn a_result_without_a_card_is_kept_as_it_came() {
        let mut result = CallResult::done("req-2", "inventory", accepted(), Vec::new());
        result.element.as_mut().unwrap().order.payment.card_number = "************1111".into();
        assert_eq!(masked(result.clone()), result);
        let failed = CallResult::failed("req-3", "payment", "declined", true);
        assert_eq!(masked(failed.clone()), failed);
    }

    #[test]
    fn a_card_where_a_number_belongs_leaves_a_failure_without_it() {
        let mut element = serde_json::to_value(accepted()).unwrap();
        element["charge"] = json!({"charge_id": uuid::Uuid::new_v4(), "amount_cents": 4111111111111111u64,
                                   "card_last4": "1111"});
        let forged =
            json!({"request_id": "req-4", "service": "payment", "status": "done", "element": element});
        let result: CallResult = serde_json::from_value(forged).unwrap();
        let kept = masked(result);
        assert_eq!(kept.status, shared::service::CallStatus::Failed);
        assert!(kept.element.is_none() && kept.error.unwrap().contains("card number"));
    }
}
