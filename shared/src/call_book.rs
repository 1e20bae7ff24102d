//! A service's memory of the calls it answered, in the node's own store:
//! the result and the audit events of each (caller, request id), so that a
//! repeated request gets the first result (and its events again, which the
//! tracker keeps once) instead of running the stage again, and whether a
//! callback result was delivered, so that it is sent once. Keyed by the
//! caller as the broker verified it: one caller's request id can never
//! reach another caller's result. Rows are purged after the change
//! retention (`ORDERFLOW_CHANGE_RETENTION_S`); a repeat after that runs the
//! stage again, whose effects are keyed by order and so still happen once.

use crate::audit::AuditEvent;
use crate::group_commit::Written;
use crate::service::CallResult;
use crate::settings::Settings;
use crate::store::Store;
use sqlx::Row;
use std::time::{Duration, Instant};

/// A call's first answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answered {
    pub result: CallResult,
    pub events: Vec<AuditEvent>,
    /// A callback result was confirmed by the broker.
    pub delivered: bool,
}

pub struct CallBook {
    store: Store,
    table: String,
    retention: Duration,
    purged_at: std::sync::Mutex<Option<Instant>>,
}

const PURGE_EVERY: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl CallBook {
    /// The call book of `owner` (a node), in its store.
    pub async fn open(settings: &Settings, owner: &str) -> anyhow::Result<CallBook> {
        CallBook::in_store(Store::open(settings, owner).await?, settings, owner).await
    }

    /// The call book of `owner` in a store already open (the node's, shared
    /// with its change book: one pool of connections per process).
    pub async fn in_store(store: Store, settings: &Settings, owner: &str) -> anyhow::Result<CallBook> {
        // An owner's name may hold dashes (fraud-check); a table's may not.
        let table = format!("{}_calls", owner.replace('-', "_"));
        store
            .migrate(&[
                &format!(
                    "CREATE TABLE IF NOT EXISTS {table} (caller TEXT NOT NULL, request_id TEXT NOT NULL, \
                     result TEXT NOT NULL, events TEXT NOT NULL, delivered INTEGER NOT NULL DEFAULT 0, \
                     answered_at BIGINT NOT NULL, PRIMARY KEY (caller, request_id))"
                ),
                &format!("CREATE INDEX IF NOT EXISTS {table}_by_age ON {table} (answered_at)"),
            ])
            .await?;
        Ok(CallBook { store, table, retention: settings.change_retention, purged_at: Default::default() })
    }

    /// The first answer to `caller`'s `request_id`, if it was kept.
    pub async fn find(&self, caller: &str, request_id: &str) -> sqlx::Result<Option<Answered>> {
        let row = sqlx::query(&format!(
            "SELECT result, events, delivered FROM {} WHERE caller = $1 AND request_id = $2",
            self.table
        ))
        .bind(caller)
        .bind(request_id)
        .fetch_optional(&self.store.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let decode = |e: serde_json::Error| sqlx::Error::Decode(e.into());
        Ok(Some(Answered {
            result: serde_json::from_str(&row.try_get::<String, _>("result")?).map_err(decode)?,
            events: serde_json::from_str(&row.try_get::<String, _>("events")?).map_err(decode)?,
            delivered: row.try_get::<i64, _>("delivered")? != 0,
        }))
    }

    /// Keeps `answered` as the answer to `caller`'s `request_id`, unless one
    /// was kept first (two copies of a request handled at once): returns
    /// the answer that stands.
    pub async fn keep(&self, caller: &str, request_id: &str, answered: Answered) -> sqlx::Result<Answered> {
        self.purge_now_and_then().await?;
        let encode = |e: serde_json::Error| sqlx::Error::Encode(e.into());
        let sql = format!(
            "INSERT INTO {} (caller, request_id, result, events, delivered, answered_at) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (caller, request_id) DO NOTHING",
            self.table
        );
        let row = (
            caller.to_string(),
            request_id.to_string(),
            serde_json::to_string(&answered.result).map_err(encode)?,
            serde_json::to_string(&answered.events).map_err(encode)?,
        );
        let inserted = self
            .store
            .write(move |connection| {
                let (sql, (caller, request_id, result, events)) = (sql.clone(), row.clone());
                Box::pin(async move {
                    let inserted = sqlx::query(&sql)
                        .bind(caller)
                        .bind(request_id)
                        .bind(result)
                        .bind(events)
                        .bind(now_ms())
                        .execute(&mut *connection)
                        .await?
                        .rows_affected();
                    Ok(Written::Keep(inserted))
                })
            })
            .await?;
        if inserted == 1 {
            return Ok(answered);
        }
        Ok(self.find(caller, request_id).await?.unwrap_or(answered))
    }

    /// Records that the callback result of the call was confirmed.
    pub async fn delivered(&self, caller: &str, request_id: &str) -> sqlx::Result<()> {
        let sql = format!("UPDATE {} SET delivered = 1 WHERE caller = $1 AND request_id = $2", self.table);
        let key = (caller.to_string(), request_id.to_string());
        self.store
            .write(move |connection| {
                let (sql, (caller, request_id)) = (sql.clone(), key.clone());
                Box::pin(async move {
                    sqlx::query(&sql).bind(caller).bind(request_id).execute(&mut *connection).await?;
                    Ok(Written::Keep(()))
                })
            })
            .await
    }

    async fn purge_now_and_then(&self) -> sqlx::Result<()> {
        {
            let mut purged_at = self.purged_at.lock().expect("purge clock");
            if purged_at.is_some_and(|at| at.elapsed() < PURGE_EVERY) {
                return Ok(());
            }
            *purged_at = Some(Instant::now());
        }
        let cutoff = now_ms() - self.retention.as_millis() as i64;
        sqlx::query(&format!("DELETE FROM {} WHERE answered_at < $1", self.table))
            .bind(cutoff)
            .execute(&self.store.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn book(dir: &std::path::Path) -> CallBook {
        let settings = Settings::scratch(dir.to_path_buf());
        CallBook::open(&settings, "payment").await.unwrap()
    }

    #[tokio::test]
    async fn the_first_answer_stands_and_is_the_callers_own() {
        let dir = std::env::temp_dir().join(format!("orderflow-calls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let book = book(&dir).await;
        let first = Answered {
            result: CallResult::failed("r-1", "payment", "first", false),
            events: Vec::new(),
            delivered: false,
        };
        let second =
            Answered { result: CallResult::failed("r-1", "payment", "second", false), ..first.clone() };
        assert_eq!(book.keep("alice", "r-1", first.clone()).await.unwrap(), first);
        assert_eq!(book.keep("alice", "r-1", second.clone()).await.unwrap(), first);
        assert_eq!(
            book.find("mallory", "r-1").await.unwrap(),
            None,
            "another caller's request id is not theirs"
        );
        assert_eq!(book.keep("mallory", "r-1", second.clone()).await.unwrap(), second);
        book.delivered("alice", "r-1").await.unwrap();
        assert!(book.find("alice", "r-1").await.unwrap().unwrap().delivered);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
