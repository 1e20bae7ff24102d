//! The checks of the command line's values (clap value parsers): each one
//! refuses a value it cannot use with one sentence saying what it takes, so
//! that no NaN, infinity, negative or absurd number reaches the commands.

use std::time::Duration;
use uuid::Uuid;

/// The most orders one `publish --count` generates (they are held in memory).
pub const MAX_COUNT: usize = 1_000_000;
/// The slowest and fastest `--rate`, in orders per second.
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 1_000_000.0;
/// The longest `--timeout`, in seconds (a week).
pub const MAX_TIMEOUT_S: f64 = 604_800.0;

pub fn order_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        format!("{text:?} is not an order id (a uuid such as 0f8fad5b-d9cb-469f-a165-70867728950e)")
    })
}

/// `--po`: a purchase order id.
pub fn po_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        format!("{text:?} is not a purchase order id (a uuid such as 0f8fad5b-d9cb-469f-a165-70867728950e)")
    })
}

pub fn count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        Ok(0) => Err("0 orders would publish nothing: give a count from 1 to 1000000".into()),
        Ok(_) => Err(format!("at most {MAX_COUNT} orders per run (publish more in several runs)")),
        Err(_) => Err(format!("{text:?} is not a whole number of orders from 1 to {MAX_COUNT}")),
    }
}

/// A finite number within `min..=max`, or a sentence saying what is expected.
fn number(text: &str, min: f64, max: f64, what: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && (min..=max).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not {what}")),
    }
}

/// `--rate`: orders per second.
pub fn rate(text: &str) -> Result<f64, String> {
    number(text, MIN_RATE, MAX_RATE, "a rate in orders per second from 0.001 to 1000000")
}

/// `--timeout`: seconds.
pub fn seconds(text: &str) -> Result<Duration, String> {
    number(text, 0.0, MAX_TIMEOUT_S, "a number of seconds from 0 to 604800 (a week)")
        .map(Duration::from_secs_f64)
}

/// The most orders one `orders --limit` lists.
pub const MAX_LIST: usize = 1_000_000;

/// `--older-than`, `--newer-than`: an age such as `300` (seconds), `90s`,
/// `5m`, `2h` or `1.5d`.
pub fn age(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let (number, unit) = match trimmed.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&trimmed[..i], c),
        _ => (trimmed, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        _ => f64::NAN,
    };
    let what = "an age such as 300 (seconds), 90s, 5m, 2h or 1.5d, up to ten years";
    let seconds = number.trim().parse::<f64>().map(|n| n * scale).unwrap_or(f64::NAN);
    if seconds.is_finite() && (0.0..=shared::order_search::MAX_AGE_S).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("{text:?} is not {what}"))
    }
}

/// `orders --limit`: how many orders to list.
pub fn list_limit(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIST).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a number of orders from 1 to {MAX_LIST}")),
    }
}

/// `orders --state`: a state of the workflow.
pub fn state(text: &str) -> Result<shared::OrderState, String> {
    shared::OrderState::parse(text.trim()).ok_or_else(|| {
        let states: Vec<&str> = shared::OrderState::all().into_iter().map(|s| s.as_str()).collect();
        format!("{text:?} is not a state (one of: {})", states.join(", "))
    })
}

/// `orders --at`: a node of the workflow.
pub fn node(text: &str) -> Result<shared::Node, String> {
    shared::Node::from_name(text.trim()).ok_or_else(|| {
        let nodes: Vec<&str> = shared::Node::all().into_iter().map(|n| n.name()).collect();
        format!("{text:?} is not a node (one of: {})", nodes.join(", "))
    })
}

/// `call --request-id`, `call status`: what a service takes as a request id.
pub fn request_id(text: &str) -> Result<String, String> {
    shared::service::check_id("the request id", text).map(|_| text.to_string())
}

/// `call status ID TOKEN`: a poll token (16 to 200 visible ASCII characters).
pub fn poll_token(text: &str) -> Result<String, String> {
    shared::poll::check_token(text).map(|_| text.to_string())
}

/// `--region`: a copy of the customer domain (primary or a replica's region).
pub fn region(text: &str) -> Result<String, String> {
    match topology::DomainCopy::find("customer", Some(text)) {
        Some(_) => Ok(text.to_string()),
        None => {
            let regions = topology::DomainCopy::primary("customer").def().replicas.join(", ");
            Err(format!("{text:?} is not a region; the customer domain runs in: primary, {regions}"))
        }
    }
}

/// `call --callback`: what a service takes as a callback key.
pub fn callback_key(text: &str) -> Result<String, String> {
    shared::service::check_id("the callback key", text).map(|_| text.to_string())
}

/// `orders --customer`: 1 to 200 characters.
pub fn customer(text: &str) -> Result<String, String> {
    match text.chars().count() {
        1..=200 => Ok(text.to_string()),
        _ => Err("a customer id is 1 to 200 characters".into()),
    }
}

/// An RFC 3339 time such as `2026-11-29T10:00:00Z`.
pub fn time(text: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim()).map(|_| text.trim().to_string()).map_err(|_| {
        format!("{:?} is not an RFC 3339 time such as 2026-11-29T10:00:00Z", shared::text::escaped(text))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_units_and_refuse_what_is_not_an_age() {
        assert_eq!(age("300"), Ok(Duration::from_secs(300)));
        assert_eq!(age("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(age("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(age("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["-5m", "nan", "NaNm", "inf", "5y", "m", "", "1e20"] {
            assert!(age(bad).unwrap_err().contains("an age"), "{bad}");
        }
        assert!(list_limit("0").is_err() && list_limit("1000001").is_err());
        assert!(state("payment").unwrap_err().contains("not a state"));
        assert!(node("payment").is_ok());
    }

    #[test]
    fn numbers_that_cannot_be_used_are_refused_with_a_sentence() {
        for bad in ["0", "-1", "nan", "NaN", "inf", "-inf", "1e-300", "1e300", "", "fast"] {
            let error = rate(bad).unwrap_err();
            assert!(error.contains("orders per second") && !error.contains('\n'), "{bad}: {error}");
        }
        assert_eq!(rate("2.5"), Ok(2.5));
        for bad in ["nan", "inf", "-1", "1e9", "x"] {
            assert!(seconds(bad).unwrap_err().contains("seconds"), "{bad}");
        }
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(count("0").unwrap_err().contains("nothing"));
        assert!(count("100000000000").unwrap_err().contains("at most 1000000"));
        assert!(count("-3").unwrap_err().contains("whole number"));
        assert_eq!(count("12"), Ok(12));
        assert!(order_id("../stats").unwrap_err().contains("not an order id"));
    }
}
