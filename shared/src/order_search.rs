//! Finding orders (`GET /orders` of the tracker's API): the search's
//! parameters and their checks (a bad value is refused with one sentence,
//! which the tracker answers as a 400), and the page it answers. Defined once
//! for the tracker, which parses a query, and the client, which writes one.

use crate::order::OrderState;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use topology::Node;
use uuid::Uuid;

/// Orders per page when the query says nothing, and at most.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// The longest age a search takes, in seconds (ten years).
pub const MAX_AGE_S: f64 = 315_360_000.0;

/// Which orders to list: every filter given must hold. Pages come in order
/// id order, so an order that matches throughout a walk through the pages is
/// listed exactly once, however others move meanwhile.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderSearch {
    /// Orders whose current state is this one.
    pub state: Option<OrderState>,
    /// Orders waiting at this node: in a state that the workflow routes to it.
    pub at: Option<Node>,
    /// Orders placed by this customer.
    pub customer: Option<String>,
    /// Orders whose current state is at least this old.
    pub older_than: Option<Duration>,
    /// Orders whose current state is at most this old.
    pub newer_than: Option<Duration>,
    /// At most this many orders (1 to [`MAX_LIMIT`]).
    pub limit: u32,
    /// The page after this order id: a previous page's `next`.
    pub after: Option<Uuid>,
}

impl Default for OrderSearch {
    fn default() -> OrderSearch {
        OrderSearch {
            state: None,
            at: None,
            customer: None,
            older_than: None,
            newer_than: None,
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// An age in seconds (a finite number from 0 to ten years), or why not.
pub fn age(name: &str, text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=MAX_AGE_S).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{name}={text:?} is not a number of seconds from 0 to {MAX_AGE_S}")),
    }
}

/// A page size from 1 to [`MAX_LIMIT`], or why not.
pub fn limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("limit={text:?} is not a whole number of orders from 1 to {MAX_LIMIT}")),
    }
}

impl OrderSearch {
    /// The search of a query string's pairs; unknown, repeated or bad
    /// parameters are refused with the reason.
    pub fn parse(pairs: &[(String, String)]) -> Result<OrderSearch, String> {
        let mut search = OrderSearch::default();
        let mut seen = std::collections::HashSet::new();
        for (name, value) in pairs {
            if !seen.insert(name.as_str()) {
                return Err(format!("{name} is given more than once"));
            }
            match name.as_str() {
                "state" => {
                    search.state = Some(OrderState::parse(value).ok_or_else(|| {
                        let states: Vec<&str> =
                            OrderState::all().into_iter().map(OrderState::as_str).collect();
                        format!("state={value:?} is not a state (one of: {})", states.join(", "))
                    })?)
                }
                "at" => {
                    search.at = Some(Node::from_name(value).ok_or_else(|| {
                        let nodes: Vec<&str> = Node::all().into_iter().map(Node::name).collect();
                        format!("at={value:?} is not a node (one of: {})", nodes.join(", "))
                    })?)
                }
                "customer" if value.is_empty() || value.chars().count() > 200 => {
                    return Err("customer must be 1 to 200 characters".into())
                }
                "customer" => search.customer = Some(value.clone()),
                "older_than" => search.older_than = Some(age(name, value)?),
                "newer_than" => search.newer_than = Some(age(name, value)?),
                "limit" => search.limit = limit(value)?,
                "after" => {
                    search.after = Some(Uuid::parse_str(value).map_err(|_| {
                        format!("after={value:?} is not a cursor (the order id a page gave as next)")
                    })?)
                }
                _ => {
                    return Err(format!(
                    "unknown parameter {name:?} (state, at, customer, older_than, newer_than, limit, after)"
                ))
                }
            }
        }
        Ok(search)
    }

    /// The query string's pairs of this search (what [`OrderSearch::parse`] reads).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(state) = self.state {
            pairs.push(("state", state.as_str().to_string()));
        }
        if let Some(node) = self.at {
            pairs.push(("at", node.name().to_string()));
        }
        if let Some(customer) = &self.customer {
            pairs.push(("customer", customer.clone()));
        }
        if let Some(age) = self.older_than {
            pairs.push(("older_than", age.as_secs_f64().to_string()));
        }
        if let Some(age) = self.newer_than {
            pairs.push(("newer_than", age.as_secs_f64().to_string()));
        }
        pairs.push(("limit", self.limit.to_string()));
        if let Some(after) = self.after {
            pairs.push(("after", after.to_string()));
        }
        pairs
    }
}

/// One order found: its current state, since when, and its customer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderSummary {
    pub order_id: String,
    pub state: String,
    pub terminal: bool,
    /// When the order reached its current state (RFC 3339, UTC).
    pub since: String,
    /// The customer who placed it, when the tracker saw its `placed` event.
    pub customer_id: Option<String>,
}

/// A page of `GET /orders`: the orders, and the cursor of the next page
/// (`after=<next>`) when there may be more.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OrderPage {
    pub orders: Vec<OrderSummary>,
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bad_values_are_refused_with_a_reason_and_good_ones_round_trip() {
        for (query, reason) in [
            (vec![("state", "payment")], "not a state"),
            (vec![("at", "nowhere")], "not a node"),
            (vec![("older_than", "-1")], "number of seconds"),
            (vec![("older_than", "NaN")], "number of seconds"),
            (vec![("newer_than", "inf")], "number of seconds"),
            (vec![("limit", "0")], "from 1 to 1000"),
            (vec![("limit", "1001")], "from 1 to 1000"),
            (vec![("after", "x")], "cursor"),
            (vec![("customer", "")], "1 to 200"),
            (vec![("limit", "5"), ("limit", "6")], "more than once"),
            (vec![("sort", "x")], "unknown parameter"),
        ] {
            let error = OrderSearch::parse(&pairs(&query)).unwrap_err();
            assert!(error.contains(reason), "{query:?}: {error}");
        }
        let search = OrderSearch {
            state: OrderState::parse("accepted"),
            at: Node::from_name("payment"),
            customer: Some("cust-1".into()),
            older_than: Some(Duration::from_secs(300)),
            newer_than: Some(Duration::from_millis(1500)),
            limit: 7,
            after: Some(Uuid::new_v4()),
        };
        let written: Vec<(String, String)> =
            search.to_pairs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(OrderSearch::parse(&written), Ok(search));
        assert_eq!(OrderSearch::parse(&[]), Ok(OrderSearch::default()));
    }
}
