//! A domain copy's store: its records as JSON documents by key, and the
//! log of every change made to them (one row per write, numbered in the
//! order the writes were made, with the request that made it, so a request
//! delivered twice is applied once). A primary appends to the log; a
//! replica applies the primary's log in order and remembers how far it got.
//! Tables are `<owner>_records`, `<owner>_changes`, `<owner>_position`.

use shared::settings::Settings;
use shared::store::Store;
use sqlx::Row;

/// One change of the log: the record as it was after the change.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub seq: i64,
    /// When the primary made it (Unix ms).
    pub at_ms: i64,
    pub key: String,
    pub record: serde_json::Value,
}

/// What applying a change of the feed did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Already applied (a redelivery).
    Duplicate,
    /// A change is missing before this one: the replica needs a snapshot.
    Gap {
        expected: i64,
    },
}

pub struct Documents {
    store: Store,
    records: String,
    changes: String,
    position: String,
    /// Writes are made one at a time: their numbers follow the order they
    /// commit in, and SQLite never sees two write transactions at once.
    writer: tokio::sync::Mutex<()>,
}

impl Documents {
    /// Opens (creating) the store of `owner` (`customer`, `customer_uk`).
    pub async fn open(settings: &Settings, owner: &str) -> anyhow::Result<Documents> {
        let store = Store::open(settings, owner).await?;
        let (records, changes, position) =
            (format!("{owner}_records"), format!("{owner}_changes"), format!("{owner}_position"));
        store
            .migrate(&[
                &format!("CREATE TABLE IF NOT EXISTS {records} (key TEXT PRIMARY KEY, body TEXT NOT NULL)"),
                &format!(
                    "CREATE TABLE IF NOT EXISTS {changes} (seq BIGINT PRIMARY KEY, request_key TEXT UNIQUE, \
                     at_ms BIGINT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL)"
                ),
                &format!("CREATE INDEX IF NOT EXISTS {changes}_key ON {changes} (key, seq)"),
                // One row: the last change applied (replica) or sent on the stream (primary).
                &format!(
                    "CREATE TABLE IF NOT EXISTS {position} (id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, \
                     at_ms BIGINT NOT NULL)"
                ),
            ])
            .await?;
        Ok(Documents { store, records, changes, position, writer: tokio::sync::Mutex::new(()) })
    }

    pub async fn get(&self, key: &str) -> sqlx::Result<Option<serde_json::Value>> {
        let body: Option<String> =
            sqlx::query_scalar(&format!("SELECT body FROM {} WHERE key = $1", self.records))
                .bind(key)
                .fetch_optional(&self.store.pool)
                .await?;
        Ok(body.and_then(|body| serde_json::from_str(&body).ok()))
    }

