//! A domain copy's store: its records as JSON documents by key, and the
//! log of every change made to them (one row per write, numbered in the
//! order the writes were made, with the request that made it, so a request
//! delivered twice is applied once). A primary appends to the log; a
//! replica applies the primary's log in order and remembers how far it got.
//! A replica keeps the changes it applies in its log too (with the request
//! that made each), so a promoted replica goes on numbering after them and
//! takes a retried request once. The copy's epoch (the primary's term, one
//! more at each promotion) and the primary it follows are kept beside.
//! Tables are `<owner>_records`, `<owner>_changes`, `<owner>_position`,
//! `<owner>_epoch`.

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
    /// The request that made it (a retried request is made once, at
    /// whichever copy is the primary then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// The epoch of the primary that sent it (set when sent).
    #[serde(default = "first_epoch")]
    pub epoch: i64,
}

fn first_epoch() -> i64 {
    1
}

/// A copy's term: the epoch it knows, the primary of that epoch, and the
/// change the epoch began after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub epoch: i64,
    /// The label of the primary (`customer`, `customer@uk`).
    pub primary: String,
    pub from_seq: i64,
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
    epoch: String,
    /// Writes are made one at a time: their numbers follow the order they
    /// commit in, and SQLite never sees two write transactions at once.
    writer: tokio::sync::Mutex<()>,
}

impl Documents {
    /// Opens (creating) the store of `owner` (`customer`, `customer_uk`).
    pub async fn open(settings: &Settings, owner: &str) -> anyhow::Result<Documents> {
        let store = Store::open(settings, owner).await?;
        let (records, changes, position, epoch) = (
            format!("{owner}_records"),
            format!("{owner}_changes"),
            format!("{owner}_position"),
            format!("{owner}_epoch"),
        );
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
                &format!(
                    "CREATE TABLE IF NOT EXISTS {epoch} (id INTEGER PRIMARY KEY, epoch BIGINT NOT NULL, \
                     primary_copy TEXT NOT NULL, from_seq BIGINT NOT NULL)"
                ),
            ])
            .await?;
        Ok(Documents { store, records, changes, position, epoch, writer: tokio::sync::Mutex::new(()) })
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
        // After the last change of the log, and after the position: a
        // promoted replica's log may lack the changes a snapshot brought.
        let seq: i64 = sqlx::query_scalar(&format!(
            "SELECT MAX(n) + 1 FROM (SELECT COALESCE(MAX(seq), 0) AS n FROM {} \
             UNION ALL SELECT COALESCE(MAX(seq), 0) AS n FROM {}) AS ends",
            self.changes, self.position
        ))
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
        let request_key = Some(request_key.to_string());
        Ok(Ok(Change { seq, at_ms, key: key.to_string(), record, request_key, epoch: 1 }))
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
            "SELECT seq, at_ms, key, body, request_key FROM {} WHERE request_key = $1",
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
            "SELECT seq, at_ms, key, body, request_key FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
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
            Some(Change {
                seq: row.get(0),
                at_ms: row.get(1),
                key: row.get(2),
                record,
                request_key: None,
                epoch: 1,
            })
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
        let body = serde_json::to_string(&change.record)?;
        self.upsert(&mut tx, &change.key, &body).await?;
        // Kept in the log as the primary made it (a request key already
        // here belongs to a change this copy dropped as lost: it is taken
        // from the request's new change instead).
        sqlx::query(&format!("UPDATE {} SET request_key = NULL WHERE request_key = $1", self.changes))
            .bind(&change.request_key)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO {} (seq, request_key, at_ms, key, body) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (seq) DO NOTHING",
            self.changes
        ))
        .bind(change.seq)
        .bind(&change.request_key)
        .bind(change.at_ms)
        .bind(&change.key)
        .bind(&body)
        .execute(&mut *tx)
        .await?;
        self.set_position(&mut tx, change.seq, change.at_ms).await?;
        tx.commit().await?;
        Ok(Applied::Applied)
    }

    /// The copy's epoch; `None` before it was first told one (epoch 1,
    /// the domain's first primary).
    pub async fn epoch(&self) -> sqlx::Result<Option<Epoch>> {
        let row =
            sqlx::query(&format!("SELECT epoch, primary_copy, from_seq FROM {} WHERE id = 1", self.epoch))
                .fetch_optional(&self.store.pool)
                .await?;
        Ok(row.map(|row| Epoch { epoch: row.get(0), primary: row.get(1), from_seq: row.get(2) }))
    }

    pub async fn set_epoch(&self, epoch: &Epoch) -> sqlx::Result<()> {
        let _one_at_a_time = self.writer.lock().await;
        sqlx::query(&format!(
            "INSERT INTO {} (id, epoch, primary_copy, from_seq) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, primary_copy = excluded.primary_copy, \
             from_seq = excluded.from_seq",
            self.epoch
        ))
        .bind(epoch.epoch)
        .bind(&epoch.primary)
        .bind(epoch.from_seq)
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    /// A copy that learned it is no longer the primary: takes out of its log
    /// the changes after `from_seq` (the new epoch's start: no other copy
    /// has them) and returns them, so that nothing sends or numbers after
    /// them again.
    pub async fn drop_after(&self, from_seq: i64) -> anyhow::Result<Vec<Change>> {
        let lost = self.changes_after(from_seq, usize::MAX >> 1).await?;
        let _one_at_a_time = self.writer.lock().await;
        let mut tx = self.store.pool.begin().await?;
        sqlx::query(&format!("DELETE FROM {} WHERE seq > $1", self.changes))
            .bind(from_seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("UPDATE {} SET seq = $1 WHERE id = 1 AND seq > $1", self.position))
            .bind(from_seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(lost)
    }

    /// Replica: one page of a snapshot, keyed by `key_of`; with `done`, the
    /// position becomes the primary's (seq, at_ms) when the snapshot began.
    /// `first` empties the copy's records before the page (a snapshot
    /// replaces all it held: what it held alone was lost).
    pub async fn restore(
        &self,
        records: &[(String, serde_json::Value)],
        first: bool,
        done: Option<(i64, i64)>,
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.writer.lock().await;
        let mut tx = self.store.pool.begin().await?;
        if first {
            sqlx::query(&format!("DELETE FROM {}", self.records)).execute(&mut *tx).await?;
        }
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
    Ok(Change {
        seq: row.get(0),
        at_ms: row.get(1),
        key: row.get(2),
        record: serde_json::from_str(&body)?,
        request_key: row.get(4),
        epoch: 1,
    })
}
