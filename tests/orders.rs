//! Orders for tests, one builder per path through the workflow.

use serde_json::{json, Value};

pub const GOOD_CARD: &str = "4111111111111111";
pub const DECLINED_CARD: &str = "4000000000000002";

/// A valid order of `units` units of one SKU, shipped by `method`.
pub fn valid(units: i64, method: &str) -> Value {
    json!({
        "customer_id": "cust-1",
        "items": [{"sku": "SKU-0042", "qty": units}],
        "shipping_method": method,
        "ship_to": {"name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
                    "postal_code": "SW1Y 4JH", "country": "GB"},
        "payment": {"card_number": GOOD_CARD, "expiry": "12/30"}
    })
}

pub fn declined() -> Value {
    let mut order = valid(1, "standard");
    order["payment"]["card_number"] = json!(DECLINED_CARD);
    order
}

pub fn out_of_stock() -> Value {
    let mut order = valid(1, "express");
    order["items"] = json!([{"sku": "SKU-0001", "qty": 1}, {"sku": "SKU-0999", "qty": 1}]);
    order
}

pub fn invalid() -> Value {
    let mut order = valid(1, "overnight");
    order["items"][0]["qty"] = json!(0);
    order
}
