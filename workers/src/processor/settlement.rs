//! The processor's settlement ledger. Payment's charge is an authorization:
//! the amount is held (`processor_charges`). It then comes to exactly one of
//! a capture (the order shipped: settled in a batch, `processor_batches`)
//! or a void (cancelled or failed before any capture): one row per
//! authorization in `processor_settlements`, whose primary key makes the two
//! exclusive and each once, whatever is redelivered. A captured charge is
//! paid back by a refund (`processor_refunds`), never voided.

use super::{Processor, Refund};
use chrono::Utc;
use shared::group_commit::Written;
use shared::order::Charge;
use shared::settlement::{Capture, SettledBatch};
use shared::store::{stored_uuid, Backend};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS processor_settlements (charge_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
     kind TEXT NOT NULL CHECK (kind IN ('capture', 'void')), batch_id TEXT, void_id TEXT, \
     amount_cents BIGINT NOT NULL, settled_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS processor_batches (batch_id TEXT PRIMARY KEY, captures BIGINT NOT NULL, \
     amount_cents BIGINT NOT NULL, oldest_wait_ms BIGINT NOT NULL, settled_at TEXT NOT NULL)",
];

/// What settling one batch came to.
#[derive(Debug, Default)]
pub struct Settled {
    /// The batch, when it captured anything new.
    pub batch: Option<SettledBatch>,
    /// Earlier batches that had already captured some of these (a batch
    /// redelivered after it was settled): reported again, never redone.
    pub earlier: Vec<SettledBatch>,
    /// The captures refused, by their index in the batch, with the reason.
    pub refused: Vec<(usize, String)>,
}

/// What releasing an order's authorization came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Released {
    /// Not captured yet: the hold is released, no money moved.
    Voided { void_id: Uuid, amount_cents: i64 },
    /// Captured already: paid back.
    Refunded(Refund),
}

/// What the ledger says about one capture, read in the batch's transaction.
enum Verdict {
    Captured,
    /// A repeat, within the batch, of a capture it made.
    Again,
    Before(String),
    Refused(String),
}

