//! Settlement: what travels through the `orderflow.settlement` aggregation
//! queue and what a settled batch reports. Payment's charge is an
//! authorization (the processor holds the amount); once the order shipped,
//! whoever ended it shipped (the shipping node, or the coordinator for a
//! directed order) sends a [`Capture`], and the settling process (payment's
//! cards domain) captures many in one batch. Each batch is reported to the
//! tracker as a [`SettledBatch`] (type [`SETTLEMENT_TYPE`] on the audit
//! exchange) for `orderflow report`.

use crate::audit::rfc3339;
use crate::order::OrderElement;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `type` property of a capture on the settlement exchange.
pub const CAPTURE_TYPE: &str = "capture";
/// The `type` property of a settled batch's record on the audit exchange.
pub const SETTLEMENT_TYPE: &str = "settlement";

/// A shipped order's authorization, due for capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    pub order_id: Uuid,
    /// The authorization payment made (`charge_id` of the element's charge).
    pub charge_id: Uuid,
    /// What is captured: the amount authorized (the ledger checks it).
    pub amount_cents: i64,
    #[serde(with = "rfc3339")]
    pub shipped_at: DateTime<Utc>,
}

impl Capture {
    /// The capture due after an outcome (a runner's or a service's) whose
    /// steps reached `reached`: the order shipped in one of them, with its
    /// authorization. `None` for any other outcome.
    pub fn due_after(
        reached: impl IntoIterator<Item = crate::OrderState>,
        element: &OrderElement,
    ) -> Option<Capture> {
        let completed = completes_at(element);
        let completed_here = reached.into_iter().any(|state| Some(state) == completed);
        Capture::due(element).filter(|_| completed_here)
    }

    /// The capture an outcome makes due: the order completed (this step:
    /// shipped and charged, whichever came last in its workflow) with its
    /// authorization. `None` for any other outcome.
    pub fn due(element: &OrderElement) -> Option<Capture> {
        if Some(element.state) != completes_at(element) {
            return None;
        }
        let charge = element.charge.as_ref()?;
        Some(Capture {
            order_id: element.order_id,
            charge_id: charge.charge_id,
            amount_cents: charge.amount_cents,
            shipped_at: Utc::now(),
        })
    }
}

/// The state that completes the element's order in its definition.
fn completes_at(element: &OrderElement) -> Option<crate::OrderState> {
    crate::routing::definition(element).map(|definition| definition.completes_at)
}

/// One settled batch, as the tracker keeps it for the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledBatch {
    pub batch_id: Uuid,
    /// Captures made in this batch (a capture redelivered after its batch
    /// was settled is not counted again).
    pub captures: i64,
    pub amount_cents: i64,
    /// How long the batch's oldest capture waited in the queue (from its
    /// shipping to the settlement), in milliseconds.
    pub oldest_wait_ms: i64,
    #[serde(with = "rfc3339")]
    pub settled_at: DateTime<Utc>,
}
