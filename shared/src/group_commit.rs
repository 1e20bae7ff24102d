//! Group commit: the writes a process's concurrent deliveries make to one
//! database go through one writer task, which runs each as it arrives inside
//! one open transaction and commits when no more are waiting (or
//! [`GROUP_MAX`] ran). A write is answered only after the commit that made
//! it durable, so a node still acknowledges nothing before its effects are
//! safe; under load one commit (its WAL append, its lock) serves many
//! elements instead of one each.
//!
//! A write that fails, or that decides to keep nothing of what it did
//! ([`Written::Discard`]), rolls the whole group back; each write of the
//! group is then run again alone in its own transaction, so one write's
//! failure never takes another's effects with it and a discarded write
//! never leaves a row behind. A write is therefore a function that may run
//! twice (it reads and writes only the database, and builds no state
//! outside it): the first run's transaction was rolled back, so nothing of
//! it remains.
//!
//! SQLite's transaction begins `IMMEDIATE`: it takes the write lock first
//! (waiting on the busy timeout for another process's writer), so a write
//! may read before it writes without meeting a lock it cannot upgrade.

use futures::future::BoxFuture;
use sqlx::{AnyConnection, AnyPool, Executor};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// The most writes one transaction takes.
pub const GROUP_MAX: usize = 64;

/// What a write leaves behind: its effects kept, or none of them (the write
/// found nothing to do and undid what it began), with its answer either way.
#[derive(Debug)]
pub enum Written<R> {
    Keep(R),
    Discard(R),
}

/// The writer of one database: cheap to clone, its task started on the first
/// write (and again if the runtime that ran it ended).
#[derive(Clone)]
pub struct GroupWriter(Arc<Inner>);

/// What the clones of one writer share.
pub struct Inner {
    pool: AnyPool,
    /// The statement that opens a group's transaction.
    begin: &'static str,
    queue: Mutex<Option<mpsc::UnboundedSender<Box<dyn Job>>>>,
    counters: Arc<Counters>,
}

/// How many transactions and writes the writer has committed (for tests and the bench).
#[derive(Debug, Default)]
pub struct Counters {
    pub commits: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
}

impl Counters {
    /// Counts a committed transaction of `writes` writes (here and in the process's metrics).
    fn committed(&self, writes: u64) {
        self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.writes.fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::count_commit(writes);
    }
}

impl std::fmt::Debug for GroupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWriter").field("begin", &self.0.begin).finish_non_exhaustive()
    }
}

impl GroupWriter {
    /// The writer of `pool`, whose groups open with `begin` (`BEGIN
    /// IMMEDIATE` on SQLite, `BEGIN` on PostgreSQL).
    pub fn new(pool: AnyPool, begin: &'static str) -> GroupWriter {
        GroupWriter(Arc::new(Inner { pool, begin, queue: Mutex::default(), counters: Arc::default() }))
    }

    pub fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// A handle that does not keep the writer (and its pool) alive.
    pub fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.0)
    }

    pub fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<GroupWriter> {
        weak.upgrade().filter(|inner| !inner.pool.is_closed()).map(GroupWriter)
    }

    /// Runs `work` in the next group's transaction and answers once that is
    /// committed. `work` may run twice (see the module's header).
    pub async fn write<R, F>(&self, work: F) -> sqlx::Result<R>
    where
        R: Send + 'static,
        F: for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, sqlx::Result<Written<R>>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob { work, outcome: None, reply });
        self.sender().send(job).map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// The queue of a running writer task, starting one when there is none.
    fn sender(&self) -> mpsc::UnboundedSender<Box<dyn Job>> {
        let inner = &self.0;
        let mut queue = inner.queue.lock().expect("writer queue");
        if let Some(sender) = queue.as_ref().filter(|sender| !sender.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(inner.pool.clone(), inner.begin, receiver, inner.counters.clone()));
        *queue = Some(sender.clone());
        sender
    }
}

fn writer_gone() -> sqlx::Error {
    sqlx::Error::WorkerCrashed
}

fn commit_failed(reason: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!("the group's commit failed: {reason}")))
}

/// How one run of a write went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ran {
    Kept,
    Discarded,
    Failed,
}

