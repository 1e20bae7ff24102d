//! The bench's orderflow for one measurement: a harness stack (the tracker
//! and every node as processes of the built binaries, in a vhost, run
//! directory and tracker port of their own; see `harness`) plus the bench's
//! own publisher into it. [`Stack::shutdown`] stops it; dropped instead (error,
//! panic, Ctrl-C), it kills its processes, deletes its vhost and keeps its logs.

use crate::progress::note;
use futures::StreamExt;
use harness::{OrderView, StackConfig};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use transport::Publisher;
use uuid::Uuid;

/// Checks that the binaries a stack needs are in `bin_dir`.
pub fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    for binary in harness::processes() {
        let path = bin_dir.join(binary);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build with `cargo build --profile dist --workspace --bins` or pass --bin-dir",
            path.display()
        );
    }
    Ok(())
}

/// What every stack of a bench run shares: the harness's settings, and the
/// run's id (in every vhost's name: `orderflow-bench-<run>-<tag>`).
#[derive(Clone)]
pub struct BenchConfig {
    pub stack: StackConfig,
    pub run_id: String,
}

/// A harness stack (reached through `Deref`) with the bench's publisher.
pub struct Stack {
    inner: harness::Stack,
    pub publisher: Publisher,
    connection: lapin::Connection,
}

impl Deref for Stack {
    type Target = harness::Stack;
    fn deref(&self) -> &harness::Stack {
        &self.inner
    }
}

impl DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut harness::Stack {
        &mut self.inner
    }
}

impl Stack {
    /// Starts the tracker and one instance of every node, waits until each
    /// consumes, and opens the bench's publisher.
    pub async fn start(config: &BenchConfig, tag: &str) -> anyhow::Result<Stack> {
        let name = format!("orderflow-bench-{}-{tag}", config.run_id);
        let inner = harness::Stack::start(&config.stack, &name).await?;
        let connection = inner.connect("orderflow-bench").await?;
        let publisher = Publisher::open(&connection, &inner.user()).await?;
        Ok(Stack { inner, publisher, connection })
    }

    /// Every order's history (`GET /orders/{id}`), a few requests at a time.
    pub async fn histories(&self, ids: &[Uuid]) -> Vec<Option<OrderView>> {
        let tracker = self.tracker();
        let fetches = ids.iter().map(|id| async move { tracker.order(id).await.ok() });
        futures::stream::iter(fetches).buffered(8).collect().await
    }

    /// Stops every process (SIGTERM, then SIGKILL after the grace), deletes the
    /// vhost and, if every process exited cleanly, the run directory.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Stack { inner, connection, .. } = self;
        let _ = connection.close(200, "bench done".into()).await;
        let run_dir = inner.run_dir.clone();
        let unclean = inner.shutdown().await?;
        if !unclean.is_empty() {
            note(&format!(
                "note: not every process stopped cleanly: {}; logs in {}",
                unclean.join(", "),
                run_dir.display()
            ));
        }
        Ok(())
    }
}
