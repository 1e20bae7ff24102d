//! Property tests of the message decoder: arbitrary bytes and arbitrary
//! JSON never panic it, and every element survives an encode/decode round trip.

use proptest::prelude::*;
use shared::order::{Item, Order, OrderElement, PaymentCard, ShipTo};
use topology::Node;
use transport::message::{decode, element_message};

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "\\PC{0,300}", Just(String::new())]
}

fn any_order() -> impl Strategy<Value = Order> {
    (
        any_text(),
        prop::collection::vec((any_text(), any::<i64>()), 0..5),
        any_text(),
        (any_text(), any_text(), any_text(), any_text(), any_text()),
        (any_text(), any_text()),
    )
        .prop_map(
            |(customer_id, items, method, (name, line1, city, postal_code, country), (card, expiry))| Order {
                order_id: None,
                address_id: None,
                customer_id,
                items: items.into_iter().map(|(sku, qty)| Item { sku, qty }).collect(),
                shipping_method: method,
                ship_to: ShipTo { name, line1, city, postal_code, country },
                payment: PaymentCard { card_number: card, expiry },
                workflow: None,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode::<OrderElement>(&body, None, 1 << 16);
    }

    #[test]
    fn arbitrary_json_never_panics(json in "\\{(\"[a-z_]{1,12}\": ?(\"[^\"]{0,10}\"|-?[0-9]{1,20}|null|\\[\\]|\\{\\}), ?){0,8}\\}") {
        let _ = decode::<OrderElement>(json.as_bytes(), None, 1 << 16);
    }

    #[test]
    fn elements_round_trip(order in any_order()) {
        let element = OrderElement::placed(order);
        let message = element_message(&element, Node::Intake);
        let decoded: OrderElement = decode(&message.body, message.properties.headers().as_ref(), usize::MAX).unwrap();
        prop_assert_eq!(decoded, element);
    }
}
