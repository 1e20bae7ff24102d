//! The writer against a real SQLite file: grouping, answers after commit,
//! a failed or discarded write keeping nothing and taking nothing of others.

use super::*;
use futures::future::join_all;
use std::sync::atomic::Ordering;

/// A fresh SQLite file with a table `t (id INTEGER PRIMARY KEY)`, its writer, and its folder.
async fn writer() -> (GroupWriter, AnyPool, std::path::PathBuf) {
    sqlx::any::install_default_drivers();
    let dir = std::env::temp_dir().join(format!("orderflow-group-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("g.db").display());
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)").execute(&pool).await.unwrap();
    (GroupWriter::new(pool.clone(), "BEGIN IMMEDIATE"), pool, dir)
}

fn insert(id: i64) -> impl for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, sqlx::Result<Written<i64>>> {
    move |connection: &mut AnyConnection| -> BoxFuture<'_, sqlx::Result<Written<i64>>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO t (id) VALUES ($1)").bind(id).execute(&mut *connection).await?;
            Ok(Written::Keep(id))
        })
    }
}

async fn ids(pool: &AnyPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM t ORDER BY id").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn concurrent_writes_share_commits_and_each_is_answered_after_its_own() {
    let (writer, pool, dir) = writer().await;
    let answers = join_all((0..200).map(|id| writer.write(insert(id)))).await;
    assert!(answers.iter().all(|answer| answer.is_ok()), "{answers:?}");
    // Answered means committed: another connection sees every row.
    assert_eq!(ids(&pool).await, (0..200).collect::<Vec<_>>());
    let commits = writer.counters().commits.load(Ordering::Relaxed);
    assert_eq!(writer.counters().writes.load(Ordering::Relaxed), 200);
    assert!(commits <= 200 / GROUP_MAX as u64 + 2, "200 writes took {commits} commits");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_failed_write_takes_nothing_of_the_others_and_keeps_nothing_of_its_own() {
    let (writer, pool, dir) = writer().await;
    fn failing(connection: &mut AnyConnection) -> BoxFuture<'_, sqlx::Result<Written<i64>>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO t (id) VALUES (2)").execute(&mut *connection).await?;
            sqlx::query("INSERT INTO missing_table VALUES (1)").execute(&mut *connection).await?;
            Ok(Written::Keep(2))
        })
    }
    let (first, second, third) =
        tokio::join!(writer.write(insert(1)), writer.write(failing), writer.write(insert(3)));
    assert_eq!(first.unwrap(), 1);
    assert!(second.unwrap_err().to_string().contains("missing_table"));
    assert_eq!(third.unwrap(), 3);
    assert_eq!(ids(&pool).await, vec![1, 3], "the failed write's first row stayed");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_discarded_write_leaves_no_row_and_the_others_keep_theirs() {
    let (writer, pool, dir) = writer().await;
    fn discarding(connection: &mut AnyConnection) -> BoxFuture<'_, sqlx::Result<Written<&'static str>>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO t (id) VALUES (20)").execute(&mut *connection).await?;
            Ok(Written::Discard("nothing to do"))
        })
    }
    let (first, second, third) =
        tokio::join!(writer.write(insert(10)), writer.write(discarding), writer.write(insert(30)));
    assert_eq!((first.unwrap(), second.unwrap(), third.unwrap()), (10, "nothing to do", 30));
    assert_eq!(ids(&pool).await, vec![10, 30]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_write_that_breaks_a_constraint_is_an_error_and_a_repeat_of_a_committed_one_too() {
    let (writer, pool, dir) = writer().await;
    writer.write(insert(7)).await.unwrap();
    let again = writer.write(insert(7)).await.unwrap_err();
    assert!(again.to_string().to_lowercase().contains("unique"), "{again}");
    assert_eq!(ids(&pool).await, vec![7]);
    let _ = std::fs::remove_dir_all(dir);
}
