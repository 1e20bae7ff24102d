//! Payment's home: everything the payment process owns, beside each other.
//! `stage` (the workflow node: charging an order's card once, a decline
//! keeping the order waiting), `waiting` (the orders waiting for another
//! card, as stored decisions, no broker), `desk` (what payment does for
//! them: a new card charged, a cancel, a wait run out), `cards` (the
//! cards service: a card for an order becomes the processor's token; its
//! tick runs the desk) and `settlement` (the cards service's feed: shipped
//! orders' captures, settled in batches), run by the payment process in a
//! session of its own beside the stage.

pub mod cards;
pub mod desk;
pub mod settlement;
pub mod stage;
pub mod waiting;

pub use stage::Payment;

/// The payment process: the stage, and beside it the cards service with
/// the desk, on the broker until `shutdown` (its binary's run, boxed in
/// this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    use std::sync::Arc;
    use transport::{domain::run_domain, runner::run_stage};
    Box::pin(async move {
        let processor = crate::processor::Processor::open(&settings).await?;
        let waiting = waiting::Waiting::open(shared::store::Store::open(&settings, "payment").await?).await?;
        let stage = Payment::waiting_for_cards(processor.clone(), waiting.clone(), settings.payment_wait);
        let desk_stage =
            Arc::new(Payment::waiting_for_cards(processor.clone(), waiting.clone(), settings.payment_wait));
        let desk = desk::PaymentDesk::open(&settings, waiting, desk_stage).await?;
        let settlement = settlement::Settlement::new(processor.clone(), &settings);
        let cards = Arc::new(cards::CardsService { processor, desk, settlement });
        let domain = run_domain(settings.clone(), cards, shutdown.clone());
        tokio::try_join!(run_stage(stage, settings, shutdown), domain).map(|_| ())
    })
}
