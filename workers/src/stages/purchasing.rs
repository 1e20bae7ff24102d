//! purchasing (the `drop-ship` workflow): sends a charged order's purchase
//! orders, with the customer's address, to the distributors that supply its
//! items, and ends the order `shipped`: the distributor ships straight to
//! the customer, so no stock is reserved, nothing is picked, and the
//! simulated distributors send no received items for it.
//!
//! One drop-ship order per distributor (the shortest lead time supplies each
//! SKU, as for inventory's backorders), its id derived from the order and
//! the distributor: a redelivered element sends the same drop-ship orders
//! again, and a distributor ships each id once. They are confirmed by the
//! broker before the element's outcome is recorded, so no order is
//! `shipped` without them. An item no distributor supplies sends the order
//! to exceptions (`stock_short`: its authorization voided, `out_of_stock`)
//! with no drop-ship order sent.

use crate::inventory::stage::Suppliers;
use serde::{Deserialize, Serialize};
use shared::order::{Failure, ShipTo};
use shared::{settings::Settings, Node, OrderElement, OrderState, Outcome, Stage, StageError};
use std::collections::BTreeMap;
use transport::{Outgoing, Publisher};
use uuid::Uuid;

/// The `type` of a drop-ship order on the purchase orders exchange (a
/// backorder's purchase order is a `purchase_order`).
pub const DROP_SHIP_TYPE: &str = "drop_ship_order";

/// What one distributor ships straight to the customer for one order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropShipOrder {
    pub po_id: Uuid,
    pub order_id: Uuid,
    pub distributor_id: String,
    pub ship_to: ShipTo,
    pub lines: Vec<DropShipLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropShipLine {
    pub sku: String,
    pub qty: i64,
}

/// The drop-ship orders of `element`, one per distributor, given who
/// supplies each SKU; or the SKUs no distributor supplies.
pub fn drop_ship_orders(
    element: &OrderElement,
    suppliers: &BTreeMap<String, String>,
) -> Result<Vec<DropShipOrder>, Vec<String>> {
    let mut by_distributor: BTreeMap<&str, Vec<DropShipLine>> = BTreeMap::new();
    let mut unsupplied = Vec::new();
    for item in element.order.items.iter().filter(|item| item.qty > 0) {
        match suppliers.get(&item.sku) {
            Some(distributor) => {
                let lines = by_distributor.entry(distributor.as_str()).or_default();
                match lines.iter_mut().find(|line| line.sku == item.sku) {
                    Some(line) => line.qty += item.qty,
                    None => lines.push(DropShipLine { sku: item.sku.clone(), qty: item.qty }),
                }
            }
            None if !unsupplied.contains(&item.sku) => unsupplied.push(item.sku.clone()),
            None => {}
        }
    }
    if !unsupplied.is_empty() {
        return Err(unsupplied);
    }
    let orders = by_distributor.into_iter().map(|(distributor_id, lines)| DropShipOrder {
        po_id: Uuid::new_v5(&element.order_id, format!("drop-ship/{distributor_id}").as_bytes()),
        order_id: element.order_id,
        distributor_id: distributor_id.to_string(),
        ship_to: element.order.ship_to.clone(),
        lines,
    });
    Ok(orders.collect())
}

/// A drop-ship order as the distributors take it: its id is the message id.
pub fn drop_ship_message(order: &DropShipOrder) -> Outgoing {
    let body = serde_json::to_vec(order).expect("a drop-ship order serializes");
    crate::inventory::desk::to_distributor(order.po_id, &order.distributor_id, DROP_SHIP_TYPE, body)
}

/// The confirmed publisher of the drop-ship orders, on a connection of its
/// own, opened when first needed and again after it was lost.
struct OrderSender {
    settings: Settings,
    open: tokio::sync::Mutex<Option<(lapin::Connection, Publisher)>>,
}

impl OrderSender {
    async fn send(&self, messages: &[Outgoing]) -> Result<(), StageError> {
        let mut open = self.open.lock().await;
        if open.as_ref().is_none_or(|(connection, _)| !connection.status().connected()) {
            let transient = |e: lapin::Error| {
                StageError::Transient(anyhow::Error::from(e).context("reaching the distributors"))
            };
            let connection =
                transport::connect(&self.settings.amqp_url, "purchasing-orders").await.map_err(transient)?;
            let publisher =
                Publisher::open(&connection, &self.settings.broker_user()).await.map_err(transient)?;
            *open = Some((connection, publisher));
        }
        let (_, publisher) = open.as_ref().expect("opened above");
        let sent = publisher.publish_all(messages).await;
        if sent.is_err() {
            // A channel the broker closed is not replaced: open afresh next time.
            *open = None;
        }
        sent.map_err(transport::publisher::publish_failure)
    }
}

