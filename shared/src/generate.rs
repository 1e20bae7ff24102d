//! Generated orders: valid ones (single- and multi-unit mixed) for load and
//! benchmarks, and the demo's mix that also exercises every failure path.

use crate::order::{Item, Order, PaymentCard, ShipTo};
use rand::{rngs::StdRng, Rng, SeedableRng};

const METHODS: [&str; 3] = ["standard", "express", "overnight"];
const CITIES: [(&str, &str, &str); 4] = [
    ("Seattle", "98101", "US"),
    ("London", "EC1A 1BB", "GB"),
    ("Berlin", "10115", "DE"),
    ("Tokyo", "100-0001", "JP"),
];

/// A valid order: about half single-unit, half multi-unit.
pub fn valid_order(rng: &mut impl Rng) -> Order {
    let lines = if rng.gen_bool(0.5) { 1 } else { rng.gen_range(1..=3) };
    let mut items: Vec<Item> = (0..lines)
        .map(|_| Item { sku: format!("SKU-{:04}", rng.gen_range(1..=500)), qty: rng.gen_range(1..=3) })
        .collect();
    if lines == 1 && rng.gen_bool(0.5) {
        items[0].qty = 1;
    }
    let (city, postal, country) = CITIES[rng.gen_range(0..CITIES.len())];
    Order {
        order_id: None,
        address_id: None,
        customer_id: format!("cust-{:05}", rng.gen_range(0..100_000)),
        items,
        shipping_method: METHODS[rng.gen_range(0..METHODS.len())].to_string(),
        ship_to: ShipTo {
            name: format!("Customer {}", rng.gen_range(1..10_000)),
            line1: format!("{} Main Street", rng.gen_range(1..999)),
            city: city.into(),
            postal_code: postal.into(),
            country: country.into(),
        },
        payment: PaymentCard { card_number: "4111111111111111".into(), expiry: "12/30".into() },
        workflow: None,
    }
}

/// `n` orders; with `mixed`, one in ten is declined, one in ten out of stock,
/// one in ten invalid (rejected at intake), one in ten follows
/// `ship-then-bill` and one in ten `drop-ship` (the other named workflows).
pub fn orders(n: usize, mixed: bool) -> Vec<Order> {
    let mut rng = StdRng::from_entropy();
    (0..n)
        .map(|i| {
            let mut order = valid_order(&mut rng);
            if mixed {
                match i % 10 {
                    1 => order.workflow = Some("ship-then-bill".into()),
                    3 => order.payment.card_number = "4000000000000002".into(),
                    5 => order.workflow = Some("drop-ship".into()),
                    6 => order.items.push(Item { sku: "SKU-0999".into(), qty: 1 }),
                    9 => order.items[0].qty = 0,
                    _ => {}
                }
            }
            order
        })
        .collect()
}
