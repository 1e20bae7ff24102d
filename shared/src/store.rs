//! Opens the database a process owns: SQLite files in the run directory by
//! default (`<run_dir>/<owner>.db`), or the PostgreSQL server of
//! `DATABASE_URL`, where each owner's tables carry its name as prefix.

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

#[derive(Clone, Debug)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Store {
    /// Opens (creating if needed) the store of `owner` (e.g. `tracker`, `inventory`).
    pub async fn open(settings: &Settings, owner: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        match settings.database_url.as_deref() {
            Some(url) if url.starts_with("postgres") => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .with_context(|| format!("cannot connect to {}", crate::settings::redact_url(url)))?;
                Ok(Store { pool, backend: Backend::Postgres })
            }
            Some(url) if url.starts_with("sqlite") => Self::open_sqlite(url).await,
            Some(other) => anyhow::bail!(
                "DATABASE_URL must start with postgres:// or sqlite:, not {:?}",
                crate::settings::redact_url(other)
            ),
            None => {
                std::fs::create_dir_all(&settings.run_dir).with_context(|| {
                    format!("cannot create the run directory {}", settings.run_dir.display())
                })?;
                let path = settings.run_dir.join(format!("{owner}.db"));
                Self::open_sqlite(&format!("sqlite://{}?mode=rwc", path.display())).await
            }
        }
    }

    async fn open_sqlite(url: &str) -> anyhow::Result<Store> {
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets several processes (instances of one node) share the file;
                    // the busy timeout makes them wait for each other instead of failing.
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // A small page cache per connection keeps each worker's memory low.
                    conn.execute("PRAGMA cache_size = -1024").await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("cannot open {url}"))?;
        Ok(Store { pool, backend: Backend::Sqlite })
    }

    /// Adds a column to a table created by an earlier version (ignored when present).
    pub async fn add_column(&self, table: &str, column_definition: &str) {
        let sql = format!("ALTER TABLE {table} ADD COLUMN {column_definition}");
        let _ = sqlx::query(&sql).execute(&self.pool).await;
    }

    /// Runs each statement of a schema (idempotent `CREATE ... IF NOT EXISTS`).
    /// On PostgreSQL the statements run in one transaction under an advisory
    /// lock, so processes starting together do not race on the catalog.
    pub async fn migrate(&self, statements: &[&str]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7270420601)::text").fetch_optional(&mut *tx).await?;
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
