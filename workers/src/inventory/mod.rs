//! Inventory's home: everything the inventory process owns, beside each
//! other. `stage` (the workflow node: reserving an order's items once,
//! deciding a shortage), `backorders` (the backorders and purchase orders
//! as stored decisions, no broker), `desk` (what inventory sends for its
//! backorders: purchase orders, and each waiting order's way out) and
//! `stock` (the stock domain and its received-items queue, run by the
//! inventory process in a session of its own beside the stage).

pub mod backorders;
pub mod desk;
pub mod stage;
pub mod stock;

pub use stage::Inventory;

/// The inventory process: the stage, and beside it the stock domain with
/// the received items, on the broker until `shutdown` (its binary's run,
/// boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    use transport::{domain::run_domain, runner::run_stage};
    Box::pin(async move {
        let stage = Inventory::open(&settings).await?;
        let stock = std::sync::Arc::new(stock::StockDomain::open(&settings).await?);
        let domain = run_domain(settings.clone(), stock, shutdown.clone());
        tokio::try_join!(run_stage(stage, settings, shutdown), domain).map(|_| ())
    })
}
