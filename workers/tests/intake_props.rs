//! Property tests of intake's validation with arbitrary orders: it never
//! panics, and it accepts an order only when every rule holds.

use proptest::prelude::*;
use shared::order::{Item, Order, PaymentCard, ShipTo};
use workers::catalog::in_catalog;
use workers::stages::intake::{validate, MAX_QTY, MAX_TEXT_LEN, SHIPPING_METHODS};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9 ]{1,20}",
        1 => "\\PC{0,250}",
        1 => ".{0,10}",
        1 => Just(String::new()),
    ]
}

fn sku() -> impl Strategy<Value = String> {
    prop_oneof![(1u32..=520).prop_map(|n| format!("SKU-{n:04}")), Just("SKU-0999".to_string()), ".{0,12}"]
}

fn order() -> impl Strategy<Value = Order> {
    (
        text(),
        prop::collection::vec((sku(), prop_oneof![-5i64..20, any::<i64>()]), 0..4),
        prop_oneof![Just("standard".to_string()), Just("express".to_string()), text()],
        (text(), text(), text(), text(), text()),
        prop_oneof!["[0-9]{10,21}", ".{0,20}"],
    )
        .prop_map(
            |(customer_id, items, shipping_method, (name, line1, city, postal_code, country), card)| Order {
                order_id: None,
                address_id: None,
                customer_id,
                items: items.into_iter().map(|(sku, qty)| Item { sku, qty }).collect(),
                shipping_method,
                ship_to: ShipTo { name, line1, city, postal_code, country },
                payment: PaymentCard { card_number: card, expiry: "12/30".into() },
                workflow: None,
            },
        )
}

fn text_ok(s: &str) -> bool {
    !s.trim().is_empty() && s.chars().count() <= MAX_TEXT_LEN && !s.chars().any(char::is_control)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn accepted_orders_satisfy_every_rule(order in order()) {
        match validate(&order) {
            Ok(()) => {
                prop_assert!(text_ok(&order.customer_id));
                prop_assert!(!order.items.is_empty());
                for item in &order.items {
                    prop_assert!((1..=MAX_QTY).contains(&item.qty));
                    prop_assert!(in_catalog(&item.sku));
                }
                let to = &order.ship_to;
                for field in [&to.name, &to.line1, &to.city, &to.postal_code, &to.country] {
                    prop_assert!(text_ok(field));
                }
                prop_assert!(SHIPPING_METHODS.contains(&order.shipping_method.as_str()));
                let card = &order.payment.card_number;
                prop_assert!((13..=19).contains(&card.len()) && card.bytes().all(|b| b.is_ascii_digit()));
            }
            Err(reason) => prop_assert!(!reason.is_empty() && !reason.chars().any(char::is_control)),
        }
    }
}
