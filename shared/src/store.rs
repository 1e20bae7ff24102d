//! Opens the database a process owns: SQLite files in the run directory by
//! default (`<run_dir>/<owner>.db`), or the PostgreSQL server of
//! `DATABASE_URL`, where each owner's tables carry its name as prefix and
//! all the stores of a process share one pool of at most
//! `ORDERFLOW_DB_MAX_CONNECTIONS` connections (so that instances times that
//! stays within the server's `max_connections`). Schema changes on
//! PostgreSQL run under one advisory lock: instances start together.

use crate::group_commit::{GroupWriter, Written};
use crate::settings::Settings;
use anyhow::Context;
use sqlx::{any::AnyPoolOptions, AnyPool, Executor};
use std::time::Duration;

/// Which database engine a pool talks to (their SQL differs in a few places).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Placeholders for `count` values, the first of them value number
    /// `first` of the statement: `$first, $first+1, ...` on PostgreSQL,
    /// plain `?, ?, ...` on SQLite, which binds them in the order they
    /// appear (so values must be bound in that order, each list once).
    /// SQLite looks every numbered placeholder up in a list when it parses
    /// a statement and again when sqlx binds it, which is quadratic in the
    /// placeholders of a statement: with multi-row statements of thousands
    /// of values it took a fifth of the machine's CPU in a saturated run.
    pub fn marks(self, first: usize, count: usize) -> String {
        match self {
            Backend::Sqlite => vec!["?"; count].join(", "),
            Backend::Postgres => {
                (first..first + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
            }
        }
    }

    /// `(..), (..)`: the placeholders of `rows` rows of `columns` values each,
    /// for a multi-row `VALUES`, the first value being number `first`.
    pub fn rows(self, first: usize, rows: usize, columns: usize) -> String {
        (0..rows)
            .map(|row| format!("({})", self.marks(first + row * columns, columns)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
    /// The one writer of this database in the process (see [`crate::group_commit`]).
    pub writer: GroupWriter,
}

/// This process's writers, one per database URL: a node's ledger and its
/// change book share one file, and so one writer and one commit.
/// Held weakly: a writer lives as long as a store uses it.
static WRITERS: std::sync::Mutex<Vec<(String, std::sync::Weak<crate::group_commit::Inner>)>> =
    std::sync::Mutex::new(Vec::new());

/// The writer of `url`, made with `pool` on first use.
fn writer_of(url: &str, pool: &AnyPool, backend: Backend) -> GroupWriter {
    let mut writers = WRITERS.lock().expect("writers");
    writers.retain(|(_, weak)| GroupWriter::upgrade(weak).is_some());
    if let Some(writer) =
        writers.iter().find(|(known, _)| known == url).and_then(|(_, w)| GroupWriter::upgrade(w))
    {
        return writer;
    }
    let begin = match backend {
        // The write lock first: a write may read before it writes.
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let writer = GroupWriter::new(pool.clone(), begin);
    writers.push((url.to_string(), writer.downgrade()));
    writer
}

/// `dir/name`, created empty for its owner alone when missing (a 0600 file
/// in a folder created 0700): an SQLite store holds customers' addresses,
/// and SQLite gives its WAL and shared-memory files the database's mode.
///
/// An existing file is never opened here: closing any descriptor of a file
/// drops every POSIX lock the process holds on it, and SQLite's locks are
/// those. A node opens its store twice (its ledger and its change book);
/// reopening the file here once let another process's closing connection
/// take the database for unused, checkpoint it and delete the WAL under the
/// node, whose later commits went to the deleted file and were lost (found
/// by the cluster test: 30 shipments missing, their events recorded).
pub fn private_file(dir: &std::path::Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder.create(dir).with_context(|| format!("cannot create the run directory {}", dir.display()))?;
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    match file.open(&path) {
        Ok(_) => Ok(path),
        // Another process (an instance of the same node) created it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The page cache of each SQLite connection of a node's store, in KiB.
pub const PAGE_CACHE_KIB: u32 = 1024;

/// The advisory lock every schema change on PostgreSQL holds.
const SCHEMA_LOCK: &str = "SELECT pg_advisory_xact_lock(7270420601)::text";

/// This process's PostgreSQL pools, one per database URL: a node with two
/// stores (its ledger and its change book) opens one pool, not two.
static POSTGRES_POOLS: tokio::sync::Mutex<Vec<(String, AnyPool)>> = tokio::sync::Mutex::const_new(Vec::new());

/// The pool of this process for `url`, opened on first use.
async fn postgres_pool(url: &str, max_connections: u32) -> anyhow::Result<AnyPool> {
    let mut pools = POSTGRES_POOLS.lock().await;
    if let Some((_, pool)) = pools.iter().find(|(known, pool)| known == url && !pool.is_closed()) {
        return Ok(pool.clone());
    }
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", crate::settings::redact_url(url)))?;
    pools.retain(|(known, _)| known != url);
    pools.push((url.to_string(), pool.clone()));
    Ok(pool)
}

impl Store {
    /// Opens (creating if needed) the store of `owner` (e.g. `tracker`, `inventory`).
    pub async fn open(settings: &Settings, owner: &str) -> anyhow::Result<Store> {
        Self::open_with_cache(settings, owner, PAGE_CACHE_KIB).await
    }

    /// [`Store::open`] with a page cache of `cache_kib` KiB per SQLite connection.
    pub async fn open_with_cache(settings: &Settings, owner: &str, cache_kib: u32) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        match settings.database_url.as_deref() {
            Some(url) if url.starts_with("postgres") => {
                let pool = postgres_pool(url, settings.db_max_connections).await?;
                let writer = writer_of(url, &pool, Backend::Postgres);
                Ok(Store { pool, backend: Backend::Postgres, writer })
            }
            Some(url) if url.starts_with("sqlite") => Self::open_sqlite(url, cache_kib).await,
            Some(other) => anyhow::bail!(
                "DATABASE_URL must start with postgres:// or sqlite:, not {:?}",
                crate::settings::redact_url(other)
            ),
            None => {
                let path = private_file(&settings.run_dir, &format!("{owner}.db"))?;
                Self::open_sqlite(&format!("sqlite://{}?mode=rwc", path.display()), cache_kib).await
            }
        }
    }

    async fn open_sqlite(url: &str, cache_kib: u32) -> anyhow::Result<Store> {
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // WAL lets several processes (instances of one node) share the file;
                    // the busy timeout makes them wait for each other instead of failing.
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // A small page cache per connection keeps each worker's memory low.
                    conn.execute(format!("PRAGMA cache_size = -{cache_kib}").as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("cannot open {url}"))?;
        let writer = writer_of(url, &pool, Backend::Sqlite);
        Ok(Store { pool, backend: Backend::Sqlite, writer })
    }

    /// Runs `work` in the writer's next group commit (see [`crate::group_commit`]):
    /// answered once committed; `work` may run twice.
    pub async fn write<R, F>(&self, work: F) -> sqlx::Result<R>
    where
        R: Send + 'static,
        F: for<'c> Fn(
                &'c mut sqlx::AnyConnection,
            ) -> futures::future::BoxFuture<'c, sqlx::Result<Written<R>>>
            + Send
            + 'static,
    {
        self.writer.write(work).await
    }

    /// Adds a column to a table created by an earlier version: a no-op when
    /// the table does not exist yet (its `CREATE TABLE` has the column) or
    /// already has the column; any other failure is an error. On PostgreSQL
    /// it runs under the schema lock, so that instances starting together
    /// do not both add the column (the second failed with "already exists").
    pub async fn add_column(&self, table: &str, column_definition: &str) -> anyhow::Result<()> {
        let (table_sql, column_sql) = match self.backend {
            Backend::Sqlite => (
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
                "SELECT COUNT(*) FROM pragma_table_info($1) WHERE name = $2",
            ),
            Backend::Postgres => (
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1",
                "SELECT COUNT(*) FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
            ),
        };
        if self.backend == Backend::Sqlite {
            // SQLite serializes writers itself; a transaction would fail to upgrade its read lock.
            let mut connection = self.pool.acquire().await?;
            return add_column_on(&mut connection, table, column_definition, table_sql, column_sql).await;
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(SCHEMA_LOCK).fetch_optional(&mut *tx).await?;
        add_column_on(&mut tx, table, column_definition, table_sql, column_sql).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs each statement of a schema (idempotent `CREATE ... IF NOT EXISTS`).
    /// On PostgreSQL the statements run in one transaction under an advisory
    /// lock, so processes starting together do not race on the catalog.
    pub async fn migrate(&self, statements: &[&str]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query(SCHEMA_LOCK).fetch_optional(&mut *tx).await?;
        }
        for statement in statements {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("schema statement failed: {statement}"))?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// [`Store::add_column`] on one connection, given the engine's catalog queries.
async fn add_column_on(
    connection: &mut sqlx::AnyConnection,
    table: &str,
    column_definition: &str,
    table_sql: &str,
    column_sql: &str,
) -> anyhow::Result<()> {
    let column = column_definition.split_whitespace().next().unwrap_or_default();
    let tables: i64 = sqlx::query_scalar(table_sql).bind(table).fetch_one(&mut *connection).await?;
    if tables == 0 {
        return Ok(());
    }
    let columns: i64 =
        sqlx::query_scalar(column_sql).bind(table).bind(column).fetch_one(&mut *connection).await?;
    if columns == 0 {
        let sql = format!("ALTER TABLE {table} ADD COLUMN {column_definition}");
        sqlx::query(&sql)
            .execute(&mut *connection)
            .await
            .with_context(|| format!("adding column {column} to {table}"))?;
    }
    Ok(())
}

/// Reads a uuid stored as text: a corrupt one is an error, never the nil uuid.
pub fn stored_uuid(text: &str, column: &str) -> sqlx::Result<uuid::Uuid> {
    text.parse().map_err(|error| {
        let message = format!("stored {column} {text:?} is not a uuid: {error}");
        sqlx::Error::Decode(message.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn add_column_upgrades_an_old_table_once_and_skips_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("orderflow-store-{}", uuid::Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        let store = Store::open(&settings, "test").await.unwrap();
        store.add_column("not_yet_created", "extra TEXT").await.unwrap();
        sqlx::query("CREATE TABLE old_rows (id TEXT PRIMARY KEY)").execute(&store.pool).await.unwrap();
        store.add_column("old_rows", "extra TEXT NOT NULL DEFAULT ''").await.unwrap();
        store.add_column("old_rows", "extra TEXT NOT NULL DEFAULT ''").await.unwrap();
        sqlx::query("INSERT INTO old_rows (id) VALUES ('a')").execute(&store.pool).await.unwrap();
        let extra: String =
            sqlx::query_scalar("SELECT extra FROM old_rows").fetch_one(&store.pool).await.unwrap();
        assert_eq!(extra, "");
        let error = store.add_column("old_rows", "bad column definition (").await.unwrap_err();
        assert!(format!("{error:#}").contains("adding column bad"), "{error:#}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sqlite_stores_are_for_their_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("orderflow-private-{}", uuid::Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        let store = Store::open(&settings, "test").await.unwrap();
        sqlx::query("CREATE TABLE t (id TEXT)").execute(&store.pool).await.unwrap();
        let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.clone()), 0o700);
        for file in ["test.db", "test.db-wal", "test.db-shm"] {
            assert_eq!(mode(dir.join(file)), 0o600, "{file}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Opening a store a second time in the process (a node's ledger and
    /// its change book share one file) must not drop the first one's locks:
    /// another connection closing would then delete the WAL under it and
    /// its later commits would be lost.
    #[tokio::test]
    async fn a_second_open_keeps_the_first_ones_commits_when_another_connection_closes() {
        let dir = std::env::temp_dir().join(format!("orderflow-locks-{}", uuid::Uuid::new_v4().simple()));
        let mut settings = Settings::from_env().unwrap();
        settings.database_url = None;
        settings.run_dir = dir.clone();
        let first = Store::open(&settings, "shared").await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER)").execute(&first.pool).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)").execute(&first.pool).await.unwrap();
        let second = Store::open(&settings, "shared").await.unwrap();
        // Another process's connection opens and closes (a reader, or a
        // stopped instance of the node): SQLite's own command line.
        let file = dir.join("shared.db");
        let Ok(read) =
            std::process::Command::new("sqlite3").arg(&file).arg("SELECT COUNT(*) FROM t").output()
        else {
            eprintln!("NOTE: skipped: no sqlite3 command to play the other process");
            return;
        };
        assert!(read.status.success());
        sqlx::query("INSERT INTO t VALUES (2)").execute(&first.pool).await.unwrap();
        // What another process sees of it now (as after a crash of this one).
        let read =
            std::process::Command::new("sqlite3").arg(&file).arg("SELECT COUNT(*) FROM t").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "2", "a committed row is not there");
        drop((first, second));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn placeholders_are_positional_on_sqlite_and_numbered_on_postgres() {
        assert_eq!(Backend::Sqlite.rows(1, 2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(Backend::Postgres.rows(2, 2, 2), "($2, $3), ($4, $5)");
        assert_eq!(Backend::Postgres.marks(1, 3), "$1, $2, $3");
        assert_eq!(Backend::Sqlite.marks(5, 1), "?");
    }

    #[test]
    fn a_corrupt_stored_uuid_is_an_error() {
        assert!(stored_uuid("not-a-uuid", "charge_id").unwrap_err().to_string().contains("charge_id"));
        let id = uuid::Uuid::new_v4();
        assert_eq!(stored_uuid(&id.to_string(), "charge_id").unwrap(), id);
    }
}
