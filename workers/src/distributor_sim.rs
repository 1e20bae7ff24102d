//! The simulated distributors (`distributor-sim`): they take the purchase
//! orders inventory sends for its backorders from the distributor shipments
//! queue, and after a delay (`ORDERFLOW_DISTRIBUTOR_DELAY_MS`, a lead time
//! of days shortened for a demo) ship them: the units arrive as received
//! items against the purchase order (`po_id`), with a shipment id derived
//! from the purchase order's, so a purchase order delivered twice (a crash
//! before its ack) is counted once. Only
//! inventory's user may order; anything else is dead-lettered with the reason.
//!
//! A drop-ship order (type `drop_ship_order`, from a node that drop-ships:
//! purchasing) is shipped straight to the customer's address after the same
//! delay: nothing arrives at the DC, so it turns into no received items and
//! no stock. Each is shipped once per process (by its id: a redelivered
//! drop-ship order is acknowledged without shipping again).

use crate::inventory::backorders::PurchaseOrder;
use crate::inventory::stock::{check_receipt, Receipt};
use crate::stages::purchasing::{DropShipOrder, DROP_SHIP_TYPE};
use futures::StreamExt;
use lapin::{message::Delivery, options::BasicQosOptions, BasicProperties, Connection};
use shared::settings::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use topology::permissions::Role;
use transport::session::{finish, supervise};
use transport::settle::{ack, dead_letter, requeue};
use transport::{NodeContext, Outgoing, Publisher};

/// The receipt a purchase order turns into when shipped: against that
/// purchase order, its shipment id the same every time it ships.
pub fn shipped(po: &PurchaseOrder) -> Receipt {
    Receipt {
        shipment_id: format!("po-{}", po.po_id),
        distributor_id: po.distributor_id.clone(),
        sku: po.sku.clone(),
        qty: po.qty,
        po_id: Some(po.po_id),
    }
}

/// Runs the simulated distributors until shutdown.
/// The process's run, boxed here (see `workers::process`).
pub fn run(
    settings: Settings,
    shutdown: CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(run_until(settings, shutdown))
}

async fn run_until(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let delay = settings.distributor_delay;
    let queue = topology::DISTRIBUTOR_SHIPMENTS_QUEUE.to_string();
    let ctx = Arc::new(NodeContext::new(&settings, topology::DISTRIBUTOR_SIM, queue, settings.prefetch)?);
    supervise(&settings, &ctx, &shutdown, |connection| {
        session(connection, ctx.clone(), delay, shutdown.clone())
    })
    .await
}

