//! PostgreSQL as it runs beyond one machine: two instances of every node and
//! of the tracker, each with a run directory of its own (as on hosts of their
//! own), sharing one database (`Stack::start_spread`). Mixed orders end to
//! end, a storm of changes and cancels over orders in flight, and SIGKILLs
//! under load: every ledger matches the orders' histories, each change has
//! one outcome, nothing is lost or doubled.

use rand::{seq::SliceRandom, Rng};
use serde_json::Value;
use shared::change::{Change, ChangeEvent, ChangeKind, ChangeRequest};
use shared::order::ShipTo;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tests::{
    assert_ledgers_match_histories, change_records, finish_publish, orders, random_valid_order, PgDatabase,
    Stack,
};
use transport::message::{change_event_message, change_request_message};
use transport::Publisher;
use uuid::Uuid;

/// Instances of every node and of the tracker.
const INSTANCES: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_instances_on_postgresql_take_every_path_once() {
    let database = PgDatabase::create("spread").await;
    let stack = Stack::start_spread("pg-spread", &database, INSTANCES, &[]).await;
    let mut rng = rand::thread_rng();
    let mut batch: Vec<(Value, &str)> = (0..240).map(|_| (random_valid_order(&mut rng), "shipped")).collect();
    batch.extend((0..20).map(|_| (orders::declined(), "payment_declined")));
    batch.extend((0..20).map(|_| (orders::out_of_stock(), "out_of_stock")));
    batch.extend((0..20).map(|_| (orders::invalid(), "rejected")));
    batch.shuffle(&mut rng);
    let orders: Vec<Value> = batch.iter().map(|(order, _)| order.clone()).collect();
    // A quarter directed: the two coordinators share them on the one database.
    let quarter = orders.len() / 4;
    let mut ids = stack.publish_directed(&orders[..quarter]);
    ids.extend(stack.publish(&orders[quarter..]));
    stack.wait_terminal(&ids, Duration::from_secs(120)).await;

    let mut instances: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, (_, expected)) in ids.iter().zip(&batch) {
        let view = stack.order(id).await;
        assert_eq!(view.state, *expected, "order {id}");
        for entry in &view.history {
            instances.entry(entry.node.clone()).or_default().insert(entry.instance_id.clone());
        }
    }
    let ends = assert_ledgers_match_histories(&stack, &orders, &ids).await;
    let expected = BTreeMap::from(
        [("shipped", 240), ("payment_declined", 20), ("out_of_stock", 20), ("rejected", 20)]
            .map(|(state, n)| (state.to_string(), n)),
    );
    assert_eq!(ends, expected);
    let coordinator = stack.store("coordinator", "coordinator_orders").await;
    let done =
        tests::count(&coordinator, "SELECT COUNT(*) FROM coordinator_orders WHERE status = 'done'").await;
    assert_eq!(done, quarter as i64, "the coordinators saw every directed order to its end");
    coordinator.close().await;
    // Every node the orders' version uses (fraud-check serves standard v2 alone).
    let used = |node: &str| topology::Node::from_name(node).is_some_and(|n| topology::WORKFLOW.uses(n));
    for node in harness::nodes().into_iter().filter(|node| used(node)) {
        let seen = instances.get(node).map_or(0, HashSet::len);
        assert_eq!(seen, INSTANCES, "{node}'s instances that took orders: {:?}", instances.get(node));
    }
}

fn address(n: usize) -> ShipTo {
    ShipTo {
        name: format!("Recipient {n}"),
        line1: format!("{n} Change Street"),
        city: "Hamburg".into(),
        postal_code: format!("2{n:04}"),
        country: "DE".into(),
    }
}

