//! `DATABASE_URL=postgres://...` puts the tracking store and the nodes'
//! ledgers in PostgreSQL: the pipeline runs the same, and the rows are there.

use serde_json::Value;
use std::time::Duration;
use tests::{orders, states, PgDatabase, Stack, PG_CONNECTIONS_PER_PROCESS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_postgresql() {
    let database = PgDatabase::create("pg").await;
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("ORDERFLOW_DB_MAX_CONNECTIONS", PG_CONNECTIONS_PER_PROCESS),
    ];
    let stack = Stack::start("postgres", &env).await;
    let mut batch: Vec<Value> = (0..40).map(|i| orders::valid(1 + i % 2, "standard")).collect();
    batch.push(orders::out_of_stock());
    batch.push(orders::declined());
    let ids = stack.publish(&batch);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    assert_eq!(states(&stack.order(&ids[1]).await).last().unwrap(), "shipped");
    assert_eq!(states(&stack.order(&ids[40]).await).last().unwrap(), "out_of_stock");

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database.url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(count("SELECT COUNT(DISTINCT order_id) FROM tracker_events").await, 42);
    assert_eq!(count("SELECT COUNT(*) FROM processor_charges").await, 41, "41 orders were charged");
    assert_eq!(count("SELECT COUNT(*) FROM processor_settlements WHERE kind = 'void'").await, 1);
    assert_eq!(count("SELECT COUNT(*) FROM processor_refunds").await, 0, "nothing captured is cancelled");
    assert_eq!(count("SELECT COUNT(*) FROM shipping_shipments").await, 40);
    assert_eq!(count("SELECT COUNT(*) FROM inventory_reservations").await, 40);
    pool.close().await;
}