async fn session(
    connection: Connection,
    ctx: Arc<NodeContext>,
    delay: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let connection = Arc::new(connection);
    let publisher = Publisher::reopening(connection.clone(), ctx.trust.own_user()).await?;
    let channel = connection.create_channel().await?;
    topology::ensure_for(&channel, &[topology::distributor_shipments_queue()]).await.map_err(|e| {
        anyhow::anyhow!("{e}: the topology is not applied (scripts/up.sh or `topology apply` create it)")
    })?;
    channel.basic_qos(ctx.prefetch, BasicQosOptions { global: false }).await?;
    let tag = ctx.instance_id.clone();
    let mut orders = channel
        .basic_consume(ctx.queue.as_str().into(), tag.as_str().into(), Default::default(), Default::default())
        .await?;
    tracing::info!(queue = ctx.queue, delay_ms = delay.as_millis() as u64, "taking purchase orders");
    let tasks = TaskTracker::new();
    let drop_shipped = DropShipped::default();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = orders.next() => match next {
                Some(Ok(delivery)) if is_drop_ship(&delivery) => {
                    let (ctx, publisher, shutdown, shipped) =
                        (ctx.clone(), publisher.clone(), shutdown.clone(), drop_shipped.clone());
                    tasks.spawn(async move { drop_ship(&ctx, &publisher, delivery, delay, &shutdown, &shipped).await });
                }
                Some(Ok(delivery)) => {
                    let (ctx, publisher, shutdown) = (ctx.clone(), publisher.clone(), shutdown.clone());
                    tasks.spawn(async move { ship(&ctx, &publisher, delivery, delay, &shutdown).await });
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("the consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        }
    };
    finish(&connection, &channel, &ctx, tasks, result).await
}

/// The drop-ship orders this process shipped, by id.
type DropShipped = Arc<std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>>;

fn is_drop_ship(delivery: &Delivery) -> bool {
    delivery.properties.kind().as_ref().is_some_and(|kind| kind.as_str() == DROP_SHIP_TYPE)
}

/// An order for the distributors, decoded, when one of `senders` (`who`)
/// sent it; otherwise the reason to dead-letter it with (`what`: the kind
/// of order, as the reason names it).
fn taken<T: serde::de::DeserializeOwned>(
    ctx: &NodeContext,
    delivery: &Delivery,
    senders: &[Role],
    who: &str,
    what: &str,
) -> Result<T, String> {
    let sender = ctx.trust.sender(&delivery.properties);
    if !senders.iter().any(|role| ctx.trust.is_role(sender.as_deref(), *role)) {
        return Err(format!(
            "refused: only {who} orders a {what} order from the distributors; this came from {}",
            shared::text::escaped(sender.as_deref().unwrap_or("an unnamed sender (no user_id)"))
        ));
    }
    serde_json::from_slice(&delivery.data)
        .map_err(|error| format!("not a {what} order: {}", shared::text::escaped(&error.to_string())))
}

/// Ships one drop-ship order to the customer after the delay, once, then
/// acknowledges it: no received items (no stock) come of it.
async fn drop_ship(
    ctx: &NodeContext,
    publisher: &Publisher,
    delivery: Delivery,
    delay: Duration,
    shutdown: &CancellationToken,
    shipped: &DropShipped,
) {
    let drop_shippers: Vec<Role> = topology::Node::all()
        .into_iter()
        .filter(|node| topology::workflow::orders_from_distributors(*node))
        .map(Role::Node)
        .collect();
    let order: DropShipOrder =
        match taken(ctx, &delivery, &drop_shippers, "a drop-shipping node", "drop-ship") {
            Ok(order) => order,
            Err(reason) => return dead_letter(publisher, ctx, &delivery, &reason).await,
        };
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => return,
    }
    let first = shipped.lock().expect("not poisoned").insert(order.po_id);
    let units: i64 = order.lines.iter().map(|line| line.qty).sum();
    if first {
        tracing::info!(po_id = %order.po_id, order_id = %order.order_id, distributor = order.distributor_id, units, city = order.ship_to.city, "drop-shipped to the customer");
    } else {
        tracing::info!(po_id = %order.po_id, "a drop-ship order shipped before; not shipped again");
    }
    ack(&delivery).await
}

/// Ships one purchase order after the delay, then acknowledges it. A
/// shutdown during the delay leaves it unacknowledged: the broker gives it
/// to the next distributor process.
async fn ship(
    ctx: &NodeContext,
    publisher: &Publisher,
    delivery: Delivery,
    delay: Duration,
    shutdown: &CancellationToken,
) {
    let stock_node = topology::DomainCopy::primary("stock").served_by();
    let senders: Vec<Role> = stock_node.map(Role::Node).into_iter().collect();
    let who = stock_node.map_or("the stock domain's node", |node| node.name());
    let po: PurchaseOrder = match taken(ctx, &delivery, &senders, who, "purchase") {
        Ok(po) => po,
        Err(reason) => return dead_letter(publisher, ctx, &delivery, &reason).await,
    };
    let receipt = shipped(&po);
    if let Err(reason) = check_receipt(&receipt) {
        return dead_letter(publisher, ctx, &delivery, &format!("not a purchase order: {reason}")).await;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => return,
    }
    let message = Outgoing {
        exchange: topology::RECEIVING_EXCHANGE,
        routing_key: topology::domains::RECEIVED_ROUTING_KEY.to_string(),
        body: serde_json::to_vec(&receipt).expect("a receipt serializes"),
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_type("received_item".into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64),
    };
    match publisher.publish_all(&[message]).await {
        Ok(()) => {
            tracing::info!(po_id = %po.po_id, distributor = po.distributor_id, sku = po.sku, qty = po.qty, "shipped");
            ack(&delivery).await
        }
        Err(error) => {
            tracing::warn!(%error, "could not ship a purchase order; it will be tried again");
            // Not at once: a broker that refuses now would be asked in a loop.
            tokio::time::sleep(Duration::from_secs(1)).await;
            requeue(&delivery).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purchase_order_ships_as_one_receipt_against_it_with_a_shipment_id_of_its_own() {
        let po = PurchaseOrder {
            po_id: uuid::Uuid::new_v4(),
            order_id: uuid::Uuid::new_v4(),
            distributor_id: "D-02".into(),
            sku: "SKU-0902".into(),
            qty: 7,
        };
        let receipt = shipped(&po);
        assert_eq!(receipt.shipment_id, format!("po-{}", po.po_id));
        assert_eq!(shipped(&po), receipt, "the same purchase order ships as the same receipt");
        assert_eq!((receipt.sku.as_str(), receipt.qty, receipt.po_id), ("SKU-0902", 7, Some(po.po_id)));
        assert!(check_receipt(&receipt).is_ok());
    }
}