    /// Records in key order after `after`, at most `limit`.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> sqlx::Result<Vec<serde_json::Value>> {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT body FROM {} WHERE key > $1 ORDER BY key LIMIT $2",
            self.records
        ))
        .bind(after.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.store.pool)
        .await?;
        Ok(rows.iter().filter_map(|body| serde_json::from_str(body).ok()).collect())
    }

    pub async fn count(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", self.records))
            .fetch_one(&self.store.pool)
            .await
    }

    /// Makes one write, once per `request_key`: `change` gets the record as
    /// it is (`None`: none yet) and returns the record to keep, or the reason
    /// to refuse. A request already made returns the change it made.
    pub async fn write<E>(
        &self,
        request_key: &str,
        key: &str,
        change: impl FnOnce(Option<serde_json::Value>) -> Result<serde_json::Value, E>,
    ) -> anyhow::Result<Result<Change, E>> {
        let _one_at_a_time = self.writer.lock().await;
        if let Some(done) = self.change_of(request_key).await? {
            return Ok(Ok(done));
        }
        let record = match change(self.get(key).await?) {
            Ok(record) => record,
            Err(refused) => return Ok(Err(refused)),
        };
        let at_ms = chrono::Utc::now().timestamp_millis();
        let body = serde_json::to_string(&record)?;
        let mut tx = self.store.pool.begin().await?;
        let seq: i64 = sqlx::query_scalar(&format!("SELECT COALESCE(MAX(seq), 0) + 1 FROM {}", self.changes))
            .fetch_one(&mut *tx)
            .await?;
        self.upsert(&mut tx, key, &body).await?;
        sqlx::query(&format!(
            "INSERT INTO {} (seq, request_key, at_ms, key, body) VALUES ($1, $2, $3, $4, $5)",
            self.changes
        ))
        .bind(seq)
        .bind(request_key)
        .bind(at_ms)
        .bind(key)
        .bind(&body)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(Change { seq, at_ms, key: key.to_string(), record }))
    }

    async fn upsert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        key: &str,
        body: &str,
    ) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (key, body) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET body = excluded.body",
            self.records
        ))
        .bind(key)
        .bind(body)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn change_of(&self, request_key: &str) -> anyhow::Result<Option<Change>> {
        let row = sqlx::query(&format!(
            "SELECT seq, at_ms, key, body FROM {} WHERE request_key = $1",
            self.changes
        ))
        .bind(request_key)
        .fetch_optional(&self.store.pool)
        .await?;
        row.map(|row| change_of_row(&row)).transpose()
    }

    /// Changes of the log after `seq`, in order, at most `limit`.
    pub async fn changes_after(&self, seq: i64, limit: usize) -> anyhow::Result<Vec<Change>> {
        let rows = sqlx::query(&format!(
            "SELECT seq, at_ms, key, body FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
            self.changes
        ))
        .bind(seq)
        .bind(limit as i64)
        .fetch_all(&self.store.pool)
        .await?;
        rows.iter().map(change_of_row).collect()
    }

    /// The last change of the log and when it was made ((0, 0): none).
    /// The last change of the record `key` (what made it as it is now).
    pub async fn last_change_of(&self, key: &str) -> sqlx::Result<Option<Change>> {
        let row = sqlx::query(&format!(
            "SELECT seq, at_ms, key, body FROM {} WHERE key = $1 ORDER BY seq DESC LIMIT 1",
            self.changes
        ))
        .bind(key)
        .fetch_optional(&self.store.pool)
        .await?;
        Ok(row.and_then(|row| {
            let record = serde_json::from_str(&row.get::<String, _>(3)).ok()?;
            Some(Change { seq: row.get(0), at_ms: row.get(1), key: row.get(2), record })
        }))
    }

    pub async fn head(&self) -> sqlx::Result<(i64, i64)> {
        let row = sqlx::query(&format!("SELECT seq, at_ms FROM {} ORDER BY seq DESC LIMIT 1", self.changes))
            .fetch_optional(&self.store.pool)
            .await?;
        Ok(row.map(|row| (row.get::<i64, _>(0), row.get::<i64, _>(1))).unwrap_or((0, 0)))
    }

    /// When change `seq` was made, if the log has it.
    pub async fn made_at(&self, seq: i64) -> sqlx::Result<Option<i64>> {
        sqlx::query_scalar(&format!("SELECT at_ms FROM {} WHERE seq = $1", self.changes))
            .bind(seq)
            .fetch_optional(&self.store.pool)
            .await
    }

    /// The position (seq, at_ms): the last change sent (primary) or applied
    /// (replica); `None` before the first.
    pub async fn position(&self) -> sqlx::Result<Option<(i64, i64)>> {
        let row = sqlx::query(&format!("SELECT seq, at_ms FROM {} WHERE id = 1", self.position))
            .fetch_optional(&self.store.pool)
            .await?;
        Ok(row.map(|row| (row.get::<i64, _>(0), row.get::<i64, _>(1))))
    }

    async fn set_position(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        seq: i64,
        at_ms: i64,
    ) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (id, seq, at_ms) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, at_ms = excluded.at_ms",
            self.position
        ))
        .bind(seq)
        .bind(at_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Primary: the stream has every change up to `seq`.
    pub async fn sent_up_to(&self, seq: i64, at_ms: i64) -> sqlx::Result<()> {
        let _one_at_a_time = self.writer.lock().await;
        let mut tx = self.store.pool.begin().await?;
        self.set_position(&mut tx, seq, at_ms).await?;
        tx.commit().await
    }

    /// Replica: applies one change of the feed, in one transaction with
    /// moving its position, only if it is the next one.
    pub async fn apply(&self, change: &Change) -> anyhow::Result<Applied> {
        let _one_at_a_time = self.writer.lock().await;
        let mut tx = self.store.pool.begin().await?;
        let at: Option<i64> = sqlx::query_scalar(&format!("SELECT seq FROM {} WHERE id = 1", self.position))
            .fetch_optional(&mut *tx)
            .await?;
        let applied = at.unwrap_or(0);
        if change.seq <= applied {
            return Ok(Applied::Duplicate);
        }
        if change.seq != applied + 1 {
            return Ok(Applied::Gap { expected: applied + 1 });
        }
        self.upsert(&mut tx, &change.key, &serde_json::to_string(&change.record)?).await?;
        self.set_position(&mut tx, change.seq, change.at_ms).await?;
        tx.commit().await?;
        Ok(Applied::Applied)
    }

    /// Replica: one page of a snapshot, keyed by `key_of`; with `done`, the
    /// position becomes the primary's (seq, at_ms) when the snapshot began.
    pub async fn restore(
        &self,
        records: &[(String, serde_json::Value)],
        done: Option<(i64, i64)>,
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.writer.lock().await;
        let mut tx = self.store.pool.begin().await?;
        for (key, record) in records {
            self.upsert(&mut tx, key, &serde_json::to_string(record)?).await?;
        }
        if let Some((seq, at_ms)) = done {
            self.set_position(&mut tx, seq, at_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn change_of_row(row: &sqlx::any::AnyRow) -> anyhow::Result<Change> {
    let body: String = row.get(3);
    Ok(Change { seq: row.get(0), at_ms: row.get(1), key: row.get(2), record: serde_json::from_str(&body)? })
}
