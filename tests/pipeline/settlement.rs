//! `settlement`: payment authorizes, the shipped orders' captures are
//! settled through the `orderflow.settlement` aggregation queue in batches,
//! and a cancelled order's authorization is voided (issue 27, part 3).
//! Kill -9 of payment (the settling process) with captures in hand, twice,
//! under 1,000 orders with cancels, autonomous and directed: every shipped
//! order captured once, every cancelled one voided once, the ledger equal to
//! the histories, the batches in the report. Forged and careless captures
//! from pika and the management API are refused with their reasons, and
//! settling goes on.

use lapin::options::QueueDeclareOptions;
use serde_json::{json, Value};
use shared::change::{Change, ChangeRequest};
use std::process::Command;
use std::time::{Duration, Instant};
use tests::{count, orders, Stack};
use transport::message::change_request_message;
use transport::Publisher;
use uuid::Uuid;

/// Captures waiting in the queue (not delivered), and its consumers.
async fn settlement_queue(channel: &lapin::Channel) -> (u32, u32) {
    let options = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    let queue = channel
        .queue_declare(topology::SETTLEMENT_QUEUE.into(), options, Default::default())
        .await
        .expect("the settlement queue exists");
    (queue.message_count(), queue.consumer_count())
}

/// Waits until payment holds captures it has not settled yet (shipped
/// orders outnumber captures by `gap`, none waiting undelivered in the
/// queue) and kills it -9 there, mid-batch; then starts it again. Returns
/// the captures in hand at the kill.
async fn kill_payment_mid_batch(stack: &mut Stack, channel: &lapin::Channel, gap: i64) -> i64 {
    let shipping = stack.sqlite("shipping", "shipping_shipments").await;
    let ledger = stack.sqlite("processor", "processor_settlements").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let shipped = count(&shipping, "SELECT COUNT(*) FROM shipping_shipments").await;
        let captured =
            count(&ledger, "SELECT COUNT(*) FROM processor_settlements WHERE kind = 'capture'").await;
        let (waiting, consumers) = settlement_queue(channel).await;
        if shipped - captured >= gap && waiting == 0 && consumers == 1 {
            stack.kill("payment-1");
            // What payment held returns to the queue, undelivered now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (returned, _) = settlement_queue(channel).await;
            assert!(returned > 0, "payment held no capture when it was killed");
            stack.spawn("payment", "payment-1");
            return shipped - captured;
        }
        assert!(Instant::now() < deadline, "payment never held {gap} captures ({shipped} shipped)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_settle_in_batches_once_through_kills_of_payment() {
    // Batches of 40 or 3 s: captures wait in payment's hands long enough to be killed there.
    let env = [("ORDERFLOW_SETTLEMENT_BATCH", "40"), ("ORDERFLOW_SETTLEMENT_FLUSH_MS", "3000")];
    let mut stack = Stack::start("settlement-kills", &env).await;
    let mut rng = rand::thread_rng();
    let autonomous: Vec<Value> = (0..900).map(|_| tests::random_valid_order(&mut rng)).collect();
    let directed: Vec<Value> = (0..100).map(|_| tests::random_valid_order(&mut rng)).collect();
    let mut ids = stack.publish(&autonomous);
    ids.extend(stack.publish_directed(&directed));
    let all: Vec<Value> = autonomous.into_iter().chain(directed).collect();

    // A cancel for every tenth order, sent while they travel.
    let connection = stack.connect().await;
    let publisher = Publisher::open(&connection, &stack.user()).await.unwrap();
    let cancels: Vec<_> = ids
        .iter()
        .step_by(10)
        .map(|id| change_request_message(&ChangeRequest::new(*id, Change::Cancel, None)))
        .collect();
    publisher.publish_all(&cancels).await.unwrap();

    let channel = connection.create_channel().await.unwrap();
    let first = kill_payment_mid_batch(&mut stack, &channel, 10).await;
    let second = kill_payment_mid_batch(&mut stack, &channel, 10).await;
    eprintln!("payment killed holding {first} and then {second} unsettled captures");
    stack.wait_terminal(&ids, Duration::from_secs(300)).await;

    // Every shipped order captured once, in a batch; every cancelled one voided once.
    let ends = tests::assert_ledgers_match_histories(&stack, &all, &ids).await;
    let (shipped, cancelled) = (ends["shipped"], ends.get("cancelled").copied().unwrap_or(0));
    assert_eq!(shipped + cancelled, ids.len(), "{ends:?}");
    assert!(cancelled >= 20, "the cancels came in time for some orders: {ends:?}");
    let report = stack.cli_json(&["report", "--last", "30m", "--json"]);
    let settlement = &report["settlement"];
    assert_eq!(settlement["captures"], shipped, "{settlement}");
    let batches = settlement["batches"].as_u64().unwrap();
    assert!(settlement["max_size"].as_u64().unwrap() <= 40, "{settlement}");
    assert!(batches < shipped as u64 / 4, "captures were settled in batches, not one by one: {settlement}");
    let ledger = stack.sqlite("processor", "processor_batches").await;
    assert_eq!(count(&ledger, "SELECT COUNT(*) FROM processor_batches").await, batches as i64);
    let table = String::from_utf8(stack.cli(&["report", "--last", "30m"]).stdout).unwrap();
    assert!(table.contains(&format!("settlement: {batches} batches, {shipped} captures")), "{table}");
    eprintln!("{}", table.lines().find(|l| l.starts_with("settlement")).unwrap());
}

/// Publishes a capture with pika as `url`'s user (`user` in `user_id`);
/// what the broker said when it refused, else `None`.
fn pika_capture(url: &str, user: &str, body: &str) -> Option<String> {
    tests::pika_publish(url, user, "orderflow.settlement", "capture", "capture", body)
}

/// The capture shipping would send for `order_id`, from the ledger's authorization.
async fn capture_of(stack: &Stack, order_id: Uuid) -> Value {
    let ledger = stack.sqlite("processor", "processor_charges").await;
    let (charge_id, amount): (String, i64) = sqlx::query_as(&format!(
        "SELECT charge_id, amount_cents FROM processor_charges WHERE order_id = '{order_id}'"
    ))
    .fetch_one(&ledger)
    .await
    .unwrap();
    json!({"order_id": order_id, "charge_id": charge_id, "amount_cents": amount,
           "shipped_at": chrono::Utc::now().to_rfc3339()})
}

/// Only who ships may send a capture, and a capture moves only its own
/// authorization's amount, once: the shipping user's forged captures (an
/// order never authorized, an inflated amount, another charge) and careless
/// ones (NaN, a string amount, empty, 10 KB of digits, control characters)
/// are dead-lettered with their reasons; a node user that ships nothing is
/// refused by the broker; the operator's management API publish is refused
/// by payment; a capture sent again captures nothing more. Settling goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_comes_only_from_who_ships_and_moves_only_its_authorization() {
    let env = [("ORDERFLOW_SETTLEMENT_FLUSH_MS", "300")];
    let stack = Stack::start_with_node_users_env("settlement-trust", &env).await;
    let first = stack.publish(&[orders::valid(1, "standard"), orders::valid(2, "express")]);
    stack.wait_terminal(&first, Duration::from_secs(60)).await;
    let shipped = first[0];
    let genuine = capture_of(&stack, shipped).await;

    let shipping = (stack.role_url("shipping"), stack.role_user("shipping"));
    let mut inflated = genuine.clone();
    inflated["amount_cents"] = json!(99_999_999);
    let mut other_charge = genuine.clone();
    other_charge["charge_id"] = json!(Uuid::new_v4());
    let mut never = genuine.clone();
    never["order_id"] = json!(Uuid::new_v4());
    let mut words = genuine.clone();
    words["amount_cents"] = json!("lots");
    let mut control = genuine.clone();
    control["order_id"] = json!("\u{1b}[31m\u{7}");
    let forged = [
        (inflated.to_string(), "capture refused"),
        (other_charge.to_string(), "capture refused"),
        (never.to_string(), "no authorization is recorded"),
        (genuine.to_string().replace("\"amount_cents\":", "\"amount_cents\": NaN, \"x\":"), "not a capture"),
        (words.to_string(), "not a capture"),
        (String::new(), "not a capture"),
        (format!("{{\"order_id\": \"{}\"}}", "9".repeat(10_000)), "not a capture"),
        (control.to_string(), "not a capture"),
    ];
    let pika = Command::new("python3").args(["-c", "import pika"]).status().is_ok_and(|s| s.success());
    assert!(pika, "pika is installed (scripts/test.sh installs it)");
    for (body, _) in &forged {
        assert_eq!(pika_capture(&shipping.0, &shipping.1, body), None, "shipping may publish a capture");
    }
    // The genuine capture again: already captured, nothing more.
    assert_eq!(pika_capture(&shipping.0, &shipping.1, &genuine.to_string()), None);
    // A node that ships nothing may not publish there at all.
    let refused =
        pika_capture(&stack.role_url("inventory"), &stack.role_user("inventory"), &genuine.to_string());
    assert!(refused.as_deref().is_some_and(|said| said.contains("ACCESS_REFUSED")), "{refused:?}");
    // The operator, through the management API: no shipping user, refused by payment.
    let properties = json!({"content_type": "application/json", "delivery_mode": 2, "type": "capture"});
    let answer = stack
        .publish_with_management_api("orderflow.settlement", "capture", properties, &genuine.to_string())
        .await;
    assert_eq!(answer["routed"], true, "{answer}");

    let mut expected: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (_, reason) in &forged {
        *expected.entry(reason).or_default() += 1;
    }
    *expected.entry("may send a capture").or_default() += 1;
    for (reason, n) in &expected {
        let letters = stack.letters_with(reason, *n).await;
        assert_eq!(letters.len(), *n, "dead letters with {reason:?}: {letters:?}");
        assert!(letters.iter().all(|l| l["node"] == "payment"), "{letters:?}");
        // A replay sends it back where it came from: the settlement queue.
        assert!(letters.iter().all(|l| l["queue"] == topology::SETTLEMENT_QUEUE), "{letters:?}");
    }

    // Settling goes on: the next orders are captured too, each once.
    let next = stack.publish(&[orders::valid(1, "overnight"), orders::valid(3, "standard")]);
    stack.wait_terminal(&next, Duration::from_secs(60)).await;
    let ledger = stack.sqlite("processor", "processor_settlements").await;
    let all_shipped: std::collections::BTreeSet<String> =
        first.iter().chain(&next).map(Uuid::to_string).collect();
    tests::assert_settled(&ledger, &all_shipped, &Default::default(), &Default::default()).await;
    let charged = count(&ledger, "SELECT COALESCE(SUM(amount_cents), 0) FROM processor_charges").await;
    let captured = count(
        &ledger,
        "SELECT COALESCE(SUM(amount_cents), 0) FROM processor_settlements WHERE kind = 'capture'",
    )
    .await;
    assert_eq!(captured, charged, "captured exactly what the shipped orders were authorized for");
}