pub struct Purchasing {
    suppliers: Suppliers,
    sender: OrderSender,
}

impl Purchasing {
    pub fn open(settings: &Settings) -> anyhow::Result<Purchasing> {
        Ok(Purchasing {
            suppliers: Suppliers::new(settings, "purchasing-suppliers")?,
            sender: OrderSender { settings: settings.clone(), open: tokio::sync::Mutex::new(None) },
        })
    }
}

impl Stage for Purchasing {
    const NODE: Node = Node::Purchasing;

    async fn handle(&self, mut element: OrderElement) -> Result<Outcome, StageError> {
        if element.charge.is_none() {
            return Err(StageError::Permanent(format!(
                "order {} carries no charge: it is not drop-shipped",
                element.order_id
            )));
        }
        let orders = match drop_ship_orders(&element, &self.suppliers.all().await?) {
            Ok(orders) => orders,
            Err(unsupplied) => {
                let reason =
                    format!("out of stock: no distributor supplies {} to drop-ship", unsupplied.join(", "));
                element.failure = Some(Failure { ends_as: OrderState::OutOfStock, reason: reason.clone() });
                return Ok(Outcome::new(element).step(OrderState::StockShort, reason));
            }
        };
        let messages: Vec<Outgoing> = orders.iter().map(drop_ship_message).collect();
        self.sender.send(&messages).await?;
        let sent: Vec<String> = orders
            .iter()
            .map(|o| {
                let units: i64 = o.lines.iter().map(|l| l.qty).sum();
                format!("{} ({units} units, purchase order {})", o.distributor_id, o.po_id)
            })
            .collect();
        let detail = format!(
            "drop-shipped by {} to {}",
            sent.join(", "),
            super::shipping::address_line(&element.order.ship_to)
        );
        let ids: Vec<String> = orders.iter().map(|o| o.po_id.to_string()).collect();
        element.tracking_number = Some(ids.join(","));
        Ok(Outcome::new(element).step(OrderState::Shipped, detail))
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let stage = Purchasing::open(&settings)?;
        transport::runner::run_stage(stage, settings, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::order::{Item, Order};

    fn element(items: &[(&str, i64)]) -> OrderElement {
        let order = Order {
            items: items.iter().map(|(sku, qty)| Item { sku: sku.to_string(), qty: *qty }).collect(),
            ship_to: ShipTo { name: "Ada".into(), city: "Leeds".into(), ..ShipTo::default() },
            ..Order::default()
        };
        OrderElement { state: OrderState::Charged, ..OrderElement::placed(order) }
    }

    #[test]
    fn one_drop_ship_order_per_distributor_with_the_customers_address_and_a_stable_id() {
        let suppliers: BTreeMap<String, String> =
            [("A", "D-01"), ("B", "D-02"), ("C", "D-01")].map(|(s, d)| (s.to_string(), d.to_string())).into();
        let order = element(&[("A", 2), ("B", 1), ("C", 3), ("A", 1), ("D", 0)]);
        let orders = drop_ship_orders(&order, &suppliers).unwrap();
        assert_eq!(orders.len(), 2);
        assert_eq!(orders[0].distributor_id, "D-01");
        let lines: Vec<(&str, i64)> = orders[0].lines.iter().map(|l| (l.sku.as_str(), l.qty)).collect();
        assert_eq!(lines, [("A", 3), ("C", 3)]);
        assert_eq!(orders[1].lines, [DropShipLine { sku: "B".into(), qty: 1 }]);
        assert!(orders.iter().all(|o| o.ship_to.city == "Leeds" && o.order_id == order.order_id));
        assert_eq!(drop_ship_orders(&order, &suppliers).unwrap(), orders, "the same ids when sent again");
        assert_ne!(orders[0].po_id, orders[1].po_id);
        let message = drop_ship_message(&orders[1]);
        assert_eq!(message.routing_key, "po.D-02");
        assert_eq!(message.properties.kind().as_ref().map(|k| k.as_str()), Some(DROP_SHIP_TYPE));
    }

    #[test]
    fn an_item_no_distributor_supplies_is_named() {
        let suppliers: BTreeMap<String, String> = [("A".to_string(), "D-01".to_string())].into();
        let unsupplied = drop_ship_orders(&element(&[("A", 1), ("Z", 2), ("Z", 1)]), &suppliers).unwrap_err();
        assert_eq!(unsupplied, ["Z"]);
    }
}
