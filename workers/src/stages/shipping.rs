//! shipping: packs and ships an order once (`shipped`: the end of a
//! `standard` order; `ship-then-bill` goes on to be charged) with a
//! tracking number; its audit detail names the address it shipped to. It
//! ships only an element that carries its reservation, and its charge
//! where its workflow charges before shipping: the element reached shipping
//! only along broker-verified hops (payment → inventory → picklist →
//! rebin), so those records are the owners' own.

use chrono::Utc;
use shared::group_commit::Written;
use shared::order::ShipTo;
use shared::store::Store;
use shared::{settings::Settings, Node, OrderElement, OrderState, Outcome, Stage, StageError};
use uuid::Uuid;

const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS shipping_shipments (order_id TEXT PRIMARY KEY, \
     tracking_number TEXT NOT NULL, ship_to TEXT NOT NULL, shipped_at TEXT NOT NULL)"];

pub fn address_line(to: &ShipTo) -> String {
    format!("{}, {}, {} {}, {}", to.name, to.line1, to.postal_code, to.city, to.country)
}

fn new_tracking_number() -> String {
    format!("OF{:012}", Uuid::new_v4().as_u128() % 1_000_000_000_000)
}

#[derive(Clone)]
pub struct Shipping {
    store: Store,
}

impl Shipping {
    pub async fn open(settings: &Settings) -> anyhow::Result<Shipping> {
        let store = Store::open(settings, <Self as Stage>::NODE.name()).await?;
        store.migrate(SCHEMA).await?;
        Ok(Shipping { store })
    }

    /// Records the shipment once; a repeated request returns the first
    /// tracking number. Group-committed with the node's other writes.
    pub async fn ship(&self, order_id: Uuid, to: &ShipTo) -> sqlx::Result<String> {
        let row = (order_id.to_string(), new_tracking_number(), address_line(to), Utc::now().to_rfc3339());
        self.store
            .write(move |connection| {
                let (order_id, tracking, ship_to, shipped_at) = row.clone();
                Box::pin(async move {
                    // One statement: a repeated request touches the existing row and returns it.
                    let tracking: String = sqlx::query_scalar(
                        "INSERT INTO shipping_shipments (order_id, tracking_number, ship_to, shipped_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id \
                         RETURNING tracking_number",
                    )
                    .bind(order_id)
                    .bind(tracking)
                    .bind(ship_to)
                    .bind(shipped_at)
                    .fetch_one(&mut *connection)
                    .await?;
                    Ok(Written::Keep(tracking))
                })
            })
            .await
    }
}

impl Stage for Shipping {
    const NODE: Node = Node::Shipping;

    async fn handle(&self, mut element: OrderElement) -> Result<Outcome, StageError> {
        // Charged first unless its workflow bills after shipping (ship-then-bill).
        let definition = shared::routing::definition(&element).unwrap_or(&topology::WORKFLOW);
        let uncharged = element.charge.is_none() && shared::routing::charged_before(definition, Self::NODE);
        if uncharged || element.reservation.is_none() {
            return Err(StageError::Permanent(format!(
                "order {} carries no {}: it is not shipped",
                element.order_id,
                if uncharged { "charge" } else { "reservation" }
            )));
        }
        let tracking = self.ship(element.order_id, &element.order.ship_to).await?;
        let detail = format!(
            "shipped {} to {}, tracking {tracking}",
            element.order.shipping_method,
            address_line(&element.order.ship_to)
        );
        element.tracking_number = Some(tracking);
        Ok(Outcome::new(element).step(OrderState::Shipped, detail))
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let stage = Shipping::open(&settings).await?;
        transport::runner::run_stage(stage, settings, shutdown).await
    })
}