impl Processor {
    /// Captures a batch in one transaction: each capture must name the
    /// authorization recorded for its order (same charge, the authorized
    /// amount) not voided; a capture made before (in an earlier batch) is
    /// not made again. `oldest_wait_ms`: how long the oldest one waited.
    /// A handful of set-wise statements, whatever the batch's size.
    pub async fn capture_batch(&self, captures: &[Capture], oldest_wait_ms: i64) -> sqlx::Result<Settled> {
        let captures = captures.to_vec();
        let (backend, batch_id, settled_at) = (self.store.backend, Uuid::new_v4(), Utc::now());
        let at = settled_at.to_rfc3339();
        let (verdicts, made, amount): (Vec<Verdict>, i64, i64) = self
            .store
            .write(move |connection| {
                let (captures, at) = (captures.clone(), at.clone());
                Box::pin(async move {
                    let authorized = authorizations(connection, backend, &captures).await?;
                    let mut verdicts: Vec<Verdict> =
                        captures.iter().map(|capture| check(capture, authorized.get(&capture.order_id))).collect();
                    let due: Vec<&Capture> = captures
                        .iter()
                        .zip(&verdicts)
                        .filter(|(_, verdict)| matches!(verdict, Verdict::Captured))
                        .map(|(capture, _)| capture)
                        .collect();
                    let new = insert_captures(connection, backend, &due, &batch_id.to_string(), &at).await?;
                    let before = settled_before(connection, backend, &due, &new).await?;
                    let (mut made, mut amount, mut counted) = (0, 0, HashSet::new());
                    for (capture, verdict) in captures.iter().zip(verdicts.iter_mut()) {
                        let charge_id = capture.charge_id.to_string();
                        if !matches!(verdict, Verdict::Captured) {
                            continue;
                        }
                        if new.contains(&charge_id) && counted.insert(charge_id.clone()) {
                            made += 1;
                            amount += capture.amount_cents;
                        } else if new.contains(&charge_id) {
                            // The same capture twice in this batch: made once.
                            *verdict = Verdict::Again;
                        } else {
                            *verdict = match before.get(&charge_id) {
                                Some(Some(batch)) => Verdict::Before(batch.clone()),
                                _ => Verdict::Refused(format!(
                                    "order {}'s authorization was voided: nothing to capture",
                                    capture.order_id
                                )),
                            };
                        }
                    }
                    if made > 0 {
                        sqlx::query(
                            "INSERT INTO processor_batches (batch_id, captures, amount_cents, oldest_wait_ms, \
                             settled_at) VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(batch_id.to_string())
                        .bind(made)
                        .bind(amount)
                        .bind(oldest_wait_ms)
                        .bind(&at)
                        .execute(&mut *connection)
                        .await?;
                    }
                    Ok(Written::Keep((verdicts, made, amount)))
                })
            })
            .await?;
        let mut settled = Settled::default();
        let mut earlier_ids = Vec::new();
        for (index, verdict) in verdicts.into_iter().enumerate() {
            match verdict {
                Verdict::Captured | Verdict::Again => {}
                Verdict::Before(batch) if !earlier_ids.contains(&batch) => earlier_ids.push(batch),
                Verdict::Before(_) => {}
                Verdict::Refused(reason) => settled.refused.push((index, reason)),
            }
        }
        if made > 0 {
            settled.batch = Some(SettledBatch {
                batch_id,
                captures: made,
                amount_cents: amount,
                oldest_wait_ms,
                settled_at,
            });
        }
        for batch in earlier_ids {
            settled.earlier.extend(self.batch(&batch).await?);
        }
        Ok(settled)
    }

    /// A settled batch, as recorded.
    async fn batch(&self, batch_id: &str) -> sqlx::Result<Option<SettledBatch>> {
        let row: Option<(String, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT batch_id, captures, amount_cents, oldest_wait_ms, settled_at FROM processor_batches \
             WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_optional(&self.store.pool)
        .await?;
        let Some((batch_id, captures, amount_cents, oldest_wait_ms, settled_at)) = row else {
            return Ok(None);
        };
        let settled_at = chrono::DateTime::parse_from_rfc3339(&settled_at)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
            .with_timezone(&Utc);
        let batch_id = stored_uuid(&batch_id, "batch_id")?;
        Ok(Some(SettledBatch { batch_id, captures, amount_cents, oldest_wait_ms, settled_at }))
    }

    /// Releases the authorization recorded for `order_id` once: voided when
    /// not captured, refunded when it was; a repeated request returns the
    /// first answer. `Ok(Err(reason))` when the ledger refuses: no
    /// authorization for the order, another than `claimed`, or a claimed
    /// amount above the authorized one.
    pub async fn release(&self, order_id: Uuid, claimed: &Charge) -> sqlx::Result<Result<Released, String>> {
        let charge = match self.recorded_charge(order_id, claimed).await? {
            Ok(charge) => charge,
            Err(reason) => return Ok(Err(reason)),
        };
        let row = (
            charge.charge_id.to_string(),
            order_id.to_string(),
            charge.amount_cents,
            Utc::now().to_rfc3339(),
        );
        let (kind, void_id): (String, Option<String>) = self
            .store
            .write(move |connection| {
                let (charge_id, order_id, amount, at) = row.clone();
                Box::pin(async move {
                    // One statement: a void where nothing was settled; else what was.
                    sqlx::query(
                        "INSERT INTO processor_settlements (charge_id, order_id, kind, void_id, amount_cents, \
                         settled_at) VALUES ($1, $2, 'void', $3, $4, $5) ON CONFLICT (charge_id) DO NOTHING",
                    )
                    .bind(&charge_id)
                    .bind(&order_id)
                    .bind(Uuid::new_v4().to_string())
                    .bind(amount)
                    .bind(&at)
                    .execute(&mut *connection)
                    .await?;
                    let settled: (String, Option<String>) =
                        sqlx::query_as("SELECT kind, void_id FROM processor_settlements WHERE charge_id = $1")
                            .bind(&charge_id)
                            .fetch_one(&mut *connection)
                            .await?;
                    Ok(Written::Keep(settled))
                })
            })
            .await?;
        if kind == "void" {
            let void_id = stored_uuid(void_id.as_deref().unwrap_or_default(), "void_id")?;
            return Ok(Ok(Released::Voided { void_id, amount_cents: charge.amount_cents }));
        }
        self.refund_recorded(&charge).await.map(|refund| Ok(Released::Refunded(refund)))
    }
}

/// The authorizations recorded for the captures' orders: order id to
/// (charge id, amount), in one statement.
async fn authorizations(
    connection: &mut sqlx::AnyConnection,
    backend: Backend,
    captures: &[Capture],
) -> sqlx::Result<HashMap<Uuid, (String, i64)>> {
    let sql = format!(
        "SELECT order_id, charge_id, amount_cents FROM processor_charges WHERE order_id IN ({})",
        backend.marks(1, captures.len())
    );
    let mut query = sqlx::query_as::<_, (String, String, i64)>(&sql);
    for capture in captures {
        query = query.bind(capture.order_id.to_string());
    }
    let rows = query.fetch_all(&mut *connection).await?;
    rows.into_iter()
        .map(|(order_id, charge_id, amount)| Ok((stored_uuid(&order_id, "order_id")?, (charge_id, amount))))
        .collect()
}

/// Whether a capture names its order's authorization, for its amount
/// (`Captured`: to be made), or why not.
fn check(capture: &Capture, authorized: Option<&(String, i64)>) -> Verdict {
    let order_id = capture.order_id;
    let Some((charge_id, amount)) = authorized else {
        return Verdict::Refused(format!(
            "no authorization is recorded for order {order_id}: nothing to capture"
        ));
    };
    if *charge_id != capture.charge_id.to_string() || capture.amount_cents != *amount {
        return Verdict::Refused(format!(
            "order {order_id} was authorized {amount} cents (charge {charge_id}), not {} cents (charge {}): \
             capture refused",
            capture.amount_cents, capture.charge_id
        ));
    }
    Verdict::Captured
}

/// Records the captures not settled yet, in one statement; the charge ids
/// it recorded (a charge already captured or voided is left as it is).
async fn insert_captures(
    connection: &mut sqlx::AnyConnection,
    backend: Backend,
    due: &[&Capture],
    batch_id: &str,
    at: &str,
) -> sqlx::Result<HashSet<String>> {
    let mut seen = HashSet::new();
    let unique: Vec<&&Capture> = due.iter().filter(|capture| seen.insert(capture.charge_id)).collect();
    if unique.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "INSERT INTO processor_settlements (charge_id, order_id, kind, batch_id, amount_cents, settled_at) \
         VALUES {} ON CONFLICT (charge_id) DO NOTHING RETURNING charge_id",
        backend.rows(1, unique.len(), 6)
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    for capture in unique {
        query = query
            .bind(capture.charge_id.to_string())
            .bind(capture.order_id.to_string())
            .bind("capture")
            .bind(batch_id.to_string())
            .bind(capture.amount_cents)
            .bind(at.to_string());
    }
    Ok(query.fetch_all(&mut *connection).await?.into_iter().collect())
}

/// How the captures not recorded now were settled before: charge id to its
/// capture's batch (`None`: voided), in one statement.
async fn settled_before(
    connection: &mut sqlx::AnyConnection,
    backend: Backend,
    due: &[&Capture],
    new: &HashSet<String>,
) -> sqlx::Result<HashMap<String, Option<String>>> {
    let old: Vec<String> =
        due.iter().map(|capture| capture.charge_id.to_string()).filter(|id| !new.contains(id)).collect();
    if old.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT charge_id, kind, batch_id FROM processor_settlements WHERE charge_id IN ({})",
        backend.marks(1, old.len())
    );
    let mut query = sqlx::query_as::<_, (String, String, Option<String>)>(&sql);
    for charge_id in &old {
        query = query.bind(charge_id.clone());
    }
    let rows = query.fetch_all(&mut *connection).await?;
    Ok(rows
        .into_iter()
        .map(|(charge_id, kind, batch)| (charge_id, batch.filter(|_| kind == "capture")))
        .collect())
}
