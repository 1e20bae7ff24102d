//! A stack on a three-node RabbitMQ cluster (`scripts/cluster.sh`), its
//! quorum queues of three members, its processes spread over the nodes
//! (`AMQP_URL` lists all three). In its own test binary because it kills and
//! restarts broker nodes; its tests take turns.
//!
//! - the node that leads the most queues is killed (`kill -9`) while 3,000
//!   orders run with address changes and cancels in flight, and restarted later;
//! - every node is restarted in turn under load (a rolling restart).
//!
//! Either way every order ends terminal once, nothing is charged, reserved,
//! refunded or shipped twice, the stock moves by exactly what shipped, and
//! every shipped order's history is complete and in order.

use harness::Broker;
use rand::Rng;
use serde_json::Value;
use shared::change::{Change, ChangeRequest};
use shared::order::ShipTo;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;
use tests::{count, finish_publish, random_valid_order, states, units_per_sku, Stack};
use transport::message::change_request_message;
use transport::Publisher;
use uuid::Uuid;

const NODES: [&str; 3] = ["orderflow1@localhost", "orderflow2@localhost", "orderflow3@localhost"];

/// A cluster this test starts is a fresh one (any data an earlier run left
/// is purged first), stopped and purged at the end whatever happens; a
/// cluster that was running is used as it is and left running.
struct ClusterGuard {
    started_here: bool,
}

impl ClusterGuard {
    fn new() -> ClusterGuard {
        let started_here = !cluster_running();
        if started_here {
            cluster(&["down", "--purge"]);
        }
        ClusterGuard { started_here }
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if self.started_here {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh");
            let _ = Command::new("bash").arg(script).args(["down", "--purge"]).status();
        }
    }
}

fn cluster_running() -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh");
    let output = Command::new("bash").arg(script).arg("status").output().expect("bash runs");
    String::from_utf8_lossy(&output.stdout).matches(" running ").count() == 3
}

fn cluster(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh");
    let output = Command::new("bash").arg(script).args(args).output().expect("bash runs");
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "cluster.sh {args:?}: {said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    said
}

/// The cluster, started (and joined) when it is not running.
fn cluster_broker() -> Broker {
    cluster(&["up"]);
    let urls = cluster(&["urls"]);
    Broker::new(urls.trim(), "http://127.0.0.1:15681").expect("the cluster's URLs")
}

async fn queues_led_by(stack: &Stack) -> HashMap<String, usize> {
    let queues = stack.config.broker.management().queues(&stack.vhost.name).await.unwrap();
    let mut led = HashMap::new();
    for queue in &queues {
        if let Some(leader) = queue["leader"].as_str() {
            *led.entry(leader.to_string()).or_default() += 1;
            let members = queue["members"].as_array().map(Vec::len).unwrap_or(0);
            assert_eq!(members, 3, "{} has {members} members", queue["name"]);
        }
    }
    led
}

