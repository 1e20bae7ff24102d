//! Service results kept for polling: a node answering a call that named no
//! reply queue and no callback key sends its result to `orderflow.results`
//! (`poll.<service>`), and the tracker keeps it for `GET /calls/{id}` and
//! `orderflow call status`. A result is believed only from the user of the
//! service it names. A collected result is removed
//! `ORDERFLOW_RESULT_RETENTION_S` after it was first read; one never
//! collected after `ORDERFLOW_CHANGE_RETENTION_S`.

use super::store::TrackerStore;
use lapin::message::Delivery;
use shared::service::CALLER_HEADER;
use shared::settings::Settings;
use shared::transport::message::header_text;
use shared::transport::service::receive_result;
use shared::transport::settle::{ack, dead_letter, requeue};
use shared::transport::{NodeContext, Publisher};
use std::time::{Duration, Instant};

/// How long a collected result is kept, and one never collected.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub collected: Duration,
    pub uncollected: Duration,
    purged_at: Option<Instant>,
}

impl Retention {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Retention> {
        Ok(Retention {
            collected: Settings::result_retention()?,
            uncollected: settings.change_retention,
            purged_at: None,
        })
    }
}

const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Keeps one result (or dead-letters it, when it cannot be read or its
/// sender is not the service it names), then acknowledges it.
pub async fn keep(
    ctx: &NodeContext,
    store: &TrackerStore,
    publisher: &Publisher,
    retention: &mut Retention,
    delivery: Delivery,
) {
    let checked = receive_result(ctx, &delivery, "a result");
    let result = match checked {
        Ok(result) => result,
        Err(reason) => return dead_letter(publisher, ctx, &delivery, &reason).await,
    };
    let caller = caller_of(&delivery);
    if let Err(error) = store.keep_call_result(&result, &caller).await {
        tracing::warn!(%error, "could not keep a service result; it will be tried again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        return requeue(&delivery).await;
    }
    ack(&delivery).await;
    if retention.purged_at.is_none_or(|at| at.elapsed() > PURGE_EVERY) {
        retention.purged_at = Some(Instant::now());
        if let Err(error) = store.purge_call_results(retention.collected, retention.uncollected).await {
            tracing::warn!(%error, "could not purge old service results");
        }
    }
}

fn caller_of(delivery: &Delivery) -> String {
    header_text(delivery.properties.headers().as_ref(), CALLER_HEADER).unwrap_or_default()
}
