//! What a node's stage logic is: a plain function from a workflow element to
//! an outcome, knowing nothing of AMQP. The transport runs it; a coordinator
//! or a service endpoint could run the same function.

use crate::order::{OrderElement, OrderState};
use std::future::Future;
use topology::Node;

/// One state change a stage made, with its audit detail.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub state: OrderState,
    pub detail: String,
}

/// What a stage did to an element: the element as it leaves the node and the
/// state changes it went through, in order. Where it goes next is decided by
/// [`crate::routing`], not by the stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub element: OrderElement,
    pub steps: Vec<Step>,
}

impl Outcome {
    pub fn new(element: OrderElement) -> Outcome {
        Outcome { element, steps: Vec::new() }
    }

    /// Adds a state change (the element's state becomes `state`).
    pub fn step(mut self, state: OrderState, detail: impl Into<String>) -> Outcome {
        self.steps.push(Step { state, detail: detail.into() });
        self
    }
}

/// Why a stage could not handle an element.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The element can never succeed here: dead-letter it with this reason.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// A dependency failed; the same element may succeed later: retry it.
    #[error("transient failure: {0:#}")]
    Transient(#[from] anyhow::Error),
}

/// A store's error: most are passing (a lock, a lost connection, a pool
/// timed out) and are retried; a row the schema can never take (a NOT
/// NULL, CHECK or foreign-key violation) or a schema that is not what the
/// code reads (a column missing or of another type) fails the same way on
/// every attempt, so it is permanent and says so. A unique violation stays
/// passing: two instances racing for one key meet it, and a retry finds
/// the row the other wrote.
impl From<sqlx::Error> for StageError {
    fn from(error: sqlx::Error) -> StageError {
        use sqlx::error::ErrorKind;
        let permanent = match &error {
            sqlx::Error::Database(db) => {
                matches!(
                    db.kind(),
                    ErrorKind::NotNullViolation | ErrorKind::CheckViolation | ErrorKind::ForeignKeyViolation
                )
            }
            sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnDecode { .. } => true,
            _ => false,
        };
        if permanent {
            return StageError::Permanent(format!("the store can never take this: {error}"));
        }
        StageError::Transient(error.into())
    }
}

/// A node that handles one element at a time.
pub trait Stage: Send + Sync + 'static {
    const NODE: Node;
    /// Whether the node keeps elements waiting and so may have decided an
    /// element before ([`Stage::prior_outcome`]): only such a node pays for
    /// asking, per element.
    const KEEPS_ELEMENTS_WAITING: bool = false;
    fn handle(&self, element: OrderElement) -> impl Future<Output = Result<Outcome, StageError>> + Send;

    /// Handles an element called for by the coordinator (directed mode),
    /// which takes the outcome and calls the next service itself: the same
    /// as [`Stage::handle`] unless the node would otherwise keep the element
    /// waiting (inventory's backorders).
    fn handle_call(&self, element: OrderElement) -> impl Future<Output = Result<Outcome, StageError>> + Send {
        self.handle(element)
    }

    /// The outcome this node already decided for the element, when it keeps
    /// an element waiting (inventory's backorders): a redelivered element
    /// gets it again, before the changes pending for its order are decided
    /// (which the waiting element meets where it waits). Asked only when
    /// [`Stage::KEEPS_ELEMENTS_WAITING`], for an order with changes in the
    /// node's book.
    fn prior_outcome(
        &self,
        _element: &OrderElement,
    ) -> impl Future<Output = Result<Option<Outcome>, StageError>> + Send {
        async { Ok(None) }
    }

    /// The node's own check of the changes its change book would apply
    /// (payment's and intake's: a card change's token issued for the order).
    fn change_vetter(&self) -> Option<std::sync::Arc<dyn crate::change_book::VetChange>> {
        None
    }
}

/// A node that aggregates elements and releases them in batches (the picklist).
pub trait BatchStage: Send + Sync + 'static {
    const NODE: Node;
    /// Elements with the same key are batched together.
    fn group_key(&self, element: &OrderElement) -> String;
    /// Turns one released batch into one outcome per element.
    fn emit(&self, key: &str, batch: Vec<OrderElement>) -> Vec<Outcome>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_error_that_every_attempt_meets_is_permanent() {
        use sqlx::Connection as _;
        let mut db = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, qty BIGINT NOT NULL CHECK (qty > 0))")
            .execute(&mut db)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES ('a', 1)").execute(&mut db).await.unwrap();
        let fails = |sql: &'static str| sqlx::query(sql);
        let check = fails("INSERT INTO t VALUES ('b', 0)").execute(&mut db).await.unwrap_err();
        assert!(matches!(StageError::from(check), StageError::Permanent(r) if r.contains("never take")));
        let not_null = fails("INSERT INTO t VALUES ('c', NULL)").execute(&mut db).await.unwrap_err();
        assert!(matches!(StageError::from(not_null), StageError::Permanent(_)));
        let row = sqlx::query("SELECT id FROM t").fetch_one(&mut db).await.unwrap();
        let missing = sqlx::Row::try_get::<String, _>(&row, "nope").unwrap_err();
        assert!(matches!(StageError::from(missing), StageError::Permanent(_)));
        let unique = fails("INSERT INTO t VALUES ('a', 2)").execute(&mut db).await.unwrap_err();
        assert!(matches!(StageError::from(unique), StageError::Transient(_)), "a race between instances");
        assert!(matches!(StageError::from(sqlx::Error::PoolTimedOut), StageError::Transient(_)));
    }
}