/// The broker nodes the stack's processes are connected to (the management
/// API lists connections a few seconds after they open).
async fn nodes_in_use(stack: &Stack) -> HashSet<String> {
    let management = stack.config.broker.management();
    let mut nodes = HashSet::new();
    for _ in 0..30 {
        let connections = management.connections(&stack.vhost.name).await.unwrap();
        nodes = connections.iter().filter_map(|c| c["node"].as_str().map(String::from)).collect();
        if connections.len() >= harness::processes().len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    nodes
}

/// A stack on the cluster: every process with all three URLs, slowed a
/// little so orders are in flight when a node goes.
async fn stack_on_cluster(test: &str) -> Stack {
    let env = [("ORDERFLOW_DELAY_MS", "2"), ("ORDERFLOW_DELAY_MS_PICKLIST", "0")];
    let mut stack = Stack::empty_on(test, cluster_broker(), Some(3), &env).await;
    stack.start_all().await.expect("the stack starts on the cluster");
    stack
}

/// Address changes for one order in ten and cancels for one in twenty, sent
/// while the orders run (by the operator, who may change any order).
async fn changes_in_flight(stack: &Stack, ids: &[Uuid]) -> HashSet<Uuid> {
    let connection = stack.connect().await;
    let publisher = Publisher::open(&connection, &stack.user()).await.unwrap();
    let mut rng = rand::thread_rng();
    let mut cancelled = HashSet::new();
    for id in ids {
        let roll = rng.gen_range(0..20);
        let change = match roll {
            0 => {
                cancelled.insert(*id);
                Change::Cancel
            }
            1 | 2 => Change::ShipTo {
                ship_to: ShipTo {
                    name: "Grace Hopper".into(),
                    line1: "1 Harbor Way".into(),
                    city: "Arlington".into(),
                    postal_code: "22201".into(),
                    country: "US".into(),
                },
            },
            _ => continue,
        };
        let request = ChangeRequest::new(*id, change, None);
        publisher.publish_all(&[change_request_message(&request)]).await.unwrap();
    }
    cancelled
}

/// Every order ended once; nothing was done twice; stock moved by what shipped.
async fn assert_nothing_lost_or_doubled(stack: &Stack, orders: &[Value], ids: &[Uuid]) {
    let mut shipped_orders = Vec::new();
    let (mut charged, mut refunded, mut shipped) = (0, 0, 0);
    for (order, id) in orders.iter().zip(ids) {
        let view = stack.order(id).await;
        let path: Vec<String> = states(&view).into_iter().filter(|s| !s.starts_with("change_")).collect();
        let terminal: Vec<&String> = path
            .iter()
            .filter(|s| topology::OrderState::parse(s).is_some_and(|s| topology::WORKFLOW.is_terminal(s)))
            .collect();
        assert_eq!(terminal.len(), 1, "order {id}: {path:?}");
        charged += path.contains(&"charged".to_string()) as i64;
        refunded += path.iter().any(|s| s == "refunded" || s == "voided") as i64;
        if view.state == "shipped" {
            shipped += 1;
            shipped_orders.push(order.clone());
            let steps = ["placed", "accepted", "charged", "reserved", "picked"];
            assert_eq!(&path[..5], steps, "order {id}: {path:?}");
        } else {
            assert!(
                ["cancelled"].contains(&view.state.as_str()),
                "order {id} ended {}: {path:?}",
                view.state
            );
        }
    }
    let processor = stack.sqlite("processor", "processor_charges").await;
    assert_eq!(count(&processor, "SELECT COUNT(*) FROM processor_charges").await, charged, "charges");
    let released = "SELECT (SELECT COUNT(*) FROM processor_refunds) + \
                    (SELECT COUNT(*) FROM processor_settlements WHERE kind = 'void')";
    assert_eq!(count(&processor, released).await, refunded, "voids and refunds");
    let shipping = stack.sqlite("shipping", "shipping_shipments").await;
    assert_eq!(count(&shipping, "SELECT COUNT(*) FROM shipping_shipments").await, shipped, "shipments");
    let inventory = stack.sqlite("inventory", "inventory_bin_items").await;
    let taken = units_per_sku(&shipped_orders);
    for sku in units_per_sku(orders).keys() {
        let on_hand =
            count(&inventory, &format!("SELECT qty FROM inventory_bin_items WHERE sku = '{sku}'")).await;
        assert_eq!(
            1_000_000 - on_hand,
            taken.get(sku).copied().unwrap_or(0),
            "{sku}: stock moved by more than shipped"
        );
    }
    eprintln!(
        "{} orders: {shipped} shipped, {} cancelled, {charged} charged, {refunded} voided or refunded",
        ids.len(),
        ids.len() as i64 - shipped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_and_a_rolling_restart_lose_and_double_nothing() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !std::path::Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() {
        eprintln!("NOTE: skipped: scripts/cluster.sh needs root and Debian's rabbitmq-server to run a local cluster");
        return;
    }
    let _guard = ClusterGuard::new();
    let stack = stack_on_cluster("cluster").await;
    let in_use = nodes_in_use(&stack).await;
    assert!(in_use.len() >= 2, "the processes all use one broker node: {in_use:?}");

    // Phase 1: kill -9 the node that leads the most queues mid-run, restart it later.
    let mut rng = rand::thread_rng();
    let orders: Vec<Value> = (0..3000).map(|_| random_valid_order(&mut rng)).collect();
    let first = stack.publish(&orders[..1000]);
    let publishing = stack.publish_in_background(&orders[1000..], &["--rate", "200"]);
    changes_in_flight(&stack, &first).await;
    let led = queues_led_by(&stack).await;
    let (busiest, queues) = led.iter().max_by_key(|(_, n)| **n).map(|(n, q)| (n.clone(), *q)).unwrap();
    let index = NODES.iter().position(|n| *n == busiest).unwrap() + 1;
    eprintln!("killing {busiest}, leader of {queues} queues ({led:?})");
    cluster(&["kill", &index.to_string()]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster(&["up"]);
    let mut ids = first;
    ids.extend(tokio::task::spawn_blocking(move || finish_publish(publishing)).await.unwrap());
    assert_eq!(ids.len(), 3000);
    stack.wait_terminal(&ids, Duration::from_secs(300)).await;
    assert_nothing_lost_or_doubled(&stack, &orders, &ids).await;

    // Phase 2: every node restarted in turn under load.
    let more: Vec<Value> = (0..1500).map(|_| random_valid_order(&mut rng)).collect();
    let publishing = stack.publish_in_background(&more, &["--rate", "150"]);
    for node in 1..=3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!("restarting {}", NODES[node - 1]);
        cluster(&["stop", &node.to_string()]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster(&["up"]);
    }
    let more_ids = tokio::task::spawn_blocking(move || finish_publish(publishing)).await.unwrap();
    assert_eq!(more_ids.len(), 1500);
    stack.wait_terminal(&more_ids, Duration::from_secs(300)).await;
    let all_orders: Vec<Value> = orders.into_iter().chain(more).collect();
    let all_ids: Vec<Uuid> = ids.into_iter().chain(more_ids).collect();
    assert_nothing_lost_or_doubled(&stack, &all_orders, &all_ids).await;
}
