//! Text from messages made safe to print, log or keep: control characters
//! escaped (a name or user id can never move a terminal's cursor or forge a
//! log line), and anything that looks like a card number masked to its last
//! four digits, wherever it sits (a card sent as a JSON number, in the wrong
//! field, in an address line, quoted in a parser's error).

use serde_json::Value;

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...).
pub fn escaped(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// Card numbers have 13 to 19 digits.
const CARD_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

/// `text` with every run of 13 to 19 digits (single spaces or dashes
/// between them allowed, as cards are written) replaced by `****` and its
/// last four digits.
pub fn mask_card_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The longest digit run from here, with lone separators inside.
        let (mut end, mut digits) = (i, 0);
        let mut j = i;
        while j < chars.len() {
            if chars[j].is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if matches!(chars[j], ' ' | '-') && chars.get(j + 1).is_some_and(|c| c.is_ascii_digit()) {
                j += 1;
            } else {
                break;
            }
        }
        let run: String = chars[i..end].iter().collect();
        if CARD_DIGITS.contains(&digits) {
            let last4: String = run.chars().filter(char::is_ascii_digit).skip(digits - 4).collect();
            out.push_str(&format!("****{last4}"));
        } else {
            out.push_str(&run);
        }
        i = end;
    }
    out
}

/// A message body with card numbers masked (in every JSON string and in
/// numbers of card length; in plain text when it is not JSON). `None` when
/// nothing needed masking.
pub fn mask_card_numbers_in_body(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    match serde_json::from_str::<Value>(text) {
        Ok(mut value) => mask_value(&mut value).then(|| serde_json::to_vec(&value).unwrap_or_default()),
        Err(_) => {
            let masked = mask_card_numbers(text);
            (masked != text).then(|| masked.into_bytes())
        }
    }
}

/// Whether a JSON string is an identifier whose digits are no card's: a
/// uuid (an order id: `12345678-1234-4123-8123-...` has a 16-digit run) or
/// a card token (32 hex digits may hold 13 in a row). Masking them broke
/// the dead letter they were in: its order id, or the token payment charges.
fn is_identifier(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok() || crate::order::is_token(text)
}

/// Masks card numbers inside a JSON value; true when something changed.
fn mask_value(value: &mut Value) -> bool {
    match value {
        Value::String(s) if is_identifier(s) => false,
        Value::String(s) => {
            let masked = mask_card_numbers(s);
            let changed = masked != *s;
            *s = masked;
            changed
        }
        Value::Number(n) => {
            let digits = n.to_string();
            if digits.bytes().all(|b| b.is_ascii_digit()) && CARD_DIGITS.contains(&digits.len()) {
                *value = Value::String(mask_card_numbers(&digits));
                return true;
            }
            false
        }
        Value::Array(items) => items.iter_mut().map(mask_value).fold(false, |a, b| a | b),
        Value::Object(fields) => fields.values_mut().map(mask_value).fold(false, |a, b| a | b),
        Value::Bool(_) | Value::Null => false,
    }
}

/// Whether `number` (digits only) passes the Luhn check card numbers carry.
pub fn luhn_valid(number: &str) -> bool {
    let digits: Option<Vec<u32>> = number.chars().map(|c| c.to_digit(10)).collect();
    let Some(digits) = digits else { return false };
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("ok Zoë"), "ok Zoë");
        assert_eq!(escaped("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        // What the command line prints of orders and messages (it calls this as `safe`).
        assert_eq!(escaped("Zoë 東京 'quoted'"), "Zoë 東京 'quoted'");
        assert_eq!(escaped("red\x1b[31m\r\nbell\x07\u{9b}"), "red\\u{1b}[31m\\r\\nbell\\u{7}\\u{9b}");
    }

    #[test]
    fn card_numbers_are_masked_wherever_they_are_written() {
        assert_eq!(mask_card_numbers("card 4111111111111111 ok"), "card ****1111 ok");
        assert_eq!(mask_card_numbers("4111 1111 1111 1234"), "****1234");
        assert_eq!(mask_card_numbers("4111-1111-1111-1234."), "****1234.");
        assert_eq!(
            mask_card_numbers("invalid type: integer `4111111111111111`, expected a string"),
            "invalid type: integer `****1111`, expected a string"
        );
        // Shorter and longer digit runs are not cards.
        assert_eq!(mask_card_numbers("order 12345, qty 3, 2026-11-29"), "order 12345, qty 3, 2026-11-29");
        assert_eq!(mask_card_numbers(&"9".repeat(25)), "9".repeat(25));
    }

    /// Identifiers keep their digits: an order id whose first groups are
    /// all digits, a token with 13 digits in a row; a card beside them is
    /// still masked.
    #[test]
    fn a_body_keeps_its_ids_and_tokens_whole() {
        let body = br#"{"order_id":"12345678-1234-4123-8123-123456789012","payment":{"card_number":"ptok_1234567890123abcdef0123456789abc"},"note":"4111111111111111"}"#;
        let masked = String::from_utf8(mask_card_numbers_in_body(body).unwrap()).unwrap();
        assert!(masked.contains("12345678-1234-4123-8123-123456789012"), "{masked}");
        assert!(masked.contains("ptok_1234567890123abcdef0123456789abc"), "{masked}");
        assert!(masked.contains("****1111") && !masked.contains("4111111111111111"), "{masked}");
        let ids_only = br#"{"order_id":"12345678-1234-4123-8123-123456789012","card":"tok_1234567890123abcdef0123456789abc"}"#;
        assert_eq!(mask_card_numbers_in_body(ids_only), None, "nothing to mask: not marked masked");
    }

    #[test]
    fn a_body_keeps_no_card_number_in_any_field_or_form() {
        let body = br#"{"payment":{"card_number":4111111111111111},"ship_to":{"line1":"4111 1111 1111 1111 Main St"},"note":"x"}"#;
        let masked = String::from_utf8(mask_card_numbers_in_body(body).unwrap()).unwrap();
        assert!(!masked.contains("4111111111111111") && !masked.contains("4111 1111 1111 1111"), "{masked}");
        assert!(masked.contains("****1111 Main St"), "{masked}");
        assert_eq!(mask_card_numbers_in_body(br#"{"qty":3}"#), None);
        let text = mask_card_numbers_in_body(b"not json 4111111111111111").unwrap();
        assert_eq!(text, b"not json ****1111");
    }
}
