//! A replicated domain's terms: which copy is the primary, and since when.
//!
//! Every copy keeps its epoch (1 for the domain's first primary, one more
//! at each promotion), the primary of that epoch and the change the epoch
//! began after. The primary stamps its epoch on every change it sends; a
//! copy refuses a change of an older epoch (a primary that came back after
//! a promotion is fenced) and, on a newer one, follows the new primary:
//! it drops from its log the changes after the new epoch's start (no other
//! copy has them: they are lost, and said so in its log), takes a snapshot
//! of the new primary and goes on from there. A primary that starts asks
//! the other copies which epoch they are at, so one that was replaced while
//! it was down becomes a replica before it answers anything.
//!
//! What moves the routes (the domain's routing key, the stream's grants) is
//! `orderflow domains promote`, by the management API; here is the copy's
//! term and its promotion; following a new primary (and finding out about
//! one) is the replica's part (`super::replication`).

use super::documents::{Documents, Epoch};
use topology::DomainCopy;
use transport::domain::DomainError;

/// The term a copy is in, kept in its store and cached here.
pub struct Term {
    copy: DomainCopy,
    current: std::sync::Mutex<Epoch>,
}

impl Term {
    /// The copy's term as its store has it (epoch 1, the domain's first
    /// primary, for a store that was never told another).
    pub async fn load(copy: DomainCopy, docs: &Documents) -> anyhow::Result<Term> {
        let first = Epoch { epoch: 1, primary: DomainCopy::primary(copy.domain).label(), from_seq: 0 };
        let current = docs.epoch().await?.unwrap_or(first);
        Ok(Term { copy, current: std::sync::Mutex::new(current) })
    }

    pub fn now(&self) -> Epoch {
        self.current.lock().expect("not poisoned").clone()
    }

    /// The copy this one takes for the primary.
    pub fn primary(&self) -> DomainCopy {
        let label = self.now().primary;
        DomainCopy::all()
            .into_iter()
            .find(|copy| copy.domain == self.copy.domain && copy.label() == label)
            .unwrap_or(DomainCopy::primary(self.copy.domain))
    }

    /// Whether this copy is the primary of its term.
    pub fn is_primary(&self) -> bool {
        self.now().primary == self.copy.label()
    }

    /// Keeps `epoch` as the copy's term.
    pub async fn set(&self, docs: &Documents, epoch: Epoch) -> anyhow::Result<()> {
        docs.set_epoch(&epoch).await?;
        *self.current.lock().expect("not poisoned") = epoch;
        Ok(())
    }

    /// Makes this copy the primary at `epoch`, from its position on (the
    /// operator's `promote`). Asked again with the same epoch, it says so.
    pub async fn promote(&self, docs: &Documents, epoch: i64) -> Result<(), DomainError> {
        let now = self.now();
        if self.copy.def().replicas.is_empty() {
            return Err(DomainError::Refused(format!(
                "the {} domain has no replicas to promote",
                self.copy.domain
            )));
        }
        if epoch == now.epoch && self.is_primary() {
            return Ok(());
        }
        if epoch <= now.epoch {
            return Err(DomainError::Refused(format!(
                "epoch {epoch} is not newer than {}'s epoch {} (primary: {})",
                self.copy.label(),
                now.epoch,
                now.primary
            )));
        }
        let unavailable = |e: anyhow::Error| DomainError::Unavailable(e);
        let from_seq = docs.position().await.map_err(|e| unavailable(e.into()))?.map_or(0, |(seq, _)| seq);
        let promoted = Epoch { epoch, primary: self.copy.label(), from_seq };
        self.set(docs, promoted).await.map_err(unavailable)?;
        tracing::warn!(copy = self.copy.label(), epoch, from_seq, "promoted: this copy is the primary now");
        Ok(())
    }
}
