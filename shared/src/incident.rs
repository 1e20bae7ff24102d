//! Incidents: what went wrong with a message at a node (a retry of a
//! transient failure, a dead letter), sent to the audit exchange beside the
//! message it concerns and confirmed with it, so that the tracker's report
//! can count errors, retries and dead letters per node.

use crate::audit::rfc3339;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `type` property of incidents on the audit exchange.
pub const INCIDENT_TYPE: &str = "incident";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// A transient failure: the message goes round the node's retry queue.
    Retried,
    /// The message went to the dead-letter queue (a permanent failure, or
    /// a transient one out of attempts).
    DeadLettered,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Retried => "retried",
            IncidentKind::DeadLettered => "dead_lettered",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub incident_id: Uuid,
    /// The node it happened at (checked against the sender).
    pub node: String,
    /// The order concerned, when the message named one.
    pub order_id: Option<Uuid>,
    pub kind: IncidentKind,
    /// Why (card numbers masked), at most [`MAX_REASON_CHARS`] characters.
    pub reason: String,
    /// Which attempt at the message failed (1 for a first delivery).
    pub attempts: i64,
    #[serde(with = "rfc3339")]
    pub at: DateTime<Utc>,
}

/// Reasons are cut to this length: an incident is a count with a hint, the
/// dead letter keeps the whole reason.
pub const MAX_REASON_CHARS: usize = 500;

impl Incident {
    pub fn new(
        node: &str,
        order_id: Option<Uuid>,
        kind: IncidentKind,
        reason: &str,
        attempts: i64,
    ) -> Incident {
        let reason = crate::text::mask_card_numbers(reason).chars().take(MAX_REASON_CHARS).collect();
        Incident {
            incident_id: Uuid::new_v4(),
            node: node.to_string(),
            order_id,
            kind,
            reason,
            attempts,
            at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_masks_cards_and_cuts_long_reasons() {
        let reason = format!("card 4111 1111 1111 1111 refused {}", "x".repeat(2000));
        let incident = Incident::new("payment", None, IncidentKind::DeadLettered, &reason, 1);
        assert!(!incident.reason.contains("4111 1111 1111 1111"), "{}", &incident.reason[..40]);
        assert_eq!(incident.reason.chars().count(), MAX_REASON_CHARS);
        let json = serde_json::to_string(&incident).unwrap();
        assert!(json.contains("\"kind\":\"dead_lettered\""));
        let back = serde_json::from_str::<Incident>(&json).unwrap();
        assert_eq!(
            (back.incident_id, back.kind, back.reason),
            (incident.incident_id, incident.kind, incident.reason)
        );
    }
}
