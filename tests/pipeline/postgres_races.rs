//! Races between instances sharing one PostgreSQL database, forced at the
//! store level (no broker): what SQLite's one writer at a time hid. Each
//! test runs the two sides of a race many times at once and checks that the
//! outcome is one of the serial ones.

use futures::future::join_all;
use shared::audit::{AuditEvent, Transition};
use shared::change::{Change, ChangeRequest, Decision};
use shared::change_book::ChangeBook;
use shared::order::{Order, OrderElement, OrderState, ShipTo};
use shared::settings::Settings;
use shared::store::Store;
use tests::PgDatabase;
use uuid::Uuid;
use workers::tracker::store::{Record, TrackerStore};

/// The settings of a process whose stores are in `database`.
fn settings(database: &PgDatabase) -> Settings {
    let mut settings = Settings::from_env().expect("settings");
    settings.database_url = Some(database.url.clone());
    settings
}

/// Instances starting together upgrade a table once. Without the schema lock
/// around `Store::add_column`, two trackers starting on a fresh database both
/// added `change_id` and the second exited ("column already exists").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_upgrade_the_schema_once() {
    let database = PgDatabase::create("schema").await;
    let settings = settings(&database);
    let opened = join_all((0..6).map(|_| Store::open(&settings, "tracker"))).await;
    let stores: Vec<Store> = opened.into_iter().map(Result::unwrap).collect();
    sqlx::query("CREATE TABLE old_rows (id TEXT PRIMARY KEY)").execute(&stores[0].pool).await.unwrap();
    let upgrades = stores.iter().map(|store| store.add_column("old_rows", "extra TEXT NOT NULL DEFAULT ''"));
    for result in join_all(upgrades).await {
        result.unwrap_or_else(|error| panic!("{error:#}"));
    }
    stores[0].pool.close().await;
}

/// One instance decides a change for a copy of the order it holds (the
/// same order published twice travels as two elements) while another closes
/// the order: the change gets one outcome, whichever side came first.
/// `ChangeBook::close` marked every change it had read as pending 'late'
/// without checking it still was: on SQLite its transaction held the write
/// lock from its first statement, on PostgreSQL the decision of `resolve`
/// could land between that read and that write and be overwritten, so the
/// change was applied by one instance and rejected by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_decided_while_another_instance_closes_the_order_has_one_outcome() {
    let database = PgDatabase::create("close_race").await;
    let settings = settings(&database);
    let holding = ChangeBook::open(&settings, "shipping").await.unwrap();
    let closing = ChangeBook::open(&settings, "shipping").await.unwrap();
    let race = |n: usize| {
        let (holding, closing, operator) = (&holding, &closing, settings.operator_user.clone());
        async move {
            let mut element = OrderElement::placed(Order::default());
            element.state = OrderState::Picked;
            let ship_to = ShipTo {
                name: format!("Recipient {n}"),
                line1: "1 Race Street".into(),
                city: "Hamburg".into(),
                postal_code: "20095".into(),
                country: "DE".into(),
            };
            let mut request = ChangeRequest::new(element.order_id, Change::ShipTo { ship_to }, None);
            request.requester = Some(operator);
            holding.receive(&request).await.unwrap();
            let mut ended = element.clone();
            ended.state = OrderState::Shipped;
            // Stagger the two sides so that every interleaving comes up.
            let pause = std::time::Duration::from_micros(rand::random::<u64>() % 8000);
            let close = async {
                tokio::time::sleep(pause).await;
                closing.close(&ended).await
            };
            let (decided, late) = tokio::join!(holding.resolve(element), close);
            let applied = matches!(decided.unwrap().1.as_slice(), [(_, Decision::Apply)]);
            let rejected_late = late.unwrap().iter().any(|(late, _)| late.change_id == request.change_id);
            (applied, rejected_late)
        }
    };
    let mut outcomes = Vec::new();
    for round in 0..30 {
        outcomes.extend(join_all((round * 10..round * 10 + 10).map(race)).await);
    }
    let both = outcomes.iter().filter(|(applied, late)| *applied && *late).count();
    let applied = outcomes.iter().filter(|(applied, _)| *applied).count();
    let late = outcomes.iter().filter(|(_, late)| *late).count();
    assert_eq!(both, 0, "{both} of 300 changes were applied and also rejected as late ({applied} applied)");
    assert_eq!(applied + late, 300, "a change was neither applied nor rejected as late");
    assert!(applied > 0 && late > 0, "one side always won ({applied} applied, {late} late): no race was run");
}