/// A change request and its `change_requested` event, as the CLI sends them.
fn change_messages(id: Uuid, change: Change) -> (Uuid, Vec<transport::Outgoing>) {
    let request = ChangeRequest::new(id, change, None);
    let describe = request.change.describe();
    let event = ChangeEvent::new(&request, ChangeKind::ChangeRequested, "publisher", "test", describe, 0);
    (request.change_id, vec![change_event_message(&event), change_request_message(&request)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_changes_and_cancels_over_spread_instances_has_one_outcome_each() {
    let database = PgDatabase::create("storm").await;
    // Slowed, so orders are in flight while the changes arrive at both
    // instances of each node: 100 orders take about 4 s through each node,
    // even when a busy machine delays the tracker (and so `publish`, which
    // waits until the tracker has every order) by seconds.
    let env =
        [("ORDERFLOW_DELAY_MS", "75"), ("ORDERFLOW_PREFETCH", "8"), ("ORDERFLOW_DELAY_MS_PICKLIST", "0")];
    let stack = Stack::start_spread("pg-storm", &database, INSTANCES, &env).await;
    let mut rng = rand::thread_rng();
    let orders: Vec<Value> = (0..100).map(|_| random_valid_order(&mut rng)).collect();
    let ids = stack.publish(&orders);

    // Four rounds of address changes over every order; one order in five
    // is also cancelled, in a round of its own.
    let connection = stack.connect().await;
    let publisher = Publisher::open(&connection, &stack.user()).await.unwrap();
    let mut requested: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    let mut cancels: HashMap<Uuid, Uuid> = HashMap::new();
    for round in 0..4 {
        let mut messages = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (change_id, mut sent) =
                change_messages(*id, Change::ShipTo { ship_to: address(round * 1000 + i) });
            requested.entry(*id).or_default().push(change_id);
            messages.append(&mut sent);
            if i % 5 == round {
                let (change_id, mut sent) = change_messages(*id, Change::Cancel);
                requested.entry(*id).or_default().push(change_id);
                cancels.insert(*id, change_id);
                messages.append(&mut sent);
            }
        }
        publisher.publish_all(&messages).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..250))).await;
    }
    stack.wait_terminal(&ids, Duration::from_secs(120)).await;

    let (mut applied_total, mut cancelled) = (0, 0);
    for id in &ids {
        let view = stack.wait_change_outcomes(id, requested[id].len(), Duration::from_secs(60)).await;
        let mut applied = 0;
        for change_id in &requested[id] {
            let records = change_records(&view, &change_id.to_string());
            let kinds: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
            assert_eq!(kinds.len(), 2, "change {change_id} of {id}: {records:?}");
            assert_eq!(kinds[0], "change_requested");
            assert!(kinds[1] == "change_applied" || kinds[1] == "change_rejected", "{records:?}");
            applied += usize::from(kinds[1] == "change_applied");
        }
        let cancel = cancels.get(id).map(|c| change_records(&view, &c.to_string())[1].0.clone());
        if view.state == "cancelled" {
            cancelled += 1;
            assert_eq!(cancel.as_deref(), Some("change_applied"), "order {id} cancelled without its cancel");
            continue;
        }
        assert_eq!(view.state, "shipped", "order {id}");
        assert_ne!(cancel.as_deref(), Some("change_applied"), "order {id} shipped after its cancel applied");
        let last_applied = view.history.iter().rev().find(|h| h.state == "change_applied");
        let shipped = view.entry("shipped").expect("shipped");
        if let Some(last) = last_applied {
            let to = last.detail.trim_start_matches("ship to ").split(" (version").next().unwrap();
            assert!(
                shipped.detail.contains(to),
                "shipped {:?}, last applied {:?}",
                shipped.detail,
                last.detail
            );
        }
        assert_eq!(shipped.version as usize, applied, "the shipping step saw every applied change of {id}");
        applied_total += applied;
    }
    assert!(applied_total > 0, "no address change was applied: nothing was in flight");
    assert!(cancelled > 0, "no cancel was applied");
    let ends = assert_ledgers_match_histories(&stack, &orders, &ids).await;
    assert_eq!(ends.get("cancelled").copied().unwrap_or(0), cancelled);
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_spread_instances_loses_and_doubles_nothing() {
    let database = PgDatabase::create("kill9").await;
    let mut stack = Stack::start_spread("pg-kill9", &database, INSTANCES, &[]).await;
    let mut rng = rand::thread_rng();
    let orders: Vec<Value> = (0..800).map(|_| random_valid_order(&mut rng)).collect();
    let publishing = stack.publish_in_background(&orders, &["--rate", "200"]);

    // Every process kind once, a random instance of it, at random moments while the orders flow.
    let mut victims: Vec<&str> = harness::processes();
    victims.shuffle(&mut rng);
    for binary in victims {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
        let instance = rng.gen_range(1..=INSTANCES);
        stack.kill(&format!("{binary}-{instance}"));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        stack.spawn_instance(binary, instance);
    }
    let ids = tokio::task::spawn_blocking(move || finish_publish(publishing)).await.unwrap();
    assert_eq!(ids.len(), orders.len());
    stack.wait_for_tracker().await;
    stack.wait_terminal(&ids, Duration::from_secs(180)).await;
    let ends = assert_ledgers_match_histories(&stack, &orders, &ids).await;
    assert_eq!(ends, BTreeMap::from([("shipped".to_string(), orders.len())]));
}
