//! The broker itself restarted mid-run, in its own test binary because it
//! interrupts every connection on the machine (cargo runs test binaries one
//! after another, never two at once): `rabbitmqctl stop_app`/`start_app`,
//! then a full stop and start of the server. Every worker and the tracker
//! reconnect by themselves and every order still ends terminal, none lost.
//! `orderflow publish` runs through the first restart: it reconnects, sends
//! again what was not confirmed, and prints every id once. Two stacks run
//! side by side on two vhosts, each with its own per-role users (issue 14):
//! neither locks the other out, and both finish their orders.

use std::process::Command;
use std::time::{Duration, Instant};
use tests::{assert_books_balance, finish_publish, random_valid_order, Stack};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").args(args).status().expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

fn amqp_port_open() -> bool {
    std::net::TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_millis(200))
        .is_ok()
}

fn wait_until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whatever happens in the test, the broker is left running.
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if !amqp_port_open() {
            let _ = Command::new("rabbitmqctl").arg("start_app").status();
        }
        if !amqp_port_open() {
            let _ = Command::new("rabbitmq-server").arg("-detached").status();
        }
        let _ = Command::new("rabbitmqctl").args(["await_startup", "--timeout", "120"]).status();
    }
}

fn full_restart_allowed() -> bool {
    std::env::var_os("ORDERFLOW_TEST_NO_FULL_RESTART").is_none()
        && Command::new("rabbitmq-server").arg("--help").output().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_broker_restarts() {
    let _guard = BrokerGuard;
    // Slow nodes (2 in hand, 20 ms each: about 100 orders/s) keep orders in flight across both restarts.
    let slow =
        [("ORDERFLOW_PREFETCH", "2"), ("ORDERFLOW_DELAY_MS", "20"), ("ORDERFLOW_DELAY_MS_PICKLIST", "0")];
    let stack = Stack::start_with_node_users_env("restart", &slow).await;
    // The second stack, slower still, with its own users.
    let beside = Stack::start_with_node_users_env(
        "restart-beside",
        &[("ORDERFLOW_DELAY_MS", "40"), ("ORDERFLOW_DELAY_MS_PICKLIST", "0")],
    )
    .await;
    assert_ne!(stack.role_user("payment"), beside.role_user("payment"), "two stacks share a user");
    let mut rng = rand::thread_rng();
    let beside_orders: Vec<_> = (0..300).map(|_| random_valid_order(&mut rng)).collect();
    let beside_ids = beside.publish(&beside_orders);
    let orders: Vec<_> = (0..1500).map(|_| random_valid_order(&mut rng)).collect();
    let mut ids = stack.publish(&orders[..900]);
    // The rest is published at 250/s while the broker stops and starts (about 2.4 s of it before).
    let publishing = stack.publish_in_background(&orders[900..], &["--rate", "250"]);
    tokio::time::sleep(Duration::from_millis(400)).await;

    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(3));
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup", "--timeout", "120"]);
    })
    .await
    .unwrap();
    let late = tokio::task::spawn_blocking(move || finish_publish(publishing)).await.unwrap();
    let distinct: std::collections::HashSet<_> = late.iter().collect();
    assert_eq!((late.len(), distinct.len()), (600, 600), "every id printed once across the restart");
    ids.extend(late);

    if full_restart_allowed() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = stack.statuses(&ids).await.values().filter(|s| s.terminal).count();
        assert!(before < ids.len(), "every order finished before the full restart; nothing was in flight");
        tokio::task::spawn_blocking(|| {
            rabbitmqctl(&["stop"]);
            wait_until("the broker stops", Duration::from_secs(60), || !amqp_port_open());
            let status =
                Command::new("rabbitmq-server").arg("-detached").status().expect("rabbitmq-server runs");
            assert!(status.success());
            wait_until("the broker listens again", Duration::from_secs(120), amqp_port_open);
            rabbitmqctl(&["await_startup", "--timeout", "120"]);
        })
        .await
        .unwrap();
    } else {
        eprintln!("note: full broker restart skipped (ORDERFLOW_TEST_NO_FULL_RESTART or no rabbitmq-server)");
    }

    stack.wait_terminal(&ids, Duration::from_secs(240)).await;
    assert_books_balance(&stack, &orders, &ids).await;
    beside.wait_terminal(&beside_ids, Duration::from_secs(120)).await;
    assert_books_balance(&beside, &beside_orders, &beside_ids).await;
}