/// Two trackers record batches that touch the same orders (the audit queue's
/// events of one order are shared out between them). Each batch upserts its
/// orders' latest states in one transaction; in an order of its own, two
/// such transactions locked the same rows in opposite orders and PostgreSQL
/// aborted one as a deadlock (the tracker paused, its `/health` failing).
/// Rows are written in order id order now, so they queue instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trackers_recording_the_same_orders_never_deadlock() {
    let database = PgDatabase::create("trackers").await;
    let settings = settings(&database);
    let (first, second) =
        (TrackerStore::open(&settings).await.unwrap(), TrackerStore::open(&settings).await.unwrap());
    let orders: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    let step = |seq: u32, state: OrderState, from: OrderState| -> Vec<Record> {
        let event = |order_id| {
            let transition =
                Transition { order_id, seq, version: 0, from_state: Some(from), to_state: state };
            Record::State(AuditEvent::new(transition, "node", "node-1", String::new()))
        };
        orders.iter().map(|id| event(*id)).collect()
    };
    first.record(&step(1, OrderState::Accepted, OrderState::Placed)).await.unwrap();
    for seq in (2..12).step_by(2) {
        let (a, b) = (
            step(seq, OrderState::Charged, OrderState::Accepted),
            step(seq + 1, OrderState::Reserved, OrderState::Charged),
        );
        let (a, b) = tokio::join!(first.record(&a), second.record(&b));
        for result in [a, b] {
            result.unwrap_or_else(|error| panic!("a tracker's batch failed: {error}"));
        }
    }
}

/// Group commit on PostgreSQL, where a failed statement aborts the whole
/// transaction (SQLite rolls back only the statement): the writes queued
/// with a failing one are run again alone and kept, the failing one keeps
/// nothing (not even the row it wrote before it failed), a discarded one
/// leaves no row, and the concurrent writes share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_failed_write_in_a_group_takes_nothing_of_the_others() {
    use futures::future::BoxFuture;
    use shared::group_commit::Written;
    use sqlx::AnyConnection;
    let database = PgDatabase::create("group_commit").await;
    let store = Store::open(&settings(&database), "ledger").await.unwrap();
    sqlx::query("CREATE TABLE ledger_rows (id BIGINT PRIMARY KEY)").execute(&store.pool).await.unwrap();
    fn insert(
        id: i64,
    ) -> impl for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, sqlx::Result<Written<i64>>> {
        move |connection: &mut AnyConnection| -> BoxFuture<'_, sqlx::Result<Written<i64>>> {
            Box::pin(async move {
                sqlx::query("INSERT INTO ledger_rows (id) VALUES ($1)")
                    .bind(id)
                    .execute(&mut *connection)
                    .await?;
                if id == 13 {
                    // After its own row: the transaction is aborted from here on.
                    sqlx::query("INSERT INTO no_such_table VALUES (1)").execute(&mut *connection).await?;
                }
                if id == 21 {
                    return Ok(Written::Discard(id));
                }
                Ok(Written::Keep(id))
            })
        }
    }
    let answers = join_all((0..40).map(|id| store.write(insert(id)))).await;
    for (id, answer) in answers.iter().enumerate() {
        match id {
            13 => assert!(answer.as_ref().unwrap_err().to_string().contains("no_such_table"), "{answer:?}"),
            _ => assert_eq!(answer.as_ref().unwrap(), &(id as i64)),
        }
    }
    let kept: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM ledger_rows ORDER BY id").fetch_all(&store.pool).await.unwrap();
    let expected: Vec<i64> = (0..40).filter(|id| *id != 13 && *id != 21).collect();
    assert_eq!(kept, expected, "a failed or discarded write left a row, or took another's");
    let counted = |store: &Store| {
        let counters = store.writer.counters();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        (load(&counters.commits), load(&counters.writes))
    };
    let before = counted(&store);
    let again = join_all((100..200).map(|id| store.write(insert(id)))).await;
    assert!(again.iter().all(Result::is_ok));
    let after = counted(&store);
    let (commits, writes) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(writes, 100);
    assert!(commits <= 10, "100 concurrent writes took {commits} commits: no grouping");
}
