//! The bench on PostgreSQL: saturated runs with every store of the stack
//! (`DATABASE_URL`) in a database of its own on the local server, created
//! for the run and dropped after it, alternating with the SQLite runs of the
//! same repetition. The server's own CPU (every `postgres` process) is
//! measured beside the broker's.

use anyhow::Context;

/// The local server, as the tests and the README use it (trust auth).
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one stack; [`Database::drop_now`] removes it.
pub struct Database {
    pub url: String,
    name: String,
    admin_url: String,
}

impl Database {
    /// Creates `orderflow_bench_<run>_<tag>` on the server of `admin_url`.
    pub async fn create(admin_url: &str, run_id: &str, tag: &str) -> anyhow::Result<Database> {
        sqlx::any::install_default_drivers();
        let tag: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let name = format!("orderflow_bench_{run_id}_{tag}");
        let admin = sqlx::AnyPool::connect(admin_url).await.with_context(|| {
            format!("cannot reach PostgreSQL at {}", shared::settings::redact_url(admin_url))
        })?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        admin.close().await;
        let base = admin_url.rsplit_once('/').map(|(base, _)| base).unwrap_or(admin_url);
        Ok(Database { url: format!("{base}/{name}"), name, admin_url: admin_url.to_string() })
    }

    /// Drops the database (its stack's processes have stopped).
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let admin = sqlx::AnyPool::connect(&self.admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&admin).await?;
        admin.close().await;
        Ok(())
    }
}