/// A write with its answer's channel, its type erased for the queue.
trait Job: Send {
    fn run<'c>(&'c mut self, connection: &'c mut AnyConnection) -> BoxFuture<'c, Ran>;
    /// Answers the caller: `committed` is `Err` when the transaction holding
    /// a kept write did not commit.
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct TypedJob<R, F> {
    work: F,
    outcome: Option<sqlx::Result<R>>,
    reply: oneshot::Sender<sqlx::Result<R>>,
}

impl<R, F> Job for TypedJob<R, F>
where
    R: Send + 'static,
    F: for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, sqlx::Result<Written<R>>> + Send + 'static,
{
    fn run<'c>(&'c mut self, connection: &'c mut AnyConnection) -> BoxFuture<'c, Ran> {
        Box::pin(async move {
            let (ran, outcome) = match (self.work)(connection).await {
                Ok(Written::Keep(answer)) => (Ran::Kept, Ok(answer)),
                Ok(Written::Discard(answer)) => (Ran::Discarded, Ok(answer)),
                Err(error) => (Ran::Failed, Err(error)),
            };
            self.outcome = Some(outcome);
            ran
        })
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let answer = match (self.outcome, committed) {
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(answer)), Ok(())) => Ok(answer),
            (Some(Ok(_)), Err(reason)) => Err(commit_failed(&reason)),
            (None, _) => Err(commit_failed("the write never ran")),
        };
        let _ = self.reply.send(answer);
    }
}

/// The writer task: one transaction per group of queued writes, until every
/// handle to the writer is gone.
async fn write_groups(
    pool: AnyPool,
    begin: &'static str,
    mut queue: mpsc::UnboundedReceiver<Box<dyn Job>>,
    counters: Arc<Counters>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        let mut connection = match pool.acquire().await {
            Ok(connection) => connection,
            Err(error) => {
                let reason = error.to_string();
                group.into_iter().for_each(|job| job.finish(Err(reason.clone())));
                continue;
            }
        };
        if let Err(error) = connection.execute(begin).await {
            let reason = error.to_string();
            group.into_iter().for_each(|job| job.finish(Err(reason.clone())));
            connection.close_on_drop();
            continue;
        }
        let clean = run_group(&mut connection, &mut group, &mut queue).await;
        if clean {
            let committed = connection.execute("COMMIT").await.map(|_| ()).map_err(|e| e.to_string());
            if committed.is_ok() {
                counters.committed(group.len() as u64);
            } else {
                roll_back(&mut connection).await;
            }
            group.into_iter().for_each(|job| job.finish(committed.clone()));
            continue;
        }
        roll_back(&mut connection).await;
        for job in group {
            run_alone(&mut connection, begin, job, &counters).await;
        }
    }
}

/// Runs the group's writes, taking more from the queue while they come, and
/// says whether every one kept its effects (else the rest are not run).
async fn run_group(
    connection: &mut AnyConnection,
    group: &mut Vec<Box<dyn Job>>,
    queue: &mut mpsc::UnboundedReceiver<Box<dyn Job>>,
) -> bool {
    let mut next = 0;
    loop {
        while next < group.len() {
            if group[next].run(connection).await != Ran::Kept {
                return false;
            }
            next += 1;
        }
        if group.len() >= GROUP_MAX {
            return true;
        }
        match queue.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => return true,
        }
    }
}

/// One write in its own transaction (after its group was rolled back).
async fn run_alone(
    connection: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    begin: &str,
    mut job: Box<dyn Job>,
    counters: &Counters,
) {
    if let Err(error) = connection.execute(begin).await {
        return job.finish(Err(error.to_string()));
    }
    if job.run(connection).await != Ran::Kept {
        roll_back(connection).await;
        return job.finish(Ok(()));
    }
    match connection.execute("COMMIT").await {
        Ok(_) => {
            counters.committed(1);
            job.finish(Ok(()))
        }
        Err(error) => {
            roll_back(connection).await;
            job.finish(Err(error.to_string()))
        }
    }
}

/// Rolls the open transaction back; a connection that cannot is closed, not reused.
async fn roll_back(connection: &mut sqlx::pool::PoolConnection<sqlx::Any>) {
    if connection.execute("ROLLBACK").await.is_err() {
        connection.close_on_drop();
    }
}

#[cfg(test)]
mod tests;
